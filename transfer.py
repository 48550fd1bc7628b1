"""Adversarial examples kept for other models (--save-examples) and one run's accuracy on
another's examples (--todo transfer): how well attacks transfer between EP, BPTT and BP.

A file holds one attack sweep in one norm: the clean images (pixels in [0, 1]) and labels,
for each eps the adversarial images, and the attacked model's logits on both.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np

from attack import Row, Sweep
from errors import UsageError
from results import atomic_write_bytes

KEYS = {"x": "the clean images, N x C x H x W float32 pixels in [0, 1]",
        "y": "their N labels", "eps": "the E radii",
        "x_adv": "the adversarial images, E x N x C x H x W",
        "clean_logits": "the attacked model's N x classes logits on x",
        "adv_logits": "its E x N x classes logits on x_adv",
        "attack": "the attack's name", "norm": "2 or inf", "attack_step": "its unroll's steps",
        "predict_step": "its predictions' steps", "source": "the attacked run's folder",
        "task": "the task of its images"}


def examples_file(run_dir: Path, name: str, norm: str, pair: str = "") -> Path:
    return run_dir / f"examples_{name}_L{norm}{pair}.npz"


def save_examples(path: Path, sweep: Sweep, name: str, norm: str, source: Path,
                  task: str) -> None:
    """The sweep's last run (one attack, one norm, every eps) as an .npz file, atomically."""
    x, y = sweep.last[0], sweep.last[4]
    eps = np.array([e for e, _ in sweep.examples])
    x_adv = np.stack([adv for _, adv in sweep.examples])
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y, eps=eps, x_adv=x_adv, clean_logits=sweep.logits(x),
             adv_logits=np.stack([sweep.logits(adv) for adv in x_adv]), attack=name, norm=norm,
             attack_step=sweep.attack_step, predict_step=sweep.predict_step,
             source=str(source), task=task)
    atomic_write_bytes(path, buf.getvalue())


def load_examples(path: str, task: str, image_shape: tuple[int, ...], classes: int) -> dict:
    """A --save-examples file, checked against the target's task, images and classes: one
    line naming the file and what it should hold when it does not."""
    where = f"--examples {path}"
    try:
        with np.load(path, allow_pickle=False) as f:
            found = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file; give an examples_*.npz that --todo attack "
                         "--save-examples wrote") from None
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(f"{where}: not an .npz file of examples ({e}); give one that --todo "
                         "attack --save-examples wrote") from None
    for key, what in KEYS.items():
        if key not in found:
            raise UsageError(f"{where}: has no '{key}' ({what}); give a file that --todo attack "
                             "--save-examples wrote")
    if str(found["task"]) != task:
        raise UsageError(f"{where}: examples of --task {found['task']}; this run's task is "
                         f"{task}")
    x, y, eps, x_adv = found["x"], found["y"], found["eps"], found["x_adv"]
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape) or x.dtype != np.float32:
        raise UsageError(f"{where}: its images are {x.dtype} {'x'.join(map(str, x.shape))}; "
                         f"this run takes N x {'x'.join(map(str, image_shape))} float32 "
                         "(examples of another task?)")
    if x_adv.shape != (len(eps), *x.shape) or y.shape != (len(x),):
        raise UsageError(f"{where}: x_adv is {'x'.join(map(str, x_adv.shape))} and y has "
                         f"{len(y)} labels; with {len(eps)} eps and {len(x)} images they should "
                         f"be E x N x C x H x W and N")
    if y.min(initial=0) < 0 or y.max(initial=0) >= classes:
        raise UsageError(f"{where}: labels outside 0..{classes - 1}, the target's classes")
    return found


def transfer_rows(sweep: Sweep, examples: dict) -> list[Row]:
    """The target's (the sweep's model) accuracy on the clean and on each eps's adversarial
    images of a file, a row each, naming the source run."""
    x, y = examples["x"], examples["y"]
    start = time.time()
    clean_acc = 100.0 * float((sweep.predict(x) == y).mean())
    rows = []
    for eps, x_adv in zip(examples["eps"], examples["x_adv"]):
        adv_acc = 100.0 * float((sweep.predict(x_adv) == y).mean())
        rows.append(Row(str(examples["attack"]), str(examples["norm"]), float(eps), clean_acc,
                        adv_acc, len(y), int(examples["attack_step"]), sweep.predict_step,
                        time.time() - start, sweep.solver, str(examples["source"])))
        start = time.time()
    return rows
