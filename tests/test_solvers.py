"""--solver and --tol: every solver settles at the synchronous fixed point where it is unique,
with EP's gradient there; even-odd half-sweeps never raise a symmetric network's energy; a
phase stops at the first check below tol, per sample; the phases, estimators and runs that
use a solver."""

import pytest
import torch

from model_utils import (LCAConfig, Phases, bptt_gradients, build_cnn, build_lcanet, build_mlp,
                         ep_gradients, flat_states, free_phase, map_states, relax, scale_init)
from solvers import Convergence, Solver, relative_change

pytestmark = pytest.mark.usefixtures("float64")
SOLVED = [("sync", None), ("evenodd", None), ("anderson", None)]


def unique_fixed_point_models() -> dict:
    """Small weights, average or no pooling (a max-pool's routing can hold two fixed points
    even then), so each has one fixed point (checked in the test)."""
    torch.manual_seed(0)
    lca = LCAConfig(n_feats=3, kernel=3, stride=2, padding=1, tau=2.0, iters=8)
    models = {
        "MLP mse": build_mlp([20, 16, 12, 10], "mysig", "mse", False),
        "MLP cel": build_mlp([20, 16, 12, 10], "tanh", "cel", False),
        "MLP cel softmax": build_mlp([20, 16, 12, 10], "mysig", "cel", True),
        "VFMLP": build_mlp([20, 16, 12, 10], "mysig", "mse", False, vf=True),
        "CNN": build_cnn((1, 12, 12), [3, 4], [3, 3], [1, 1], [1, 1], "ai", [10],
                         "hard_sigmoid", "mse", False),
        "VFCNN": build_cnn((1, 12, 12), [3, 4], [3, 3], [1, 1], [1, 0], "aa", [10], "mysig",
                           "cel", True, vf=True),
        "LCANet": build_lcanet((1, 12, 12), lca, [4], [3], [1], [1], "a", [10], "mysig", "cel",
                               True),
    }
    for model in models.values():
        scale_init(model, 0.5)
    return models


def inputs(model, n=4):
    shape = (n, *model.input_shape)
    return torch.rand(shape), torch.randint(0, 10, (n,))


def distance(a, b) -> float:
    return max((u - v).abs().max().item() for u, v in zip(flat_states(a), flat_states(b)))


@pytest.mark.parametrize("name", list(unique_fixed_point_models()))
def test_every_solver_reaches_the_synchronous_fixed_point(name):
    model = unique_fixed_point_models()[name]
    x, y = inputs(model)
    masks = model.dropout_masks(x, [0.8] * len(model.synapses)) if "MLP" in name else None
    batch, steps = model.batch(x, y, 0.0, masks), 1500
    nudges = (0.5, torch.tensor([0.5, -0.5, 0.2, 0.1]))  # one-sided, and stacked phases
    with torch.no_grad():
        free = relax(model, batch, model.init_states(x), steps)
        for start in range(2):  # the fixed point is unique: random starts end there too
            torch.manual_seed(start)
            s = map_states(torch.rand_like, model.init_states(x))
            assert distance(relax(model, batch, s, steps), free) < 1e-10
        nudged = [relax(model, batch.nudged(nudge), free, steps) for nudge in nudges]
        for solver, _ in SOLVED:
            model.solver = Solver(solver, 1e-13, 5)
            assert distance(relax(model, batch, model.init_states(x), steps), free) < 1e-8
            assert model.solver.counts.capped == 0 and model.solver.counts.steps < steps
            for nudge, target in zip(nudges, nudged):
                assert distance(relax(model, batch.nudged(nudge), free, steps), target) < 1e-8


@pytest.mark.parametrize("thirdphase", [False, True])
@pytest.mark.parametrize("name", ["MLP cel softmax", "VFCNN", "LCANet"])
def test_ep_gradients_at_convergence_equal_syncs(name, thirdphase):
    """Every solver in the free phase and in the nudged phases (--nudged-solver)."""
    model = unique_fixed_point_models()[name]
    x, y = inputs(model)
    phases = Phases(1500, 1500, 0.0, 0.2, thirdphase)
    ep_gradients(model, x, y, phases)
    reference = [p.grad.clone() for p in model.parameters()]
    for solver, _ in SOLVED[1:]:
        model.solver = model.nudged_solver = Solver(solver, 1e-13, 5)
        ep_gradients(model, x, y, phases)
        for g, r in zip((p.grad for p in model.parameters()), reference, strict=True):
            assert (g - r).norm() <= 1e-6 * r.norm() + 1e-12, solver


def energy(model, batch, s):
    """The energy the hard-sigmoid dynamics minimise over [0, 1]: 1/2 |s|^2 - Phi."""
    return 0.5 * sum(t.pow(2).flatten(1).sum(1) for t in s) - model.phi(batch, s)


