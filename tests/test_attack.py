"""--todo attack through unmodified ART, on a small model trained in the test: eps 0 is the
clean accuracy, PGD does not weaken with eps and beats Square (no gradient masking), the
images stay in [0, 1] within eps, the adapter's gradient is the unrolled free phase's, and the
normalisation is ART's preprocessing (applied once)."""

import base64
import csv
import hashlib
import importlib.metadata
import math
import shutil
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from art.estimators.classification import PyTorchClassifier

import attack
import art_patches
from art_patches import (MEMORY_BUDGET, UnrolledNet, art_classifier, checkpoint_segment,
                         unroll_bytes)
from data_utils import NORMALISATION, Split, load_task, normalise, pixels
from helpers import ROOT, cli, only_run_dir, trained_run, write_cifar
from model_utils import LCAConfig, build_cnn, build_lcanet, build_mlp, relax
from results import load_checked
from trainer import evaluate_split

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An EP MLP trained for 2 epochs on the offline digits (about 90% test)."""
    return trained_run(tmp_path_factory.mktemp("runs"), "--archi", "784", "64", "10",
                       "--epochs", "2")


def rows(run_dir: Path) -> list[attack.Row]:
    return attack.read_rows(run_dir / attack.RESULTS_FILE)


def attack_cli(run_dir, *flags):
    rc, _, err = cli(["--todo", "attack", "--load-path", run_dir, *flags])
    assert rc == 0, err
    return rows(run_dir)


def test_at_eps_zero_every_attack_gives_the_clean_accuracy(run, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in run.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    found = attack_cli(folder, "--attack", "pgd", "fgsm", "square", "autoattack", "cw", "hsj",
                       "--attack-norm", "inf", "2", "--eps", "0", "--attack-images", "60",
                       "--hsj-iter", "2", "--hsj-evals", "50")
    assert sorted((r.attack, r.norm) for r in found) == sorted(
        [(a, n) for a in ("pgd", "fgsm", "square", "autoattack", "hsj") for n in ("inf", "2")]
        + [("cw", "2")])
    model_acc = clean_accuracy(folder, 60)
    for r in found:
        assert r.eps == 0 and r.images == 60 and r.adv_acc == r.clean_acc, r
        assert r.clean_acc == pytest.approx(model_acc, abs=1e-3)  # ART predicts as we do
        assert r.attack_step == r.predict_step == 10


def clean_accuracy(run_dir: Path, n: int) -> float:
    """The run's best model on the attack's first n test images, without ART."""
    import config
    import main

    saved = load_checked(run_dir / "model.pt")
    args, typed = main.parse(["--todo", "evaluate", "--load-path", str(run_dir)])
    args = config.merge_saved(args, typed, saved["args"])
    config.validate(args, typed)
    model = config.build_model(args)
    model.load_state_dict(saved["model"])
    _, test = load_task("MNIST5K", "", torch.device("cpu"))
    idx = attack.subset(len(test), n, args.seed, test.x.device)
    return evaluate_split(model, Split(test.x[idx], test.y[idx]), "EP", 10)["acc"]


def sweep(run_dir, **flags):
    import config
    import main

    saved = load_checked(run_dir / "model.pt")
    argv = ["--todo", "attack", "--load-path", str(run_dir)]
    for k, v in flags.items():
        argv += [f"--{k.replace('_', '-')}", *map(str, v if isinstance(v, list) else [v])]
    args, typed = main.parse(argv)
    args = config.merge_saved(args, typed, saved["args"])
    config.validate(args, typed)
    model = config.build_model(args)
    model.load_state_dict(saved["model"])
    _, test = load_task("MNIST5K", "", torch.device("cpu"))
    return attack.Sweep(model, test, args), model


@pytest.mark.parametrize("norm,eps", [("inf", [0.02, 0.05, 0.1, 0.2]), ("2", [0.5, 1, 2, 4])])
def test_pgd_does_not_weaken_with_eps_and_stays_in_the_ball(run, norm, eps):
    s, model = sweep(run, attack="pgd", attack_norm=norm, eps=eps, attack_images=100)
    found = []
    for row in s.run("pgd", norm):
        x, x_adv = s.last[0], s.last[1]
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        d = attack.perturbation_norm(x_adv, x, norm)
        assert (d <= row.eps * (1 + 1e-5) + 1e-6).all() and d.max() > 0.5 * row.eps
        found.append(row.adv_acc)
    assert found == sorted(found, reverse=True) and found[-1] < found[0]
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_pgd_through_the_full_unroll_beats_square(run):
    s, _ = sweep(run, attack=["pgd", "square"], eps=[0.05, 0.1], attack_images=100)
    pgd = [r.adv_acc for r in s.run("pgd", "inf")]
    square = [r.adv_acc for r in s.run("square", "inf")]
    assert all(p <= q for p, q in zip(pgd, square)), (pgd, square)
    assert pgd[-1] < square[-1]


def test_cw_rows_count_perturbations_within_eps(run):
    s, _ = sweep(run, attack="cw", attack_norm="2", eps=[0.5, 1.5, 3, 100], attack_images=30)
    found = [r.adv_acc for r in s.run("cw", "2")]
    assert found == sorted(found, reverse=True) and found[-1] < found[0]
    x_adv = s.last[1]
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("norm,eps", [("2", [0, 1, 3, 100]), ("inf", [0, 0.1, 0.3, 1])])
def test_hsj_uses_labels_only_and_counts_perturbations_within_eps(run, norm, eps,
                                                                   monkeypatch):
    """HopSkipJump through ART: no gradient asked for; eps 0 is the clean accuracy (an image
    already wrong stays wrong); the whole box breaks every digit; seeded, so a rerun equals."""
    runs = []
    for _ in range(2):
        s, _ = sweep(run, attack="hsj", attack_norm=norm, eps=eps, attack_images=12,
                     hsj_iter=3, hsj_evals=100)
        for gradient in ("loss_gradient", "class_gradient"):
            monkeypatch.setattr(s.classifier, gradient, lambda *a, **k: pytest.fail("gradient"))
        runs.append(([r.adv_acc for r in s.run("hsj", norm)], s.last))
    (found, (x, x_adv, clean_pred, pred, y)), again = runs
    assert found[0] == 100 * (clean_pred == y).mean() and found[-1] == 0
    assert found == sorted(found, reverse=True)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv[clean_pred != y] == x[clean_pred != y]).all()
    assert again[0] == found and (again[1][1] == x_adv).all()


def test_hsj_flags_without_hsj_are_refused(run, capsys):
    rc, _, err = cli(["--todo", "attack", "--load-path", run, "--hsj-evals", "500"], capsys)
    assert rc == 2 and "--hsj-evals applies to --attack hsj; remove it or add hsj" in err


def test_outputs_append_and_plot(run, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in run.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    attack_cli(folder, "--eps", "0.01", "0.05", "--attack-images", "20", "--image-print", "4")
    found = attack_cli(folder, "--attack", "fgsm", "--attack-norm", "100", "--eps", "0.05",
                       "--attack-images", "20", "--attack-step", "3", "--predict-step", "12")
    text = (folder / attack.RESULTS_FILE).read_text()
    assert text.count(attack.HEADER) == 2 and text.count("# ") == 2 and "--todo attack" in text
    assert [(r.attack, r.eps, r.attack_step, r.predict_step) for r in found] == [
        ("pgd", 0.01, 10, 10), ("pgd", 0.05, 10, 10), ("fgsm", 0.05, 3, 12)]
    for name in (attack.PLOT_FILE, "adversarial_examples_pgd_Linf.png"):
        assert (folder / name).read_bytes().startswith(b"\x89PNG")
    assert not (folder / "adversarial_examples_fgsm_Linf.png").exists()


def test_every_pair_of_attack_and_predict_steps_gets_its_row(run, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in run.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    flags = ["--attack", "fgsm", "--eps", "0.05", "0.1", "--attack-images", "50"]
    found = attack_cli(folder, *flags, "--attack-step", "3", "10", "--predict-step", "6", "12")
    assert [(r.attack_step, r.predict_step) for r in found] == [
        (a, p) for a in (3, 10) for p in (6, 12) for _ in (0.05, 0.1)]
    assert len({r.adv_acc for r in found}) > 2  # the steps matter
    assert (folder / attack.STEPS_PLOT_FILE).read_bytes().startswith(b"\x89PNG")
    for a, p in [(3, 12), (10, 6)]:  # each pair as its own call gives the same rows
        alone = attack_cli(folder, *flags, "--attack-step", str(a), "--predict-step", str(p))
        assert [r.adv_acc for r in alone[-2:]] == [
            r.adv_acc for r in found if (r.attack_step, r.predict_step) == (a, p)]


def test_a_gradient_free_attack_runs_once_per_predict_step(run, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in run.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    found = attack_cli(folder, "--attack", "square", "--eps", "0.1", "--attack-images", "10",
                       "--attack-step", "3", "10", "--predict-step", "6", "12")
    assert [(r.attack_step, r.predict_step) for r in found] == [(3, 6), (3, 12)]


def test_rows_name_the_solver_their_predictions_relaxed_with(run, tmp_path):
    """Each solver settles at its own fixed points: rows say which made them, files written
    before that still read, and the report takes the run's own solver's rows only."""
    import report
    folder = tmp_path / "copy"
    shutil.copytree(run, folder)
    path = folder / attack.RESULTS_FILE
    old_header = "\t".join(attack.HEADER.split("\t")[:-1])  # before rows had a solver
    path.write_text(f"{old_header}\nfgsm\tinf\t0.2\t90\t10\t50\t10\t10\t0.5\n")
    flags = ["--attack", "fgsm", "--eps", "0.1", "--attack-images", "50"]
    attack_cli(folder, *flags)
    found = attack_cli(folder, *flags, "--solver", "evenodd", "--tol", "1e-4")
    assert [r.solver for r in found] == ["", "sync", "evenodd tol 0.0001"]
    assert (found[0].eps, found[0].adv_acc) == (0.2, 10.0)
    stronger = attack.Row("fgsm", "inf", 0.1, 90.0, 0.0, 50, 10, 10, 1.0, "anderson m 5 tol 1")
    with open(path, "a") as f:
        f.write(stronger.line() + "\n")
    assert attack.read_rows(path)[-1] == stronger
    assert report.read_run(folder).adversarial[("fgsm", "inf", 0.1)] == found[1].adv_acc
    assert (folder / attack.PLOT_FILE).read_bytes().startswith(b"\x89PNG")


def test_a_read_only_run_folder_fails_before_attacking(run, capsys, monkeypatch):
    import main

    def read_only(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    def no_attack(*args, **kwargs):
        raise AssertionError("attacked a folder it cannot write to")

    monkeypatch.setattr(main, "append_text", read_only)
    monkeypatch.setattr(attack.Sweep, "run", no_attack)
    rc, _, err = cli(["--todo", "attack", "--load-path", run], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "cannot write Adversarial_Accuracy.txt there (Permission denied)" in err


def tiny_models():
    torch.manual_seed(0)
    lca = LCAConfig(n_feats=3, kernel=3, stride=2, padding=1, tau=5.0, iters=2)
    return {"MLP": build_mlp([784, 12, 10], "mysig", "mse", False),
            "VFMLP": build_mlp([784, 12, 11, 10], "tanh", "cel", True, vf=True),
            "CNN": build_cnn((1, 28, 28), [3, 4], [5, 3], [1, 1], [0, 0], "mm", [10],
                             "hard_sigmoid", "cel", True),
            "LCACNN": build_lcanet((1, 28, 28), lca, [4], [3], [1], [1], "m", [10], "mysig",
                                   "cel", True)}


@pytest.mark.parametrize("budget", [MEMORY_BUDGET, 0], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("name", ["MLP", "VFMLP", "CNN", "LCACNN"])
def test_the_adapter_gradient_is_the_unrolled_free_phase(name, budget, float64, monkeypatch):
    """UnrolledNet's x-gradient (plain, or checkpointed over the steps when the budget is
    exceeded) equals the plain unroll's exactly and a central finite difference; under
    no_grad it runs predict_steps."""
    model = tiny_models()[name].double()
    net = UnrolledNet(model, attack_steps=7, predict_steps=11, memory_budget=budget)
    segments = []
    checkpointed = art_patches.checkpointed_relax
    monkeypatch.setattr(art_patches, "checkpointed_relax",
                        lambda *a: segments.append(a[-1]) or checkpointed(*a))
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    w = torch.randn(2, 10)
    (g,) = torch.autograd.grad((net(x) * w).sum(), x)
    plain = relax(model, model.batch(x), model.init_states(x), 7)
    (g_plain,) = torch.autograd.grad((model.logits(plain) * w).sum(), x)
    assert torch.equal(g, g_plain)
    direction = torch.randn_like(x)
    h = 1e-6
    with torch.no_grad():
        fd = ((model(x + h * direction, 7) - model(x - h * direction, 7)) * w).sum() / (2 * h)
        assert torch.equal(net(x), model(x, 11))
    assert (g * direction).sum().item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-9)
    assert (len(segments) == 1 and 1 <= segments[0] < 7) == (budget == 0)


def test_unroll_memory_of_the_published_cifar_network():
    """What README states: a step of the published CIFAR-10 network keeps about 2.2 MiB per
    image for backward, its state 0.22 MiB, so T = 250 checkpoints in segments of 5."""
    model = build_cnn((3, 32, 32), [128, 256, 512, 512], [3] * 4, [1] * 4, [1, 1, 1, 0],
                      "mmmm", [10], "my_hard_sig", "cel", True)
    state, step = unroll_bytes(model, torch.rand(1, 3, 32, 32))
    assert state == 4 * (128 * 16 * 16 + 256 * 8 * 8 + 512 * 4 * 4 + 512)
    assert 2.0 < step / 2**20 < 2.4
    assert checkpoint_segment(250, state, step) == 5
    images = torch.rand(50, 3, 32, 32)  # a slice of a batch is measured as one image
    assert unroll_bytes(model, images[:1]) == (state, step)


def test_cifar_normalisation_is_arts_preprocessing_once():
    torch.manual_seed(0)
    model = build_cnn((3, 32, 32), [4], [5], [1], [0], "m", [10], "mysig", "cel", True)
    classifier = art_classifier(model, (3, 32, 32), 5, 5, NORMALISATION["CIFAR10"])
    images = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        ours = model(normalise(images, "CIFAR10"), 5)
    torch.testing.assert_close(torch.from_numpy(classifier.predict(images.numpy())), ours,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pixels(normalise(images, "CIFAR10"), "CIFAR10"), images)


def test_art_is_the_installed_unmodified_package_and_our_adapter_its_only_wrapper():
    import art

    location = Path(art.__file__).resolve()
    # imported from the environment's site-packages, not from a copy in the project
    assert location.parent.parent.name == "site-packages" and not (ROOT / "art").exists()
    dist = importlib.metadata.distribution("adversarial-robustness-toolbox")
    checked = 0
    for f in dist.files:
        if f.hash is None or not str(f).startswith("art/"):
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(Path(f.locate()).read_bytes())
                                          .digest()).rstrip(b"=").decode()
        assert digest == f.hash.value, f"{f} differs from the installed wheel"
        checked += 1
    assert checked > 100
    model = tiny_models()["MLP"]
    classifier = art_classifier(model, (1, 28, 28), 3, 4, None)
    assert type(classifier) is PyTorchClassifier
    assert isinstance(classifier.model, UnrolledNet) and classifier.model.model is model
    ours = [p for p in ROOT.glob("*.py")] + list((ROOT / "art_patches").glob("*.py"))
    for path in ours:  # nothing of ART is subclassed or copied into the project
        text = path.read_text()
        assert "(PyTorchClassifier)" not in text and "(EvasionAttack)" not in text, path
    assert sorted(p.name for p in (ROOT / "art_patches").iterdir()
                  if p.suffix == ".py") == ["__init__.py"]


def test_default_sweeps_and_image_counts():
    lin, l2 = attack.DEFAULT_EPS["inf"], attack.DEFAULT_EPS["2"]
    assert len(lin) == len(l2) == 11 and math.isclose(lin[-1], 8 / 255)
    assert math.isclose(min(lin), 1e-4) and math.isclose(sorted(lin)[-1], 0.1)
    assert math.isclose(min(l2), 0.05) and math.isclose(max(l2), 3) and 1.0 in l2
    args = Namespace(attack_images=None, eps=None)
    assert attack.image_count(args, "pgd", 1000) == 1000
    assert attack.image_count(args, "square", 1000) == 200
    assert attack.eps_values(args, "inf") == sorted(lin)
    assert np.isinf(attack.art_norm("inf")) and attack.NORMS["100"] == "inf"


def test_seed_attack_lines_run_against_a_run_folder(tmp_path, capsys, monkeypatch):
    """The seed's attack lines as written, with --load-path pointing at a run folder of their
    architecture and a small CIFAR-10 of the test's own files (no network here), shortened
    only in what they compute: --T1 5 (the deepest line has 5 layers), two images, one eps."""
    import shlex

    write_cifar(tmp_path / "data", "CIFAR10", 2, monkeypatch)
    lines = [shlex.split(line)[2:] for line in (ROOT / "tests" / "seed_lines.txt")
             .read_text().splitlines() if "--todo attack" in line]
    assert len(lines) == 5
    folders = {}
    for argv in lines:
        head = "cel" if "--softmax" in argv else "mse"
        if head not in folders:  # a run of the line's own architecture and head, 1 epoch
            train = [w if w != "attack" else "train" for w in argv[:argv.index("--load-path")]]
            train += ["--T1", "2", "--T2", "1", "--epochs", "1", "--save", "--data-dir",
                      tmp_path / "data", "--results-dir", tmp_path / head]
            assert cli(train, capsys)[0] == 0
            folders[head] = only_run_dir(tmp_path / head)
        at = argv.index("--load-path")
        line = argv[:at + 1] + [str(folders[head])] + argv[at + 2:]
        rc, out, err = cli(line + ["--data-dir", tmp_path / "data", "--T1", "5",
                                   "--attack-images", "2", "--eps", "0.01"], capsys)
        assert rc == 0, err
        assert "pgd Linf eps 0.01" in out
    for folder in folders.values():
        with open(folder / attack.RESULTS_FILE) as f:
            assert sum(1 for r in csv.reader(f, delimiter="\t") if r and r[0] == "pgd") >= 1
