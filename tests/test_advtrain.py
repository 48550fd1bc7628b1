"""--todo advtrain: PGD examples of the current model replace part of each batch (normalised
once, within eps in pixel space, no gradient left in the weights), robust test accuracy per
epoch, and a killed or stopped run resumes bit for bit."""

import pytest
import torch

import attack
from data_utils import Split, normalise, pixels
from helpers import TINY_MLP, assert_same_weights, cli, metrics, only_run_dir, weights
from model_utils import build_cnn, free_phase

ADV = ["--todo", "advtrain", "--eps", "0.1", "--train-attack-step", "5", "--attack-images", "50"]


@pytest.mark.parametrize("norm,eps", [("inf", 0.03), ("2", 0.5)])
def test_adversarial_batches_lie_within_eps_and_are_normalised_once(norm, eps):
    torch.manual_seed(0)
    model = build_cnn((3, 32, 32), [4], [5], [1], [0], "m", [10], "mysig", "cel", True)
    images = torch.rand(8, 3, 32, 32)
    x, y = normalise(images, "CIFAR10"), torch.arange(8)
    robust = Split(x[:4], y[:4])
    adversary = attack.AdversarialBatches(model, "CIFAR10", norm, eps, 0.5, 5, 5, 8, robust)
    out = adversary(x, y)
    assert torch.equal(out[4:], x[4:])  # the clean half untouched
    adv = pixels(out[:4], "CIFAR10")
    assert adv.min() >= 0 and adv.max() <= 1
    d = (adv - images[:4]).flatten(1)
    size = d.abs().max(1)[0] if norm == "inf" else d.norm(dim=1)
    assert (size <= eps * (1 + 1e-4)).all() and (size > 0.5 * eps).all()
    with torch.no_grad():  # the adversarial images raise the loss the model is trained on
        clean = model.loss(free_phase(model, x[:4], 5), model.one_hot(y[:4], x))
        attacked = model.loss(free_phase(model, out[:4], 5), model.one_hot(y[:4], x))
    assert attacked.sum() > clean.sum()
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert 0 <= adversary.robust_accuracy() <= 100
    assert "PGD-20 Linf" in str(adversary) or norm == "2"


def advtrain_metrics(run_dir):
    rows = metrics(run_dir)
    assert all(row["robust_acc"] != "" for row in rows)
    return rows


def test_advtrain_resumes_bit_for_bit(tmp_path):
    base = ADV + TINY_MLP + ["--save"]
    assert cli(base + ["--epochs", "2", "--results-dir", tmp_path / "a"])[0] == 0
    assert cli(base + ["--epochs", "1", "--results-dir", tmp_path / "b"])[0] == 0
    a, b = only_run_dir(tmp_path / "a"), only_run_dir(tmp_path / "b")
    assert cli(["--todo", "advtrain", "--load-path", b, "--epochs", "1"])[0] == 0
    assert_same_weights(weights(a / "final_model.pt"), weights(b / "final_model.pt"))
    assert advtrain_metrics(a) == advtrain_metrics(b) and len(metrics(a)) == 2
    clean = TINY_MLP + ["--save", "--epochs", "2", "--results-dir", tmp_path / "c"]
    assert cli(clean)[0] == 0  # the same run without adversarial batches learns otherwise
    assert metrics(only_run_dir(tmp_path / "c")) != [
        {k: v for k, v in row.items() if k != "robust_acc"} for row in metrics(a)]
    assert (a / "train-test_acc.png").exists()
    # attacking it later sweeps the attack's own eps, not the training radius
    assert cli(["--todo", "attack", "--load-path", a, "--attack", "fgsm", "--attack-images",
                "20"])[0] == 0
    assert [r.eps for r in attack.read_rows(a / attack.RESULTS_FILE)] == pytest.approx(
        sorted(attack.DEFAULT_EPS["inf"]), rel=1e-5)


def test_advtrain_with_bptt_cross_entropy_and_half_batches(tmp_path, capsys):
    argv = ADV + TINY_MLP + ["--alg", "BPTT", "--loss", "cel", "--softmax", "--archi", "784",
                             "32", "16", "10", "--lrs", "0.05", "0.05", "0.05",
                             "--adv-fraction", "0.5", "--epochs", "1", "--save",
                             "--results-dir", tmp_path]
    rc, out, err = cli(argv, capsys)
    assert rc == 0, err
    assert "PGD-20 Linf eps 0.1 on 50% of each batch" in out
    assert "robust test accuracy on 50 images" in out
    advtrain_metrics(only_run_dir(tmp_path))


def test_an_unroll_shorter_than_the_network_is_refused(capsys):
    rc, _, err = cli(["--todo", "advtrain", "--train-attack-step", "1"] + TINY_MLP, capsys)
    assert rc == 2 and "--train-attack-step 1: the input reaches the output only after 2" in err
