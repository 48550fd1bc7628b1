"""Time one EP training batch on several paths: the autograd-of-Phi dynamics (the published
code's way), the explicit dynamics, and those with --precision bf16 and --compile.

    python bench.py                      # the published MNIST lines, prints markdown tables
    python bench.py --write BENCHMARKS.md --repeats 7

All paths run in the same process on the same weights and batch (ratios, not absolute times,
are what compare across machines); the fp32 paths' free states must agree with the reference.
For LCANet a second table puts one LCA iteration next to one step of the whole network, a
third the cost of a checkpointed attack unroll.
"""

from __future__ import annotations

import argparse
import copy
import platform
import shlex
import statistics
import time
from pathlib import Path

import torch

import config
import main
from data_utils import load_task
from model_utils import flat_states, free_phase
from trainer import Trainer

ROOT = Path(__file__).resolve().parent
LINES = {"MNIST MLP (784-512-10, T1 30, T2 10, mbs 50)": "train_mnist_mlp.sh",
         "MNIST CNN (32-64, T1 200, T2 10, mbs 100)": "train_mnist_cnn.sh",
         "MNIST LCANet (32 atoms 5x5, conv 32-64, T1 30, T2 10, mbs 50)": "train_mnist_eplcanet.sh"}


def published_args(script: str, extra: list[str], task: str = "MNIST5K"):
    """The check/ script's command line (on the offline digits by default)."""
    line = next(ln for ln in (ROOT / "check" / script).read_text().splitlines()
                if ln.startswith("python"))
    argv = [w for w in shlex.split(line)[2:] if w != "$@"] + ["--task", task] + extra
    args, typed = main.parse(argv)
    config.validate(args, typed)
    return args


# the paths timed: dynamics, --precision, --compile, --solver (each against the first, the
# reference; evenodd runs as many sweeps as the others steps: the cost of a sweep)
VARIANTS = {"autograd": ("autograd", "fp32", False, "sync"),
            "explicit": ("explicit", "fp32", False, "sync"),
            "bf16": ("explicit", "bf16", False, "sync"),
            "compiled": ("explicit", "fp32", True, "sync"),
            "bf16 compiled": ("explicit", "bf16", True, "sync"),
            "evenodd": ("explicit", "fp32", False, "evenodd")}


def trainer_for(args, variant: str, data, device) -> Trainer:
    args = copy.copy(args)
    args.dynamics, args.precision, args.compile, args.solver = VARIANTS[variant]
    torch.manual_seed(0)
    return Trainer(config.build_model(args).to(device), *data, args, None)


