"""The characteristic time (--todo characteristic): how long a prediction takes to settle.

The free phase of --T1 steps (sweeps with --solver evenodd; Anderson's runs the sweep it
accelerates, and --tol does not stop it: the whole trajectory is the point) on the test images,
or on one attack's adversarial images: at every step the accuracy, the share of images whose
prediction has settled for good (within the T1 steps), and the states' relative change; per
image its characteristic time, the first step from which its prediction never changes.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from model_utils import EnergyNet
from results import atomic_write_bytes, atomic_write_text
from solvers import Solver, relative_change

COLUMNS = ("step", "accuracy", "settled", "residual_mean", "residual_max")


@dataclass
class Trajectory:
    """After each free step t = 1..T (column t - 1): every image's predicted label and the
    relative change of its states in that step."""
    preds: Tensor
    change: Tensor

    def settling_times(self) -> Tensor:
        """Per image the first step from which the prediction stays the final one."""
        differs = self.preds != self.preds[:, -1:]
        steps = torch.arange(1, differs.shape[1] + 1, device=differs.device)
        return (differs * steps).amax(1) + 1  # one after its last differing step (1: none)

    def table(self, y: Tensor) -> list[dict]:
        """A row per step: accuracy and settled share (%), mean and largest change."""
        times = self.settling_times()
        return [{"step": t + 1, "accuracy": 100 * (self.preds[:, t] == y).double().mean().item(),
                 "settled": 100 * (times <= t + 1).double().mean().item(),
                 "residual_mean": self.change[:, t].mean().item(),
                 "residual_max": self.change[:, t].max().item()}
                for t in range(self.preds.shape[1])]


@torch.no_grad()
def trajectory(model: EnergyNet, x: Tensor, steps: int, mbs: int,
               explicit: bool = True) -> Trajectory:
    """`steps` free steps from zero states on x, batch by batch, read out after each (explicit
    dynamics, or the autograd reference)."""
    solver = model.solver or Solver("sync")
    step, start = solver.iteration(model, explicit)
    preds, changes = [], []
    for i in range(0, len(x), mbs):
        batch = model.batch(x[i:i + mbs])
        s = model.init_states(batch.x)
        carry, pred, change = start(batch, s), [], []
        for _ in range(steps):
            new, carry = step(batch, s, carry)
            change.append(relative_change(s, new).float())
            s = new
            pred.append(model.logits(s).argmax(1))
        preds.append(torch.stack(pred, 1))
        changes.append(torch.stack(change, 1))
    return Trajectory(torch.cat(preds), torch.cat(changes))


def write(run_dir: Path, suffix: str, rows: list[dict], times: Tensor) -> list[Path]:
    """characteristic<suffix>.csv (a row per step) and characteristic_time<suffix>.npy (per
    image, in the order of the images attacked or evaluated)."""
    text = io.StringIO()
    out = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    out.writeheader()
    out.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()}
                  for r in rows)
    table = run_dir / f"characteristic{suffix}.csv"
    npy = run_dir / f"characteristic_time{suffix}.npy"
    atomic_write_text(table, text.getvalue())
    buf = io.BytesIO()
    np.save(buf, times.cpu().numpy().astype(np.int32))
    atomic_write_bytes(npy, buf.getvalue())
    return [table, npy]


def summary(rows: list[dict], times: Tensor) -> str:
    t = times.double()
    return (f"accuracy after step {rows[-1]['step']}: {rows[-1]['accuracy']:.2f}%; "
            f"characteristic time: median {t.median().item():g}, mean {t.mean().item():.1f}, "
            f"90th percentile {t.quantile(0.9).item():g} steps; last step's change: mean "
            f"{rows[-1]['residual_mean']:.2g}, largest {rows[-1]['residual_max']:.2g}")
