"""bench.py still runs on the published lines, times its paths, and the fp32 ones reach the
reference's states there."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench
import bench_gpu
from helpers import ROOT, TINY_MLP, only_run_dir, weights


def test_benchmark_runs_and_paths_agree(monkeypatch):
    calls = {"autograd": 0}
    grad = torch.autograd.grad

    def counted(*args, **kwargs):
        calls["autograd"] += 1
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted)
    rows = bench.run(1, torch.device("cpu"), ("autograd", "explicit", "bf16"))
    assert [r["line"] for r in rows] == list(bench.LINES)
    for r in rows:
        assert r["max_state_diff"]["explicit"] < 1e-5, r  # identical here; kernels may differ
        assert 0 < r["max_state_diff"]["bf16"] < 1, r  # bfloat16 products: close, not equal
        assert r["speedup"]["explicit"] == pytest.approx(r["ms"]["autograd"] / r["ms"]["explicit"],
                                                         rel=1e-12)
    # the reference path differentiates Phi at every step; the explicit ones never do
    assert calls["autograd"] >= sum(r["batches"] for r in rows) * 30  # every line has T1 >= 30
    assert "| bf16 (ms/batch) |" in bench.table(rows)
    mlp = list(bench.LINES)[:1]
    compiled = bench.run(1, torch.device("cpu"), ("explicit", "compiled", "bf16 compiled"), mlp)
    assert compiled[0]["max_state_diff"]["compiled"] < 1e-5
    costs = bench.lca_costs(1, torch.device("cpu"))
    assert 0 < costs["lca_ms"] < costs["step_ms"]
    assert "one LCA iteration" in bench.lca_table(costs)
    unrolls = bench.unroll_costs(1, torch.device("cpu"), batch=2)
    assert [r["line"] for r in unrolls] == list(bench.LINES)[:2]
    assert all(r["plain_ms"] > 0 and r["checkpointed_ms"] > 0 and 1 <= r["segment"] <= r["T"]
               for r in unrolls)
    assert "checkpointed" in bench.unroll_table(unrolls)


def test_gpu_benchmark_script_runs_on_the_cpu():
    """check/bench_gpu.sh without a GPU: a tiny network, 1 and 2 processes, every variant,
    then the roofline of the real line (whose step FLOPs are the published network's)."""
    done = subprocess.run(["bash", "check/bench_gpu.sh", "--batches", "2", "--warmup", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [ln for ln in done.stdout.splitlines() if ln.startswith("| ") and "x CPU" in ln]
    assert [r.split(" | ")[:2] for r in rows] == [[f"| {n} x CPU", v] for n in (1, 2)
                                                  for v in ("fp32", "bf16", "bf16 compiled",
                                                            "bf16 compiled deterministic",
                                                            "bf16 compiled evenodd tol 1e-4")]
    assert all(float(r.split(" | ")[4]) > 0 for r in rows)
    bound = {r["precision"]: r for r in [bench_gpu.roofline(p) for p in ("fp32", "bf16")]}
    fast, none = (bench_gpu.roofline("bf16", free_steps=n)["epoch_pflop"] for n in (50, 0))
    # 50 of the line's 250 free steps: a fifth of the free phases' work, the rest unchanged
    assert fast - none == pytest.approx(0.2 * (bound["bf16"]["epoch_pflop"] - none))
    assert bound["fp32"]["step_gflop_per_image"] == pytest.approx(0.642, rel=0.01)
    assert bound["bf16"]["bound_s"] < bound["fp32"]["bound_s"]
    assert "| bf16 | 250 |" in done.stdout.split("| precision | free steps | GFLOP")[1]


def test_free_noise_experiment_changes_a_run_only_through_its_noisy_steps(tmp_path):
    """check/free_noise.py: noise changes the weights a run learns; with as many clean steps
    as free ones (T1 5) it is main.py itself, bit for bit."""
    def trained(script: str, clean: str = "5") -> dict:
        out = tmp_path / f"{Path(script).stem}-{clean}"
        env = {**os.environ, "NOISE": "0.01", "CLEAN": clean, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, script, *TINY_MLP, "--epochs", "1", "--save",
                        "--results-dir", str(out)], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        return weights(only_run_dir(out) / "model.pt")

    plain = trained("main.py")
    assert all(torch.equal(plain[k], v) for k, v in trained("check/free_noise.py").items())
    assert any(not torch.equal(plain[k], v)
               for k, v in trained("check/free_noise.py", "2").items())
