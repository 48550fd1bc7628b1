"""Runs with --solver and --tol: saved with the run and used by evaluate, attack and resume
(another one typed says so), the steps each epoch took in metrics.csv, a resumed run equal to
an uninterrupted one, gducheck on the synchronous steps, a notice when phases hit their cap."""

import pytest
import torch

from helpers import TINY_MLP, assert_same_weights, cli, metrics, only_run_dir, weights
from test_interruptions import stop_at

SOLVER_LINES = {"sync tol": ["--tol", "1e-3", "--check-every", "2"],
                "evenodd": ["--solver", "evenodd"],
                "evenodd tol": ["--solver", "evenodd", "--tol", "1e-3", "--check-every", "2"],
                "anderson tol": ["--solver", "anderson", "--anderson-m", "3", "--tol", "1e-3",
                                 "--check-every", "2"],
                # Continual EP: free phase by the solver; nudged, back and third: 3 x T2 steps
                "CEP evenodd tol": ["--alg", "CEP", "--thirdphase", "--solver", "evenodd",
                                    "--tol", "1e-3", "--check-every", "2"]}
RUN = TINY_MLP + ["--T1", "12", "--T2", "4", "--seed", "3", "--save"]


@pytest.mark.parametrize("name", list(SOLVER_LINES))
def test_a_resumed_run_equals_an_uninterrupted_one(name, tmp_path, capsys, monkeypatch):
    argv = RUN + SOLVER_LINES[name] + ["--epochs", "2"]
    assert cli(argv + ["--results-dir", tmp_path / "a"], capsys)[0] == 0
    restore = stop_at(monkeypatch, 7)  # inside epoch 1 (20 batches an epoch)
    assert cli(argv + ["--results-dir", tmp_path / "b"], capsys)[0] == 130
    restore()
    b = only_run_dir(tmp_path / "b")
    rc, out, _ = cli(["--load-path", b], capsys)
    assert rc == 0 and "notice" not in out
    a = only_run_dir(tmp_path / "a")
    assert_same_weights(weights(a / "final_model.pt"), weights(b / "final_model.pt"))
    assert metrics(a) == metrics(b)
    rows = metrics(a)
    assert [list(r)[-2:] for r in rows] == [["free_steps", "nudged_steps"]] * 2
    free = [float(r["free_steps"]) for r in rows]
    if "CEP" in name:
        assert [float(r["nudged_steps"]) for r in rows] == [12.0] * 2
    if "tol" in name:
        assert all(0 < f < 12 and f % 2 == 0 or 0 < f < 12 for f in free)
    else:
        assert free == [12.0, 12.0] and [float(r["nudged_steps"]) for r in rows] == [4.0] * 2


def test_the_solver_is_part_of_the_trained_model(tmp_path, capsys):
    """evaluate relaxes with the run's solver; another one typed says so and is used."""
    argv = RUN + SOLVER_LINES["evenodd tol"] + ["--epochs", "1", "--results-dir", tmp_path]
    assert cli(argv, capsys)[0] == 0
    run = only_run_dir(tmp_path)
    rc, out, _ = cli(["--todo", "evaluate", "--load-path", run], capsys)
    assert rc == 0 and "notice" not in out
    rc, out, _ = cli(["--todo", "evaluate", "--load-path", run, "--solver", "sync"], capsys)
    assert rc == 0
    assert "trained with --solver evenodd; this one relaxes with --solver sync" in out
    rc, out, _ = cli(["--todo", "gducheck", "--load-path", run, "--mbs", "5"], capsys)
    assert rc == 0 and "runs them, not --solver evenodd" in out
    default = TINY_MLP + ["--epochs", "1", "--save", "--results-dir", tmp_path / "sync"]
    assert cli(default, capsys)[0] == 0  # the published dynamics: metrics.csv as before
    assert "free_steps" not in metrics(only_run_dir(tmp_path / "sync"))[0]


def test_phases_that_reach_their_cap_are_reported_once_an_epoch(tmp_path, capsys):
    argv = TINY_MLP + ["--T1", "4", "--tol", "1e-9", "--check-every", "2", "--epochs", "2"]
    rc, out, err = cli(argv, capsys)
    notices = [ln for ln in (out + err).splitlines() if "reached --T1 4" in ln]
    assert rc == 0 and len(notices) == 2, out + err
    assert notices[0].startswith("notice: in epoch 1, 100% of the free phases")
    assert "raise --T1 (or --tol)" in notices[0]


def test_an_attack_through_the_even_odd_unroll(tmp_path, capsys):
    """PGD at eps 0 leaves the clean accuracy, predicted by the run's solver with its tol."""
    argv = RUN + SOLVER_LINES["evenodd tol"] + ["--epochs", "1", "--results-dir", tmp_path]
    assert cli(argv, capsys)[0] == 0
    run = only_run_dir(tmp_path)
    rc, out, _ = cli(["--todo", "attack", "--load-path", run, "--eps", "0", "0.1",
                      "--attack-images", "40"], capsys)
    assert rc == 0, out
    rows = [ln.split("\t") for ln in (run / "Adversarial_Accuracy.txt").read_text().splitlines()
            if ln.startswith("pgd")]
    assert rows[0][3] == rows[0][4] and float(rows[1][4]) <= float(rows[0][4])
    assert torch.load(run / "model.pt", weights_only=True)["args"]["solver"] == "evenodd"
