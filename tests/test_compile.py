"""--compile: the phase loops step through torch.compile, with the eager loop's states and
gradients (to float rounding), on the CPU here and as CUDA graphs on a GPU."""

import functools

import pytest
import torch
from torch._inductor import config as inductor_config
from torch._subclasses.fake_tensor import FakeTensorMode

from helpers import TINY_MLP, cli, only_run_dir, weights
from model_utils import (Phases, bptt_gradients, build_cnn, build_mlp, compiled_step,
                         ep_gradients, flat_states, free_phase, graphed_step, set_precision,
                         step_function)
from solvers import Solver


def models() -> dict:
    torch.manual_seed(0)
    return {"MLP": build_mlp([784, 20, 10], "mysig", "mse", False),
            "VFCNN": build_cnn((1, 28, 28), [4, 6], [5, 3], [1, 1], [0, 1], "mm", [10],
                               "hard_sigmoid", "cel", True, vf=True)}


def close(a: list[torch.Tensor], b: list[torch.Tensor], rel: float = 1e-4) -> None:
    """Equal to float32 rounding (an EP gradient divides a difference by beta: relative to
    the whole tensor, not entry by entry)."""
    for u, v in zip(a, b, strict=True):
        assert (u - v).norm() <= rel * u.norm() + 1e-7


@pytest.mark.parametrize("name, precision, solver", [
    ("MLP", "fp32", None), ("MLP", "bf16", None), ("VFCNN", "fp32", None),
    ("VFCNN", "bf16", None), ("VFCNN", "fp32", "evenodd"), ("VFCNN", "bf16", "evenodd")])
def test_compiled_phases_and_gradients_equal_eager(name, precision, solver):
    """fp32 to float32 rounding; bf16 (its linearised nudged phases too) to bfloat16's, as
    the compiler may keep a fused intermediate in float32 where eager rounds it. The even-odd
    sweep compiles with its carried routing."""
    model = models()[name]
    set_precision(model, precision)
    model.solver = model.nudged_solver = solver and Solver(solver)
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    estimators = {"free": lambda: flat_states(free_phase(model, x, 8)),
                  "EP symmetric": lambda: ep_gradients(model, x, y, Phases(8, 4, 0, 0.5, True)),
                  "EP -beta": lambda: ep_gradients(model, x, y, Phases(8, 4, 0, 0.5), -1.0),
                  "BPTT": lambda: bptt_gradients(model, x, y, Phases(8, 4))}
    for what, run in estimators.items():
        results = []
        for model.compiled in (False, True):
            out = run()
            results.append(out if what == "free" else [p.grad.clone() for p in model.parameters()])
        close(*results, rel=1e-4 if precision == "fp32" else 3e-2)


def test_the_cuda_graph_step_loop():
    """The CUDA-graph loop (mark a step, copy the outputs out) gives the eager states; on a CPU
    torch.compile skips the graphs themselves, so this checks the loop around them."""
    model = models()["MLP"]
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        batch, s = model.batch(x), model.init_states(x)
        eager = graphed = s
        for _ in range(6):
            eager, graphed = model.step(batch, eager), graphed_step(model, batch, graphed)
    close(flat_states(eager), flat_states(graphed))


def test_cuda_graphs_only_where_autograd_is_off():
    """A CUDA graph's replay frees what the previous replay returned, including what autograd
    saved for backward: BPTT's steps and an attack's unroll step compiled, not graphed. The
    model's weights are fake CUDA tensors (no GPU needed to see the choice)."""
    model = build_mlp([784, 20, 10], "mysig", "mse", False)
    with FakeTensorMode():
        for syn in model.synapses:
            syn.weight = torch.nn.Parameter(torch.empty(syn.weight.shape, device="cuda"))
    model.compiled = True
    assert next(model.parameters()).is_cuda
    with torch.no_grad():
        graphed = step_function(model)
    with torch.enable_grad():
        differentiable = step_function(model)
    assert isinstance(graphed, functools.partial) and graphed.func is graphed_step
    assert differentiable.func is compiled_step(None, "step")
    cpu = models()["MLP"]
    cpu.compiled = True
    with torch.no_grad():
        assert step_function(cpu).func is compiled_step(None, "step")  # CUDA graphs: CUDA only


def test_compiled_training_run_equals_eager(tmp_path, capsys):
    """Whole runs (training batches, evaluation, checkpoint) with and without --compile."""
    runs = {}
    for flag in ("--no-compile", "--compile"):
        root = tmp_path / flag
        argv = TINY_MLP + ["--task", "MNIST5K", "--thirdphase", "--save", "--results-dir", root,
                           flag]
        assert cli(argv, capsys)[0] == 0
        runs[flag] = weights(only_run_dir(root) / "model.pt")
    close(list(runs["--no-compile"].values()), list(runs["--compile"].values()))


def test_compile_needs_the_explicit_step_and_a_compiler(monkeypatch, capsys):
    rc, _, err = cli(TINY_MLP + ["--compile", "--dynamics", "autograd"], capsys)
    assert rc == 2 and "--compile" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/g++",))
    rc, _, err = cli(TINY_MLP + ["--compile"], capsys)
    assert rc == 2 and "no C++ compiler" in err and len(err.strip().splitlines()) == 1

