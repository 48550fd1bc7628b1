"""Relaxing the neural states towards a fixed point of the energy: free and nudged phases.

Two interchangeable steps: the model's explicit local step (fast, works under torch.no_grad)
and the reference act(autograd.grad(Phi, s)) that tests and benchmarks compare it with.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model_utils import EnergyNet, States


def autograd_step(model: EnergyNet, x: Tensor, s: States, target: Tensor | None = None,
                  beta: float | Tensor = 0.0) -> States:
    """Reference step s_k <- act(dPhi/ds_k) by autograd; keeps the graph when grad mode is on.

    A VF model differentiates Phi(post=s, pre=s) in `post` only (the other layers held
    fixed); `post` are fresh graph nodes on top of s so BPTT still flows through both.
    """
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        leaves = [t if t.requires_grad else t.detach().requires_grad_() for t in s]
        if model.has_feedback:
            post = [t.view_as(t) for t in leaves]
            phi = model.phi(x, post, target, beta, pre=leaves)
        else:
            post, phi = leaves, model.phi(x, leaves, target, beta)
        grads = torch.autograd.grad(phi.sum(), post, create_graph=keep_graph)
    return [act(g) for act, g in zip(model.acts, grads)]


def relax(model: EnergyNet, x: Tensor, s: States, steps: int, y: Tensor | None = None,
          beta: float | Tensor = 0.0, explicit: bool = True,
          drive: Tensor | None = None) -> States:
    """Run `steps` synchronous steps of the dynamics from states `s` with x clamped.

    beta nudges the output towards the labels y (a number, or one value per sample);
    `drive` is model.input_drive(x) when the caller already has it.
    """
    target = None if y is None else model.one_hot(y, x)
    if explicit:
        drive = model.input_drive(x) if drive is None else drive
        for _ in range(steps):
            s = model.step(drive, s, target, beta)
    else:
        for _ in range(steps):
            s = autograd_step(model, x, s, target, beta)
    return s


def free_phase(model: EnergyNet, x: Tensor, steps: int, explicit: bool = True) -> States:
    """`steps` free steps (beta = 0) from zero states: the network's prediction."""
    return relax(model, x, model.init_states(x), steps, explicit=explicit)
