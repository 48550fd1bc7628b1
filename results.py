"""The results folder: its layout, atomic writes, checkpoints and metrics.csv."""

from __future__ import annotations

import csv
import io
import itertools
import os
import tempfile
from datetime import datetime
from pathlib import Path

import torch

from errors import UsageError

CHECKPOINT, FINAL_CHECKPOINT = "checkpoint.tar", "final_checkpoint.tar"
BEST_MODEL, FINAL_MODEL = "model.pt", "final_model.pt"
METRICS = "metrics.csv"
GDU_METRICS = "gdu_metrics.json"
HYPERPARAMETERS = "hyperparameters.txt"


def new_run_dir(root: str, alg: str, loss: str, now: datetime | None = None) -> Path:
    """results/<alg>/<loss>/<yyyy-mm-dd>/<hh-mm-ss>/, never an existing folder."""
    now = now or datetime.now()
    base = Path(root) / alg / loss / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")
    path, n = base, 0
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        except OSError as e:
            raise UsageError(f"--results-dir {root}: cannot create {path} ({e.strerror}); "
                             "give a writable folder") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_save(obj: object, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def append_text(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else ""
    atomic_write_text(path, old + text)


def load_checked(path: Path, flag: str = "--load-path") -> dict:
    """torch.load(weights_only=True) with a one-line error for a missing or corrupt file."""
    if not path.is_file():
        raise UsageError(f"{flag} {path.parent}: no {path.name} there; "
                         "point it at a results folder written with --save")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{flag} {path.parent}: {path.name} is corrupt or unreadable "
                         f"({reason}); use another run folder") from None


def find_checkpoint(run_dir: str) -> Path:
    """The latest checkpoint in a run folder (checkpoint.tar, else final_checkpoint.tar)."""
    d = Path(run_dir)
    if not d.is_dir():
        raise UsageError(f"--load-path {run_dir}: no such folder; give a results folder "
                         "such as results/EP/mse/2026-01-01/12-00-00")
    for name in (CHECKPOINT, FINAL_CHECKPOINT):
        if (d / name).is_file():
            return d / name
    raise UsageError(f"--load-path {run_dir}: no {CHECKPOINT} in that folder; "
                     "give the folder of a run trained with --save")


def write_metrics(path: Path, history: dict[str, list]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    keys = list(history)
    writer.writerow(keys)
    # an optional column (--check-thm switched on or off by a resume) is empty where missing
    writer.writerows(itertools.zip_longest(*(history[k] for k in keys), fillvalue=None))
    atomic_write_text(path, buf.getvalue())
