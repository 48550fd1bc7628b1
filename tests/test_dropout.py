"""--dropouts: inverted masks on the layers each synapse reads, drawn once per batch and fixed
through every phase; the masked step is still d/ds of the (masked) energy, EP still tends to
BPTT, keep 1 is exactly no dropout, and the seed's dropout lines train."""

import shlex
import subprocess
import sys

import pytest
import torch

import config
import main
from data_utils import Split
from helpers import (ROOT, TINY_MLP, assert_same_weights, cli, metrics, only_run_dir,
                     train_one_batch, weights)
from model_utils import (EnergyNet, Phases, autograd_step, bptt_gradients, build_cnn, build_mlp,
                         energy_gradients, ep_gradients, relax)
from trainer import Trainer

HEADS = [("mse", False), ("cel", False), ("cel", True)]


def models(loss, softmax):
    torch.manual_seed(0)
    return [build_mlp([20, 15, 12, 10], "tanh", loss, softmax),
            build_mlp([20, 15, 12, 10], "mysig", loss, softmax, vf=True),
            build_cnn((2, 9, 9), [3, 4], [3, 3], [1, 1], [1, 0], "mm", [10], "tanh", loss,
                      softmax),
            build_cnn((2, 9, 9), [3, 4], [3, 3], [1, 1], [1, 0], "ma", [10], "mysig", loss,
                      softmax, vf=True)]


def some_masks(model, x, seed=1):
    """Masks of keep 0.6 on every layer a synapse reads, except the second (kept whole)."""
    gen = torch.Generator().manual_seed(seed)
    keep = [0.6] * len(model.synapses)
    keep[1] = 1.0
    masks = model.dropout_masks(x, keep, gen)
    assert masks[1] is None and all(m is not None for k, m in enumerate(masks) if k != 1)
    return masks


def test_masks_are_inverted_bernoulli():
    model = build_mlp([784, 300, 10], "mysig", "mse", False)
    x = torch.rand(200, 1, 28, 28)
    masks = model.dropout_masks(x, [0.8, 0.5], torch.Generator().manual_seed(0))
    assert masks[0].shape == x.shape and masks[1].shape == (200, 300)
    for m, p in zip(masks, [0.8, 0.5]):
        assert set(m.unique().tolist()) == {0.0, 1 / p}
        assert abs((m != 0).float().mean().item() - p) < 0.01
    assert model.dropout_masks(x, [1.0, 1.0]) is None


@pytest.mark.parametrize("loss,softmax", HEADS)
def test_masked_step_and_parameter_gradients_are_autograd_of_phi(loss, softmax, float64):
    for model in models(loss, softmax):
        x = torch.randn(4, *model.input_shape)
        y = torch.randint(0, 10, (4,))
        masks = some_masks(model, x)
        batch = model.batch(x, y, masks=masks)
        s = [torch.randn(4, *shape) for shape in model.state_shapes]
        for beta in (0.0, 0.7, torch.tensor([0.3, -0.2, 0.5, 1.0])):
            explicit = model.step(batch.nudged(beta), s)
            reference = autograd_step(model, batch.nudged(beta), s)
            for e, r in zip(explicit, reference, strict=True):
                assert (e - r).norm() <= 1e-10 * r.norm()
        unmasked = model.step(model.batch(x, y, 0.7), s)
        assert any(not torch.allclose(a, b) for a, b in zip(unmasked, explicit))
        s2 = [torch.randn(4, *shape) for shape in model.state_shapes]
        pre = s if model.has_feedback else None
        for e, r in zip(energy_gradients(model, batch, s, 0.0, s2, 0.5, True, pre),
                        energy_gradients(model, batch, s, 0.0, s2, 0.5, False, pre), strict=True):
            torch.testing.assert_close(e, r, rtol=1e-10, atol=1e-12)


