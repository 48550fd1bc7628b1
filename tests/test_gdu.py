"""The GDU property: EP's step-by-step updates equal BPTT's gradients as beta -> 0."""

import json

import pytest
import torch

from gdu import gdu_check, mean_rmse, update_names
from helpers import TINY_MLP, cli, metrics, only_run_dir
from model_utils import Phases, bptt_gradients, build_cnn, build_mlp, ep_gradients, scale_init


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def mlp(loss="mse", softmax=False, vf=False):
    return build_mlp([20, 16, 12, 5], "tanh", loss, softmax, vf), torch.randn(8, 20)


def cnn():
    # max pooling in layer 1; a max-pool on top of it can make synchronous steps cycle
    model = build_cnn((1, 12, 12), [4, 6], [3, 3], [1, 1], [1, 1], "ma", [10, 5], "tanh", "mse",
                      False)
    scale_init(model, 0.5)
    return model, torch.rand(8, 1, 12, 12)


def rmse(result, estimate="one_sided"):
    return {k: v["rmse"] for k, v in result["metrics"][estimate].items()}


@pytest.mark.parametrize("build", [mlp, cnn], ids=["MLP", "CNN"])
def test_ep_updates_match_bptt_step_by_step(build):
    model, x = build()
    y = torch.randint(0, 5, (8,))
    results = {beta: gdu_check(model, x, y, 150, 10, beta, thirdphase=True)
               for beta in (0.01, 0.1, 0.5)}
    assert results[0.01]["free_drift"] < 1e-9
    assert set(rmse(results[0.01])) == set(update_names(model))
    assert max(rmse(results[0.01]).values()) < 0.05
    for key in update_names(model):
        one_sided = [rmse(results[b])[key] for b in (0.01, 0.1, 0.5)]
        assert one_sided == sorted(one_sided), key  # the error grows with beta
        for beta, result in results.items():
            assert rmse(result, "symmetric")[key] < rmse(result)[key], (key, beta)
    # one-sided signs disagree only where the per-step updates are tiny (late t)
    signs = results[0.01]["metrics"]
    assert max(v["sign_error"] for v in signs["symmetric"].values()) < 0.01
    assert max(v["sign_error"] for v in signs["one_sided"].values()) < 0.2


def vfcnn():
    model = build_cnn((1, 12, 12), [4, 6], [3, 3], [1, 1], [1, 1], "ma", [10, 5], "tanh", "cel",
                      True, vf=True)
    scale_init(model, 0.5)
    return model, torch.rand(8, 1, 12, 12)


def test_every_head_and_vf_with_b_equal_w():
    for model, x in (mlp("cel", False), mlp("cel", True), mlp(vf=True), vfcnn()):
        with torch.no_grad():
            for syn in model.synapses:
                if syn.feedback is not None:
                    syn.feedback.copy_(syn.weight)
        y = torch.randint(0, 5, (8,))
        for same_update in (False, True) if model.has_feedback else (False,):
            result = gdu_check(model, x, y, 150, 10, 0.001, same_update=same_update)
            assert max(rmse(result).values()) < 0.05, (model, same_update)


def test_check_sees_a_vf_model_far_from_symmetric():
    model, x = mlp(vf=True)
    result = gdu_check(model, x, torch.randint(0, 5, (8,)), 150, 10, 0.01)
    assert mean_rmse(result["metrics"]["one_sided"]) > 0.3


@pytest.mark.parametrize("kind", ["MLP", "softmax", "VFMLP"])
def test_sums_over_steps_are_the_training_gradients(kind):
    """Cumulative EP updates are the EP gradient training applies; BPTT's per-step gradients
    add up to the gradient of bptt_gradients."""
    model, x = {"MLP": mlp, "softmax": lambda: mlp("cel", True),
                "VFMLP": lambda: mlp(vf=True)}[kind]()
    y = torch.randint(0, 5, (8,))
    result = gdu_check(model, x, y, 30, 10, 0.2)
    ph = Phases(30, 10, 0.0, 0.2)
    names = update_names(model)[model.n_states:]
    for estimate, train in (("one_sided", ep_gradients), ("bptt", bptt_gradients)):
        train(model, x, y, ph)
        for name, p in zip(names, model.parameters(), strict=True):
            torch.testing.assert_close(result[estimate][name].sum(0), p.grad.double(),
                                       rtol=1e-4, atol=1e-6, msg=f"{estimate} {name}")


