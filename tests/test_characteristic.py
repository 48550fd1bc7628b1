"""--todo characteristic: per step the predictions are the model's own after that many free
steps (every solver, every kind of model), the settling time is the first step from which the
prediction stays, and the files of a run agree with its evaluation and its attacks."""

import csv

import numpy as np
import pytest
import torch

from characteristic import Trajectory, trajectory
from helpers import TINY_MLP, cli, only_run_dir, trained_run
from model_utils import LCAConfig, build_cnn, build_lcanet, build_mlp, free_phase
from solvers import Solver, relative_change


def test_settling_time_is_the_first_step_from_which_the_prediction_stays():
    preds = torch.tensor([[1, 2, 2, 2], [3, 3, 3, 3], [0, 1, 0, 1], [5, 4, 5, 5]])
    path = Trajectory(preds, torch.zeros(4, 4))
    assert path.settling_times().tolist() == [2, 1, 4, 3]
    rows = path.table(torch.tensor([2, 3, 1, 5]))
    assert [r["accuracy"] for r in rows] == [50, 75, 75, 100]
    assert [r["settled"] for r in rows] == [25, 50, 75, 100]


def models():
    torch.manual_seed(0)
    lca = LCAConfig(n_feats=3, kernel=3, stride=2, padding=1, tau=2.0, iters=4)
    return {"MLP": build_mlp([144, 16, 10], "mysig", "mse", False),
            "CNN max-pooled": build_cnn((1, 12, 12), [3, 4], [3, 3], [1, 1], [1, 1], "mm", [10],
                                        "hard_sigmoid", "mse", False),
            "VFCNN": build_cnn((1, 12, 12), [3, 4], [3, 3], [1, 1], [1, 0], "aa", [10], "mysig",
                               "cel", True, vf=True),
            "LCANet": build_lcanet((1, 12, 12), lca, [4], [3], [1], [1], "a", [10], "mysig",
                                   "cel", True)}


@pytest.mark.parametrize("solver", ["sync", "evenodd", "anderson"])
@pytest.mark.parametrize("name", list(models()))
def test_each_step_predicts_as_that_many_free_steps_do(name, solver, float64):
    model = models()[name]
    model.solver = Solver(solver, tol=1e-3)  # no tol in the trajectory: every step runs
    x = torch.rand(7, 1, 12, 12).view(7, -1) if name == "MLP" else torch.rand(7, 1, 12, 12)
    found = trajectory(model, x, steps=6, mbs=3)
    model.solver = Solver("evenodd" if solver == "anderson" else solver)  # the sweep it speeds
    for t in range(1, 7):
        s = free_phase(model, x, t)
        assert torch.equal(found.preds[:, t - 1], model.logits(s).argmax(1))
        before = free_phase(model, x, t - 1)
        assert torch.allclose(found.change[:, t - 1], relative_change(before, s).float())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("runs"), "--T1", "12")


def read_table(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_files_agree_with_the_clean_accuracy_and_with_an_attack_at_eps_zero(run, capsys):
    rc, out, _ = cli(["--todo", "characteristic", "--load-path", run, "--attack-images", "300"],
                     capsys)
    assert rc == 0
    clean = read_table(run / "characteristic.csv")
    assert [int(r["step"]) for r in clean] == list(range(1, 13))
    assert float(clean[-1]["settled"]) == 100
    times = np.load(run / "characteristic_time.npy")
    assert len(times) == 300 and times.min() >= 1 and times.max() <= 12
    assert (run / "characteristic.png").stat().st_size > 0
    rc, _, _ = cli(["--todo", "attack", "--load-path", run, "--eps", "0", "--attack-images",
                    "300", "--attack", "fgsm"], capsys)
    row = (run / "Adversarial_Accuracy.txt").read_text().splitlines()[-1].split("\t")
    assert float(clean[-1]["accuracy"]) == pytest.approx(float(row[3]))  # the attack's clean
    rc, out, _ = cli(["--todo", "characteristic", "--load-path", run, "--attack-images", "300",
                      "--attack", "pgd", "--eps", "0"], capsys)
    assert rc == 0 and "pgd Linf eps 0 images" in out
    assert read_table(run / "characteristic_pgd_Linf_eps0.csv") == clean
    rc, _, _ = cli(["--todo", "characteristic", "--load-path", run, "--attack-images", "300",
                    "--attack", "pgd", "--eps", "0.1"], capsys)
    attacked = read_table(run / "characteristic_pgd_Linf_eps0.1.csv")
    assert float(attacked[-1]["accuracy"]) < float(clean[-1]["accuracy"]) - 20


@pytest.mark.parametrize("flags,message", [
    (["--eps", "0.1"], "--eps applies to the adversarial images of --attack NAME"),
    (["--attack", "pgd", "fgsm", "--eps", "0.1"], "--attack: --todo characteristic follows one"),
    (["--attack", "pgd"], "--attack pgd: --todo characteristic follows its images at one radius"),
    (["--attack", "pgd", "--eps", "0.1", "0.2"], "--eps: --todo characteristic follows one"),
    (["--predict-step", "5"], "--predict-step only applies with --todo attack"),
])
def test_bad_input_is_one_line(run, capsys, flags, message):
    rc, _, err = cli(["--todo", "characteristic", "--load-path", run, *flags], capsys)
    assert rc == 2 and message in err and err.count("\n") == 1


def test_a_bp_trained_run_is_refused(tmp_path, capsys):
    assert cli([*TINY_MLP, "--alg", "BP", "--epochs", "1", "--save", "--results-dir",
                tmp_path])[0] == 0
    rc, _, err = cli(["--todo", "characteristic", "--load-path", only_run_dir(tmp_path)],
                     capsys)
    assert rc == 2 and "a BP-trained model (--alg BP) predicts feed-forward" in err
