"""What only a GPU would run, checked on the CPU: files saved from CUDA tensors, a resume across
device types, the GPU a benchmark waits for, deterministic algorithms, rank 0 alone
downloading under torchrun, and processes on different GPU models. (CUDA graphs under
autograd: tests/test_compile.py.)"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_flatten, tree_map_only

import bench
import results
import trainer
from helpers import ROOT, TINY_MLP, cli, only_run_dir, weights

CNN = ["--model", "CNN", "--channels", "3", "4", "--kernels", "5", "3", "--pools", "mm",
       "--T1", "4", "--T2", "2", "--mbs", "1000", "--optim", "sgd", "--lrs", "0.05", "0.05",
       "0.05"]


def tensors(obj) -> list[torch.Tensor]:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


def test_files_written_by_a_gpu_run_hold_cpu_tensors(tmp_path, monkeypatch):
    """A checkpoint of CUDA tensors (fake ones here) reaches torch.save on the CPU: README's
    torch.load(path, weights_only=True) then works on a machine without a GPU."""
    rc = cli(TINY_MLP + ["--epochs", "1", "--save", "--results-dir", tmp_path])[0]
    assert rc == 0
    ckpt = torch.load(only_run_dir(tmp_path) / "checkpoint.tar", weights_only=True)
    with FakeTensorMode():
        on_gpu = tree_map_only(torch.Tensor, lambda t: torch.empty(t.shape, dtype=t.dtype,
                                                                    device="cuda"), ckpt)
    assert {t.device.type for t in tensors(on_gpu)} == {"cuda"}
    saved = []
    monkeypatch.setattr(torch, "save", lambda obj, f: saved.append(obj))
    results.atomic_save(on_gpu, tmp_path / "checkpoint.tar")
    assert len(tensors(saved[0])) == len(tensors(ckpt)) > 0
    assert {t.device.type for t in tensors(saved[0])} == {"cpu"}
    assert tree_flatten(saved[0])[1] == tree_flatten(ckpt)[1]  # the same structure and keys


def cuda_generator_state(seed: int = 7, offset: int = 40) -> torch.Tensor:
    """What a CUDA generator's get_state() returns: its seed and offset, 16 bytes."""
    return torch.tensor([seed, offset], dtype=torch.int64).view(torch.uint8)


def test_a_run_saved_on_a_gpu_resumes_on_the_cpu(tmp_path, capsys):
    """The data generator's saved state has the GPU's format; on the CPU it seeds the
    generator from that state with a notice, the same way every time."""
    assert cli(TINY_MLP + ["--epochs", "1", "--save", "--results-dir", tmp_path / "gpu"])[0] == 0
    run = only_run_dir(tmp_path / "gpu")
    ckpt = torch.load(run / "checkpoint.tar", weights_only=True)
    ckpt["gen"], ckpt["args"]["device"] = cuda_generator_state(), 1
    torch.save(ckpt, run / "checkpoint.tar")
    shutil.copytree(run, tmp_path / "again")
    capsys.readouterr()
    outs = []
    for folder in (run, tmp_path / "again"):
        rc, out, err = cli(["--load-path", folder, "--epochs", "1"], capsys)
        assert rc == 0, err
        outs.append(out)
    assert all(o.count("saved on a CUDA device and resumes on a CPU device") == 1 for o in outs)
    assert "--device" not in outs[0]  # the saved GPU index is not this machine's: not used
    a, b = weights(run / "final_model.pt"), weights(tmp_path / "again" / "final_model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


class CudaGenerator:
    """A stand-in for a CUDA generator: its device, its state's size, what it was set to."""
    device = torch.device("cuda", 0)

    def __init__(self):
        self.state, self.seed = cuda_generator_state(), None

    def get_state(self):
        return self.state

    def set_state(self, state):
        if state.numel() != 16:
            raise RuntimeError("RNG state is wrong size")
        self.state = state

    def manual_seed(self, seed):
        self.seed = seed


def test_a_cpu_state_seeds_a_cuda_generator_and_a_damaged_one_is_refused(capsys):
    cpu_state = torch.Generator().manual_seed(3).get_state()
    gens = [CudaGenerator(), CudaGenerator()]
    for gen in gens:
        trainer.restore_generator(gen, cpu_state)
    assert gens[0].seed == gens[1].seed is not None and 0 <= gens[0].seed < 2**63
    assert "saved on a CPU device and resumes on a CUDA device" in capsys.readouterr().out
    same_type = CudaGenerator()
    trainer.restore_generator(same_type, cuda_generator_state(9, 0))
    assert same_type.seed is None and torch.equal(same_type.state, cuda_generator_state(9, 0))
    with pytest.raises(RuntimeError):  # neither device's size: damaged (load_state_dict says so)
        trainer.restore_generator(torch.Generator(), torch.zeros(100, dtype=torch.uint8))


def test_the_benchmark_waits_for_the_gpu_that_does_the_work(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))

    class Idle:
        def train_batch(self, x, y):
            pass

        class optimizer:  # noqa: N801
            step = staticmethod(lambda: None)

    with FakeTensorMode():
        x = torch.empty(2, 3, device="cuda:1")
    bench.time_batch(Idle(), x, None)
    assert waited == [torch.device("cuda", 1)] * 2
    bench.sync(torch.device("cpu"))
    assert len(waited) == 2


