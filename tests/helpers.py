"""Shared helpers: run the CLI in-process and read what a run wrote."""

import csv
import pickle
import shlex
from pathlib import Path

import numpy as np
import torch
import torchvision

import main

ROOT = Path(__file__).resolve().parent.parent
TINY_MLP = ["--archi", "784", "32", "10", "--T1", "5", "--T2", "2", "--mbs", "200",
            "--optim", "sgd", "--lrs", "0.05", "0.05", "--mmt", "0.9"]


def cli(argv, capsys=None):
    """Run main.py in-process; return (exit code, stdout, stderr)."""
    rc = main.main([str(a) for a in argv])
    out, err = capsys.readouterr() if capsys else ("", "")
    return rc, out, err


SMALL_MLP = ["--archi", "784", "32", "10", "--T1", "10", "--T2", "4", "--mbs", "100", "--optim",
             "sgd", "--lrs", "0.1", "0.05", "--mmt", "0.9", "--epochs", "1"]


def trained_run(root: Path, *flags) -> Path:
    """A small EP MLP (SMALL_MLP, `flags` on top) trained on the offline digits and saved
    under root; its results folder."""
    assert cli([*SMALL_MLP, *flags, "--save", "--results-dir", root])[0] == 0
    return only_run_dir(root)


def only_run_dir(root: Path) -> Path:
    runs = [p for p in root.glob("*/*/*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def metrics(run_dir: Path, drop=("seconds",)) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def script_lines(path: Path) -> list[list[str]]:
    """The argument lists of the `python main.py ...` lines of a shell script (a line ending
    in a backslash goes on on the next)."""
    lines = []
    for line in path.read_text().replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if len(words) > 2 and words[0] == "python" and words[1].startswith("main"):
            lines.append([w for w in words[2:] if w != "$@"])  # "$@": extra flags
    return lines


def write_cifar(root: Path, task: str, n: int, monkeypatch) -> None:
    """A CIFAR-10/100 folder of our own files (n images per batch file: red channel 0, green
    and blue 1) that torchvision loads; its md5 comparison is skipped, nothing else."""
    cls = getattr(torchvision.datasets, task)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    folder = Path(root) / cls.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    key, classes = ("labels", 10) if task == "CIFAR10" else ("fine_labels", 100)
    pixels = np.full((n, 3 * 32 * 32), 255, dtype=np.uint8)
    pixels[:, :1024] = 0
    for name, _ in cls.train_list + cls.test_list:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": pixels, key: rng.integers(0, classes, n).tolist()}, f)
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({cls.meta["key"]: [f"c{i}" for i in range(classes)]}, f)


def train_one_batch(argv: list[str], image_shape: tuple[int, ...]):
    """A command line's model, trained on one batch of 2 random images of `image_shape`:
    (args, model, trainer, data); the gradients are left in .grad."""
    import config
    from data_utils import Split
    from trainer import Trainer

    args, typed = main.parse(argv)
    config.validate(args, typed)
    torch.manual_seed(0)
    model = config.build_model(args)
    data = Split(torch.rand(2, *image_shape), torch.tensor([3, 7]))
    trainer = Trainer(model, data, data, args, None)
    s = trainer.train_batch(data.x, data.y)[2]
    return args, model, trainer, data, s
