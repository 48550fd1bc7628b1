"""Training runs: resume = uninterrupted, Ctrl-C resume, determinism, divergence, quick-start."""

import math
import signal

import pytest
import torch

import config
import main
import trainer
from helpers import (ROOT, TINY_MLP, assert_same_weights, cli, metrics, only_run_dir,
                     script_lines, weights)

AUGMENTED = TINY_MLP + ["--random-sign", "--data-aug", "--seed", "3", "--save"]


CONTINUAL = ["--alg", "CEP", "--thirdphase", "--wds", "0.1", "0.1", "--lr-decay"]


@pytest.mark.parametrize("extra", [[], CONTINUAL, ["--alg", "CpL", "--betas", "0", "0.5"]],
                         ids=["EP", "CEP", "CpL"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, capsys, extra):
    argv = AUGMENTED + extra
    assert cli(argv + ["--epochs", "3", "--results-dir", tmp_path / "a"])[0] == 0
    assert cli(argv + ["--epochs", "1", "--results-dir", tmp_path / "b"])[0] == 0
    a, b = only_run_dir(tmp_path / "a"), only_run_dir(tmp_path / "b")
    assert cli(["--todo", "train", "--load-path", b, "--epochs", "2"])[0] == 0
    assert_same_weights(weights(a / "final_model.pt"), weights(b / "final_model.pt"))
    assert_same_weights(weights(a / "model.pt"), weights(b / "model.pt"))
    assert metrics(a) == metrics(b)
    assert len(metrics(b)) == 3
    assert "resumed after epoch 1" in (b / "hyperparameters.txt").read_text()


@pytest.mark.parametrize("extra", [[], ["--model", "VFMLP", "--check-thm"],
                                   ["--alg", "CEP", "--cep-debug", "--check-thm"]],
                         ids=["MLP", "VF", "CEP"])
def test_ctrl_c_saves_a_checkpoint_that_resumes_mid_epoch(tmp_path, capsys, monkeypatch, extra):
    argv = AUGMENTED + extra
    assert cli(argv + ["--epochs", "2", "--results-dir", tmp_path / "a"])[0] == 0
    calls = {"n": 0}
    original = trainer.Trainer.train_batch

    def interrupted(self, x, y):
        calls["n"] += 1
        if calls["n"] == 27:  # 20 batches an epoch: stop inside the second epoch
            self._on_stop_signal(signal.SIGINT, None)
        return original(self, x, y)

    monkeypatch.setattr(trainer.Trainer, "train_batch", interrupted)
    rc, out, _ = cli(argv + ["--epochs", "2", "--results-dir", tmp_path / "b"], capsys)
    monkeypatch.setattr(trainer.Trainer, "train_batch", original)
    b = only_run_dir(tmp_path / "b")
    assert rc == 130
    assert f"--load-path {b}\n" in out
    ckpt = torch.load(b / "checkpoint.tar", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["cursor"]["seen"] == 7 * 200
    assert cli(["--todo", "train", "--load-path", b])[0] == 0
    a = only_run_dir(tmp_path / "a")
    assert_same_weights(weights(a / "final_model.pt"), weights(b / "final_model.pt"))
    assert metrics(a) == metrics(b)


def test_same_seed_same_metrics(tmp_path):
    for name in ("a", "b"):
        assert cli(AUGMENTED + ["--epochs", "2", "--results-dir", tmp_path / name])[0] == 0
    a, b = only_run_dir(tmp_path / "a"), only_run_dir(tmp_path / "b")
    assert metrics(a) == metrics(b)
    assert_same_weights(weights(a / "final_model.pt"), weights(b / "final_model.pt"))
    other_seed = AUGMENTED + ["--epochs", "1", "--seed", "4", "--results-dir", tmp_path / "c"]
    assert cli(other_seed)[0] == 0
    assert metrics(only_run_dir(tmp_path / "c"))[0] != metrics(a)[0]


@pytest.mark.parametrize("alg", ["BPTT", "BP"])
def test_bptt_and_bp_train_and_evaluate(tmp_path, capsys, alg):
    argv = TINY_MLP + ["--alg", alg, "--epochs", "2", "--save", "--results-dir", tmp_path]
    assert cli(argv)[0] == 0
    run = only_run_dir(tmp_path)
    assert run.parent.parent.parent.name == alg
    assert float(metrics(run)[-1]["test_acc"]) > 50
    rc, out, _ = cli(["--todo", "evaluate", "--load-path", run], capsys)
    assert rc == 0 and "test accuracy" in out
    best = max(float(r["test_acc"]) for r in metrics(run))
    assert f"test accuracy {best:.2f}%" in (run / "hyperparameters.txt").read_text()


def test_results_folder_layout(tmp_path):
    argv = ["--model", "CNN", "--channels", "4", "--kernels", "5", "--pools", "m", "--fc", "10",
            "--T1", "4", "--T2", "2", "--mbs", "500", "--lrs", "0.02", "0.02", "--wds", "1e-4",
            "3e-4", "--act",
            "my_hard_sig", "--loss", "cel", "--thirdphase", "--lr-decay", "--epochs", "1",
            "--save", "--results-dir", tmp_path]
    assert cli(argv)[0] == 0
    run = only_run_dir(tmp_path)
    assert run.relative_to(tmp_path).parts[:2] == ("EP", "cel")
    for name in ("hyperparameters.txt", "train-test_acc.png", "neural_activity.png",
                 "metrics.csv", "model.pt", "checkpoint.tar", "final_model.pt",
                 "final_checkpoint.tar"):
        assert (run / name).is_file(), name
    assert list(metrics(run, drop=())[0]) == ["epoch", "train_acc", "test_acc", "train_loss",
                                             "seconds"]
    ckpt = torch.load(run / "checkpoint.tar", weights_only=True)
    assert ckpt["args"]["channels"] == [4] and ckpt["scheduler"]["last_epoch"] == 1
    # --lr-decay: cosine annealing, T_max 100, floor 1e-5, applied to every layer's group
    after_one = 1e-5 + (0.02 - 1e-5) * (1 + math.cos(math.pi / 100)) / 2
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([after_one, after_one], rel=1e-12)
    assert [g["weight_decay"] for g in groups] == [1e-4, 3e-4]
    assert "--thirdphase" in (run / "hyperparameters.txt").read_text().splitlines()[0]


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    assert cli(TINY_MLP + ["--epochs", "1", "--save", "--results-dir", tmp_path])[0] == 0
    run = only_run_dir(tmp_path)
    before = torch.load(run / "checkpoint.tar", weights_only=True)
    original = trainer.Trainer.train_batch
    calls = {"n": 0}

    def poisoned(self, x, y):
        s = original(self, x, y)
        calls["n"] += 1
        if calls["n"] == 3:
            next(self.model.parameters()).grad[0, 0] = math.nan
        return s

    monkeypatch.setattr(trainer.Trainer, "train_batch", poisoned)
    capsys.readouterr()
    rc, _, err = cli(["--todo", "train", "--load-path", run, "--epochs", "1"], capsys)
    assert rc == 1
    assert "NaN or inf" in err.splitlines()[-1] and "epoch 2, batch 3" in err.splitlines()[-1]
    after = torch.load(run / "checkpoint.tar", weights_only=True)
    assert after["epoch"] == 1
    assert_same_weights(before["model"], after["model"])


def test_quickstart_reaches_90_percent(tmp_path):
    (argv,) = script_lines(ROOT / "check" / "quickstart.sh")
    assert cli(argv + ["--results-dir", tmp_path])[0] == 0
    assert max(float(row["test_acc"]) for row in metrics(only_run_dir(tmp_path))) >= 90


def test_bptt_shorter_than_the_network_is_deep(tmp_path):
    """T2 = 1 back-propagates into the top layer only: the others get zero gradients."""
    argv = TINY_MLP + ["--archi", "784", "32", "16", "10", "--lrs", "0.05", "0.05", "0.05",
                       "--alg", "BPTT", "--T2", "1", "--save", "--results-dir", str(tmp_path)]
    assert cli(argv)[0] == 0
    after = weights(only_run_dir(tmp_path) / "final_model.pt")
    args, typed = main.parse(argv)
    config.validate(args, typed)
    torch.manual_seed(args.seed)
    before = config.build_model(args).state_dict()
    assert torch.equal(before["synapses.0.weight"], after["synapses.0.weight"])
    assert not torch.equal(before["synapses.2.weight"], after["synapses.2.weight"])
