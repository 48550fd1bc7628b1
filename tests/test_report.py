"""--todo report: every run under the folders in one table whose cells are what the runs'
own files say; a folder it cannot read is named and skipped; bad input is one line."""

import csv

import numpy as np
import pytest
import torch

import attack
from helpers import TINY_MLP, cli, only_run_dir


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Under one folder: an EP run attacked (FGSM, 3 radii) with its characteristic time and
    corruption accuracy, and a BP run; and a damaged run folder."""
    root = tmp_path_factory.mktemp("study")
    runs = []
    for alg in ("EP", "BP"):
        assert cli([*TINY_MLP, "--alg", alg, "--epochs", "2", "--save", "--results-dir",
                    root / alg])[0] == 0
        runs.append(only_run_dir(root / alg))
    ep = runs[0]
    assert cli(["--todo", "attack", "--load-path", ep, "--attack", "fgsm", "--eps", "0.02",
                "0.05", "0.1", "--attack-images", "100"])[0] == 0
    assert cli(["--todo", "characteristic", "--load-path", ep, "--attack-images", "100"])[0] == 0
    mnist_c = root / "mnist_c"
    from test_corruptions import digits, write_mnist_c
    x, y = digits()
    write_mnist_c(mnist_c, {"dim": ((x // 3).astype(np.uint8), y), "same": (x, y)})
    assert cli(["--todo", "corruptions", "--load-path", ep, "--corruptions-dir", mnist_c])[0] == 0
    damaged = root / "damaged" / "run"
    damaged.mkdir(parents=True)
    (damaged / "model.pt").write_bytes(b"not a checkpoint")
    published = root / "published"  # no arguments saved; its model.pt is a pickled module
    published.mkdir()
    torch.save({"model_state_dict": {"synapses.0.weight": torch.zeros(2, 2)}, "epoch": 1},
               published / "checkpoint.tar")
    (published / "model.pt").write_bytes(b"a pickled module: never loaded")
    return root, ep, runs[1]


def test_the_cells_are_what_the_runs_files_say(study, capsys):
    root, ep, bp = study
    rc, out, err = cli(["--todo", "report", root], capsys)
    assert rc == 0
    assert "report: skipped" in err and "damaged/run" in err and err.count("\n") == 1
    with open(root / "report.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted([*(str(p.relative_to(root)) for p in (ep, bp)), "published"])
    assert rows["published"]["flags"] == "(no saved arguments)"
    row, bp_row = rows[str(ep.relative_to(root))], rows[str(bp.relative_to(root))]
    assert (row["model"], row["alg"], bp_row["alg"]) == ("MLP", "EP", "BP")
    with open(ep / "metrics.csv") as f:
        tests = [float(e["test_acc"]) for e in csv.DictReader(f)]
    assert float(row["best_test"]) == pytest.approx(max(tests), abs=0.005)
    assert float(row["final_test"]) == pytest.approx(tests[-1], abs=0.005)
    for r in attack.read_rows(ep / attack.RESULTS_FILE):
        assert float(row[f"fgsm Linf {r.eps:.3g}"]) == pytest.approx(r.adv_acc, abs=0.005)
    lines = (ep / "Corruption_Accuracy.txt").read_text().splitlines()
    accs = [float(ln.split("\t")[3]) for ln in lines if ln[:1] not in ("#", "c")]
    assert float(row["corruption_acc"]) == pytest.approx(np.mean(accs), abs=0.005)
    times = np.load(ep / "characteristic_time.npy")
    assert float(row["characteristic_median"]) == pytest.approx(np.median(times))
    assert bp_row["fgsm Linf 0.1"] == "" and bp_row["corruption_acc"] == ""
    assert bp_row["flags"] == ""  # feed-forward: no phases
    table = out.split("\n\n")[0] if "\n\n" in out else out
    assert "fgsm Linf 0.02" not in table and "fgsm Linf 0.1" in table  # 2 eps in the table
    assert (root / "report_adversarial.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("argv,message", [
    (["--todo", "report"], "--todo report needs folders"),
    (["--todo", "report", "{root}/none"], "--todo report {root}/none: no such folder"),
    (["--todo", "train", "{root}"], "folders are given to --todo report only"),
    (["--todo", "report", "{root}/damaged"], "no readable run folder there"),
    (["--todo", "report", "{root}", "--load-path", "{root}/published"],
     "--todo report reads the folders"),
])
def test_bad_input_is_one_line(study, capsys, argv, message):
    root = study[0]
    rc, _, err = cli([a.format(root=root) for a in argv], capsys)
    assert rc == 2 and message.format(root=root) in err.splitlines()[-1]


def test_a_cell_is_the_strongest_attack_over_its_step_counts(study, capsys):
    root, ep, _ = study
    rows_before = len(attack.read_rows(ep / attack.RESULTS_FILE))
    assert cli(["--todo", "attack", "--load-path", ep, "--attack", "fgsm", "--eps", "0.1",
                "--attack-step", "2", "5", "--attack-images", "100"])[0] == 0
    fgsm = [r for r in attack.read_rows(ep / attack.RESULTS_FILE) if r.eps == 0.1]
    assert len(attack.read_rows(ep / attack.RESULTS_FILE)) == rows_before + 2
    assert cli(["--todo", "report", root], capsys)[0] == 0
    with open(root / "report.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["run"] == str(ep.relative_to(root)))
    assert float(row["fgsm Linf 0.1"]) == pytest.approx(min(r.adv_acc for r in fgsm), abs=0.005)


def test_the_flags_name_the_rules_variant():
    import report
    base = {"model": "MLP", "task": "MNIST5K", "T1": 5, "T2": 2, "betas": [0.0, 0.5]}
    assert "nudge centered" in report.describe({**base, "alg": "EP", "thirdphase": True})["flags"]
    assert "nudge negative" in report.describe({**base, "alg": "CpL", "nudge": "negative"})[
        "flags"]
    assert "nudge" not in report.describe({**base, "alg": "EP", "nudge": "positive"})["flags"]
    assert "8 points" in report.describe({**base, "alg": "hEP", "holo_points": 8})["flags"]


def test_a_published_folder_attacked_now_keeps_its_cells(tmp_path):
    """The published code saves no arguments: its rows count whatever solver made them."""
    import report
    run = tmp_path / "published"
    run.mkdir()
    torch.save({"model_state_dict": {}, "epoch": 1}, run / "checkpoint.tar")
    row = attack.Row("pgd", "inf", 0.1, 90.0, 12.5, 100, 30, 30, 1.0, "sync")
    (run / attack.RESULTS_FILE).write_text(attack.HEADER + "\n" + row.line() + "\n")
    assert report.read_run(run).adversarial == {("pgd", "inf", 0.1): 12.5}
