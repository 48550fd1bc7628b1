"""Several processes training one model: torchrun starts them, torch.distributed joins them.

`torchrun --nproc_per_node N main.py ...` runs N copies of main.py with RANK, WORLD_SIZE and
LOCAL_RANK set. Every process holds the whole data set and draws the same batch order, dropout
masks and random signs (one generator, seeded alike); each relaxes its share of every batch
(--mbs stays the global batch), the shard means of the gradients are combined into the batch
mean, and every process takes the same optimizer step. Evaluation is sharded the same way and
its sums reduced. Only rank 0 writes files, so a checkpoint resumes with any process count.
In one process every function here is a no-op.
"""

from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

from errors import UsageError


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> torch.device:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPUs); this process's device."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
        check_same_gpus(device)
        return device
    dist.init_process_group("gloo")
    return torch.device("cpu")


def gpu_model(device: torch.device) -> int:
    """A number for the GPU's model: its multiprocessor count and a hash of its name."""
    props = torch.cuda.get_device_properties(device)
    name = int.from_bytes(hashlib.sha256(props.name.encode()).digest()[:4], "little")
    return (props.multi_processor_count << 32) | name


def check_same_gpus(device: torch.device) -> None:
    """Every process on the same GPU model, or a UsageError in all of them: CUDA's random
    kernels size their grids by the multiprocessor count, so other models draw other batch
    orders, augmentations and dropout masks from the same seed, and the processes diverge."""
    model = torch.tensor([gpu_model(device)], dtype=torch.int64, device=device)
    low, high = model.clone(), model.clone()
    dist.all_reduce(low, dist.ReduceOp.MIN)
    dist.all_reduce(high, dist.ReduceOp.MAX)
    if low.item() != high.item():
        raise UsageError(f"the {world_size()} processes run on different GPU models (this one: "
                         f"{torch.cuda.get_device_name(device)}), whose random numbers differ "
                         "for the same seed; start the job on GPUs of one model")


def main_first(load, device: torch.device):
    """load(download=True) on rank 0, then load(download=False) on the others, which read what
    it wrote (several processes must not write one dataset at once); a UsageError of rank 0's
    stops every process."""
    if world_size() == 1:
        return load(True)
    failed = None
    if is_main():
        try:
            result = load(True)
        except UsageError as e:
            failed = e
    if all_sum(torch.tensor([float(failed is not None)], device=device)).item():
        raise failed or UsageError("rank 0 could not load the data set")  # only rank 0 prints
    return result if is_main() else load(False)


def close(wait: bool = False) -> None:
    """Leave the process group; with `wait` (after a normal end) once every process is done:
    gloo can abort a process whose connections another tears down while it still reads them.
    Not after an error, where another process may never come."""
    if dist.is_initialized():
        if wait:
            try:
                dist.barrier()
            except RuntimeError:  # another process failed after its last collective: it says why
                pass
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (torchrun's RANK before the group is joined)."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """The process that prints and writes files."""
    return rank() == 0


def shard(n: int) -> slice:
    """This process's contiguous part of n samples (parts differ in size by one at most)."""
    base, extra = divmod(n, world_size())
    r = rank()
    start = r * base + min(r, extra)
    return slice(start, start + base + (r < extra))


def all_sum(t: Tensor) -> Tensor:
    """t summed over the processes, in place (t itself in one process)."""
    if world_size() > 1:
        dist.all_reduce(t)
    return t


def average_gradients(model: nn.Module, local: int, total: int) -> None:
    """.grad <- the whole batch's mean: each process's shard mean weighted by its share of the
    batch (local of total samples), summed over the processes in one flat all-reduce."""
    if world_size() == 1:
        return
    grads = [p.grad for p in model.parameters()]
    flat = torch.cat([g.flatten() for g in grads]).mul_(local / total)
    dist.all_reduce(flat)
    offset = 0
    for g in grads:  # logical order both ways, so a channels-last .grad keeps its layout
        g.copy_(flat[offset:offset + g.numel()].view(g.shape))
        offset += g.numel()
