"""--precision bf16: the dynamics' convolutions and matrix products in bfloat16, the states,
the EP difference and the optimizer in float32; fp32 (the default) is the exact arithmetic."""

import copy

import pytest
import torch
import torch.nn.functional as F

from gdu import gdu_check
from helpers import cli, only_run_dir, weights
from model_utils import (ConvPool, LCAConfig, LowPrecision, Phases, bf16_anchors, bptt_gradients,
                         build_cnn, build_lcanet, build_mlp, energy_gradients, ep_gradients,
                         flat_states, relax, set_precision)

SHAPE = (1, 28, 28)


def models(softmax: bool = True) -> dict:
    torch.manual_seed(0)
    loss = "cel" if softmax else "mse"
    lca = LCAConfig(n_feats=3, kernel=3, stride=2, padding=1, tau=5.0, iters=2)
    return {
        "MLP": build_mlp([784, 40, 10], "mysig", loss, softmax),
        "VFMLP": build_mlp([784, 40, 30, 10], "tanh", loss, softmax, vf=True),
        "CNN": build_cnn(SHAPE, [8, 16], [5, 3], [1, 1], [0, 1], "ma", [10], "hard_sigmoid",
                         loss, softmax),
        "VFCNN": build_cnn(SHAPE, [8, 16], [5, 3], [1, 1], [0, 0], "mm", [10], "mysig", loss,
                           softmax, vf=True),
        "LCACNN": build_lcanet(SHAPE, lca, [8], [3], [1], [1], "m", [10], "mysig", "cel", True),
    }


def pair(model):
    """The model at fp32 and a copy at bf16, same weights."""
    low = copy.deepcopy(model)
    set_precision(low, "bf16")
    set_precision(model, "fp32")
    return model, low


@pytest.mark.parametrize("name", list(models()))
def test_bf16_field_is_fp32_within_bf16_rounding(name):
    fp32, bf16 = pair(models()[name])
    x = torch.rand(6, *SHAPE)
    with torch.no_grad():
        s = relax(fp32, fp32.batch(x), fp32.init_states(x), 4)
        exact = fp32.field(fp32.batch(x), fp32.visible(s))
        low = bf16.field(bf16.batch(x), bf16.visible(s))
    errors = []
    for a, b in zip(exact, low, strict=True):
        assert b.dtype == torch.float32 and b.stride() == a.stride()
        errors.append(((a - b).norm() / a.norm()).item())
    assert max(errors) < 2e-2  # bfloat16 has an 8-bit mantissa: ~0.4% per product
    # the input drive stays fp32: a model whose energy has one synapse has fp32's field
    assert (max(errors) > 0) == (len(bf16.energy_synapses) > 1), errors


@pytest.mark.parametrize("kernel, stride, padding", [(5, 1, 0), (3, 1, 1), (3, 1, 2), (3, 2, 1)])
def test_bf16_top_down_conv_is_the_transposed_conv(kernel, stride, padding):
    """In bf16 a stride-1 top-down term runs as a conv with flipped kernels: the same sum."""
    torch.manual_seed(0)
    syn = ConvPool(3, 4, kernel, stride, padding, "m")
    h = torch.rand(2, 3, 11, 11)
    g = torch.randn_like(syn._conv(h, syn.weight, syn.bias))
    ctx = (None, g.shape, h.shape)
    exact = F.conv_transpose2d(g.double(), syn.weight.double(), None, stride, padding,
                               output_padding=11 - ((g.shape[-1] - 1) * stride - 2 * padding
                                                    + kernel))
    low = syn._conv_t(g.bfloat16(), ctx)
    assert low.dtype == torch.bfloat16 and low.shape == h.shape
    assert ((low.double() - exact).norm() / exact.norm()).item() < 1e-2


def test_only_the_synapses_that_compute_in_bf16_are_switched():
    model = models()["LCACNN"]
    set_precision(model, "bf16")
    switched = [isinstance(s, LowPrecision) and s.compute_dtype == torch.bfloat16
                for s in model.synapses]
    assert switched == [False, True, True]  # LCA's dictionary stays float32
    cnn = models()["CNN"]
    set_precision(cnn, "bf16")
    assert [s.compute_dtype for s in cnn.synapses] == [None, torch.bfloat16, torch.bfloat16]
    set_precision(model, "fp32")
    assert all(getattr(s, "compute_dtype", None) is None for s in model.synapses)


