"""Real signals to a real process: 20 kill -9 at random moments of a --save run, and SIGTERM.

Every file left behind loads, no epoch that was reported finished is lost, every resume
completes, and the run that was killed 20 times ends bit for bit where an uninterrupted run
ends (weights and metrics)."""

import csv
import os
import random
import signal
import subprocess
import sys
import time

import torch

from helpers import ROOT, TINY_MLP, assert_same_weights, cli, metrics, only_run_dir, weights

ARGV = TINY_MLP + ["--random-sign", "--data-aug", "--seed", "5", "--epochs", "30", "--save"]


def import_seconds() -> float:
    """How long main.py takes to start here (its imports): the kills are timed in its units,
    so that each process dies around its start-up or first epoch on a fast machine or a slow
    one."""
    start_time = time.time()
    subprocess.run([sys.executable, "main.py", "--help"], cwd=ROOT, capture_output=True,
                   check=True)
    return time.time() - start_time


def start(argv, log):
    return subprocess.Popen([sys.executable, "main.py", *map(str, argv)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # epoch lines at once


def kill_soon(proc, log_path, delay: float) -> None:
    """SIGKILL after `delay` seconds, or as soon as the process reports an epoch finished:
    each life adds at most one epoch, so 20 kills never outlast the 30 epochs of the run."""
    seen = len(epoch_lines(log_path))
    deadline = time.time() + delay
    while time.time() < deadline and proc.poll() is None and len(epoch_lines(log_path)) == seen:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)


def epoch_lines(log_path) -> list[str]:
    return [ln for ln in log_path.read_text(errors="replace").splitlines()
            if ln.startswith("epoch ") and ": train " in ln]


def reported_epochs(log_path) -> int:
    """The last epoch the run printed as finished (it prints once the checkpoint is written)."""
    return max((int(ln.split()[1].rstrip(":")) for ln in epoch_lines(log_path)), default=0)


def check_files(run) -> int:
    """Every file loads; returns the checkpoint's epoch (0 when none was written yet)."""
    for path in run.iterdir():  # a kill may leave a temporary .name.XXXX: not a result file
        if path.name.startswith("."):
            continue
        if path.suffix in (".pt", ".tar"):
            torch.load(path, weights_only=True)
        elif path.suffix == ".csv":
            rows = list(csv.DictReader(path.open()))
            assert all(row["epoch"] for row in rows)
        elif path.suffix == ".png":
            assert path.read_bytes()[:4] == b"\x89PNG"
    ckpt = run / "checkpoint.tar"
    return torch.load(ckpt, weights_only=True)["epoch"] if ckpt.exists() else 0


def test_twenty_kills_then_the_same_run(tmp_path):
    assert cli(ARGV + ["--results-dir", tmp_path / "a"])[0] == 0
    rng, unit = random.Random(0), import_seconds()
    log_path = tmp_path / "log.txt"
    kills, run, finished = 0, None, 0
    while True:
        with log_path.open("a") as log:
            argv = (ARGV + ["--results-dir", tmp_path / "b"] if run is None
                    else ["--todo", "train", "--load-path", run])
            proc = start(argv, log)
            if kills < 20:
                kill_soon(proc, log_path, rng.uniform(0.3, 1.6) * unit)
            rc = proc.wait()
        runs = [p for p in (tmp_path / "b").glob("*/*/*/*") if p.is_dir()]
        run = runs[0] if runs else None
        if run is not None and not (run / "checkpoint.tar").exists():
            run = None  # killed before its first checkpoint: it starts again (as README says)
            for p in runs:
                for f in p.iterdir():
                    f.unlink()
                p.rmdir()
        if run is not None:
            finished = max(finished, reported_epochs(log_path))
            assert check_files(run) >= finished  # no epoch reported finished is lost
        if rc == 0:
            break
        assert rc == -signal.SIGKILL, log_path.read_text()
        kills += 1
    assert kills == 20
    a = only_run_dir(tmp_path / "a")
    assert_same_weights(weights(a / "final_model.pt"), weights(run / "final_model.pt"))
    assert metrics(a) == metrics(run)


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path):
    assert cli(ARGV + ["--results-dir", tmp_path / "a"])[0] == 0
    log_path = tmp_path / "log.txt"
    with log_path.open("w") as log:
        proc = start(ARGV + ["--results-dir", tmp_path / "b"], log)
        deadline = time.time() + 120
        while not list((tmp_path / "b").glob("*/*/*/*/checkpoint.tar")):
            assert time.time() < deadline and proc.poll() is None, log_path.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == 130, log_path.read_text()
    text = log_path.read_text()
    assert "SIGTERM: finishing this batch" in text and "Resume with:" in text
    run = only_run_dir(tmp_path / "b")
    assert cli(["--todo", "train", "--load-path", run])[0] == 0
    assert_same_weights(weights(only_run_dir(tmp_path / "a") / "final_model.pt"),
                        weights(run / "final_model.pt"))
    assert metrics(only_run_dir(tmp_path / "a")) == metrics(run)


def test_ctrl_c_while_the_modules_load_exits_quietly(tmp_path):
    proc = subprocess.Popen([sys.executable, "main.py", "--help"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # importing torch takes seconds
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and not out, err


def test_sigterm_while_the_modules_load_exits_quietly():
    proc = subprocess.Popen([sys.executable, "main.py", "--help"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err and not out, err


SLOW_START = """\
import sys, time
sys.path.insert(0, {root!r})
import main
count = main.count_parameters
main.count_parameters = lambda model: (time.sleep(30), count(model))[1]  # before training
sys.exit(main.main(sys.argv[1:]))
"""


def test_sigterm_and_ctrl_c_before_training_end_alike(tmp_path):
    """The run folder exists, training has not started: either signal ends the run with the
    same one line and exit code."""
    script = tmp_path / "slow_start.py"
    script.write_text(SLOW_START.format(root=str(ROOT)))
    for signum in (signal.SIGTERM, signal.SIGINT):
        out = tmp_path / signum.name
        proc = subprocess.Popen([sys.executable, str(script), *map(str, ARGV), "--results-dir",
                                 out], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not list(out.glob("*/*/*/*/hyperparameters.txt")):
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "Traceback" not in err, err
        assert err.strip().splitlines() == ["main.py: aborted (checkpoints already written are "
                                            "kept)"]
