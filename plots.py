"""Plots written into the results folder (matplotlib, no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

from results import atomic_write_bytes  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_accuracy(history: dict[str, list], path: Path) -> None:
    """train-test_acc.png: train and test accuracy per epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(history["epoch"], history["train_acc"], "o-", label="train")
    ax.plot(history["epoch"], history["test_acc"], "s-", label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_activity(states: list[Tensor], path: Path) -> None:
    """Histogram of each layer's free-phase activations."""
    fig, axes = plt.subplots(1, len(states), figsize=(3 * len(states), 2.6), squeeze=False)
    for k, (ax, s) in enumerate(zip(axes[0], states)):
        ax.hist(s.detach().float().flatten().cpu().numpy(), bins=50)
        ax.set_title(f"layer {k + 1}")
        ax.set_xlabel("activation")
    save_figure(fig, path)
