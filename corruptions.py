"""Accuracy on common corruptions (--todo corruptions --corruptions-dir C), read in the
layouts the benchmarks are distributed in:

- CIFAR-10-C / CIFAR-100-C: `C/<name>.npy` (uint8, K*N x 32 x 32 x 3: the K severities in
  order, N images each) and `C/labels.npy` (K*N labels);
- MNIST-C: `C/<name>/test_images.npy` (uint8, K*N x 28 x 28 x 1) and
  `C/<name>/test_labels.npy`.

N is the task's test-set size, so K = 1 for MNIST-C's own files (one severity) and 5 for
CIFAR-10-C's and for check/make_corruptions.py's.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from data_utils import Split, normalise
from errors import UsageError

RESULTS_FILE, PLOT_FILE = "Corruption_Accuracy.txt", "corruption_accuracy.png"
CLEAN = ("identity",)  # MNIST-C ships the clean test set beside the corruptions: not one


@dataclass
class CorruptionRow:
    """One line of Corruption_Accuracy.txt."""
    corruption: str
    severity: int
    images: int
    accuracy: float
    clean_acc: float

    def line(self) -> str:
        return "\t".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in astuple(self))


HEADER = "\t".join(f.name for f in fields(CorruptionRow))


@dataclass
class Corruption:
    """One corruption's images (uint8, N x H x W x C, memory-mapped) and labels."""
    name: str
    images: np.ndarray
    labels: np.ndarray
    where: str  # the file, for messages


def find(folder: Path) -> list[Corruption]:
    """Every corruption in `folder`, in either layout, sorted by name."""
    if not folder.is_dir():
        raise UsageError(f"--corruptions-dir {folder}: no such folder; give the folder of "
                         "CIFAR-10-C / CIFAR-100-C (<name>.npy, labels.npy) or MNIST-C "
                         "(<name>/test_images.npy, <name>/test_labels.npy)")
    if (folder / "labels.npy").exists():  # CIFAR-C: one labels file for all
        labels = read(folder / "labels.npy")
        found = [Corruption(p.stem, read(p), labels, str(p))
                 for p in sorted(folder.glob("*.npy")) if p.stem not in ("labels", *CLEAN)]
    else:
        found = [Corruption(d.name, read(d / "test_images.npy"), read(d / "test_labels.npy"),
                            str(d / "test_images.npy"))
                 for d in sorted(p for p in folder.iterdir()
                                 if (p / "test_images.npy").exists() and p.name not in CLEAN)]
    if not found:
        raise UsageError(f"--corruptions-dir {folder}: holds no corruption: neither "
                         "<name>.npy beside labels.npy (CIFAR-C) nor <name>/test_images.npy "
                         "folders (MNIST-C)")
    return found


def read(path: Path) -> np.ndarray:
    if not path.exists():
        raise UsageError(f"--corruptions-dir: {path} is missing (the labels of the images "
                         "beside it)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(f"--corruptions-dir: {path} is not a .npy array ({e})") from None


def severities(c: Corruption, test_labels: np.ndarray, image_shape: tuple[int, ...]) -> int:
    """How many severities the corruption holds (its images are K x the test set, its labels
    the test set's K times), or one line naming the file and what it should hold."""
    channels, h, w = image_shape
    test_size = len(test_labels)
    x, y = c.images, c.labels
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (h, w, channels):
        raise UsageError(f"--corruptions-dir: {c.where} holds {x.dtype} "
                         f"{'x'.join(map(str, x.shape))}; it should hold uint8 K*N x {h} x {w} x "
                         f"{channels} images (this task's)")
    k, rest = divmod(len(x), test_size)
    if rest or not 1 <= k <= 5:
        raise UsageError(f"--corruptions-dir: {c.where} holds {len(x)} images; it should hold "
                         f"1 to 5 severities of the {test_size} test images, in order")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise UsageError(f"--corruptions-dir: the labels of {c.where} are {y.dtype} "
                         f"{'x'.join(map(str, y.shape))}; they should be {len(x)} integers")
    if (np.asarray(y[:test_size]) != test_labels).any():
        raise UsageError(f"--corruptions-dir: the labels of {c.where} are not the test set's, "
                         "in its order (a benchmark of another task?)")
    return k


def severity_split(c: Corruption, severity: int, test_size: int, task: str,
                   device: torch.device) -> Split:
    """The images of one severity as the model's inputs (pixels in [0, 1], normalised)."""
    part = slice((severity - 1) * test_size, severity * test_size)
    x = torch.from_numpy(np.array(c.images[part])).to(device)  # a copy of the mapped file
    x = normalise(x.permute(0, 3, 1, 2).float().div_(255), task)
    y = torch.from_numpy(np.array(c.labels[part], dtype=np.int64)).to(device)
    return Split(x, y)


def summary(rows: list[CorruptionRow]) -> str:
    """The mean accuracy over corruptions and severities, and the mean corruption error
    relative to the clean error."""
    clean_error = 100 - rows[0].clean_acc
    mean = float(np.mean([r.accuracy for r in rows]))
    relative = (100 - mean) / clean_error if clean_error > 0 else float("inf")
    return (f"mean corruption accuracy {mean:.2f}% (clean {rows[0].clean_acc:.2f}%); mean "
            f"corruption error / clean error {relative:.3g}")
