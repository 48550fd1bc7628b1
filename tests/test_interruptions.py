"""What a long run meets: stops at awkward moments, divergence, a schedule past T_max, resumes
with and without --epochs, shared folders, files the published code wrote."""

import math
import os
import signal
import stat

import pytest
import torch

import config
import main
import results
import trainer
from data_utils import Split
from helpers import (TINY_MLP, assert_same_weights, cli, metrics, only_run_dir, weights)

SAVED = TINY_MLP + ["--seed", "3", "--save"]


def built(argv):
    args, typed = main.parse(argv)
    config.validate(args, typed)
    torch.manual_seed(args.seed)
    return args, config.build_model(args)


def lrs(t):
    return [g["lr"] for g in t.optimizer.param_groups]


def test_lr_stays_at_the_floor_after_epoch_100_also_across_a_resume():
    args, model = built(TINY_MLP + ["--lr-decay", "--T1", "1", "--T2", "1"])
    data = Split(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))
    straight = trainer.Trainer(model, data, data, args, None)
    floor = []
    for total in (100, 101, 120):
        assert straight.fit(total)
        floor.append(lrs(straight))
    assert floor[0] == pytest.approx([1e-5, 1e-5], rel=1e-9)
    assert floor[0] == floor[1] == floor[2]
    args, model = built(TINY_MLP + ["--lr-decay", "--T1", "1", "--T2", "1"])
    first = trainer.Trainer(model, data, data, args, None)
    assert first.fit(60)
    args, model = built(TINY_MLP + ["--lr-decay", "--T1", "1", "--T2", "1"])
    resumed = trainer.Trainer(model, data, data, args, None)
    resumed.load_state_dict(first.state_dict())
    assert resumed.fit(120)
    assert lrs(resumed) == floor[2]
    assert_same_weights(resumed.model.state_dict(), straight.model.state_dict())


def stop_at(monkeypatch, call: int, signum=signal.SIGINT):
    """Deliver a stop signal to the trainer during its `call`-th training batch."""
    calls = {"n": 0}
    original = trainer.Trainer.train_batch

    def interrupted(self, x, y):
        calls["n"] += 1
        if calls["n"] == call:
            self._on_stop_signal(signum, None)
        return original(self, x, y)

    monkeypatch.setattr(trainer.Trainer, "train_batch", interrupted)
    return lambda: monkeypatch.setattr(trainer.Trainer, "train_batch", original)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_a_stop_in_the_last_batch_ends_the_epoch_and_resumes(tmp_path, capsys, monkeypatch,
                                                            signum):
    assert cli(SAVED + ["--epochs", "2", "--results-dir", tmp_path / "a"])[0] == 0
    restore = stop_at(monkeypatch, 20, signum)  # 20 batches an epoch: the last of epoch 1
    rc, out, _ = cli(SAVED + ["--epochs", "2", "--results-dir", tmp_path / "b"], capsys)
    restore()
    b = only_run_dir(tmp_path / "b")
    assert rc == 130 and "stopped after 1 of 2 epochs" in out
    ckpt = torch.load(b / "checkpoint.tar", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["cursor"] is None and len(metrics(b)) == 1
    assert cli(["--todo", "train", "--load-path", b])[0] == 0  # no --epochs: finish the run
    a = only_run_dir(tmp_path / "a")
    assert_same_weights(weights(a / "final_model.pt"), weights(b / "final_model.pt"))
    assert metrics(a) == metrics(b)


def test_resume_finishes_the_run_or_trains_n_more(tmp_path, capsys):
    assert cli(SAVED + ["--epochs", "1", "--results-dir", tmp_path])[0] == 0
    run = only_run_dir(tmp_path)
    before = weights(run / "final_model.pt")
    rc, out, _ = cli(["--todo", "train", "--load-path", run], capsys)
    assert rc == 0 and "all 1 epochs are done; give --epochs N" in out
    assert_same_weights(before, weights(run / "final_model.pt")) and len(metrics(run)) == 1
    assert cli(["--todo", "train", "--load-path", run, "--epochs", "2"])[0] == 0
    assert len(metrics(run)) == 3
    assert torch.load(run / "checkpoint.tar", weights_only=True)["args"]["epochs"] == 3


def test_non_finite_weights_stop_the_run_and_never_reach_a_checkpoint(tmp_path, capsys,
                                                                    monkeypatch):
    assert cli(SAVED + ["--epochs", "1", "--results-dir", tmp_path])[0] == 0
    run = only_run_dir(tmp_path)
    before = {name: (run / name).read_bytes() for name in ("checkpoint.tar", "model.pt")}
    original = trainer.Trainer.train_batch
    calls = {"n": 0}

    def overflowing(self, x, y):  # finite gradients, but a weight that overflows in the step
        s = original(self, x, y)
        calls["n"] += 1
        if calls["n"] == 4:
            with torch.no_grad():
                next(self.model.parameters())[0, 0] = torch.finfo(torch.float32).max
                next(self.model.parameters()).grad[0, 0] = -1e38
        return s

    monkeypatch.setattr(trainer.Trainer, "train_batch", overflowing)
    capsys.readouterr()
    rc, _, err = cli(["--todo", "train", "--load-path", run, "--epochs", "1"], capsys)
    last = err.strip().splitlines()[-1]  # the lines before it are the progress bar's
    assert rc == 1 and "Traceback" not in err
    assert "epoch 2, batch 4" in last and "lower --lrs" in last
    for name, data in before.items():
        assert (run / name).read_bytes() == data, name


def test_a_checkpoint_is_never_written_with_a_non_finite_weight(tmp_path):
    args, model = built(TINY_MLP)
    data = Split(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))
    t = trainer.Trainer(model, data, data, args, tmp_path)
    with torch.no_grad():
        next(model.parameters())[0, 0] = math.inf
    with pytest.raises(trainer.Diverged):
        t.save("checkpoint.tar")
    assert not (tmp_path / "checkpoint.tar").exists()


