"""How a phase reaches its fixed point: the solver beside `model_utils.relax`.

`relax` runs the published dynamics: a fixed number of synchronous steps, every layer at once
from the old states. A `Solver` on the model replaces that loop: `model.solver` (--solver,
--tol) in the free phases (training's, evaluation's, `model(x)`, attacks, BPTT's unroll) and
`model.nudged_solver` (--nudged-solver) in EP's nudged phases, where the synchronous steps stay
the default: unconverged, their EP update is BPTT's through as many steps (the GDU theorem),
another map's is not (BENCHMARKS.md measures what that costs). The solvers:
- `sync`: the same steps;
- `evenodd`: a sweep updates layers 1, 3, 5, ... (the first hidden layer first) from their
  neighbours, then layers 2, 4, ... from the new ones. Layers of a chain only meet their
  neighbours, so a sweep computes each synapse's products once, as a synchronous step does
  (`EnergyNet.sweep`), and for a symmetric model each half-sweep minimises the energy in its
  layers: information crosses the network twice as fast and the energy never rises;
- `anderson`: Anderson acceleration of the even-odd sweep, per sample (`Solver.anderson`).
With `tol`, a phase that runs without autograd stops for each sample once its states change
by less than tol (relative) in a step, checked every `check_every` steps (one host read a
check): the sample keeps its states from the first check it passed and leaves the batch, the
others go on, and the phase ends when none is left (or at its cap). So what a sample
converges to does not depend on the rest of its batch (nor on how torchrun shares it), and a
phase costs its samples' mean steps, not its slowest one's. (With --compile the batch keeps
its shape, as a compiled step has one graph per shape: converged samples are relaxed on, and
their states at their check kept.) With autograd on (BPTT's last T2 steps, an attack's
unroll), the count runs in full: a gradient goes through exactly those steps. With
--precision bf16 a phase of plain bfloat16 products stops at 10 x tol: in training, the
linearised steps that end the free phase (`ep_gradients`) then check every step and stop at
tol. What each phase cost is counted in `Solver.counts`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model_utils import Batch, EnergyNet, States, flat_states, map_states, step_function

SOLVERS = ("sync", "evenodd", "anderson")
BF16_TOL_FACTOR = 10  # --precision bf16: its plain steps stop at 10 x --tol (README)


@dataclass
class StepCounts:
    """What a solver's phases cost since the last reset: their steps (each phase's mean over
    its samples, summed over the phases), the most one phase ran (its slowest sample's), and
    how many samples of phases with a tol reached the cap unconverged, out of how many."""
    steps: float = 0.0
    longest: int = 0
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

    @property
    def label(self) -> str:
        """The solver as result files name it, e.g. `evenodd tol 0.0001`."""
        memory = f" m {self.anderson_m}" if self.name == "anderson" else ""
        return self.name + memory + (f" tol {self.tol:g}" if self.tol else "")

    def relax(self, model: EnergyNet, batch: Batch, s: States, steps: int,
              explicit: bool = True, check_every: int | None = None) -> States:
        """Up to `steps` steps (sweeps) from states s; fewer once converged (tol, no grad;
        checked every `check_every` steps if given, else every self.check_every)."""
        tol = self.tol if not torch.is_grad_enabled() else None
        if tol is not None and model.compute_dtype is not None and batch.reference is None:
            tol *= BF16_TOL_FACTOR  # bfloat16 steps: the linearised ones after them settle
        watch = Convergence(tol, check_every or self.check_every, len(batch.x),
                            compact=not model.compiled)
        loop = self.anderson if self.name == "anderson" else self.plain
        s = loop(self.iteration(model, explicit), batch, s, steps, watch)
        self.count(batch, watch)
        return s

    def iteration(self, model: EnergyNet, explicit: bool):
        """The map a step applies, (batch, states, carry) -> (states, carry), and the carry's
        start from (batch, states): the routing an even-odd sweep keeps between sweeps."""
        if self.name == "sync":
            step = step_function(model, explicit)
            return (lambda batch, s, carry: (step(batch, s), None)), lambda batch, s: None
        sweep = step_function(model, explicit, "sweep")
        start = ((lambda batch, s: model.first_routes(batch, model.visible(s))) if explicit
                 else (lambda batch, s: None))
        return sweep, start

    def plain(self, iteration, batch: Batch, s: States, steps: int,
              watch: Convergence) -> States:
        """The map itself, step after step (sync: the published loop, with --tol checks)."""
        iterate, start = iteration
        carry = start(batch, s)
        for taken in range(1, steps + 1):
            before = s
            s, carry = iterate(batch, s, carry)
            watch.stepped(s)
            if watch.due(taken):
                going = watch.check(relative_change(before, s), s)
                if going is not None:
                    if not len(going):
                        break
                    s, batch = subset(s, going), batch.subset(going)
                    carry = start(batch, s)  # the routing there, as carried
        return watch.result(s)

    def anderson(self, iteration, batch: Batch, s: States, steps: int,
                 watch: Convergence) -> States:
        """Anderson acceleration of the map, per sample: the next point is the combination of
        the last `anderson_m` map outputs whose residuals (output - input) cancel best (least
        squares, weights summing to 1, a small ridge); a sample whose residual grew takes the
        plain map output instead (the safeguard). The even-odd sweep's routing is carried from
        the last output: exact at a fixed point, where every output is its input."""
        iterate, start = iteration
        carry, x = start(batch, s), packed(s)
        inputs, outputs, last_residual, out = [], [], None, s
        for taken in range(1, steps + 1):
            out, carry = iterate(batch, s, carry)
            watch.stepped(out)
            f = packed(out)
            residual = (f - x).norm(dim=1)
            if watch.due(taken):
                going = watch.check(ratio(residual, f.norm(dim=1)), out)
                if going is not None:
                    if not len(going):
                        break
                    s, out, batch = subset(s, going), subset(out, going), batch.subset(going)
                    x, f, residual = x[going], f[going], residual[going]
                    last_residual = None if last_residual is None else last_residual[going]
                    inputs, outputs = [t[going] for t in inputs], [t[going] for t in outputs]
                    carry = start(batch, out)
            inputs, outputs = (inputs + [x])[-self.anderson_m:], (outputs + [f])[-self.anderson_m:]
            x = combination(torch.stack(inputs, 1), torch.stack(outputs, 1))
            if last_residual is not None:
                x = torch.where((residual > last_residual)[:, None], f, x)
            last_residual, s = residual, unpacked(x, out)
        return watch.result(out)

    def count(self, batch: Batch, watch: Convergence) -> None:
        counts, n = self.counts, len(batch.x)
        counts.steps += watch.sample_steps / max(n, 1)  # (an empty share under torchrun: 0)
        counts.longest = max(counts.longest, watch.steps)
        if watch.tol is not None:
            counts.capped += watch.capped
            counts.samples += n


class Convergence:
    """--tol over one phase, per sample: which samples passed a check (and their states then),
    which still relax (positions in the whole batch), and the steps the samples took."""

    def __init__(self, tol: float | None, every: int, n: int, compact: bool = True):
        self.tol, self.every, self.compact = tol, every, compact
        self.going: Tensor | None = None  # the whole batch's samples still relaxing (None: all)
        self.done: Tensor | None = None  # without compact: the samples that passed, and ...
        self.kept: States | None = None  # ... their states (with compact: every sample's slot)
        self.steps, self.sample_steps, self.capped, self.n = 0, 0, 0, n

    def due(self, taken: int) -> bool:
        return self.tol is not None and taken % self.every == 0

    def stepped(self, s: States) -> None:
        self.steps += 1
        self.sample_steps += len(flat_states(s)[0])

    def check(self, change: Tensor, s: States) -> Tensor | None:
        """At a check: the samples of s whose relative change is below tol have converged.
        Returns the positions in s of those to go on with when the batch is to shrink to them
        (empty when none is left), else None. One host read."""
        passed = change < self.tol
        if not self.compact:  # the whole batch relaxes on; each sample's first pass is kept
            if self.done is None:
                self.done, self.kept = passed, s
            else:
                self.kept = select(passed & ~self.done, s, self.kept)
                self.done = self.done | passed
            return torch.zeros(0, dtype=torch.long) if bool(self.done.all()) else None
        going = (~passed).nonzero().flatten()
        if len(going) == len(passed):
            return None
        whole = torch.arange(self.n, device=change.device) if self.going is None else self.going
        self.kept = self.place(s, whole)
        self.going = whole[going]
        return going

    def place(self, s: States, where: Tensor) -> States:
        """The whole batch's states with s's samples written at positions `where`."""
        if self.kept is None and len(where) == self.n:
            return s
        return map_states(lambda kept, t: kept.index_copy(0, where, t), self.kept, s)

    def result(self, s: States) -> States:
        """Every sample's states: those of the check it passed first, or its last ones."""
        unconverged = len(flat_states(s)[0]) if self.going is None else len(self.going)
        if not self.compact:
            if self.done is None:
                self.capped = self.n if self.tol is not None else 0
                return s
            self.capped = self.n - int(self.done.sum())
            return select(self.done, self.kept, s)
        self.capped = unconverged if self.tol is not None else 0
        if self.going is None:
            return s
        return self.place(s, self.going) if len(self.going) else self.kept


def subset(s: States, index: Tensor) -> States:
    return map_states(lambda t: t[index], s)


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


def packed(s: States) -> Tensor:
    """Every state tensor of each sample in one row (B, D)."""
    return torch.cat([t.flatten(1) for t in flat_states(s)], 1)


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