@pytest.mark.parametrize("name", ["MLP", "VFMLP", "CNN", "VFCNN"])
def test_ep_difference_runs_in_fp32(name):
    """At the same states, the parameter gradients are those of fp32 bit for bit: the
    difference of two nearby energies is never taken in bfloat16."""
    fp32, bf16 = pair(models(softmax=False)[name])
    x, y = torch.rand(6, *SHAPE), torch.randint(0, 10, (6,))
    with torch.no_grad():
        batch = fp32.batch(x, y)
        s_free = relax(fp32, batch, fp32.init_states(x), 5)
        s_nudged = relax(fp32, batch.nudged(0.5), s_free, 3)
    pre = s_free if fp32.has_feedback else None
    exact = energy_gradients(fp32, batch, s_free, 0.0, s_nudged, 0.5, pre=pre)
    low = energy_gradients(bf16, bf16.batch(x, y), s_free, 0.0, s_nudged, 0.5, pre=pre)
    for a, b in zip(exact, low, strict=True):
        assert b.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize("name", ["MLP", "CNN", "VFCNN"])
def test_bf16_ep_and_bptt_gradients_track_fp32(name):
    fp32, bf16 = pair(models()[name])
    x, y = torch.rand(8, *SHAPE), torch.randint(0, 10, (8,))
    ph = Phases(8, 4, 0.0, 0.5, thirdphase=True)
    for estimate in (lambda m: ep_gradients(m, x, y, ph), lambda m: bptt_gradients(m, x, y, ph)):
        grads = []
        for model in (fp32, bf16):
            estimate(model)
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert grads[1].dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(*grads, dim=0).item()
        assert cosine > 0.98, cosine


def test_gducheck_is_float64_whatever_the_precision():
    fp32, bf16 = pair(models()["CNN"])
    x, y = torch.rand(3, *SHAPE), torch.randint(0, 10, (3,))
    a, b = (gdu_check(m, x, y, 6, 3, 0.2)["one_sided"] for m in (fp32, bf16))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_bf16_training_run_and_resume(tmp_path, capsys):
    """A bf16 run keeps float32 weights and optimizer state, and resumes in bf16."""
    cnn = ["--model", "CNN", "--task", "MNIST5K", "--channels", "4", "--kernels", "5",
           "--fc", "10", "--T1", "6", "--T2", "3", "--mbs", "250", "--lrs", "5e-3", "5e-3",
           "--save", "--results-dir", tmp_path, "--precision", "bf16"]
    assert cli(cnn + ["--epochs", "1"], capsys)[0] == 0
    run = only_run_dir(tmp_path)
    assert all(t.dtype == torch.float32 for t in weights(run / "model.pt").values())
    ckpt = torch.load(run / "checkpoint.tar", weights_only=False)
    assert ckpt["args"]["precision"] == "bf16"
    assert all(t.dtype == torch.float32 for state in ckpt["optimizer"]["state"].values()
               for t in state.values() if t.dim())
    rc, out, _ = cli(["--load-path", run, "--epochs", "1"], capsys)
    assert rc == 0 and "precision: bf16" in (run / "hyperparameters.txt").read_text()
    assert len(torch.load(run / "checkpoint.tar", weights_only=False)["history"]["epoch"]) == 2


def test_fp32_is_exact_arithmetic():
    model = models()["CNN"]
    set_precision(model, "tf32")
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    set_precision(model, "fp32")
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    x = torch.rand(2, *SHAPE)
    states = flat_states(relax(model, model.batch(x), model.init_states(x), 3))
    assert all(t.dtype == torch.float32 for t in states)


@pytest.mark.parametrize("name", ["VFMLP", "CNN", "VFCNN", "LCACNN"])
def test_linearised_step_at_its_reference_is_the_fp32_step(name):
    """At its reference a linearised bf16 free step is fp32's step (to float32 rounding: the
    sums run in another order), far closer than a plain bf16 step. (A nudge through a softmax
    read-out is rounded as itself: bf16 keeps it relative to its size.)"""
    fp32, bf16 = pair(models()[name])
    x, y = torch.rand(5, *SHAPE), torch.randint(0, 10, (5,))
    masks = bf16.dropout_masks(x, [0.8] * len(bf16.synapses))
    with torch.no_grad():
        batch = bf16.batch(x, y, 0.0, masks)
        s = relax(bf16, batch, bf16.init_states(x), 4)
        exact = flat_states(fp32.step(fp32.batch(x, y, 0.0, masks), s))
        plain = flat_states(bf16.step(batch, s))
        linearised = flat_states(bf16.step(bf16.linearised(batch, s), s))
    far = max((a - b).abs().max().item() for a, b in zip(exact, plain))
    close = max((a - b).abs().max().item() for a, b in zip(exact, linearised, strict=True))
    assert close < 1e-5 and close < far / 100, (close, far)


