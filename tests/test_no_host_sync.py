"""The phase loops read nothing back to the host: whole phases and estimators of every model
run under PyTorch's fake-tensor mode, where any data-dependent read (`.item()`, `.tolist()`,
a Python `if` on a tensor, a data-dependent shape) raises. On a GPU such a read would stall
the device once per step."""

import copy

import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

from continual import continual_ep
import holomorphic
from holomorphic import holomorphic_gradients
from model_utils import (EnergyNet, LCAConfig, Phases, bp_gradients, bptt_gradients, build_cnn,
                         build_lcanet, build_mlp, ep_gradients, free_phase, set_precision)
from solvers import Convergence, Solver


def models() -> dict[str, EnergyNet]:
    torch.manual_seed(0)
    lca = LCAConfig(n_feats=3, kernel=3, stride=2, padding=1, tau=5.0, iters=2, eta=0.01)
    return {
        "MLP": build_mlp([784, 12, 10], "mysig", "mse", False),
        "VFMLP": build_mlp([784, 12, 11, 10], "tanh", "cel", True, vf=True),
        "CNN": build_cnn((1, 28, 28), [3, 4], [5, 3], [1, 1], [0, 1], "ma", [10],
                         "hard_sigmoid", "cel", True),
        "VFCNN": build_cnn((1, 28, 28), [3, 4], [5, 3], [1, 1], [0, 0], "mm", [10], "mysig",
                           "mse", False, vf=True),
        "LCACNN": build_lcanet((1, 28, 28), lca, [4], [3], [1], [1], "m", [10], "mysig", "cel",
                               True),
    }


def faked(model: EnergyNet, mode: FakeTensorMode) -> EnergyNet:
    """A copy of the model whose weights and buffers are fake tensors of `mode`."""
    model = copy.deepcopy(model)
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                module._parameters[name] = torch.nn.Parameter(mode.from_tensor(p.detach()),
                                                              requires_grad=p.requires_grad)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = mode.from_tensor(b)
    return model


@pytest.mark.parametrize("solver", [None, "evenodd", "anderson"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(models()))
def test_phases_and_estimators_never_read_tensors_on_the_host(name, precision, solver):
    mode = FakeTensorMode()
    model = faked(models()[name], mode)
    twin = faked(holomorphic.complex_twin(models()[name]), mode) if name == "MLP" else None
    set_precision(model, precision)
    model.solver = model.nudged_solver = solver and Solver(solver)
    with mode:
        x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
        masks = model.dropout_masks(x, [0.8] * len(model.synapses), None)
        with torch.no_grad():
            free_phase(model, x, 6)
        for thirdphase in (False, True):
            ep_gradients(model, x, y, Phases(6, 3, 0.0, 0.5, thirdphase), masks=masks)
        ep_gradients(model, x, y, Phases(6, 3, 0.0, 0.5), sign=-1.0)
        if not model.softmax:  # coupled learning: the output clamped (both signs at once)
            ep_gradients(model, x, y, Phases(6, 3, 0.0, 0.5, True, clamped=True), masks=masks)
        if name == "MLP" and precision == "fp32":  # holomorphic EP's complex phases (its
            holomorphic._twins[model] = twin  # complex copy made once, outside fake mode)
            holomorphic_gradients(model, x, y, Phases(6, 3, 0.0, 0.5), 3, masks)
        bptt_gradients(model, x, y, Phases(6, 3), masks)
        if not model.has_feedback:
            bp_gradients(model, x, y, masks)
        model.after_update(x, free_phase(model, x, 6))
        assert all(p.grad is not None for p in model.parameters())
        if name in ("MLP", "CNN") and precision == "fp32":  # Continual EP's optimizer steps too
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                        weight_decay=1e-3, fused=True)
            for thirdphase, debug in ((False, False), (True, True)):
                continual_ep(model, x, y, Phases(6, 3, 0.0, 0.5, thirdphase), optimizer,
                             masks=masks, debug=debug)


@pytest.mark.parametrize("solver", ["sync", "evenodd", "anderson"])
def test_with_tol_the_checks_are_the_only_host_reads(solver, monkeypatch):
    """--tol reads one number a check (every check_every steps), and nothing between."""
    checks = []
    monkeypatch.setattr(Convergence, "check", lambda self, change, s: checks.append(len(s[0])))
    mode = FakeTensorMode()
    model = faked(models()["CNN"], mode)
    model.solver = model.nudged_solver = Solver(solver, 1e-4, 3)
    with mode:
        x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
        ep_gradients(model, x, y, Phases(10, 7, 0.0, 0.5, True))
    assert checks == [4, 4, 4, 8, 8]  # 3 checks of the free phase, 2 of the stacked nudged


def test_a_host_read_inside_a_step_is_caught(monkeypatch):
    """The check can fail: a step that asks for a number raises under fake tensors."""
    mode = FakeTensorMode()
    model = faked(models()["MLP"], mode)
    step = EnergyNet.step

    def step_with_a_read(self, batch, s):
        if s[-1].abs().max() > 1e6:  # a per-step divergence check done the wrong way
            raise AssertionError("unreachable")
        return step(self, batch, s)

    monkeypatch.setattr(EnergyNet, "step", step_with_a_read)
    with mode, pytest.raises(DataDependentOutputException):
        free_phase(model, torch.rand(2, 1, 28, 28), 3)
