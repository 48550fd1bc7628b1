"""Continual EP (--alg CEP; Ernoult et al. 2020, "Equilibrium propagation with continual weight
updates"), as the published code runs it: after the free phase, every nudged step is followed
by the EP update of that step alone, -(dPhi/dtheta(s_k+1, beta) - dPhi/dtheta(s_k, beta1)) /
(beta - beta1), and an optimizer step, so the weights move while the states do and no free
state has to be kept. Their sum over the T2 steps telescopes to EP's update when the weights
move little (--cep-debug checks exactly that).

The published details, kept: the k-th update is divided by (1 - lr wd)^(T2-1-k), because the
weight decay of the later steps shrinks it again; --wds is converted to a per-step decay (see
`step_weight_decays`) unless --cep-debug; --cep-debug scales the lrs by CEP_DEBUG_LR, restores
the weights after the phase and takes one optimizer step on the accumulated change;
--thirdphase goes back towards s* (T2 steps at beta 0) and runs T2 steps at -beta with
updates (no decay division there).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from model_utils import (EnergyNet, Masks, Phases, States, energy_gradients, nudged_phase,
                         relax, write_grads)

CEP_CHECK_LR = 1e-5  # the GDU check of CEP (gducheck, --check-thm): the published SGD lr
CEP_DEBUG_LR = 6e-5  # --cep-debug: the published lr factor for the steps inside the phase
WD_PER_BATCH = 0.1  # the published conversion: --wds wd decays a batch's weights by wd x this


def step_weight_decays(lrs: list[float], wds: list[float], T2: int) -> list[float]:
    """The weight decay of each optimizer step, as the published main.py converts --wds for
    CEP: T2 steps of lr x it decay the weights by the factor (1 - WD_PER_BATCH x wd) (0 for a
    frozen layer, lr 0, where no step moves a weight)."""
    return [(1 - (1 - wd * WD_PER_BATCH) ** (1 / T2)) / lr if lr else 0.0
            for lr, wd in zip(lrs, wds)]


def continual_ep(model: EnergyNet, x: Tensor, y: Tensor, ph: Phases,
                 optimizer: torch.optim.Optimizer, sign: float = 1.0, masks: Masks = None,
                 debug: bool = False, average: Callable[[], None] = lambda: None) -> States:
    """Free phase, then T2 nudged steps with an optimizer step after each (and the third
    phase's T2); returns the free states. `average` makes each step's .grad the whole batch's
    (under torchrun: distributed.average_gradients)."""
    beta = sign * ph.beta2
    with torch.no_grad():
        s_free = relax(model, model.batch(x, y, ph.beta1, masks), model.init_states(x), ph.T1,
                       ph.explicit)
    saved = debug_start(model, optimizer) if debug else None
    updating = StepUpdates(model, x, y, masks, ph, optimizer, average)
    s = updating.phase(s_free, ph.beta1, beta, decay=True)
    if saved is not None:
        debug_end(model, optimizer, saved)
    if ph.thirdphase:
        with torch.no_grad():  # back towards s*, with the weights as they are now
            s = nudged_phase(model, model.batch(x, y, 0.0, masks), s, ph.T2, ph.explicit)
        updating.phase(s, beta, -beta, decay=False)
    return s_free


class StepUpdates:
    """The nudged steps of one batch, each followed by its update and an optimizer step."""

    def __init__(self, model: EnergyNet, x: Tensor, y: Tensor, masks: Masks, ph: Phases,
                 optimizer: torch.optim.Optimizer, average: Callable[[], None]):
        self.model, self.x, self.y, self.masks, self.ph = model, x, y, masks, ph
        self.optimizer, self.average = optimizer, average

    def phase(self, s: States, beta_ref: float, beta: float, decay: bool) -> States:
        """T2 steps at `beta` from s; step k's update pairs s_k+1 at beta with s_k at
        beta_ref (the published pairing: beta1 in the nudged phase, +beta in the third)."""
        model, ph = self.model, self.ph
        for k in range(ph.T2):
            with torch.no_grad():  # the drive anew: the input weights moved at the last step
                batch = model.batch(self.x, self.y, beta, self.masks)
                s_next = nudged_phase(model, batch, s, 1, ph.explicit)
            grads = energy_gradients(model, batch, s, beta_ref, s_next, beta, ph.explicit)
            if decay:
                self.undo_later_decay(grads, ph.T2 - 1 - k)
            write_grads(model, grads)
            self.average()
            self.optimizer.step()
            s = s_next
        return s

    def undo_later_decay(self, grads: list[Tensor], later_steps: int) -> None:
        """grad / (1 - lr wd)^later_steps, each with its layer's lr and weight decay."""
        by_param = dict(zip(self.model.parameters(), grads, strict=True))
        for group in self.optimizer.param_groups:
            factor = (1 - group["lr"] * group["weight_decay"]) ** later_steps
            for p in group["params"]:
                by_param[p].div_(factor)


def debug_start(model: EnergyNet, optimizer: torch.optim.Optimizer) -> dict:
    """--cep-debug: the weights and lrs before the phase; the lrs scaled down for it."""
    saved = {"weights": [p.detach().clone() for p in model.parameters()],
             "lrs": [g["lr"] for g in optimizer.param_groups]}
    for group in optimizer.param_groups:
        group["lr"] *= CEP_DEBUG_LR
    return saved


def debug_end(model: EnergyNet, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """--cep-debug: .grad <- the phase's weight change over its (scaled) lr, the weights and
    lrs restored, then one optimizer step: the update EP would have made, as the weights
    moved little."""
    with torch.no_grad():
        before = dict(zip(model.parameters(), saved["weights"], strict=True))
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = (torch.empty_like(p).copy_((before[p] - p) / group["lr"])
                          if group["lr"] else torch.zeros_like(p))  # (lr 0: a frozen layer)
                p.copy_(before[p])
    for group, lr in zip(optimizer.param_groups, saved["lrs"], strict=True):
        group["lr"] = lr
    optimizer.step()