def test_check_refuses_what_it_cannot_compare():
    model, x = mlp()
    y = torch.randint(0, 5, (8,))
    for T1, T2, beta in ((10, 0, 0.1), (5, 10, 0.1), (10, 5, 0.0)):
        with pytest.raises(ValueError):
            gdu_check(model, x, y, T1, T2, beta)


GDU_LINE = ["--todo", "gducheck", "--archi", "784", "32", "10", "--act", "tanh", "--T1", "40",
            "--T2", "8", "--mbs", "20", "--betas", "0", "0.01", "--loss", "mse"]


def test_gducheck_writes_metrics_and_plots(tmp_path, capsys):
    rc, out, _ = cli(GDU_LINE + ["--thirdphase", "--save", "--results-dir", tmp_path], capsys)
    assert rc == 0 and "one-sided" in out and "symmetric" in out
    run = only_run_dir(tmp_path)
    assert run.parent.parent.parent.name == "gducheck"
    report = json.loads((run / "gdu_metrics.json").read_text())
    assert report["settings"]["samples"] == 20 and report["settings"]["beta"] == 0.01
    assert set(report["one_sided"]) == {"s1", "s2", "W1", "b1", "W2", "b2"}
    assert max(v["rmse"] for v in report["one_sided"].values()) < 0.05
    assert all(r < 1 for r in report["symmetric_error_ratio"].values())
    for name in ("gdu_curves.png", "gdu_rmse.png", "hyperparameters.txt"):
        assert (run / name).stat().st_size > 0


def test_gducheck_of_a_trained_model_and_check_thm_while_training(tmp_path, capsys):
    argv = TINY_MLP + ["--model", "VFMLP", "--check-thm", "--epochs", "2", "--save",
                       "--results-dir", tmp_path]
    assert cli(argv)[0] == 0
    run = only_run_dir(tmp_path)
    rows = metrics(run)
    assert all(0 < float(r["gdu_rmse"]) < 2 and 0 < float(r["angle_2"]) < 180 for r in rows)
    assert (run / "angles.png").stat().st_size > 0
    rc, out, _ = cli(["--todo", "gducheck", "--load-path", run, "--betas", "0", "0.01",
                      "--mbs", "10", "--save"], capsys)
    assert rc == 0 and "model.pt of" in out
    assert "B2" in json.loads((run / "gdu_metrics.json").read_text())["one_sided"]
    rc, out, _ = cli(GDU_LINE, capsys)  # without --save only the table
    assert rc == 0 and "nothing written" in out


def test_seed_check_lines_take_any_trained_run(tmp_path, capsys):
    """The published evaluate/gducheck lines pass --thirdphase whatever --alg the run used."""
    assert cli(TINY_MLP + ["--alg", "BPTT", "--save", "--results-dir", tmp_path])[0] == 0
    run = only_run_dir(tmp_path)
    for todo in ("evaluate", "gducheck"):
        rc, _, err = cli(["--todo", todo, "--thirdphase", "--load-path", run], capsys)
        assert rc == 0, err


def test_a_single_layer_under_a_softmax_read_out():
    """One state layer: its state depends on the weights only through the input drive."""
    model = build_mlp([20, 12, 5], "tanh", "cel", True)
    result = gdu_check(model, torch.randn(4, 20), torch.randint(0, 5, (4,)), 60, 1, 0.01)
    assert set(rmse(result)) == set(update_names(model))
    assert max(rmse(result).values()) < 0.05