def sync(device: torch.device) -> None:
    """Wait for the GPU `device` (not the current one: with cuda:1 that is another GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batch(trainer: Trainer, x, y) -> float:
    """Seconds of one training batch: phases, gradients, optimizer step."""
    sync(x.device)
    t0 = time.perf_counter()
    trainer.train_batch(x, y)
    trainer.optimizer.step()
    sync(x.device)
    return time.perf_counter() - t0


def run(repeats: int, device: torch.device, variants=tuple(VARIANTS),
        lines=tuple(LINES)) -> list[dict]:
    """One row per line: the median ms of a batch for each variant, and how far each one's
    free states are from the autograd reference's (max |difference|)."""
    data = load_task("MNIST5K", "", device)
    rows = []
    for name in lines:
        args = published_args(LINES[name], ["--device", "0"])
        x, y = data[0].x[:args.mbs], data[0].y[:args.mbs]
        trainers = {v: trainer_for(args, v, data, device) for v in variants}
        with torch.no_grad():  # same weights, same batch: the free states must agree
            states = {v: flat_states(free_phase(t.model, x, args.T1, t.phases.explicit))
                      for v, t in trainers.items()}
        reference = states[variants[0]]
        diffs = {v: max((a - b).abs().max().item() for a, b in zip(reference, s, strict=True))
                 for v, s in states.items()}
        # alternating blocks of ~0.5 s: warm caches as in a run, drift spread over all paths
        block = max(1, round(0.5 / time_batch(trainers["explicit"], x, y)))
        times = {v: [] for v in trainers}
        for _ in range(repeats):
            for v, trainer in trainers.items():
                time_batch(trainer, x, y)  # re-warm this path's caches
                times[v] += [time_batch(trainer, x, y) for _ in range(block)]
        ms = {v: 1e3 * statistics.median(t) for v, t in times.items()}
        rows.append({"line": name, "ms": ms, "max_state_diff": diffs, "batches": block * repeats,
                     "speedup": {v: ms[variants[0]] / t for v, t in ms.items()}})
    return rows


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(max(3, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


@torch.no_grad()
def lca_costs(repeats: int, device: torch.device) -> dict:
    """The seed's EP LCANet line at its free state: one LCA iteration of the code (its
    inhibition recomputed: the cost of each --lca_iters beyond the first) next to one whole
    network step with --lca_iters 1 (the code's first iteration reuses the step's field)."""
    args = published_args("train_mnist_eplcanet.sh", ["--device", "0", "--lca_iters", "1"])
    torch.manual_seed(0)
    model = config.build_model(args).to(device)
    x = load_task("MNIST5K", "", device)[0].x[:args.mbs]
    batch = model.batch(x)
    s = free_phase(model, x, args.T1)
    field = model.field(batch, model.visible(s))[0]
    code = copy.copy(model.neurons[0])
    per_iters = {}
    for code.iters in (1, 11):
        per_iters[code.iters] = median_ms(lambda: (code.update(field, s[0]), sync(device)),
                                          repeats)
    lca_ms = (per_iters[11] - per_iters[1]) / 10
    step_ms = median_ms(lambda: (model.step(batch, s), sync(device)), repeats)
    return {"lca_ms": lca_ms, "step_ms": step_ms, "share": lca_ms / step_ms, "mbs": args.mbs}


def unroll_costs(repeats: int, device: torch.device, batch: int = 20) -> list[dict]:
    """An attack's input gradient through the whole free phase (art_patches.UnrolledNet) of
    the MLP and CNN lines: the plain unroll against the checkpointed one, what a long unroll
    pays to fit in memory (alternating, same weights and images)."""
    from art_patches import UnrolledNet, checkpoint_segment, unroll_bytes
    from attack import frozen

    x = load_task("MNIST5K", "", device)[1].x[:batch]
    rows = []
    for name, script in list(LINES.items())[:2]:
        args = published_args(script, ["--device", "0"])
        torch.manual_seed(0)
        model = config.build_model(args).to(device)
        nets = {budget: UnrolledNet(model, args.T1, args.T1, memory_budget=budget)
                for budget in (2**62, 0)}  # never and always checkpointed

        def gradient(net):
            xg = x.clone().requires_grad_()
            torch.autograd.grad(net(xg).logsumexp(1).sum(), xg)
            sync(device)

        times = {budget: [] for budget in nets}
        with frozen(model):
            for _ in range(max(1, repeats)):
                for budget, net in nets.items():
                    times[budget].append(median_ms(lambda net=net: gradient(net), 1))
        state, step = unroll_bytes(model, x[:1])
        plain, checkpointed = (statistics.median(times[b]) for b in nets)
        rows.append({"line": name, "T": args.T1, "plain_ms": plain, "checkpointed_ms":
                     checkpointed, "segment": checkpoint_segment(args.T1, state, step),
                     "cost": checkpointed / plain, "batch": batch})
    return rows


def unroll_table(rows: list[dict]) -> str:
    lines = [f"| attack gradient through T1 steps, batch of {rows[0]['batch']} | plain unroll "
             "(ms) | checkpointed (ms) | cost |", "|---|---|---|---|"]
    lines += [f"| {r['line']} | {r['plain_ms']:.1f} | {r['checkpointed_ms']:.1f} (segments of "
              f"{r['segment']}) | {r['cost']:.2f}x |" for r in rows]
    return "\n".join(lines)


def lca_table(costs: dict) -> str:
    return "\n".join([
        f"| LCANet, batch of {costs['mbs']} | one LCA iteration (ms) | one network step (ms) | "
        "LCA share of a step |", "|---|---|---|---|",
        f"| seed EP line | {costs['lca_ms']:.2f} | {costs['step_ms']:.2f} | "
        f"{100 * costs['share']:.0f}% |"])


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def table(rows: list[dict]) -> str:
    variants = list(rows[0]["ms"])
    lines = ["| line | " + " | ".join(f"{v} (ms/batch)" for v in variants) +
             " | batches timed |", "|---" * (len(variants) + 2) + "|"]
    lines += [f"| {r['line']} | " + " | ".join(
        f"{r['ms'][v]:.1f} ({r['speedup'][v]:.2f}x, {r['max_state_diff'][v]:.0e})"
        for v in variants) + f" | {r['batches']} |" for r in rows]
    return "\n".join(lines) + (f"\n\n(speed-up against {variants[0]}, max free-state "
                                "difference from it)")


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5,
                   help="timed blocks per path (a block is ~0.5 s of batches, at least one)")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N")
    p.add_argument("--write", default=None, help="append the results to this markdown file")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="the paths to time (the first is the reference of the ratios)")
    a = p.parse_args()
    device = torch.device(a.device)
    rows = run(a.repeats, device, tuple(a.variants))
    costs = lca_costs(a.repeats, device)
    unrolls = unroll_costs(a.repeats, device)
    report = (f"### {time.strftime('%Y-%m-%d')}: {machine(device)}, torch {torch.__version__}\n\n"
              f"`python bench.py --repeats {a.repeats} --device {a.device} --variants "
              f"{shlex.join(a.variants)}`\n\n{table(rows)}\n\n"
              f"{lca_table(costs)}\n\n{unroll_table(unrolls)}\n")
    print(report)
    if a.write:
        with open(a.write, "a") as f:
            f.write("\n" + report)


if __name__ == "__main__":
    cli()
