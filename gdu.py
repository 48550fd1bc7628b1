"""The GDU check: EP's step-by-step updates against BPTT's gradients (discrete-time EP theorem).

From the free state s_T1, EP's t-th nudged step gives a neural update (s_{t+1} - s_t) / beta and
a weight update -(dPhi/dtheta(s_{t+1}) - dPhi/dtheta(s_t)) / beta (batch mean, gradient sign).
BPTT runs the last T2 free steps with a graph and gives, for t steps back from the end,
-dL/ds_{T1-t} and the gradient of L through step T1-t alone. The theorem says the two sequences
coincide when the free phase has converged and beta -> 0; their cumulative sums are the
gradient estimates after t steps. Everything runs in float64 so that only the theorem is tested,
with the explicit dynamics (equal to autograd's, as the tests show).
"""

from __future__ import annotations

import copy
import json
import math

import torch
from torch import Tensor

from model_utils import (EnergyNet, States, flat_states, map_states, relax,
                         share_feedback_updates, update_rule_pre)

Updates = dict[str, Tensor]  # name -> tensor of shape (T2, *shape): one entry per step t


def update_names(model: EnergyNet) -> list[str]:
    """s1.. for the layers, then W/b/B (D for LCANet's dictionary) with the weight layer's
    number, in parameters() order."""
    names = [f"s{k}" for k in range(1, model.n_states + 1)]
    for name, _ in model.named_parameters():
        _, index, kind = name.split(".")
        syn = model.synapses[int(index)]
        letters = {"weight": getattr(syn, "weight_letter", "W"), "bias": "b", "feedback": "B"}
        names.append(f"{letters[kind]}{int(index) + 1}")
    return names


def bptt_updates(model: EnergyNet, x: Tensor, y: Tensor, s_start: States, T2: int) -> Updates:
    """BPTT's gradients t = 0 .. T2-1 steps back from s_T1 = T2 free steps after `s_start`,
    with the sign of a descent step.

    Neurons: -dL/da at the input a of the activation of the step that gave s_{T1-t}, the
    quantity EP's neural update approximates (dL/ds would differ by act'(a) from it); for a
    layer with hidden variables (LCANet's code) a is the input of its whole update.
    Weights: the gradient of L through that step alone.
    """
    params = list(model.parameters())
    with torch.enable_grad():
        batch = model.batch(x, y)  # a drive with its graph: a lone layer's state hangs on it
        path = [map_states(lambda t: t.detach().requires_grad_(), s_start)]
        # each step reads its own view of the states: the gradient at a view flows back only
        # through that step, not through the rest of the step that made it (a code a = T(u)
        # would otherwise count the path through a twice: in dL/da and in dL/du)
        read = []
        for _ in range(T2 + 1):
            read.append(map_states(lambda t: t.view_as(t), path[-1]))
            if len(read) <= T2:
                path.append(model.step(batch, read[-1]))
        loss = model.loss(read[-1], batch.target).sum()  # a sum: per-sample state gradients
        flat = torch.autograd.grad(loss, [t for s in read[1:] for t in flat_states(s)],
                                   materialize_grads=True)
        n, m = model.n_states, len(flat_states(s_start))
        per_step = []
        for tau in range(T2):  # step tau alone, from its detached input state
            before = map_states(Tensor.detach, path[tau])
            field = model.field(model.batch(x), model.visible(before))
            out = [layer.update(a, old) for layer, a, old in zip(model.neurons, field, before)]
            grads = torch.autograd.grad(flat_states(out), field + params,
                                        flat[tau * m:(tau + 1) * m], materialize_grads=True)
            per_step.append([-g for g in grads[:n]] + [g / x.shape[0] for g in grads[n:]])
        if model.softmax:  # the read-out's gradient comes from the loss, outside any step
            last = map_states(Tensor.detach, path[-1])
            direct = torch.autograd.grad(model.loss(last, batch.target).sum(), params,
                                         materialize_grads=True)
            per_step[-1][n:] = [g + d / x.shape[0] for g, d in zip(per_step[-1][n:], direct)]
    return _stack(update_names(model), per_step[::-1])  # index t = steps back from s_T1


def ep_updates(model: EnergyNet, x: Tensor, y: Tensor, s_free: States, T2: int, beta: float,
               same_update: bool = False, continual_lr: float = 0.0) -> Updates:
    """EP's neural and weight updates at each of the T2 nudged steps from the free state;
    with `continual_lr` (Continual EP, as the published check) each step's weight update is
    applied at that lr before the next step (to `model`: give it a copy).

    The read-out (softmax) enters through the loss only: its update at step t is the change of
    dL/dW_out, so that the sum up to t is dL/dW_out at the nudged state, as in training. VF
    models pair the post-synaptic change with the free pre-synaptic states, as in training.
    """
    s, scale = s_free, 1.0 / (beta * x.shape[0])
    with torch.no_grad():
        free = model.batch(x, y)
        nudged = free.nudged(beta)
        pre = update_rule_pre(model, same_update, s_free)
        dphi = model.param_grads(free, s, pre)
        per_step = []
        for _ in range(T2):
            s_next = model.step(nudged, s)
            dphi_next = model.param_grads(nudged, s_next, pre)
            grads = [(a - b).mul_(scale) for a, b in zip(dphi, dphi_next)]
            if same_update:
                share_feedback_updates(model, grads)
            per_step.append([(b - a) / beta for a, b in zip(model.visible(s),
                                                             model.visible(s_next))] + grads)
            if continual_lr:  # the next step, its drive and dPhi/dtheta with the moved weights
                for p, g in zip(model.parameters(), grads, strict=True):
                    p.sub_(continual_lr * g)
                nudged = model.batch(x, y).nudged(beta)
                dphi_next = model.param_grads(nudged, s_next, pre)
            s, dphi = s_next, dphi_next
    return _stack(update_names(model), per_step)


