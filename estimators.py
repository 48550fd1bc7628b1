"""Gradient estimators: EP (one-sided, random-sign, symmetric), BPTT and feed-forward BP.

Each one writes the parameter gradients into `.grad` (batch mean) and returns the free states,
whose read-out gives the running training accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dynamics import relax
from model_utils import EnergyNet, States


@dataclass(frozen=True)
class Phases:
    T1: int
    T2: int
    beta1: float = 0.0
    beta2: float = 0.1
    thirdphase: bool = False
    explicit: bool = True
    same_update: bool = False  # VF models: W and its B both get the mean of their updates


def energy_gradients(model: EnergyNet, x: Tensor, y: Tensor, s_a: States, beta_a: float,
                     s_b: States, beta_b: float, explicit: bool = True,
                     pre: States | None = None) -> None:
    """.grad <- -(dPhi/dtheta(s_b, beta_b) - dPhi/dtheta(s_a, beta_a)) / (beta_b - beta_a).

    Batch mean; explicit local products, or autograd of Phi (the reference). `pre`: the
    pre-synaptic states of a VF update (see EnergyNet.phi).
    """
    target = model.one_hot(y, x)
    if explicit:
        with torch.no_grad():
            scale = 1.0 / ((beta_b - beta_a) * x.shape[0])
            grads_a = model.param_grads(x, s_a, target, beta_a, pre)
            grads_b = model.param_grads(x, s_b, target, beta_b, pre)
            for p, a, b in zip(model.parameters(), grads_a, grads_b, strict=True):
                p.grad = (a - b).mul_(scale)
        return
    model.zero_grad()
    with torch.enable_grad():
        delta = (model.phi(x, s_b, target, beta_b, pre).mean()
                 - model.phi(x, s_a, target, beta_a, pre).mean())
        (delta / (beta_a - beta_b)).backward()


def share_feedback_updates(model: EnergyNet, updates: list[Tensor]) -> None:
    """--same-update: each W and its B both get the mean of their two updates (in place)."""
    by_param = dict(zip(model.parameters(), updates, strict=True))
    for syn in model.synapses:
        if syn.feedback is not None:
            w, b = by_param[syn.weight], by_param[syn.feedback]
            w.add_(b).mul_(0.5)
            b.copy_(w)


def update_rule_pre(model: EnergyNet, same_update: bool, s_free: States) -> States | None:
    """VF default rule: nudged post-synaptic change times free pre-synaptic states."""
    return s_free if model.has_feedback and not same_update else None


def ep_gradients(model: EnergyNet, x: Tensor, y: Tensor, ph: Phases, sign: float = 1.0) -> States:
    """EP: free phase to s*, nudged phase(s) from s*, then the energy-difference gradient."""
    beta = sign * ph.beta2
    with torch.no_grad():
        drive = model.input_drive(x)  # once per batch: x is clamped in every phase
        s_free = relax(model, x, model.init_states(x), ph.T1, y, ph.beta1, ph.explicit, drive)
        if ph.thirdphase:  # both nudged phases as one batch of 2B with beta = +beta2, -beta2
            n = x.shape[0]
            betas = torch.full((2 * n,), beta, dtype=x.dtype, device=x.device)
            betas[n:] = -beta
            both = relax(model, torch.cat([x, x]), [torch.cat([t, t]) for t in s_free], ph.T2,
                         torch.cat([y, y]), betas, ph.explicit, torch.cat([drive, drive]))
            s_nudged, s_ref, beta_ref = [t[:n] for t in both], [t[n:] for t in both], -beta
        else:
            s_nudged = relax(model, x, s_free, ph.T2, y, beta, ph.explicit, drive)
            s_ref, beta_ref = s_free, ph.beta1
    energy_gradients(model, x, y, s_ref, beta_ref, s_nudged, beta, ph.explicit,
                     update_rule_pre(model, ph.same_update, s_free))
    if ph.same_update:
        with torch.no_grad():
            share_feedback_updates(model, [p.grad for p in model.parameters()])
    return s_free


def bptt_gradients(model: EnergyNet, x: Tensor, y: Tensor, ph: Phases) -> States:
    """BPTT: T1-T2 steps without a graph, T2 steps with one, loss at the last state, backward."""
    with torch.no_grad():
        s = relax(model, x, model.init_states(x), ph.T1 - ph.T2, explicit=ph.explicit)
    with torch.enable_grad():  # the drive is recomputed here: its graph reaches W_0
        s = relax(model, x, s, ph.T2, explicit=ph.explicit)
        backward_loss(model, x, y, s)
    return [t.detach() for t in s]


def backward_loss(model: EnergyNet, x: Tensor, y: Tensor, s: States) -> None:
    """.grad <- d(mean loss at s)/dtheta; zero for weights the loss does not reach (a layer
    deeper than T2 steps back, or B in a feed-forward pass)."""
    params = list(model.parameters())
    grads = torch.autograd.grad(model.loss(s, model.one_hot(y, x)).mean(), params,
                                materialize_grads=True)
    for p, g in zip(params, grads):
        p.grad = g


def bp_gradients(model: EnergyNet, x: Tensor, y: Tensor) -> States:
    """Feed-forward backprop through the same layers (no recurrence)."""
    with torch.enable_grad():
        s = model.feedforward(x)
        backward_loss(model, x, y, s)
    return [t.detach() for t in s]
