"""--todo report DIR [DIR ...]: one table of every run found under the folders: what it is
(model, task, rule, key flags), its best and final test accuracy, and what the analyses left
beside it (white-box adversarial accuracy per attack, norm and eps; mean corruption
accuracy; median characteristic time). A markdown table on the terminal, report.csv and
report_adversarial.png in the first folder. A folder it cannot read is named and skipped.
An adversarial cell is the strongest attack found: the lowest accuracy over the step counts
its rows were made with (each the latest of its kind), among the rows whose predictions relaxed
with the run's own solver (another solver's fixed points make another classifier).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import corruptions
from attack import DEFAULT_EPS, RESULTS_FILE, read_rows
from errors import UsageError
from results import (BEST_MODEL, CHECKPOINT, FINAL_CHECKPOINT, METRICS, atomic_write_text,
                     load_checked)
from solvers import Solver

CSV_FILE, PLOT_FILE = "report.csv", "report_adversarial.png"
MARKERS = (METRICS, BEST_MODEL, CHECKPOINT, FINAL_CHECKPOINT)  # what makes a folder a run
TABLE_EPS = 2  # eps columns per attack and norm in the terminal table (report.csv has all)


@dataclass
class RunReport:
    """One run's line: its description and what its analyses found."""
    path: Path
    columns: dict[str, object] = field(default_factory=dict)
    adversarial: dict[tuple[str, str, float], float] = field(default_factory=dict)


def find_runs(folders: list[str]) -> list[Path]:
    """Every folder under the given ones (themselves included) that holds a run."""
    runs = set()
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise UsageError(f"--todo report {folder}: no such folder; give folders that hold "
                             "results folders, e.g. results/")
        for marker in MARKERS:
            runs.update(p.parent for p in [*folder.rglob(marker)])
    return sorted(runs)


def saved_args(run: Path) -> dict:
    """The run's saved arguments, from its first checkpoint file ({} for the published
    code's, which saves none: its model.pt is a pickled module, never loaded)."""
    for name in (CHECKPOINT, FINAL_CHECKPOINT, BEST_MODEL):
        if (run / name).is_file():
            blob = load_checked(run / name, "--todo report: run")
            args = blob.get("args") if isinstance(blob, dict) else None
            return args if isinstance(args, dict) else {}
    return {}


def describe(args: dict) -> dict[str, object]:
    """The run's model, task, rule and key flags, from its saved arguments."""
    if not args:
        return {"model": "?", "task": "?", "alg": "?", "flags": "(no saved arguments)"}
    flags = []
    if args.get("alg") != "BP":  # feed-forward: no phases
        betas = ("clamped to the target" if args.get("alg") == "CL" else
                 f"betas {' '.join(f'{b:g}' for b in args.get('betas') or [])}")
        flags = [f"T1 {args.get('T1')}", f"T2 {args.get('T2')}", betas]
        nudge = args.get("nudge") or ("centered" if args.get("thirdphase") else "positive")
        if nudge != "positive":
            flags.append(f"nudge {nudge}")
        if args.get("alg") == "hEP":
            flags.append(f"{args.get('holo_points')} points")
        solver = args.get("solver") or "sync"
        if solver != "sync" or args.get("tol"):
            flags.append(solver + (f" tol {args['tol']:g}" if args.get("tol") else ""))
    if args.get("precision", "fp32") != "fp32":
        flags.append(args["precision"])
    if args.get("todo") == "advtrain":
        norm = {"100": "inf"}.get(str((args.get("attack_norm") or ["inf"])[0]),
                                  str((args.get("attack_norm") or ["inf"])[0]))
        eps = (args.get("eps") or [DEFAULT_EPS[norm][-1]])[0]
        flags.append(f"advtrain L{norm} eps {eps:.3g}")
    return {"model": args.get("model"), "task": args.get("task"), "alg": args.get("alg"),
            "flags": ", ".join(flags)}


def accuracies(run: Path) -> dict[str, object]:
    path = run / METRICS
    if not path.is_file():
        return {"epochs": 0, "best_test": None, "final_test": None}
    with open(path) as f:
        epochs = list(csv.DictReader(f))
    tests = [float(e["test_acc"]) for e in epochs]
    return {"epochs": len(epochs), "best_test": max(tests, default=None),
            "final_test": tests[-1] if tests else None}


