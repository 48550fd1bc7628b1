"""torchrun: several processes (gloo on the CPU here) train one model as one process does,
only rank 0 writes, and a checkpoint resumes with any number of processes."""

import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import trainer
from helpers import ROOT, cli, metrics, only_run_dir, weights

MLP = ["--archi", "784", "32", "10", "--T1", "5", "--T2", "2", "--optim", "sgd", "--lrs", "0.05",
       "0.05", "--mmt", "0.9", "--task", "MNIST5K", "--dropouts", "0.9", "1", "--random-sign",
       "--mbs", "799"]  # 6 batches, uneven shares (400 + 399), masks and signs from the generator
LCANET = ["--model", "LCACNN", "--channels", "4", "4", "6", "--kernels", "5", "3", "--strides",
          "2", "1", "--paddings", "2", "1", "--pools", "im", "--tau", "8", "--lca_iters", "2",
          "--fc", "10", "--T1", "4", "--T2", "2", "--task", "MNIST5K", "--optim", "sgd", "--lrs",
          "0.002", "0.002", "0.002", "--eta", "0.05", "--mbs", "2000"]  # + the dictionary step


def torchrun(n: int, argv: list) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(n), "main.py", *map(str, argv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def assert_close_weights(a: dict, b: dict, tol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() <= tol, k


def assert_same_metrics(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        assert row_a.keys() == row_b.keys()
        for k in row_a:
            assert float(row_a[k]) == pytest.approx(float(row_b[k]), rel=1e-5, abs=1e-6), k


ADVTRAIN = ["--todo", "advtrain", "--archi", "784", "32", "10", "--T1", "5", "--T2", "2",
            "--mbs", "500", "--optim", "sgd", "--lrs", "0.05", "0.05", "--eps", "0.1",
            "--attack-images", "20", "--task", "MNIST5K"]  # PGD on each share, robust acc


SOLVED = MLP + ["--T1", "30", "--solver", "evenodd", "--tol", "1e-4", "--check-every", "2"]
# every nudged step's update averaged over the processes before its optimizer step
CONTINUAL = MLP + ["--alg", "CEP", "--thirdphase", "--wds", "0.1", "0.1"]


@pytest.mark.parametrize("argv", [MLP, LCANET, ADVTRAIN, SOLVED, CONTINUAL],
                         ids=["MLP", "LCANet", "advtrain", "evenodd tol", "CEP"])
def test_two_processes_train_as_one(argv, tmp_path, capsys):
    """To 1e-6 (LCANet: 1e-5, its code's threshold turns float rounding into flips; CEP: 1e-3,
    each update a difference of two consecutive states, where one process's run on 1 and 2
    threads already differs by 2e-4)."""
    assert cli(argv + ["--save", "--results-dir", tmp_path / "one"], capsys)[0] == 0
    done = torchrun(2, argv + ["--save", "--results-dir", tmp_path / "two"])
    assert done.returncode == 0, done.stderr
    one, two = only_run_dir(tmp_path / "one"), only_run_dir(tmp_path / "two")  # rank 0 writes
    assert_close_weights(weights(one / "model.pt"), weights(two / "model.pt"),
                         {id(LCANET): 1e-5, id(CONTINUAL): 1e-3}.get(id(argv), 1e-6))
    assert_same_metrics(metrics(one), metrics(two))  # the sharded evaluation, reduced
    assert done.stdout.count("epoch 1:") == 1 and "2 processes" in done.stdout  # rank 0 prints


def test_resume_with_any_number_of_processes(tmp_path, capsys, monkeypatch):
    """A one-process run stopped inside its first epoch, resumed by two processes, then by
    one: the weights of an uninterrupted run; and two processes evaluate it alike."""
    assert cli(MLP + ["--epochs", "2", "--save", "--results-dir", tmp_path / "whole"])[0] == 0
    original = trainer.Trainer.train_batch

    def interrupted(self, x, y):
        if self.cursor.seen == 3 * 799:
            self._on_stop_signal(signal.SIGINT, None)
        return original(self, x, y)

    monkeypatch.setattr(trainer.Trainer, "train_batch", interrupted)
    assert cli(MLP + ["--epochs", "2", "--save", "--results-dir", tmp_path / "parts"])[0] == 130
    monkeypatch.setattr(trainer.Trainer, "train_batch", original)
    run = only_run_dir(tmp_path / "parts")
    done = torchrun(2, ["--load-path", run])  # the rest of epoch 1, then epoch 2
    assert done.returncode == 0, done.stderr
    assert "torchrun --nproc_per_node 2 main.py" in (run / "hyperparameters.txt").read_text()
    shutil.copytree(run, tmp_path / "copy")
    assert cli(["--load-path", tmp_path / "copy", "--epochs", "1"], capsys)[0] == 0
    whole = only_run_dir(tmp_path / "whole")
    # 12 and 18 batches of SGD with momentum: float rounding of the sums grows past 1e-6
    assert_close_weights(weights(whole / "model.pt"), weights(run / "model.pt"), 1e-5)
    assert_same_metrics(metrics(whole), metrics(run))
    assert len(metrics(tmp_path / "copy")) == 3  # one more epoch, by one process:
    assert cli(MLP + ["--epochs", "3", "--save", "--results-dir", tmp_path / "three"])[0] == 0
    assert_close_weights(weights(only_run_dir(tmp_path / "three") / "final_model.pt"),
                         weights(tmp_path / "copy" / "final_model.pt"), 1e-5)
    evaluated = torchrun(2, ["--todo", "evaluate", "--load-path", run])
    rc, out, _ = cli(["--todo", "evaluate", "--load-path", run], capsys)
    assert evaluated.returncode == rc == 0, evaluated.stderr[-3000:]
    assert evaluated.stdout.splitlines()[-1] == out.splitlines()[-1]


@pytest.mark.parametrize("alg", ["EP", "CEP"])
def test_more_processes_than_a_last_batch(tmp_path, alg):
    """4000 digits in batches of 1999: the last 2 samples leave a third process without any
    (with CEP it still takes each nudged step's all-reduce and optimizer step)."""
    argv = MLP[:-1] + ["1999", "--alg", alg, "--save", "--results-dir", tmp_path]
    done = torchrun(3, argv)
    assert done.returncode == 0, done.stderr
    assert all(torch.isfinite(t).all() for t in weights(only_run_dir(tmp_path) / "model.pt")
               .values())


@pytest.mark.parametrize("extra, message", [
    (["--todo", "gducheck"], "--todo gducheck runs in one process"),
    (["--mbs", "1"], "--mbs 1 is the whole batch, shared by the 2 processes"),
])
def test_what_torchrun_cannot_run_fails_in_one_line(extra, message):
    done = torchrun(2, MLP[:13] + extra)
    assert done.returncode != 0
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("main.py: error")]
    assert len(lines) == 1 and message in lines[0]


def test_a_process_that_ends_normally_leaves_when_another_has_failed(tmp_path):
    """close(wait=True) waits for every process, but not for one that failed after the last
    collective: rank 1 leaves without a traceback, rank 0's own error is the one reported."""
    script = tmp_path / "ends.py"
    script.write_text(
        "import sys\nimport torch.distributed as dist\nimport distributed\n"
        "dist.init_process_group('gloo')\n"
        "if dist.get_rank() == 0:\n"
        "    dist.destroy_process_group()\n"
        "    sys.exit('rank 0 failed')\n"
        "distributed.close(wait=True)\nprint('rank 1 left')\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "rank 0 failed" in done.stderr
    assert "rank 1 left" in done.stdout and "[rank1]" not in done.stderr, done.stderr[-2000:]
