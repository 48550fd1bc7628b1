"""--save-examples and --todo transfer: a run's own examples give exactly its white-box rows,
another run's are read with their source named, and a bad file is one line."""

import numpy as np
import pytest

import attack
from helpers import cli, trained_run

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two small EP MLPs (seeds 0 and 1); the first attacked with PGD, its examples saved."""
    found = []
    for seed in (0, 1):
        found.append(trained_run(tmp_path_factory.mktemp(f"seed{seed}"), "--seed", seed))
    assert cli(["--todo", "attack", "--load-path", found[0], "--eps", "0", "0.05", "0.1",
                "--attack-images", "150", "--save-examples"])[0] == 0
    return found


def test_the_saved_file_holds_the_sweep(runs):
    with np.load(runs[0] / "examples_pgd_Linf.npz") as f:
        x, x_adv, eps, y = f["x"], f["x_adv"], f["eps"], f["y"]
        clean_logits, adv_logits = f["clean_logits"], f["adv_logits"]
        assert str(f["attack"]) == "pgd" and str(f["norm"]) == "inf"
        assert int(f["attack_step"]) == 10 and str(f["source"]) == str(runs[0])
    assert x.shape == (150, 1, 28, 28) and x_adv.shape == (3, 150, 1, 28, 28)
    assert eps.tolist() == [0, 0.05, 0.1] and x.min() >= 0 and x.max() <= 1
    for e, adv, logits in zip(eps, x_adv, adv_logits):
        assert np.abs(adv - x).max() <= e + 1e-6
        row = [r for r in attack.read_rows(runs[0] / attack.RESULTS_FILE) if r.eps == e][-1]
        assert 100 * (logits.argmax(1) == y).mean() == pytest.approx(row.adv_acc, abs=1e-3)
    assert 100 * (clean_logits.argmax(1) == y).mean() == pytest.approx(row.clean_acc, abs=1e-3)


def test_own_examples_give_exactly_the_white_box_rows(runs):
    white_box = attack.read_rows(runs[0] / attack.RESULTS_FILE)
    assert cli(["--todo", "transfer", "--load-path", runs[0], "--examples",
                runs[0] / "examples_pgd_Linf.npz"])[0] == 0
    rows = attack.read_rows(runs[0] / attack.RESULTS_FILE)[len(white_box):]
    assert [(r.eps, r.clean_acc, r.adv_acc, r.images) for r in rows] == [
        (r.eps, r.clean_acc, r.adv_acc, r.images) for r in white_box]
    assert all(r.source == str(runs[0]) for r in rows)


def test_another_runs_examples_are_rows_naming_their_source(runs):
    assert cli(["--todo", "transfer", "--load-path", runs[1], "--examples",
                runs[0] / "examples_pgd_Linf.npz"])[0] == 0
    text = (runs[1] / attack.RESULTS_FILE).read_text()
    assert attack.TRANSFER_HEADER in text and "--todo transfer" in text
    rows = attack.read_rows(runs[1] / attack.RESULTS_FILE)
    assert [r.eps for r in rows] == [0, 0.05, 0.1] and rows[0].adv_acc == rows[0].clean_acc
    assert rows[-1].adv_acc < rows[0].adv_acc and rows[-1].source == str(runs[0])
    assert (runs[1] / attack.PLOT_FILE).read_bytes().startswith(b"\x89PNG")


def bad_file(tmp_path, runs, **change):
    with np.load(runs[0] / "examples_pgd_Linf.npz") as f:
        found = {k: f[k] for k in f.files}
    found.update(change)
    for key in [k for k, v in change.items() if v is None]:
        del found[key]
    path = tmp_path / "bad.npz"
    np.savez(path, **found)
    return path


@pytest.mark.parametrize("change,message", [
    ({"x_adv": None}, "has no 'x_adv' (the adversarial images"),
    ({"x": np.zeros((150, 3, 32, 32), np.float32)}, "this run takes N x 1x28x28 float32"),
    ({"y": np.zeros(7, np.int64)}, "should be E x N x C x H x W and N"),
    ({"y": np.full(150, 12)}, "labels outside 0..9"),
    ({"task": np.array("FashionMNIST")}, "examples of --task FashionMNIST; this run's task is"),
])
def test_a_bad_examples_file_is_one_line(runs, tmp_path, capsys, change, message):
    rc, _, err = cli(["--todo", "transfer", "--load-path", runs[1], "--examples",
                      bad_file(tmp_path, runs, **change)], capsys)
    assert rc == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("flags,message", [
    (["--todo", "transfer", "--load-path", "{run}"], "--todo transfer needs --examples FILE"),
    (["--todo", "transfer", "--load-path", "{run}", "--examples", "none.npz"],
     "--examples none.npz: no such file"),
    (["--todo", "transfer", "--load-path", "{run}", "--examples", "{tmp}/empty.npz"],
     "empty.npz: not an .npz file of examples"),
    (["--todo", "transfer", "--load-path", "{run}", "--examples", "x.npz", "--predict-step",
      "5", "10"], "--predict-step: --todo transfer evaluates with one"),
    (["--todo", "attack", "--load-path", "{run}", "--examples", "x.npz"],
     "--examples only applies with --todo transfer"),
    (["--todo", "transfer", "--load-path", "{run}", "--examples", "x.npz", "--save-examples"],
     "--save-examples only applies with --todo attack"),
])
def test_bad_flags_are_one_line(runs, capsys, flags, message, tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    rc, _, err = cli([f.format(run=runs[1]) for f in flags], capsys)
    assert rc == 2 and message in err and err.count("\n") == 1
