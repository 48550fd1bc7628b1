"""The results folder: its layout, atomic writes, checkpoints and metrics.csv."""

from __future__ import annotations

import csv
import glob
import io
import itertools
import os
import tempfile
from datetime import datetime
from pathlib import Path

import torch
from torch.utils._pytree import tree_map_only

from errors import UsageError
from published import published_checkpoint

CHECKPOINT, FINAL_CHECKPOINT = "checkpoint.tar", "final_checkpoint.tar"
BEST_MODEL, FINAL_MODEL = "model.pt", "final_model.pt"
METRICS = "metrics.csv"
GDU_METRICS = "gdu_metrics.json"
HYPERPARAMETERS = "hyperparameters.txt"
DICTIONARY = "dictionary.png"


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


def file_mode() -> int:
    """What open() would give under the user's umask (results folders are shared)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file.
    Temporary files that a killed run left for the same path are removed first."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, file_mode())  # mkstemp's files are private (0600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_save(obj: object, path: Path) -> None:
    """torch.save with every tensor on the CPU: a GPU run's files load on any machine."""
    buf = io.BytesIO()
    torch.save(tree_map_only(torch.Tensor, lambda t: t.cpu(), obj), buf)
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
    if not run_dir or not d.is_dir():
        raise UsageError(f"--load-path {run_dir or repr(run_dir)}: no such folder; give a "
                         "results folder such as results/EP/mse/2026-01-01/12-00-00")
    for name in (CHECKPOINT, FINAL_CHECKPOINT):
        if (d / name).is_file():
            return d / name
    if (d / HYPERPARAMETERS).is_file():
        raise UsageError(f"--load-path {run_dir}: this run stopped before its first checkpoint "
                         "(one is written after each epoch and on Ctrl-C); start it again "
                         "without --load-path")
    raise UsageError(f"--load-path {run_dir}: no {CHECKPOINT} in that folder; "
                     "give the folder of a run trained with --save")


def load_run(run_dir: str, model_name: str) -> dict:
    """The latest checkpoint of a results folder, ours or the published code's (whose weights
    get our names; it has no arguments, so the command line must give the architecture)."""
    path = find_checkpoint(run_dir)
    ckpt = load_checked(path)
    where = f"--load-path {run_dir}: {path.name}"
    if not isinstance(ckpt, dict):
        raise UsageError(f"{where} holds a {type(ckpt).__name__}, not a checkpoint; "
                         "give a folder written by main.py --save")
    if "model_state_dict" in ckpt and "args" not in ckpt:
        return published_checkpoint(ckpt, model_name, where)  # see published.py
    for key, kind in (("model", dict), ("args", dict)):
        if not isinstance(ckpt.get(key), kind):
            raise UsageError(f"{where} has no saved {'weights' if key == 'model' else key}; "
                             "give a folder written by main.py --save")
    return ckpt


def load_weights(model: torch.nn.Module, blob: dict, where: str, differing: list[str]) -> None:
    """blob["model"] into the model, or one line naming what does not fit.

    `differing`: the architecture flags in which the run that wrote the file and the model
    built now differ (empty when unknown)."""
    state, own = blob.get("model") if isinstance(blob, dict) else None, model.state_dict()
    if not isinstance(state, dict):
        raise UsageError(f"{where} holds no weights; use another run folder")
    bad = [k for k in own if k not in state or not hasattr(state[k], "shape")
           or state[k].shape != own[k].shape] + [k for k in state if k not in own]
    if bad:
        k = bad[0]
        saved = "missing" if k not in state else "x".join(map(str, getattr(state[k], "shape", ())))
        built = "missing" if k not in own else "x".join(map(str, own[k].shape))
        hint = (f"the flags {', '.join(differing)} differ from the saved run's: leave them out "
                "to use the saved architecture" if differing else
                "give the architecture flags of the run that wrote it")
        raise UsageError(f"{where} holds another architecture ({k}: {saved} there, {built} in "
                         f"the model built now); {hint}")
    if not all(torch.is_floating_point(v) and torch.isfinite(v).all() for v in state.values()):
        raise UsageError(f"{where} holds non-finite or non-float weights; use another run folder")
    model.load_state_dict(state)


def write_metrics(path: Path, history: dict[str, list]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    keys = list(history)
    writer.writerow(keys)
    # an optional column (--check-thm switched on or off by a resume) is empty where missing
    writer.writerows(itertools.zip_longest(*(history[k] for k in keys), fillvalue=None))
    atomic_write_text(path, buf.getvalue())