@pytest.mark.parametrize("name", ["MLP", "CNN", "VFCNN"])
def test_linearised_nudged_phase_keeps_the_nudge_in_float32(name):
    """From the same free states, what the nudge does (the states after T2 steps at beta
    less those at beta 0) with linearised bf16 steps is fp32's within 3% (bfloat16 rounds the
    change, not the fields), several times closer than plain bf16 steps get."""
    fp32, bf16 = pair(models(softmax=False)[name])
    x, y = torch.rand(8, *SHAPE), torch.randint(0, 10, (8,))
    with torch.no_grad():
        s_free = relax(bf16, bf16.batch(x), bf16.init_states(x), 30)
        effects = {}
        for what, model in (("fp32", fp32), ("plain", bf16), ("linearised", bf16)):
            ends = []
            for beta in (0.05, 0.0):
                batch = model.batch(x, y).nudged(beta)
                if what == "linearised":
                    batch = model.linearised(batch, s_free)
                ends.append(flat_states(relax(model, batch, s_free, 5)))
            effects[what] = torch.cat([(u - v).flatten() for u, v in zip(*ends)])
    error = {k: ((effects[k] - effects["fp32"]).norm() / effects["fp32"].norm()).item()
             for k in ("plain", "linearised")}
    assert error["linearised"] < 0.03 and error["linearised"] < error["plain"] / 3, error


@pytest.mark.parametrize("thirdphase", [False, True])
def test_bf16_ep_runs_its_last_free_steps_and_nudged_phases_linearised(thirdphase,
                                                                        monkeypatch):
    from model_utils import EnergyNet
    model = models()["CNN"]
    set_precision(model, "bf16")
    seen, step = [], EnergyNet.step

    def recording_step(self, batch, s):
        seen.append(batch.reference is not None)
        return step(self, batch, s)

    monkeypatch.setattr(EnergyNet, "step", recording_step)
    x, y = torch.rand(4, *SHAPE), torch.randint(0, 10, (4,))
    references = []
    linearised = EnergyNet.linearised
    monkeypatch.setattr(EnergyNet, "linearised", lambda self, batch, s: references.append(
        [t.clone() for t in s]) or linearised(self, batch, s))
    ep_gradients(model, x, y, Phases(21, 4, 0.0, 0.5, thirdphase))
    # 5 plain free steps, then 4 x 4 linearised at a new reference every 4, then the nudged 4
    assert seen == [False] * 5 + [True] * 20 and len(references) == 4
    assert bf16_anchors(Phases(9, 4)) == [1, 4, 4] and bf16_anchors(Phases(3, 4)) == [3]
    seen.clear()
    set_precision(model, "fp32")
    ep_gradients(model, x, y, Phases(21, 4, 0.0, 0.5, thirdphase))
    assert seen == [False] * 25 and len(references) == 4  # fp32: the plain steps throughout


@pytest.mark.parametrize("name", ["CNN", "VFCNN"])
def test_bf16_free_state_is_an_fp32_fixed_point_and_its_ep_gradient_fp32s_there(name):
    """bf16 EP's s* is a fixed point of the fp32 dynamics (where a plain bf16 free phase ends
    off one), and its gradient is fp32's EP gradient from that s*."""
    fp32, bf16 = pair(models(softmax=False)[name])
    x, y = torch.rand(8, *SHAPE), torch.randint(0, 10, (8,))
    ph = Phases(60, 6, 0.0, 0.5)
    s_free = ep_gradients(bf16, x, y, ph)
    low = torch.cat([p.grad.flatten() for p in bf16.parameters()])
    with torch.no_grad():
        batch = fp32.batch(x, y)
        plain = relax(bf16, bf16.batch(x), bf16.init_states(x), ph.T1)

        def residual(s):
            return max((a - b).abs().max().item()
                       for a, b in zip(flat_states(fp32.step(batch, s)), flat_states(s)))

        assert residual(s_free) < 1e-6 and residual(s_free) < residual(plain) / 100
        s_nudged = relax(fp32, batch.nudged(ph.beta2), s_free, ph.T2)
    exact = energy_gradients(fp32, batch, s_free, 0.0, s_nudged, ph.beta2,
                             pre=s_free if fp32.has_feedback else None)
    exact = torch.cat([g.flatten() for g in exact])
    assert ((low - exact).norm() / exact.norm()).item() < 0.01
