"""How a phase reaches its fixed point: the solver beside `model_utils.relax`.

`relax` runs the published dynamics: a fixed number of synchronous steps, every layer at once
from the old states. A `Solver` on the model (`model.solver`, from --solver and --tol)
replaces that loop in every phase (free, nudged, evaluation, attacks, BPTT):
- `sync`: the same steps;
- `evenodd`: a sweep updates layers 1, 3, 5, ... (the first hidden layer first) from their
  neighbours, then layers 2, 4, ... from the new ones. Layers of a chain only meet their
  neighbours, so a sweep computes each synapse's products once, as a synchronous step does
  (`EnergyNet.sweep`), and for a symmetric model each half-sweep minimises the energy in its
  layers: information crosses the network twice as fast and the energy never rises;
- `anderson`: Anderson acceleration of the even-odd sweep, per sample (below).
With `tol`, a phase that runs without autograd stops once every sample's states have changed
by less than tol (relative) in one step, checked every `check_every` steps (one host read a
check); each sample keeps its states from the first check it passed, so what it converges to
does not depend on the rest of its batch (nor on how torchrun shares the batch). With
autograd on (BPTT's last T2 steps, an attack's unroll), the count runs in full: a gradient
goes through exactly those steps. The steps each phase took are counted (`Solver.counts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model_utils import Batch, EnergyNet, States, _is_zero, flat_states, map_states, step_function

SOLVERS = ("sync", "evenodd", "anderson")


@dataclass
class StepCounts:
    """Steps taken since the last reset: of the phases at beta 0 (free; BPTT's whole unroll)
    and of the nudged ones, and how many samples of free phases reached their cap first."""
    free_steps: int = 0
    nudged_steps: int = 0
    capped: int = 0
    samples: int = 0


class Solver:
    """--solver NAME [--tol TOL --check-every N] [--anderson-m M]: see the module's text."""

    def __init__(self, name: str = "sync", tol: float | None = None, check_every: int = 10,
                 anderson_m: int = 5):
        self.name, self.tol, self.check_every, self.anderson_m = (name, tol, check_every,
                                                                  anderson_m)
        self.counts = StepCounts()

    def __repr__(self) -> str:
        tol = f", tol={self.tol:g} checked every {self.check_every}" if self.tol else ""
        memory = f", memory {self.anderson_m}" if self.name == "anderson" else ""
        return f"Solver({self.name}{memory}{tol})"

    def relax(self, model: EnergyNet, batch: Batch, s: States, steps: int,
              explicit: bool = True) -> States:
        """Up to `steps` steps (sweeps) from states s; fewer once converged (tol, no grad)."""
        iterate, carry = self.iteration(model, batch, s, explicit)
        watch = Convergence(self.tol if not torch.is_grad_enabled() else None, self.check_every)
        loop = self.anderson if self.name == "anderson" else plain
        s, taken = loop(iterate, carry, s, steps, watch)
        self.count(batch, taken, watch.done)
        return watch.result(s)

    def anderson(self, iterate, carry, s: States, steps: int,
                 watch: Convergence) -> tuple[States, int]:
        """Anderson acceleration of the map, per sample: the next point is the combination of
        the last `anderson_m` map outputs whose residuals (output - input) cancel best (least
        squares, weights summing to 1, a small ridge); a sample whose residual grew takes the
        plain map output instead (the safeguard)."""
        layout, x = packed(s)
        inputs, outputs, last_residual, out, taken = [], [], None, s, 0
        for taken in range(1, steps + 1):
            out, carry = iterate(s, carry)
            f = packed(out)[1]
            residual = (f - x).norm(dim=1)
            if watch.due(taken) and watch.check(taken, ratio(residual, f.norm(dim=1)), out):
                break
            inputs, outputs = (inputs + [x])[-self.anderson_m:], (outputs + [f])[-self.anderson_m:]
            x = combination(torch.stack(inputs, 1), torch.stack(outputs, 1))
            if last_residual is not None:
                x = torch.where((residual > last_residual)[:, None], f, x)
            last_residual, s = residual, unpacked(x, layout)
        return out, taken

    def iteration(self, model: EnergyNet, batch: Batch, s: States, explicit: bool):
        """The map a step applies, (states, carry) -> (states, carry), and the first carry."""
        if self.name == "sync":
            step = step_function(model, explicit)
            return (lambda states, carry: (step(batch, states), None)), None
        sweep = step_function(model, explicit, "sweep")
        routes = model.first_routes(batch, model.visible(s)) if explicit else None
        return (lambda states, carry: sweep(batch, states, carry)), routes

    def count(self, batch: Batch, taken: int, done: Tensor | None) -> None:
        counts = self.counts
        if not _is_zero(batch.beta):
            counts.nudged_steps += taken
            return
        counts.free_steps += taken
        n = batch.x.shape[0]
        counts.samples += n
        if done is not None:
            counts.capped += n - int(done.sum())


def plain(iterate, carry, s: States, steps: int, watch: Convergence) -> tuple[States, int]:
    """The map itself, step after step (sync: the published loop, with --tol checks)."""
    taken = 0
    for taken in range(1, steps + 1):
        before = s
        s, carry = iterate(s, carry)
        if watch.due(taken) and watch.check(taken, relative_change(before, s), s):
            break
    return s, taken


class Convergence:
    """--tol per sample over one phase: which samples passed a check, and their states then."""

    def __init__(self, tol: float | None, every: int):
        self.tol, self.every = tol, every
        self.done: Tensor | None = None
        self.kept: States | None = None

    def due(self, taken: int) -> bool:
        return self.tol is not None and taken % self.every == 0

    def check(self, taken: int, change: Tensor, s: States) -> bool:
        """At a check (`due`): record the samples whose relative change is below tol; whether
        all have passed (the one host read of a check)."""
        newly = change < self.tol
        if self.done is None:
            self.done, self.kept = newly, s
        else:
            self.kept = select(newly & ~self.done, s, self.kept)
            self.done = self.done | newly
        return bool(self.done.all())

    def result(self, s: States) -> States:
        """Each sample's states at the first check it passed, the others' at the end."""
        return s if self.done is None else select(self.done, self.kept, s)


def combination(inputs: Tensor, outputs: Tensor, ridge: float = 1e-8) -> Tensor:
    """Anderson's next point per sample from n past (input, output) pairs (B, n, D): the
    weights alpha (summing to 1) that minimise |sum alpha (output - input)|, applied to the
    outputs. The ridge is relative to the residuals' size, so it works at any scale."""
    g = outputs - inputs
    gram = g @ g.transpose(1, 2)
    n = gram.shape[-1]
    scale = gram.diagonal(dim1=1, dim2=2).mean(1)
    gram = gram + ridge * scale[:, None, None] * torch.eye(n, dtype=g.dtype, device=g.device)
    alpha, singular = torch.linalg.solve_ex(gram, torch.ones_like(gram[..., :1]))
    alpha = alpha / alpha.sum(1, keepdim=True)
    mixed = (alpha.transpose(1, 2) @ outputs).squeeze(1)
    # a sample whose residuals vanished (its system is singular) keeps its last output
    solved = (singular == 0)[:, None] & mixed.isfinite().all(1, keepdim=True)
    return torch.where(solved, mixed, outputs[:, -1])


def packed(s: States) -> tuple[States, Tensor]:
    """Every state tensor of each sample in one row (B, D); and s, the layout to unpack to."""
    return s, torch.cat([t.flatten(1) for t in flat_states(s)], 1)


def unpacked(x: Tensor, like: States) -> States:
    """The rows of `packed` back into states shaped and laid out (channels-last) as `like`."""
    chunks = iter(x.split([t[0].numel() for t in flat_states(like)], 1))

    def shaped(t: Tensor) -> Tensor:
        c = next(chunks).reshape(t.shape)
        return c.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else c

    return map_states(shaped, like)


def relative_change(before: States, after: States) -> Tensor:
    """Per sample: ||after - before|| / ||after|| over all its states (hidden ones too)."""
    change = sum(((a - b).flatten(1).pow(2).sum(1) for a, b in
                  zip(flat_states(after), flat_states(before))))
    size = sum(a.flatten(1).pow(2).sum(1) for a in flat_states(after))
    return ratio(change.sqrt(), size.sqrt())


def ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den, a den of 0 taken as the dtype's tiniest number (0 / 0 is 0)."""
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def select(mask: Tensor, a: States, b: States) -> States:
    """Per sample: a's states where mask, else b's."""
    return map_states(lambda u, v: torch.where(mask.view(-1, *[1] * (u.dim() - 1)), u, v), a, b)
