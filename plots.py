"""Plots written into the results folder (matplotlib, no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from results import atomic_write_bytes  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_accuracy(history: dict[str, list], path: Path) -> None:
    """train-test_acc.png: train and test accuracy per epoch; for LCANet also the code's
    reconstruction error and sparsity (test split) beside it."""
    code = [(k, label) for k, label in (("recon_error", "reconstruction error"),
                                        ("sparsity", "activation sparsity (fraction active)"))
            if k in history]
    fig, axes = plt.subplots(1, 1 + len(code), figsize=(6 + 4 * len(code), 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot(history["epoch"], history["train_acc"], "o-", label="train")
    ax.plot(history["epoch"], history["test_acc"], "s-", label="test")
    if "robust_acc" in history:  # advtrain: PGD examples of a fixed test subset
        points = [(e, v) for e, v in zip(history["epoch"], history["robust_acc"]) if v is not None]
        ax.plot(*zip(*points), "^-", label="robust test (PGD)")
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    for ax, (key, label) in zip(axes[0, 1:], code):
        points = [(e, v) for e, v in zip(history["epoch"], history[key]) if v is not None]
        ax.plot(*zip(*points), "o-", color="C2")
        ax.set_ylabel(label)
    for ax in axes[0]:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_dictionary(dictionary: Tensor, path: Path) -> None:
    """dictionary.png: every atom of LCANet's dictionary, each scaled to its own range."""
    atoms = dictionary.detach().float().cpu()
    n = atoms.shape[0]
    cols = min(n, 8)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, atom in zip(axes.flat, atoms):
        low, high = atom.min(), atom.max()
        image = ((atom - low) / (high - low).clamp_min(1e-12)).permute(1, 2, 0)
        ax.imshow((image.squeeze(2) if image.shape[2] == 1 else image).numpy(), cmap="gray",
                  interpolation="nearest")
    fig.suptitle(f"{n} atoms of {atoms.shape[2]}x{atoms.shape[3]}")
    save_figure(fig, path)


def plot_activity(states: list[Tensor], path: Path) -> None:
    """Histogram of each layer's free-phase activations."""
    fig, axes = plt.subplots(1, len(states), figsize=(3 * len(states), 2.6), squeeze=False)
    for k, (ax, s) in enumerate(zip(axes[0], states)):
        ax.hist(s.detach().float().flatten().cpu().numpy(), bins=50)
        ax.set_title(f"layer {k + 1}")
        ax.set_xlabel("activation")
    save_figure(fig, path)


