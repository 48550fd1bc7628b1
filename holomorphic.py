"""Holomorphic EP (--alg hEP, --holo-points N; Laborieux & Zenke 2022, "Holomorphic
equilibrium propagation computes exact gradients through finite size oscillations").

EP's gradient is a derivative in beta at 0: dL/dtheta = -d/dbeta dPhi/dtheta(s_beta). Where the
fixed points s_beta are holomorphic in beta, Cauchy's formula gives it from nudges on a circle
around 0, beta_k = |beta| e^(2 pi i k / N), k = 0 .. N-1 (complex states):

    dL/dtheta = -Re (1 / (N |beta|)) sum_k dPhi/dtheta(s_beta_k) e^(-2 pi i k / N)

exact at finite |beta| but for an error that falls geometrically with N (the Taylor terms of
order N + 1 and up alias onto the first). Holomorphic needs holomorphic dynamics: the sigmoid
activations and tanh, average pooling or none, the squared-error cost. The N nudged phases
run as one batch of N x B samples, on a complex copy of the model.
"""

from __future__ import annotations

import copy
import math
import warnings
import weakref
from dataclasses import replace

import torch
from torch import Tensor

from model_utils import EnergyNet, Masks, Phases, States, nudged_phase, relax, write_grads

HOLOMORPHIC_ACTS = ("mysig", "sigmoid", "tanh")  # (the clipped ones have corners)
HOLOMORPHIC_POOLS = ("a", "i")  # average pooling is linear; max pooling has corners
COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}
_twins: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def complex_twin(model: EnergyNet) -> EnergyNet:
    """A complex copy of the model with its current weights (kept between batches)."""
    weight = next(model.parameters())
    dtype = COMPLEX[weight.dtype]
    twin = _twins.get(model)
    held = None if twin is None else next(twin.parameters())
    if held is None or (held.dtype, held.device) != (dtype, weight.device):  # (moved: anew)
        with warnings.catch_warnings():  # torch's notice that complex modules are new
            warnings.simplefilter("ignore", UserWarning)
            twin = copy.deepcopy(model).to(dtype)
        twin.solver = None  # relaxed only by the nudged phase's synchronous steps
        _twins[model] = twin
    twin.nudged_solver = model.nudged_solver  # (its step counts are the run's)
    with torch.no_grad():
        for t, p in zip(twin.parameters(), model.parameters(), strict=True):
            t.copy_(p)
    return twin


def circle(beta: float, points: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The N nudges |beta| e^(2 pi i k / N)."""
    angles = torch.arange(points, device=device, dtype=torch.float64) * (2 * math.pi / points)
    return torch.polar(torch.full_like(angles, abs(beta)), angles).to(dtype)


def holomorphic_gradients(model: EnergyNet, x: Tensor, y: Tensor, ph: Phases, points: int,
                          masks: Masks = None) -> States:
    """The real free phase to s*, the N complex nudged phases from it as one batch, then the
    first Fourier coefficient of dPhi/dtheta; returns the free states."""
    n = x.shape[0]
    with torch.no_grad():
        free = model.batch(x, y, ph.beta1, masks)
        s_free = relax(model, free, model.init_states(x), ph.T1, ph.explicit)
        twin = complex_twin(model)
        dtype = COMPLEX[x.dtype]
        betas = circle(ph.beta2, points, dtype, x.device)

        def tiled(t: Tensor) -> Tensor:  # the batch N times: nudge k on copy k
            return t.repeat(points, *[1] * (t.dim() - 1))

        many = free.per_sample(tiled)
        many = replace(many, x=many.x.to(dtype), drive=many.drive.to(dtype),  # (real values)
                       beta=betas.repeat_interleave(n))
        s = nudged_phase(twin, many, [tiled(t).to(dtype) for t in s_free], ph.T2, ph.explicit)
        weights = torch.conj(betas) / (points * abs(ph.beta2) ** 2)  # e^(-2 pi i k/N) / N|beta|
        total = None
        for k in range(points):
            part = slice(k * n, (k + 1) * n)
            dphi = twin.param_grads(many.per_sample(lambda t, part=part: t[part]),
                                    [t[part] for t in s])
            term = [g * weights[k] for g in dphi]
            total = term if total is None else [a + b for a, b in zip(total, term)]
        write_grads(model, [-g.real.div_(n).to(x.dtype) for g in total])
    return s_free