def _stack(names: list[str], per_step: list[list[Tensor]]) -> Updates:
    return {name: torch.stack([step[i] for step in per_step]).detach()
            for i, name in enumerate(names)}


def symmetric(plus: Updates, minus: Updates) -> Updates:
    """The symmetric estimate: mean of the +beta and -beta one-sided updates."""
    return {k: (plus[k] + minus[k]) / 2 for k in plus}


def compare(ep: Updates, bptt: Updates) -> dict[str, dict[str, float]]:
    """Per name: RMS over t of EP - BPTT divided by the larger RMS of the two, averaged over
    units (0 = identical, 1 = unrelated), and the fraction of (t, unit) with opposite signs."""
    out = {}
    for key, e in ep.items():
        b = bptt[key]
        rms_diff = (e - b).pow(2).mean(0).sqrt()
        scale = torch.maximum(e.pow(2).mean(0).sqrt(), b.pow(2).mean(0).sqrt())
        out[key] = {"rmse": (rms_diff / (scale + 1e-10)).mean().item(),
                    "sign_error": (e * b < 0).double().mean().item()}
    return out


def mean_rmse(metrics: dict[str, dict[str, float]]) -> float:
    return sum(m["rmse"] for m in metrics.values()) / len(metrics)


def tie_feedback(updates: Updates) -> Updates:
    """BPTT's gradient for --same-update: W and its B act as one weight, so both get the sum."""
    tied = dict(updates)
    for key in updates:
        if key.startswith("B"):
            tied[key] = tied["W" + key[1:]] = updates[key] + updates["W" + key[1:]]
    return tied


def free_drift(model: EnergyNet, x: Tensor, s_free: States) -> float:
    """max |s_{T1+1} - s_T1|: how far the free phase is from the fixed point the theorem needs."""
    with torch.no_grad():
        return max((a - b).abs().max().item() for a, b in
                   zip(flat_states(s_free), flat_states(model.step(model.batch(x), s_free))))


def gdu_check(model: EnergyNet, x: Tensor, y: Tensor, T1: int, T2: int, beta: float,
              thirdphase: bool = False, same_update: bool = False,
              continual_lr: float = 0.0) -> dict:
    """BPTT, one-sided EP (and with `thirdphase` symmetric EP) updates and their comparison;
    `continual_lr`: Continual EP's, whose weights move by each step's update at that lr."""
    if not (0 < T2 <= T1) or beta == 0 or not math.isfinite(beta):
        raise ValueError("the GDU check needs 0 < T2 <= T1 and a finite beta != 0")
    model64 = copy.deepcopy(model).double()
    model64.set_compute_dtype(None)  # a float64 check, whatever --precision the run trains in
    model64.compiled = False  # one batch: compiling would cost more than it saves
    model64.solver = None  # the theorem of the synchronous steps, all T1 and T2 of them
    x64 = x.double()
    with torch.no_grad():  # one free phase serves both: BPTT starts T2 steps before its end
        free = model64.batch(x64)
        s_start = relax(model64, free, model64.init_states(x64), T1 - T2)
        s_free = relax(model64, free, s_start, T2)
    bptt = bptt_updates(model64, x64, y, s_start, T2)
    def nudged(sign: float) -> Updates:  # (CEP moves the weights: each phase on a copy)
        net = copy.deepcopy(model64) if continual_lr else model64
        return ep_updates(net, x64, y, s_free, T2, sign * beta, same_update, continual_lr)

    result = {"bptt": tie_feedback(bptt) if same_update else bptt, "one_sided": nudged(1.0),
              "free_drift": free_drift(model64, x64, s_free)}
    result["metrics"] = {"one_sided": compare(result["one_sided"], result["bptt"])}
    if thirdphase:
        minus = nudged(-1.0)
        result["symmetric"] = symmetric(result["one_sided"], minus)
        result["metrics"]["symmetric"] = compare(result["symmetric"], result["bptt"])
    return result


def gdu_report(result: dict, settings: dict) -> tuple[str, str]:
    """gdu_metrics.json's text, and the table printed on the terminal."""
    metrics = result["metrics"]
    report = {"settings": settings, "free_drift": result["free_drift"], **metrics}
    if "symmetric" in metrics:
        report["symmetric_error_ratio"] = {
            k: metrics["symmetric"][k]["rmse"] / max(v["rmse"], 1e-300)
            for k, v in metrics["one_sided"].items()}
    estimates = list(metrics)
    lines = [f"GDU check of {settings['weights']}: {settings['samples']} samples, "
             f"T1 {settings['T1']}, T2 {settings['T2']}, beta {settings['beta']:g}; "
             f"max |s_T1+1 - s_T1| = {result['free_drift']:.2e}",
             "normalised RMSE (0 = EP equals BPTT) and fraction of opposite signs, per tensor:",
             f"{'':8}" + "".join(f"{e.replace('_', '-'):>24}" for e in estimates)]
    for name in metrics["one_sided"]:
        lines.append(f"{name:8}" + "".join(f"{metrics[e][name]['rmse']:>14.4f}"
                                           f"{metrics[e][name]['sign_error']:>10.4f}"
                                           for e in estimates))
    if result["free_drift"] > 1e-3:
        lines.append("notice: the free phase has not reached a fixed point (the theorem assumes "
                     "one): raise --T1")
    return json.dumps(report, indent=2) + "\n", "\n".join(lines)
