"""Holomorphic EP (--alg hEP): at |beta| = 0.5, where one-sided and symmetric EP are visibly
biased, its distance to the implicit gradient (BPTT through a converged free phase) falls
geometrically with the number of points on the circle; 2 points are symmetric EP; a run
trains, resumes bit for bit, and refuses what is not holomorphic in one line."""

import pytest
import torch

from helpers import TINY_MLP, assert_same_weights, cli, metrics, only_run_dir, weights
from holomorphic import complex_twin, holomorphic_gradients
from model_utils import Phases, bptt_gradients, build_cnn, build_mlp, ep_gradients
from test_interruptions import stop_at

NETS = {
    "MLP": lambda: build_mlp([784, 20, 10], "sigmoid", "mse", False),
    "CNN": lambda: build_cnn((1, 28, 28), [3, 4], [5, 3], [1, 1], [0, 1], "ai", [10], "sigmoid",
                             "mse", False),
}


@pytest.mark.parametrize("net", list(NETS))
def test_exact_at_finite_beta_as_the_points_grow(net, float64):
    model = NETS[net]()
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)

    def distance() -> float:  # the largest relative distance over the weights
        return max(((p.grad - g).norm() / g.norm()).item()
                   for p, g in zip(model.parameters(), implicit, strict=True))

    bptt_gradients(model, x, y, Phases(300, 250))  # converged: the implicit gradient
    implicit = [p.grad.clone() for p in model.parameters()]
    ep_gradients(model, x, y, Phases(300, 300, 0.0, 0.5))
    one_sided = distance()
    ep_gradients(model, x, y, Phases(300, 300, 0.0, 0.5, thirdphase=True))
    symmetric = [p.grad.clone() for p in model.parameters()]
    centered = distance()
    found = []
    for points in (2, 4, 8, 16):
        holomorphic_gradients(model, x, y, Phases(300, 300, 0.0, 0.5), points)
        found.append(distance())
        if points == 2:  # the circle's two points are +-|beta|: symmetric EP
            for p, g in zip(model.parameters(), symmetric):
                torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-13)
    assert one_sided > 0.05 and centered > 1e-3  # visibly biased at this |beta|
    assert all(b < a / 5 for a, b in zip(found, found[1:])), found  # geometric
    assert found[-1] < 1e-6


HEP = TINY_MLP + ["--alg", "hEP", "--betas", "0", "0.2", "--holo-points", "3", "--T1", "12",
                  "--T2", "6", "--seed", "3", "--save", "--epochs", "2"]


@pytest.mark.parametrize("extra", [[], ["--solver", "evenodd", "--tol", "1e-4"]],
                         ids=["sync", "evenodd"])
def test_a_resumed_run_equals_an_uninterrupted_one(extra, tmp_path, capsys, monkeypatch):
    argv = HEP + extra
    assert cli(argv + ["--results-dir", tmp_path / "a"], capsys)[0] == 0
    restore = stop_at(monkeypatch, 7)
    assert cli(argv + ["--results-dir", tmp_path / "b"], capsys)[0] == 130
    restore()
    b = only_run_dir(tmp_path / "b")
    assert cli(["--load-path", b], capsys)[0] == 0
    a = only_run_dir(tmp_path / "a")
    assert_same_weights(weights(a / "final_model.pt"), weights(b / "final_model.pt"))
    assert metrics(a) == metrics(b)
    assert float(metrics(a)[-1]["test_acc"]) > 50  # it learns


def test_complex_copy_follows_the_model_to_another_device_and_dtype():
    """A model moved after its first hEP batch (a resume onto a GPU, --precision) gets a
    complex copy on its new device and dtype, not the one kept from before ("meta" stands in
    for a GPU)."""
    model = NETS["MLP"]()
    twin = complex_twin(model)
    assert complex_twin(model) is twin and next(twin.parameters()).dtype == torch.complex64
    model.to(torch.float64)
    assert next(complex_twin(model).parameters()).dtype == torch.complex128
    model.to("meta")
    assert next(complex_twin(model).parameters()).device.type == "meta"