@pytest.mark.parametrize("pools", ["mm", "ai"])
@pytest.mark.parametrize("family", ["MLP", "CNN"])
def test_even_odd_half_sweeps_never_raise_the_energy(family, pools):
    """Each half-sweep minimises the energy in its layers (the others fixed; a max-pool term is
    convex in its input, so its linearisation bounds it): the energy never rises, for any
    weights. Synchronous steps on the same network do raise it: the check can fail."""
    if family == "MLP" and pools != "mm":
        pytest.skip("one MLP is enough")
    torch.manual_seed(1)
    model = (build_mlp([30, 40, 30, 20, 10], "hard_sigmoid", "mse", False) if family == "MLP"
             else build_cnn((1, 14, 14), [4, 6, 5], [3, 3, 3], [1, 1, 1], [1, 1, 1],
                            pools + "i", [12, 10], "hard_sigmoid", "mse", False))
    scale_init(model, 3.0)  # strong couplings: far from a contraction
    x, _ = inputs(model, 6)
    batch = model.batch(x)
    rises = {}
    with torch.no_grad():
        for name in ("evenodd", "sync"):
            s, rise = model.init_states(x), -float("inf")
            routes = model.first_routes(batch, s)
            for _ in range(20):
                for half in model.halves if name == "evenodd" else [range(model.n_states)]:
                    before = energy(model, batch, s)
                    fields, routes = model.layer_fields(batch, s, half, routes)
                    s = [model.neurons[k].update(fields[half.index(k)], t) if k in half else t
                         for k, t in enumerate(s)]
                    rise = max(rise, (energy(model, batch, s) - before).max().item())
            rises[name] = rise
    assert rises["evenodd"] < 1e-12
    assert rises["sync"] > 1e-3


def test_a_phase_stops_at_the_first_check_below_tol_sample_by_sample():
    """The relative change is checked every check_every steps; a sample keeps its states from
    the first check it passed, and the phase ends when all have passed: so a sample's end
    state is the same alone or in any batch (one step further would move it by ~tol)."""
    torch.manual_seed(0)
    model = build_mlp([20, 16, 12, 10], "mysig", "mse", False)  # samples settle at 40-85 steps
    x, _ = inputs(model, 6)
    batch, tol, every = model.batch(x), 1e-6, 4
    with torch.no_grad():
        path = [model.init_states(x)]
        for _ in range(200):
            path.append(model.step(batch, path[-1]))
        change = torch.stack([relative_change(path[t - 1], path[t]) for t in range(1, 201)])
        checks = torch.arange(every, 201, every)
        passed = change[checks - 1] < tol  # (checks, samples)
        first = checks[passed.int().argmax(0)]  # each sample's first passing check
        model.solver = Solver("sync", tol, every)
        s = free_phase(model, x, 200)
        assert first.min() < first.max() < 200  # samples converge at different checks
        assert model.solver.counts.steps == first.double().mean().item()  # their cost
        for i, t in enumerate(first.tolist()):  # (a smaller batch's kernels round otherwise)
            assert all((a[i] - b[i]).abs().max() < 1e-13 for a, b in zip(s, path[t]))
            alone = free_phase(model, x[i:i + 1], 200)  # (to the rounding of other kernels)
            assert all((a[0] - b[i]).abs().max() < 1e-13 for a, b in zip(alone, s))


def test_a_phase_with_autograd_on_runs_its_count_in_full():
    """A gradient goes through exactly the steps asked for: no tol stop, no host read."""
    model = unique_fixed_point_models()["MLP mse"]
    x, y = inputs(model)
    model.solver = Solver("evenodd", 1.5, 1)  # would stop at its first check
    with torch.enable_grad():
        free_phase(model, x.requires_grad_(), 7)
    assert model.solver.counts.steps == 7
    model.solver.counts.steps = 0
    bptt_gradients(model, x.detach(), y, Phases(9, 4))  # 5 steps without graph, then 4 with
    assert model.solver.counts.steps == 1 + 4


def test_bptt_through_even_odd_sweeps_is_autograd_of_phi():
    """BPTT's gradient through explicit sweeps equals that through the autograd reference's
    sweeps (which need no carried routing); max pooling, dropout."""
    torch.manual_seed(0)
    model = build_cnn((1, 12, 12), [3, 4], [3, 3], [1, 1], [1, 1], "mm", [10], "hard_sigmoid",
                      "cel", True)
    x, y = inputs(model)
    masks = model.dropout_masks(x, [0.9] * len(model.synapses))
    model.solver = Solver("evenodd")
    grads = []
    for explicit in (True, False):
        bptt_gradients(model, x, y, Phases(12, 6, explicit=explicit), masks)
        grads.append([p.grad.clone() for p in model.parameters()])
    for g, r in zip(*grads, strict=True):
        assert (g - r).norm() <= 1e-10 * r.norm() + 1e-14


@pytest.mark.parametrize("compact", [True, False])
def test_convergence_keeps_each_sample_from_its_first_check(compact):
    """Samples leave the batch at their first passing check (with compact; else they relax
    on, their states at the check kept), and end in their own slots."""
    watch = Convergence(0.1, 2, 3, compact)
    assert not watch.due(1) and watch.due(2)
    first = [torch.tensor([[1.0], [2.0], [3.0]])]
    going = watch.check(torch.tensor([0.5, 0.05, 0.5]), first)
    assert going.tolist() == [0, 2] if compact else going is None
    later = [torch.tensor([[4.0], [6.0]])] if compact else [torch.tensor([[4.0], [5.0], [6.0]])]
    going = watch.check(torch.tensor([0.01, 0.5] if compact else [0.01, 0.01, 0.5]), later)
    assert going.tolist() == [1] if compact else going is None
    end = [torch.tensor([[7.0]])] if compact else [torch.tensor([[0.0], [0.0], [7.0]])]
    assert watch.result(end)[0].flatten().tolist() == [4.0, 2.0, 7.0]
    assert watch.capped == 1
