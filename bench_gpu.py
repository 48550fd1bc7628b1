"""One epoch of the published CIFAR-10 EP line on GPUs: measured, and bounded on paper.

    torchrun --nproc_per_node N bench_gpu.py --precision bf16 --compile   # time it on N GPUs
    python bench_gpu.py --roofline                                        # the bound, anywhere

The line is check/train_cifar10_mse_ep_symmetric.sh (conv 128-256-512-512, T1 250, T2 30,
mbs 128, symmetric nudged phases, random crop and flip). The measurement trains `--batches`
batches of CIFAR-shaped random images after `--warmup` ones (compilation, cuDNN's choice of
kernels) and evaluates a batch of 500, then scales both to a whole epoch (50,000 training
and 10,000 test images). `--tiny` runs a tiny network instead: the CPU check of this script.

The roofline counts, with our own model code on the meta device, the FLOPs (FlopCounterMode),
the bytes every operation reads and writes (unfused: an upper bound of memory traffic) and
the operations (eager kernel launches) of one free step, one stacked nudged step and the
parameter gradients, and divides an epoch's worth by an H100's published peaks; the bound of
each part is the slower of its compute and its memory traffic.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import config
import distributed
from bench import published_args, sync
from data_utils import Split, batches
from main import set_deterministic
from model_utils import energy_gradients, map_states, relax
from trainer import EVAL_MBS, Trainer, evaluate_split

LINE = "train_cifar10_mse_ep_symmetric.sh"
TRAIN, TEST = 50_000, 10_000
PUBLISHED_EPOCH_S = 240  # the published code's epoch on one GPU, as its users report it
TINY = ["--channels", "4", "8", "8", "8", "--T1", "6", "--T2", "3", "--mbs", "16"]
# H100 SXM peaks (dense): FP32 on CUDA cores, TF32 and BF16 on tensor cores; HBM3 bandwidth
PEAKS = {"fp32": 67e12, "tf32": 495e12, "bf16": 989e12}
HBM_BYTES_PER_S = 3.35e12
LAUNCH_S = 5e-6  # host time per eager kernel launch (what a CUDA graph replay saves)


FAST = ["--solver", "evenodd", "--tol", "1e-4"]  # the recommended relaxation (README)


def line_args(precision: str, compile_: bool, tiny: bool, extra: Sequence[str] = ()):
    flags = ["--precision", precision, "--compile" if compile_ else "--no-compile", *extra]
    return published_args(LINE, flags + (TINY if tiny else []), task="CIFAR10")


def synthetic(n: int, device: torch.device, seed: int) -> Split:
    """CIFAR-shaped normalised images and labels (nothing to download on a GPU node)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return Split(torch.randn(n, 3, 32, 32, generator=gen, device=device),
                 torch.randint(0, 10, (n,), generator=gen, device=device))


