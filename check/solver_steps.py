"""How many steps each solver needs to settle a trained network: for each run folder, each
solver relaxes the best model's free phase on N test images (spread over the test set) until
each image's states change by less than 1e-3, then 1e-4 (relative, checked at every step),
with 4 x T1 steps at most: the mean over the images (what a phase costs, as converged images
leave it) and the most; and how often its predictions there are those it makes after 4 x T1
steps.

    python check/solver_steps.py RUN_DIR [RUN_DIR ...] [--images 500]

Prints a markdown table (BENCHMARKS.md, "Fast relaxation").
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import config  # noqa: E402
import main  # noqa: E402
from data_utils import load_task  # noqa: E402
from model_utils import free_phase  # noqa: E402
from results import BEST_MODEL, load_checked, load_run, load_weights  # noqa: E402
from solvers import SOLVERS, Solver  # noqa: E402

TOLS = (1e-3, 1e-4)


def trained(run: str):
    """The run's arguments and its best model."""
    args, typed = main.parse(["--todo", "evaluate", "--load-path", run])
    args = config.merge_saved(args, typed, load_run(run, args.model)["args"])
    config.validate(args, typed)
    torch.manual_seed(args.seed)
    model = config.build_model(args)
    load_weights(model, load_checked(Path(run) / BEST_MODEL), run, [])
    return args, model


@torch.no_grad()
def settle(model, x, y, name: str, tol: float | None, cap: int):
    """Steps (sweeps, map evaluations) an image took to pass tol, the mean and the most, and
    the predictions."""
    model.solver = Solver(name, tol, 1)
    pred = model.logits(free_phase(model, x, cap)).argmax(1)
    return model.solver.counts.steps, model.solver.counts.longest, pred


def rows(run: str, n: int) -> list[str]:
    args, model = trained(run)
    test = load_task(args.task, args.data_dir, torch.device("cpu"))[1]
    pick = torch.linspace(0, len(test) - 1, min(n, len(test))).long()  # every class
    x, y = test.x[pick], test.y[pick]
    cap = 4 * args.T1
    out = []
    for name in SOLVERS:
        final = settle(model, x, y, name, None, cap)[2]
        cells = []
        for tol in TOLS:
            mean, most, pred = settle(model, x, y, name, tol, cap)
            cells.append((f"{mean:.1f} ({most if most < cap else f'>{cap}'})",
                          100.0 * (pred == y).float().mean().item(),
                          100.0 * (pred == final).float().mean().item()))
        out.append(f"| {args.model} {args.act}, trained with {args.solver} | {name} | "
                   + " | ".join(c[0] for c in cells) + f" | {cells[-1][1]:.1f} | "
                   f"{cells[-1][2]:.1f} | {100.0 * (final == y).float().mean().item():.1f} |")
    return out


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="results folders written with --save")
    p.add_argument("--images", type=int, default=500, help="test images relaxed")
    a = p.parse_args()
    print("| model | solver | steps to 1e-3: mean (most) | steps to 1e-4: mean (most) | "
          "accuracy at 1e-4 (%) | "
          "predictions as after 4 x T1 (%) | accuracy after 4 x T1 (%) |\n|---|---|---|---|---|"
          "---|---|")
    for run in a.runs:
        print("\n".join(rows(run, a.images)), flush=True)


if __name__ == "__main__":
    cli()