def test_a_failing_gpu_benchmark_variant_is_reported_and_the_others_run(tmp_path):
    """check/bench_gpu.sh with a torchrun whose compiled variant fails: every other variant
    still gives its row, the failure its row and its error, and the script exits with 1."""
    fake = tmp_path / "torchrun"
    fake.write_text(textwrap.dedent("""\
        #!/bin/bash
        case "$*" in *--compile*) echo "boom: no compiler" >&2; exit 1;; esac
        echo "| $3 x CPU | $6 |"
        """))
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "check/bench_gpu.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 1
    rows = [ln for ln in done.stdout.splitlines() if " x CPU |" in ln or "failed" in ln]
    failed = [f"| {n} | --precision bf16 --compile{d} | failed (error below the table) |"
              for n in (1, 2) for d in ("", " --deterministic", " --fast")]
    assert rows == ["| 1 x CPU | fp32 |", "| 1 x CPU | bf16 |", *failed[:3],
                    "| 2 x CPU | fp32 |", "| 2 x CPU | bf16 |", *failed[3:]]
    assert done.stderr.count("boom: no compiler") == 6
    assert "| precision | free steps | GFLOP" in done.stdout  # the roofline still comes


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("alg", ["EP", "BPTT"])
def test_deterministic_runs_train_a_max_pooled_cnn(alg, tmp_path, capsys, restore_determinism,
                                                   monkeypatch):
    """--deterministic selects torch's deterministic algorithms and cuBLAS's workspace; the
    max-pool routing has one (max_unpool2d has none, on any device); the same run twice is
    the same bit for bit, and a later run without the flag turns it off."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    argv = CNN + ["--alg", alg, "--epochs", "1", "--deterministic", "--save"]
    for name in ("a", "b"):
        rc, _, err = cli(argv + ["--results-dir", tmp_path / name], capsys)
        assert rc == 0, err
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    a, b = (weights(only_run_dir(tmp_path / n) / "model.pt") for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert cli(TINY_MLP + ["--epochs", "1"], capsys)[0] == 0
    assert not torch.are_deterministic_algorithms_enabled()


def test_an_operation_without_a_deterministic_kernel_ends_in_one_line(capsys, monkeypatch,
                                                                      restore_determinism):
    """The old routing (max_unpool2d) under --deterministic: one line naming the flag."""
    from model_utils import ConvPool

    def unpool(self, s_out, ctx):
        indices, c, _ = ctx
        return torch.nn.functional.max_unpool2d(s_out, indices, 2, output_size=c.shape[-2:])

    monkeypatch.setattr(ConvPool, "unpool", unpool)
    rc, _, err = cli(CNN + ["--deterministic"], capsys)
    lines = [ln for ln in err.split("\r") if "error" in ln]  # the progress bar shares stderr
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("main.py: error: --deterministic: max_unpooling2d_forward_out")


WRAPPER = """\
import os, sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import torchvision.datasets.cifar as cifar
import helpers, main

class Patch:  # what helpers.write_cifar needs of pytest's monkeypatch
    setattr = staticmethod(setattr)

def download(self):  # slow, as a real one, and written file by file
    with open({log!r}, "a") as f:
        f.write(f"rank {{os.environ['RANK']}} downloads\\n")
    if not os.path.isdir(os.path.join(self.root, self.base_folder)):
        time.sleep(1)
        helpers.write_cifar(self.root, "CIFAR10", 20, Patch)

cifar.CIFAR10.download = download
cifar.check_integrity = lambda *a, **k: True
sys.exit(main.main(sys.argv[1:]))
"""


def test_under_torchrun_rank_0_downloads_alone(tmp_path):
    log = tmp_path / "downloads.txt"
    script = tmp_path / "wrapped_main.py"
    script.write_text(WRAPPER.format(root=str(ROOT), tests=str(ROOT / "tests"), log=str(log)))
    argv = ["--task", "CIFAR10", "--data-dir", tmp_path / "data", "--archi", "3072", "8", "10",
            "--T1", "3", "--T2", "1", "--mbs", "50"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(script), *map(str, argv)]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert log.read_text().splitlines() == ["rank 0 downloads", "rank 0 downloads"]  # 2 splits
    assert "epoch 1:" in done.stdout


CHECK_GPUS = """\
import sys
import torch, torch.distributed as dist
sys.path.insert(0, {root!r})
import distributed
from errors import UsageError
dist.init_process_group("gloo")
rank = dist.get_rank()
distributed.gpu_model = lambda device: 7 if {same} else 7 + rank
torch.cuda.get_device_name = lambda device: f"GPU model {{7 + rank}}"
try:
    distributed.check_same_gpus(torch.device("cpu"))
    said = "same"
except UsageError as e:
    said = str(e)
with open(f"{out}/rank{{rank}}.txt", "w") as f:  # not stdout: two processes interleave there
    f.write(f"rank {{rank}}: {{said}}")
dist.destroy_process_group()
"""


@pytest.mark.parametrize("same", [True, False])
def test_processes_on_different_gpu_models_are_refused(same, tmp_path):
    script = tmp_path / "check_gpus.py"
    script.write_text(CHECK_GPUS.format(root=str(ROOT), same=same, out=str(tmp_path)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(script)]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    if same:
        assert lines == ["rank 0: same", "rank 1: same"]
    else:
        assert [ln[:8] for ln in lines] == ["rank 0: ", "rank 1: "]
        assert all("run on different GPU models" in ln for ln in lines)
        assert "GPU model 7" in lines[0] and "start the job on GPUs of one model" in lines[0]