def measure(args, device: torch.device, n_batches: int, warmup: int) -> dict:
    """Seconds of a training batch and of an evaluation batch of EVAL_MBS, over all processes."""
    torch.manual_seed(0)
    model = config.build_model(args).to(device)
    train = synthetic(args.mbs * (n_batches + warmup), device, 1)
    test = synthetic(EVAL_MBS * distributed.world_size(), device, 2)
    trainer = Trainer(model, train, test, args, None)
    perm = torch.arange(len(train), device=device)
    stream = batches(train, args.mbs, perm, 0, args.data_aug, trainer.gen)
    for b, (x, y) in enumerate(stream):
        if b == warmup:
            sync(device)
            distributed.all_sum(torch.zeros(1, device=device))  # start together
            t0 = time.perf_counter()
        trainer.train_batch(x, y)
        trainer.optimizer.step()
    sync(device)
    train_s = (time.perf_counter() - t0) / n_batches
    evaluate_split(model, test, "EP", args.T1)  # compiles the evaluation's batch shape
    sync(device)
    t0 = time.perf_counter()
    evaluate_split(model, test, "EP", args.T1)
    sync(device)
    eval_s = (time.perf_counter() - t0) / distributed.world_size()  # per EVAL_MBS images
    epoch_s = train_s * -(-TRAIN // args.mbs) + eval_s * TEST / EVAL_MBS
    return {"train_ms": 1e3 * train_s, "eval_ms": 1e3 * eval_s, "epoch_s": epoch_s}


# arguments whose data a kernel never reads (only their shape): max-pool's backward, our
# un-pooling, reads the pooled values and the arg-max, not the pre-pool input
SHAPE_ONLY = {torch.ops.aten.max_pool2d_with_indices_backward.default: 1}


class TrafficMode(TorchDispatchMode):
    """Bytes read and written by every operation that is not a view (no fusion assumed)."""

    def __init__(self):
        super().__init__()
        self.bytes, self.ops = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            self.ops += 1
            read = [a for i, a in enumerate(args) if i != SHAPE_ONLY.get(func)]
            self.bytes += sum(t.numel() * t.element_size()
                              for t in pytree.tree_leaves((read, kwargs, out))
                              if isinstance(t, torch.Tensor))
        return out


def counted(fn) -> tuple[float, float, int]:
    """FLOPs, bytes moved and operations (kernels, in eager mode) of fn()."""
    flops, traffic = FlopCounterMode(display=False), TrafficMode()
    with flops, traffic:
        fn()
    return flops.get_total_flops(), traffic.bytes, traffic.ops


@torch.no_grad()
def roofline(precision: str, tiny: bool = False, free_steps: float | None = None) -> dict:
    """FLOPs, bytes and kernels of one epoch of the line, and the time they take at the peaks
    (with bf16 the nudged steps are linearised, as ep_gradients runs them). `free_steps`: the
    steps (sweeps) of a free phase per image, training's and evaluation's, if not --T1 (a
    --solver with --tol: an even-odd sweep computes a step's products)."""
    args = line_args(precision, False, tiny)
    model = config.build_model(args).to("meta")
    x = torch.empty(args.mbs, 3, 32, 32, device="meta")
    y = torch.zeros(args.mbs, dtype=torch.long, device="meta")
    batch, s = model.batch(x, y), model.init_states(x)
    both = map_states(lambda t: torch.cat([t, t]), s)
    nudged = batch.stacked(args.betas[1])
    if model.compute_dtype is not None:
        nudged = model.linearised(nudged, both)
    free = counted(lambda: relax(model, batch, s, 1))
    nudged = counted(lambda: relax(model, nudged, both, 1))
    grads = counted(lambda: energy_gradients(model, batch, s, -args.betas[1], s, args.betas[1]))
    n_batches = -(-TRAIN // args.mbs)
    free_steps = args.T1 if free_steps is None else free_steps
    counts = (free_steps * (TRAIN + TEST) / args.mbs, args.T2 * n_batches, n_batches)
    flops, traffic, ops = (sum(c[i] * n for c, n in zip((free, nudged, grads), counts))
                           for i in range(3))
    compute_s, memory_s = flops / PEAKS[precision], traffic / HBM_BYTES_PER_S
    return {"precision": precision, "free_steps": free_steps,
            "step_gflop_per_image": free[0] / args.mbs / 1e9,
            "step_mib_per_image": free[1] / args.mbs / 2**20, "epoch_pflop": flops / 1e15,
            "epoch_tb": traffic / 1e12, "compute_s": compute_s, "memory_s": memory_s,
            "bound_s": max(compute_s, memory_s), "ops_per_step": free[2],
            "launch_s": ops * LAUNCH_S}


def roofline_table(rows: list[dict]) -> str:
    lines = ["| precision | free steps | GFLOP / image / step | MiB moved / image / step "
             "(unfused) | epoch PFLOP | epoch TB moved | at peak compute (s) | at peak "
             "bandwidth (s) | bound (s) | eager kernels / step | their launches (s) |",
             "|---" * 11 + "|"]
    lines += [f"| {r['precision']} | {r['free_steps']:g} | {r['step_gflop_per_image']:.3f} | "
              f"{r['step_mib_per_image']:.2f} | {r['epoch_pflop']:.2f} | {r['epoch_tb']:.1f} | "
              f"{r['compute_s']:.1f} | {r['memory_s']:.1f} | {r['bound_s']:.1f} | "
              f"{r['ops_per_step']} | {r['launch_s']:.0f} |" for r in rows]
    return "\n".join(lines)


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--batches", type=int, default=10, help="batches timed")
    p.add_argument("--warmup", type=int, default=3, help="batches before the timing")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only (main.py --deterministic)")
    p.add_argument("--fast", action="store_true",
                   help=f"the recommended relaxation: main.py {' '.join(FAST)}")
    p.add_argument("--tiny", action="store_true", help="a tiny network: the CPU self-check")
    p.add_argument("--roofline", action="store_true", help="print the bound and exit")
    p.add_argument("--free-steps", nargs="*", type=float, default=[], metavar="N",
                   help="--roofline: bf16 rows with N free steps (sweeps) a phase, as a --tol "
                   "solver takes, besides the published T1")
    a = p.parse_args()
    if a.roofline:
        rows = [roofline(prec, a.tiny) for prec in ("fp32", "tf32", "bf16")]
        print(roofline_table(rows + [roofline("bf16", a.tiny, n) for n in a.free_steps]))
        return
    device = distributed.init() if distributed.launched() else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    processes = distributed.world_size()
    try:
        extra = ["--deterministic"] * a.deterministic + FAST * a.fast
        args = line_args(a.precision, a.compile, a.tiny, extra)
        set_deterministic(args.deterministic)
        r = measure(args, device, a.batches, a.warmup)
        distributed.close(wait=True)  # gloo aborts a process whose peer leaves mid-read
    finally:
        distributed.close()
    if distributed.is_main():
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"| {processes} x {name} | {a.precision}"
              f"{' compiled' if a.compile else ''}{' deterministic' * a.deterministic}"
              f"{' evenodd tol 1e-4' * a.fast}"
              f" | {r['train_ms']:.1f} | {r['eval_ms']:.1f} | "
              f"{r['epoch_s']:.1f} | {PUBLISHED_EPOCH_S / r['epoch_s']:.2f}x |")


if __name__ == "__main__":
    cli()