def flat_grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("loss,softmax", HEADS)
def test_ep_tends_to_bptt_with_the_masks_fixed(loss, softmax, float64):
    model = build_mlp([12, 10, 8, 5], "tanh", loss, softmax)
    x, y = torch.randn(16, 12), torch.randint(0, 5, (16,))
    masks = some_masks(model, x)
    batch = model.batch(x, masks=masks)
    s = relax(model, batch, model.init_states(x), 300)
    assert max((a - b).abs().max() for a, b in zip(s, model.step(batch, s))) < 1e-8
    bptt_gradients(model, x, y, Phases(T1=300, T2=100), masks)
    g_bptt = flat_grads(model)
    bptt_gradients(model, x, y, Phases(T1=300, T2=100))
    assert (flat_grads(model) - g_bptt).norm() > 0.05 * g_bptt.norm()  # the masks matter

    def error(beta):
        ep_gradients(model, x, y, Phases(300, 100, 0.0, beta, True), masks=masks)
        return ((flat_grads(model) - g_bptt).norm() / g_bptt.norm()).item()

    errors = [error(b) for b in (0.2, 0.05, 0.01)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.01


@pytest.mark.parametrize("alg", ["EP", "BPTT", "BP"])
def test_masks_are_the_same_in_every_phase_of_a_batch(alg, monkeypatch):
    argv = TINY_MLP + ["--archi", "784", "32", "16", "10", "--lrs", "0.1", "0.1", "0.1",
                       "--dropouts", "0.8", "0.5", "0.7", "--alg", alg]
    argv += ["--thirdphase"] if alg == "EP" else []
    args, typed = main.parse(argv)
    config.validate(args, typed)
    model = config.build_model(args)
    seen = []
    field, feedforward = EnergyNet.field, EnergyNet.feedforward

    def recording_field(self, batch, s):
        seen.append(batch.masks)
        return field(self, batch, s)

    def recording_feedforward(self, x, masks=None):
        seen.append(masks)
        return feedforward(self, x, masks)

    monkeypatch.setattr(EnergyNet, "field", recording_field)
    monkeypatch.setattr(EnergyNet, "feedforward", recording_feedforward)
    data = Split(torch.rand(8, 1, 28, 28), torch.arange(8))
    trainer = Trainer(model, data, data, args, None)
    trainer.train_batch(data.x, data.y)
    first = seen[0]
    assert first is not None
    assert len(seen) == {"EP": args.T1 + args.T2, "BPTT": args.T1, "BP": 1}[alg]
    for masks in seen:
        for m, ref in zip(masks, first, strict=True):
            n = len(ref)  # the symmetric phases stack both nudges: the masks of both halves
            assert torch.equal(m[:n], ref) and (len(m) == n or torch.equal(m[n:], ref))
    seen.clear()
    trainer.train_batch(data.x, data.y)
    assert not torch.equal(seen[0][0], first[0])  # a new batch draws new masks


def test_keep_one_everywhere_is_exactly_the_run_without_dropout(tmp_path):
    base = TINY_MLP + ["--epochs", "2", "--save", "--thirdphase"]
    assert cli(base + ["--results-dir", tmp_path / "a"])[0] == 0
    assert cli(base + ["--dropouts", "1", "1", "--results-dir", tmp_path / "b"])[0] == 0
    a, b = only_run_dir(tmp_path / "a"), only_run_dir(tmp_path / "b")
    assert_same_weights(weights(a / "final_model.pt"), weights(b / "final_model.pt"))
    assert metrics(a) == metrics(b)
    assert cli(base + ["--dropouts", "0.8", "1", "--results-dir", tmp_path / "c"])[0] == 0
    assert metrics(only_run_dir(tmp_path / "c")) != metrics(a)


def test_a_dropout_run_resumes_bit_for_bit(tmp_path):
    base = TINY_MLP + ["--save", "--dropouts", "0.8", "0.6"]
    assert cli(base + ["--epochs", "2", "--results-dir", tmp_path / "a"])[0] == 0
    assert cli(base + ["--epochs", "1", "--results-dir", tmp_path / "b"])[0] == 0
    a, b = only_run_dir(tmp_path / "a"), only_run_dir(tmp_path / "b")
    assert cli(["--load-path", b, "--epochs", "1"])[0] == 0
    assert_same_weights(weights(a / "final_model.pt"), weights(b / "final_model.pt"))
    assert metrics(a) == metrics(b)


DROPOUT_LINES = [shlex.split(line)[2:] for line in (ROOT / "tests" / "seed_lines.txt")
                 .read_text().splitlines() if line.startswith("python main_dropout.py")]


@pytest.mark.parametrize("argv", DROPOUT_LINES, ids=lambda a: a[a.index("--alg") + 1])
def test_seed_dropout_lines_train_a_batch(argv):
    """The seed's two main_dropout.py lines, on a CIFAR-shaped batch of 2 (5 free and 4 nudged
    steps: enough to reach the 4 layers); the 0.9 keep of the fourth layer's input is a mask."""
    args, model, _, data, _ = train_one_batch(argv + ["--T1", "5", "--T2", "4"], (3, 32, 32))
    masks = model.dropout_masks(data.x, args.dropouts, torch.Generator().manual_seed(0))
    assert [m is None for m in masks] == [True, True, True, False, True]
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_main_dropout_runs_the_same_cli(tmp_path):
    line = [sys.executable, "main_dropout.py"] + TINY_MLP + ["--dropouts", "0.9", "1",
                                                             "--results-dir", str(tmp_path)]
    done = subprocess.run(line, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "epoch 1: train" in done.stdout
