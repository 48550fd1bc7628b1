"""--todo corruptions on files in the published layouts, written here: MNIST-C's (one severity
per file, or five stacked) and CIFAR-10-C's; a corruption that changes nothing gives the clean
accuracy, each severity is the model's accuracy on exactly its images, and a bad file is one
line naming it."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import corruptions
from data_utils import load_task
from helpers import ROOT, cli, only_run_dir, trained_run, write_cifar

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("runs"))


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The offline test digits as MNIST-C stores them: uint8 N x 28 x 28 x 1, and labels."""
    _, test = load_task("MNIST5K", "", torch.device("cpu"))
    x = (test.x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return x, test.y.numpy()


def write_mnist_c(folder, corrupted: dict) -> None:
    for name, (x, y) in corrupted.items():
        (folder / name).mkdir(parents=True)
        np.save(folder / name / "test_images.npy", x)
        np.save(folder / name / "test_labels.npy", y)


def corruption_rows(run, folder, capsys):
    rc, out, err = cli(["--todo", "corruptions", "--load-path", run, "--corruptions-dir", folder],
                       capsys)
    assert rc == 0, err
    lines = (run / corruptions.RESULTS_FILE).read_text().splitlines()
    rows = [ln.split("\t") for ln in lines if ln and not ln.startswith(("#", "corruption\t"))]
    return {(r[0], int(r[1])): (int(r[2]), float(r[3]), float(r[4])) for r in rows}, out


def test_mnist_c_layout_one_and_five_severities(run, tmp_path, capsys):
    x, y = digits()
    dark = (x // 2).astype(np.uint8)
    folder = tmp_path / "mnist_c"
    write_mnist_c(folder, {"identity": (x, y), "same": (x, y), "dark": (dark, y),
                           "stacked": (np.concatenate([x, dark, x, dark, x]), np.tile(y, 5))})
    rows, out = corruption_rows(run, folder, capsys)
    # MNIST-C's identity (the clean images) is not a corruption
    assert sorted(rows) == [("dark", 1), ("same", 1)] + [("stacked", s) for s in range(1, 6)]
    clean = rows[("same", 1)][2]
    assert all(r[0] == 1000 and r[2] == clean for r in rows.values())
    assert rows[("same", 1)][1] == pytest.approx(clean, abs=1e-3)  # unchanged images
    for s in (1, 3, 5):
        assert rows[("stacked", s)][1] == rows[("same", 1)][1]
    for s in (2, 4):  # each severity is exactly its own images
        assert rows[("stacked", s)][1] == rows[("dark", 1)][1]
    assert "mean corruption accuracy" in out
    assert (run / corruptions.PLOT_FILE).read_bytes().startswith(b"\x89PNG")


def test_cifar_c_layout(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    write_cifar(data, "CIFAR10", 10, monkeypatch)
    root = tmp_path / "runs"
    argv = ["--model", "CNN", "--task", "CIFAR10", "--channels", "4", "--kernels", "3",
            "--strides", "1", "--paddings", "1", "--pools", "m", "--fc", "10", "--lrs", "0.01",
            "0.01", "--T1", "4", "--T2", "2", "--mbs", "10", "--epochs", "1", "--data-dir", data,
            "--save", "--results-dir", root]
    assert cli(argv)[0] == 0
    run = only_run_dir(root)
    _, test = load_task("CIFAR10", str(data), torch.device("cpu"))
    pixels = np.stack([np.asarray(img) for img in read_cifar_test(data)])  # N x 32 x 32 x 3
    folder = tmp_path / "cifar_c"
    folder.mkdir()
    np.save(folder / "labels.npy", np.tile(test.y.numpy(), 5))
    np.save(folder / "snow.npy", np.concatenate([pixels] * 5))
    rows, _ = corruption_rows(run, folder, capsys)
    assert sorted(rows) == [("snow", s) for s in range(1, 6)]
    assert all(r[1] == pytest.approx(r[2], abs=1e-3) for r in rows.values())


def read_cifar_test(data):
    import torchvision

    return [img for img, _ in torchvision.datasets.CIFAR10(str(data), train=False)]


@pytest.mark.parametrize("change,message", [
    (lambda x, y: (x.astype(np.float32), y), "holds float32 1000x28x28x1; it should hold uint8"),
    (lambda x, y: (x[:700], y[:700]), "holds 700 images; it should hold 1 to 5 severities"),
    (lambda x, y: (x, y[:10]), "they should be 1000 integers"),
    (lambda x, y: (x, np.roll(y, 1)), "are not the test set's, in its order"),
])
def test_a_bad_file_is_one_line_naming_it(run, tmp_path, capsys, change, message):
    folder = tmp_path / "bad"
    write_mnist_c(folder, {"fog": change(*digits())})
    rc, _, err = cli(["--todo", "corruptions", "--load-path", run, "--corruptions-dir", folder],
                     capsys)
    assert rc == 2 and message in err and "fog/test_images.npy" in err
    assert err.count("\n") == 1


def test_an_empty_file_and_a_labels_only_folder_are_one_line(run, tmp_path, capsys):
    (tmp_path / "empty" / "fog").mkdir(parents=True)
    (tmp_path / "empty" / "fog" / "test_images.npy").write_bytes(b"")
    (tmp_path / "labels_only").mkdir()
    np.save(tmp_path / "labels_only" / "labels.npy", digits()[1])
    for folder, message in (("empty", "fog/test_images.npy is not a .npy array"),
                            ("labels_only", "holds no corruption")):
        rc, _, err = cli(["--todo", "corruptions", "--load-path", run, "--corruptions-dir",
                          tmp_path / folder], capsys)
        assert rc == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("flags,message", [
    (["--corruptions-dir", "{tmp}/none"], "no such folder"),
    (["--corruptions-dir", "{tmp}"], "holds no corruption"),
    ([], "--todo corruptions needs --corruptions-dir"),
])
def test_bad_folders_are_one_line(run, tmp_path, capsys, flags, message):
    argv = ["--todo", "corruptions", "--load-path", run, *[f.format(tmp=tmp_path) for f in flags]]
    rc, _, err = cli(argv, capsys)
    assert rc == 2 and message in err and err.count("\n") == 1


def make_corruptions(folder, *names):
    subprocess.run([sys.executable, "check/make_corruptions.py", str(folder), "--corruptions",
                    *names], cwd=ROOT, check=True, capture_output=True, timeout=600)


def test_make_corruptions_writes_seeded_mnist_c_files_that_hurt_with_severity(run, tmp_path,
                                                                            capsys):
    """Through the library (imagecorruptions), the two with their own generators among them:
    the same bytes twice, MNIST-C's layout, noise growing with severity, and --todo
    corruptions reads it."""
    names = ("gaussian_noise", "impulse_noise", "glass_blur", "contrast")
    for folder in (tmp_path / "a", tmp_path / "b"):
        make_corruptions(folder, *names)
    x, y = digits()
    for name in names:
        images = np.load(tmp_path / "a" / name / "test_images.npy")
        assert images.dtype == np.uint8 and images.shape == (5000, 28, 28, 1)
        assert (np.load(tmp_path / "a" / name / "test_labels.npy") == np.tile(y, 5)).all()
        assert (images == np.load(tmp_path / "b" / name / "test_images.npy")).all()
        change = [np.abs(images[s * 1000:(s + 1) * 1000].astype(float) - x).mean()
                  for s in range(5)]
        assert min(change) > 0, name
        if name != "glass_blur":  # ImageNet-C's glass blur is not monotone at 28 pixels
            assert change == sorted(change), (name, change)
    rows, _ = corruption_rows(run, tmp_path / "a", capsys)
    noise = [rows[("gaussian_noise", s)][1] for s in range(1, 6)]
    assert noise[-1] < noise[0] - 2  # (the small MLP of 82.8% loses about 5 points)