def corruption_mean(run: Path) -> float | None:
    """The mean accuracy of the last --todo corruptions call in the run's folder."""
    path = run / corruptions.RESULTS_FILE
    if not path.is_file():
        return None
    block: list[float] = []
    for line in path.read_text().splitlines():
        if line.startswith("corruption\t"):
            block = []  # a new call's header
        elif line and not line.startswith("#"):
            block.append(float(line.split("\t")[3]))
    return float(np.mean(block)) if block else None


def characteristic_median(run: Path) -> float | None:
    path = run / "characteristic_time.npy"
    if not path.is_file():
        return None
    try:
        return float(np.median(np.load(path, allow_pickle=False)))
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path.name} is unreadable ({e})") from None


def own_solver(args: dict) -> set[str] | None:
    """The solver labels (attack.Row.solver) of the run's own predictions ("" is a row from
    before solvers were recorded); None: any (a published folder saves no arguments)."""
    if not args:
        return None
    if args.get("alg") == "BP":
        return {"", "feed-forward"}
    return {"", Solver(args.get("solver") or "sync", args.get("tol"),
                       anderson_m=args.get("anderson_m") or 5).label}


def read_run(run: Path) -> RunReport:
    report, args = RunReport(run), saved_args(run)
    report.columns = {**describe(args), **accuracies(run),
                      "corruption_acc": corruption_mean(run),
                      "characteristic_median": characteristic_median(run)}
    solvers = own_solver(args)
    latest = {(r.attack, r.norm, r.eps, r.attack_step, r.predict_step): r.adv_acc
              for r in read_rows(run / RESULTS_FILE)
              if not r.source and (solvers is None or r.solver in solvers)}  # white-box only
    for (attack, norm, eps, _, _), acc in latest.items():
        key = (attack, norm, eps)
        report.adversarial[key] = min(acc, report.adversarial.get(key, acc))
    return report


def collect(folders: list[str]) -> tuple[list[RunReport], list[str]]:
    """Every readable run, and a line for each one that could not be read."""
    reports, skipped = [], []
    for run in find_runs(folders):
        try:
            reports.append(read_run(run))
        except (UsageError, OSError, ValueError, EOFError, KeyError, IndexError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            skipped.append(f"report: skipped {run}: {reason}")
    return reports, skipped


def adversarial_keys(reports: list[RunReport], per_attack: int | None = None) -> list[tuple]:
    """(attack, norm, eps) columns: all of them, or the `per_attack` largest eps of each
    attack and norm."""
    keys = sorted({k for r in reports for k in r.adversarial})
    if per_attack is None:
        return keys
    groups: dict[tuple, list] = {}
    for attack, norm, eps in keys:
        groups.setdefault((attack, norm), []).append(eps)
    return [(a, n, e) for (a, n), eps in groups.items() for e in sorted(eps)[-per_attack:]]


def header(key: tuple) -> str:
    attack, norm, eps = key
    return f"{attack} L{norm} {eps:.3g}"


def cell(value: object) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def table(reports: list[RunReport], root: Path, per_attack: int | None) -> list[list[str]]:
    """The rows of the table (the first is its header)."""
    keys = adversarial_keys(reports, per_attack)
    base = ["model", "task", "alg", "flags", "epochs", "best_test", "final_test"]
    extra = ["corruption_acc", "characteristic_median"]
    rows = [["run", *base, *map(header, keys), *extra]]
    for r in reports:
        rows.append([run_name(r.path, root), *(cell(r.columns.get(k)) for k in base),
                     *(cell(r.adversarial.get(k)) for k in keys),
                     *(cell(r.columns.get(k)) for k in extra)])
    return rows


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def write_csv(path: Path, rows: list[list[str]]) -> None:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    atomic_write_text(path, text.getvalue())


def run_name(path: Path, root: Path) -> str:
    """A run as the table names it: relative to the first folder where it lies below it."""
    return (str(path.relative_to(root)) or ".") if path.is_relative_to(root) else str(path)


def adversarial_curves(reports: list[RunReport], root: Path) -> dict[str, dict[tuple, float]]:
    """Per run (named as in the table), its cells: (attack, norm, eps) -> accuracy."""
    return {run_name(r.path, root): r.adversarial for r in reports if r.adversarial}