def plot_angles(history: dict[str, list], path: Path) -> None:
    """angles.png: angle between each feedback weight B and its W per epoch (VF models)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in (k for k in history if k.startswith("angle_")):
        ax.plot(history["epoch"], history[key], "o-", label=f"layer {key[6:]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("angle(B, W) (degrees)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_gdu_curves(result: dict, path: Path, units: int = 3, seed: int = 0) -> None:
    """gdu_curves.png: cumulative sums over the nudged steps for a few units of every tensor:
    BPTT solid, one-sided EP dashed, symmetric EP dotted."""
    bptt = result["bptt"]
    names = list(bptt)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    gen = torch.Generator().manual_seed(seed)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes.flat, names):
        flat = {k: result[k][name].flatten(1).cpu() for k in ("bptt", "one_sided", "symmetric")
                if k in result}
        moving = (flat["bptt"] != 0).any(0).nonzero().flatten()  # skip units nothing reaches
        picks = moving[torch.randperm(len(moving), generator=gen)[:units]]
        for color, i in zip(colors, picks.tolist()):
            for key, style in (("bptt", "-"), ("one_sided", "--"), ("symmetric", ":")):
                if key in flat:
                    curve = torch.cat([torch.zeros(1), flat[key][:, i].cumsum(0).float()])
                    ax.plot(curve.numpy(), style, color=color, lw=1.5)
        ax.set_title(name)
        ax.set_xlabel("nudged step t")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    styles = [("-", "BPTT"), ("--", "EP one-sided")] + ([(":", "EP symmetric")]
                                                          if "symmetric" in result else [])
    fig.legend([plt.Line2D([], [], color="k", ls=ls) for ls, _ in styles],
               [label for _, label in styles], loc="upper center", ncol=len(styles))
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    save_figure(fig, path)


def plot_gdu_rmse(metrics: dict[str, dict], path: Path) -> None:
    """gdu_rmse.png: normalised RMSE per tensor, one-sided and (if run) symmetric side by side,
    with how many times smaller the symmetric error is above each pair."""
    names = list(metrics["one_sided"])
    estimates = [k for k in ("one_sided", "symmetric") if k in metrics]
    width = 0.8 / len(estimates)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(names)), 4))
    for j, key in enumerate(estimates):
        values = [metrics[key][n]["rmse"] for n in names]
        ax.bar([i + j * width for i in range(len(names))], values, width,
               label=key.replace("_", "-"))
    if "symmetric" in metrics:
        for i, n in enumerate(names):
            one, sym = metrics["one_sided"][n]["rmse"], metrics["symmetric"][n]["rmse"]
            ax.annotate(f"{one / max(sym, 1e-12):.0f}x", (i + width / 2, max(one, sym)),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks([i + width * (len(estimates) - 1) / 2 for i in range(len(names))], names)
    ax.set_yscale("log")
    ax.set_ylabel("normalised RMSE vs BPTT")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    save_figure(fig, path)


def adversarial_panel(ax: plt.Axes, legend_size: int) -> None:
    """An adversarial-accuracy panel's y axis (0 to 100%), grid and legend."""
    ax.set_ylabel("adversarial accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def plot_adversarial(rows: list, path: Path) -> None:
    """adversarial_accuracy.png: adversarial accuracy against eps, a panel per norm and a line
    per attack (and step counts, and source run for transferred examples, dashed; an eps
    measured twice shows its latest row), clean accuracy dotted."""
    norms = sorted({r.norm for r in rows}, key=lambda n: n != "inf")
    named = solver_names(rows)
    fig, axes = plt.subplots(1, len(norms), figsize=(6 * len(norms), 4), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        lines: dict[tuple, dict[float, object]] = {}
        for r in rows:
            if r.norm == norm:
                key = (r.attack, r.attack_step, r.predict_step, r.source, named(r))
                lines.setdefault(key, {})[r.eps] = r
        for (attack, a_step, p_step, source, solver), by_eps in lines.items():
            eps = sorted(e for e in by_eps if e > 0)  # eps 0 is the clean line
            steps = "" if a_step == 0 else f", {a_step}/{p_step} steps"
            origin = f" from {'/'.join(Path(source).parts[-3:])}" if source else ""
            line, = ax.plot(eps, [by_eps[e].adv_acc for e in eps], "o-" if not source else "s--",
                            label=f"{attack}{steps}{solver}{origin}")
            ax.axhline(by_eps[max(by_eps)].clean_acc, color=line.get_color(), ls=":", lw=1)
        if any(r.eps > 0 for r in rows if r.norm == norm):
            ax.set_xscale("log")
        ax.set_xlabel(f"eps (L{norm}, pixels in [0, 1])")
        adversarial_panel(ax, 8)
    fig.tight_layout()
    save_figure(fig, path)


def solver_names(rows: list):
    """A row's solver as a line's label ends (", evenodd tol 0.0001"), only where the rows
    were made with more than one."""
    several = len({r.solver for r in rows}) > 1
    return lambda r: f", {r.solver or 'solver unrecorded'}" if several else ""


def plot_adversarial_examples(x, x_adv, clean_pred, adv_pred, y, path: Path, n: int,
                              title: str) -> None:
    """A grid of n clean / adversarial pairs (pixel space) with their predicted labels."""
    n = min(n, len(x))
    picks = np.linspace(0, len(x) - 1, n).round().astype(int)  # spread over the set
    x, x_adv, clean_pred, adv_pred, y = (a[picks] for a in (x, x_adv, clean_pred, adv_pred, y))
    cols = min(n, 8)
    rows = -(-n // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.6 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        for k, (image, pred) in enumerate(((x[i], clean_pred[i]), (x_adv[i], adv_pred[i]))):
            ax = axes[2 * r + k, c]
            picture = image.transpose(1, 2, 0)
            ax.imshow(picture[:, :, 0] if picture.shape[2] == 1 else picture.clip(0, 1),
                      cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{'clean' if k == 0 else 'adv'}: {pred}", fontsize=8,
                         color="black" if pred == y[i] else "red")
    fig.suptitle(f"{title}: predicted labels, red where wrong")
    fig.tight_layout()
    save_figure(fig, path)


def plot_characteristic(rows: list[dict], times: np.ndarray, path: Path, title: str) -> None:
    """characteristic.png: accuracy and settled share against the free step, the states' mean
    relative change per step, and the histogram of the images' characteristic times."""
    steps = [r["step"] for r in rows]
    fig, (acc, change, hist) = plt.subplots(1, 3, figsize=(16, 4))
    acc.plot(steps, [r["accuracy"] for r in rows], label="accuracy")
    acc.plot(steps, [r["settled"] for r in rows], label="prediction settled for good")
    acc.set_xlabel("free step")
    acc.set_ylabel("% of the images")
    acc.set_ylim(0, 100)
    acc.legend(fontsize=8)
    change.semilogy(steps, [max(r["residual_mean"], 1e-30) for r in rows])
    change.set_xlabel("free step")
    change.set_ylabel("mean relative change of the states")
    hist.hist(times, bins=min(50, max(steps)), range=(0.5, max(steps) + 0.5))
    hist.set_xlabel("characteristic time (step)")
    hist.set_ylabel("images")
    for ax in (acc, change, hist):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_adversarial_steps(rows: list, path: Path) -> None:
    """adversarial_accuracy_steps.png: adversarial accuracy against the free steps of the
    attack's unroll (or of the predictions, whichever the rows vary more), a panel per attack
    and norm, a line per eps and other step count (the latest row of each)."""
    x_key = ("attack_step" if len({r.attack_step for r in rows}) >=
             len({r.predict_step for r in rows}) else "predict_step")
    other = "predict_step" if x_key == "attack_step" else "attack_step"
    panels = sorted({(r.attack, r.norm) for r in rows})
    named = solver_names(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (attack, norm) in zip(axes[0], panels):
        lines: dict[tuple, dict[int, float]] = {}
        for r in rows:
            if (r.attack, r.norm) == (attack, norm) and r.eps > 0:
                key = (r.eps, getattr(r, other), named(r))
                lines.setdefault(key, {})[getattr(r, x_key)] = r.adv_acc
        for (eps, steps, solver), by_x in sorted(lines.items()):
            xs = sorted(by_x)
            ax.plot(xs, [by_x[x] for x in xs], "o-",
                    label=f"eps {eps:.3g}, {other.replace('_', ' ')} {steps}{solver}")
        ax.set_title(f"{attack} L{norm}")
        ax.set_xlabel(f"free steps of the {'attack' if x_key == 'attack_step' else 'prediction'}")
        adversarial_panel(ax, 7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_corruptions(rows: list, path: Path) -> None:
    """corruption_accuracy.png: accuracy (%) per corruption (row) and severity (column), the
    clean accuracy in the title."""
    names = sorted({r.corruption for r in rows})
    k = max(r.severity for r in rows)
    acc = np.full((len(names), k), np.nan)
    for r in rows:
        acc[names.index(r.corruption), r.severity - 1] = r.accuracy
    fig, ax = plt.subplots(figsize=(1.2 * k + 3, 0.4 * len(names) + 1.5))
    image = ax.imshow(acc, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(acc):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 50 else "black")
    ax.set_xticks(range(k), [str(s) for s in range(1, k + 1)])
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("severity")
    ax.set_title(f"accuracy (%) under corruption; clean {rows[0].clean_acc:.1f}%")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    save_figure(fig, path)


def plot_report(curves: dict[str, dict[tuple, float]], path: Path) -> None:
    """report_adversarial.png: adversarial accuracy against eps, a panel per attack and norm,
    a line per run (curves: run -> (attack, norm, eps) -> accuracy)."""
    panels = sorted({(a, n) for cells in curves.values() for a, n, _ in cells})
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (attack, norm) in zip(axes[0], panels):
        for run, cells in curves.items():
            points = sorted((e, acc) for (a, n, e), acc in cells.items()
                            if (a, n) == (attack, norm) and e > 0)
            if points:
                ax.plot(*zip(*points), "o-", label=run)
        ax.set_xscale("log")
        ax.set_title(f"{attack} L{norm}")
        ax.set_xlabel("eps (pixels in [0, 1])")
        adversarial_panel(ax, 7)
    fig.tight_layout()
    save_figure(fig, path)