def test_metrics_and_plots_are_rebuilt_from_the_checkpoint(tmp_path):
    """A kill between the checkpoint and metrics.csv (or, written in the old order, between
    metrics.csv and the checkpoint) leaves them disagreeing; the resume mends it."""
    assert cli(SAVED + ["--epochs", "3", "--results-dir", tmp_path / "a"])[0] == 0
    assert cli(SAVED + ["--epochs", "2", "--results-dir", tmp_path / "b"])[0] == 0
    b = only_run_dir(tmp_path / "b")
    rows = (b / "metrics.csv").read_text().splitlines()
    (b / "metrics.csv").write_text("\n".join(rows + [rows[-1].replace("2,", "3,", 1)]) + "\n")
    (b / "train-test_acc.png").unlink()
    assert cli(["--todo", "train", "--load-path", b, "--epochs", "1"])[0] == 0
    assert metrics(only_run_dir(tmp_path / "a")) == metrics(b)
    assert (b / "train-test_acc.png").is_file()


def test_a_run_killed_before_its_first_checkpoint_says_so(tmp_path, capsys):
    (tmp_path / "hyperparameters.txt").write_text("python main.py --save\n")
    rc, _, err = cli(["--load-path", tmp_path], capsys)
    assert rc == 2 and "stopped before its first checkpoint" in err
    assert "without --load-path" in err


def test_result_files_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        assert cli(SAVED + ["--epochs", "1", "--results-dir", tmp_path])[0] == 0
    finally:
        os.umask(previous)
    run = only_run_dir(tmp_path)
    for path in run.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name


def test_stale_temporary_files_are_cleaned_on_the_next_write(tmp_path):
    stale = tmp_path / ".metrics.csv.abc123"
    stale.write_text("left by a kill")
    results.atomic_write_text(tmp_path / "metrics.csv", "epoch\n")
    assert not stale.exists() and (tmp_path / "metrics.csv").read_text() == "epoch\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_evaluate_on_a_read_only_folder_prints_then_fails_in_one_line(tmp_path, capsys,
                                                                      monkeypatch):
    assert cli(SAVED + ["--epochs", "1", "--results-dir", tmp_path])[0] == 0
    run = only_run_dir(tmp_path)

    def read_only(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(main, "append_text", read_only)
    capsys.readouterr()
    rc, out, err = cli(["--todo", "evaluate", "--load-path", run], capsys)
    assert rc == 2 and "test accuracy" in out
    assert len(err.strip().splitlines()) == 1 and "could not append" in err


def test_a_run_that_blows_up_without_reaching_inf_says_so(capsys):
    """Weights orders of magnitude past their start and chance accuracy: one notice an epoch
    (the run itself ends normally: no inf or NaN stopped it)."""
    rc, out, err = cli(TINY_MLP + ["--lrs", "1e30", "1e30", "--epochs", "2"], capsys)
    notices = [ln for ln in (out + err).replace("\r", "\n").splitlines() if "blown up" in ln]
    assert rc == 0 and len(notices) == 2, out + err
    assert notices[0].startswith("notice: in epoch 1, test accuracy 10.0% is chance")
    assert "lower --lrs" in notices[0]
    rc, out, err = cli(TINY_MLP + ["--epochs", "1"], capsys)
    assert "blown up" not in out + err


def test_gducheck_on_a_read_only_folder_fails_before_the_work(tmp_path, capsys, monkeypatch):
    assert cli(SAVED + ["--epochs", "1", "--results-dir", tmp_path])[0] == 0
    run = only_run_dir(tmp_path)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    def no_work(*args, **kwargs):
        raise AssertionError("the check ran")

    capsys.readouterr()
    monkeypatch.setattr(main.tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(main, "gdu_check", no_work)
    rc, _, err = cli(["--todo", "gducheck", "--load-path", run, "--save", "--mbs", "5"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "cannot write the GDU check's report there (Permission denied)" in err
