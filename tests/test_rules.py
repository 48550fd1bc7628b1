"""The learning rules of Scellier et al. (2023) beside EP: contrastive (--alg CL) and coupled
(--alg CpL) learning clamp the output in the second phase; --nudge positive, negative or
centered for EP and CpL. Each gradient against a reference written from the definitions
(autograd of Phi, the clamped phase relaxed by the autograd step); the centered estimate is
the mean of the positive and negative ones; whole training steps against a plain loop."""

import copy
from pathlib import Path

import pytest
import torch

import config
import main
from data_utils import Split
from model_utils import Phases, autograd_step, ep_gradients
from trainer import Trainer, phases_from

ROOT = Path(__file__).resolve().parent.parent

ARCHS = {
    "MLP": ["--model", "MLP", "--archi", "784", "20", "12", "10"],
    "CNN": ["--model", "CNN", "--channels", "4", "6", "--kernels", "5", "3", "--pools", "mm",
            "--fc", "10"],
    "LCACNN": ["--model", "LCACNN", "--channels", "4", "4", "6", "--kernels", "5", "3",
               "--strides", "2", "1", "--paddings", "2", "1", "--pools", "im", "--tau", "8",
               "--lca_iters", "2", "--fc", "10"],
}


def rule_args(*flags):
    args, typed = main.parse(["--T1", "12", "--T2", "6", "--mbs", "6", "--seed", "1", *flags])
    config.validate(args, typed)
    return args


def relaxed(model, batch, s, steps, clamp=None):
    """Reference relaxation: autograd steps, the output overwritten with `clamp` after each."""
    for _ in range(steps):
        s = [t.detach() if isinstance(t, torch.Tensor) else tuple(u.detach() for u in t)
             for t in autograd_step(model, batch, s)]
        if clamp is not None:
            s[-1] = clamp
    return s


def reference_gradients(model, x, y, T1, T2, beta, sign_set, clamped):
    """From the definitions: the free state s0; for each sign in sign_set the second phase's
    state s(sign beta): nudged at sign beta, or with the output clamped to
    (1 - sign beta) o* + sign beta y; then -(dPhi/dtheta(s_b) - dPhi/dtheta(s_a)) / (b - a)
    for the pair (a, b) = (0, +) positive, (-, 0) negative, (-, +) centered, batch mean."""
    free = model.batch(x, y)
    s0 = relaxed(model, free, model.init_states(x), T1)
    states = {0.0: s0}
    for sign in sign_set:
        b = sign * beta
        if clamped:
            out = s0[-1]
            clamp = out + b * (free.target - out)
            states[b] = relaxed(model, free, [*s0[:-1], clamp], T2, clamp)
        else:
            states[b] = relaxed(model, free.nudged(b), s0, T2)
    lo, hi = min(states), max(states)
    params = list(model.parameters())
    with torch.enable_grad():
        phi = (model.phi(free.nudged(0.0 if clamped else hi), states[hi]).mean()
               - model.phi(free.nudged(0.0 if clamped else lo), states[lo]).mean())
        return torch.autograd.grad(-phi / (hi - lo), params, materialize_grads=True)


NUDGES = {"positive": (1.0,), "negative": (-1.0,), "centered": (1.0, -1.0)}
CASES = [(arch, alg, nudge) for arch in ARCHS for alg in ("EP", "CpL") for nudge in NUDGES]
CASES += [(arch, "CL", "positive") for arch in ARCHS]


@pytest.mark.parametrize("arch,alg,nudge", CASES, ids=["-".join(c) for c in CASES])
def test_gradients_are_the_definitions(arch, alg, nudge, float64):
    flags = [*ARCHS[arch], "--alg", alg] + ([] if alg == "CL" else
                                            ["--nudge", nudge, "--betas", "0", "0.3"])
    args = rule_args(*flags)
    model = config.build_model(args)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2)
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6)
    ph = phases_from(args)
    ep_gradients(model, x, y, ph, sign=-1.0 if nudge == "negative" else 1.0)
    ours = [p.grad.clone() for p in model.parameters()]
    beta = 1.0 if alg == "CL" else 0.3
    expected = reference_gradients(model, x, y, 12, 6, beta, NUDGES[nudge], alg != "EP")
    for g, e in zip(ours, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)
    assert any(g.abs().max() > 1e-6 for g in ours)


@pytest.mark.parametrize("clamped", [False, True], ids=["EP", "CpL"])
def test_centered_is_the_mean_of_positive_and_negative(clamped, float64):
    args = rule_args(*ARCHS["MLP"], "--betas", "0", "0.4")
    model = config.build_model(args)
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6)

    def grads(thirdphase, sign):
        ep_gradients(model, x, y, Phases(12, 6, 0.0, 0.4, thirdphase, clamped=clamped), sign)
        return [p.grad.clone() for p in model.parameters()]

    positive, negative, centered = grads(False, 1.0), grads(False, -1.0), grads(True, 1.0)
    for p, n, c in zip(positive, negative, centered):
        torch.testing.assert_close(c, (p + n) / 2, rtol=1e-9, atol=1e-13)
    # the two one-sided estimates differ (CpL's output bias not: its clamp is linear in beta)
    assert not torch.allclose(positive[0], negative[0], rtol=1e-3)


def test_contrastive_phase_holds_the_output_at_the_target(float64):
    """CL's second phase: the output is the one-hot target at every step and the hidden
    layers settle with it held (their own fixed point, not the free one)."""
    from model_utils import held, relax
    args = rule_args(*ARCHS["MLP"], "--alg", "CL")
    model = config.build_model(args)
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6)
    free = model.batch(x, y)
    clamped = free.nudged(1.0).clamped(torch.zeros(6, 10))
    assert torch.equal(clamped.clamp, free.target) and clamped.beta == 0.0
    s = relax(model, clamped, held(clamped, model.init_states(x)), 200)
    assert torch.equal(s[-1], free.target)
    after = model.step(clamped, s)
    assert max((a - b).abs().max() for a, b in zip(after, s)) < 1e-10


@pytest.mark.parametrize("flags", [["--alg", "CpL", "--nudge", "negative", "--betas", "0", "0.5"],
                                   ["--alg", "CL"],
                                   ["--alg", "EP", "--nudge", "negative", "--betas", "0", "0.5"]],
                         ids=["CpL-negative", "CL", "EP-negative"])
def test_weights_after_training_equal_a_plain_loop(flags, float64):
    """Trainer.fit on 4 batches: the reference gradients and a for-loop SGD with momentum."""
    args = rule_args(*ARCHS["MLP"], *flags, "--optim", "sgd", "--mmt", "0.9",
                     "--lrs", "0.05", "0.05", "0.05")
    model = config.build_model(args)
    reference = copy.deepcopy(model)
    data = Split(torch.rand(24, 1, 28, 28), torch.arange(24) % 10)
    assert Trainer(model, data, data, args, None).fit(1)
    groups = [{"params": list(syn.parameters()), "lr": 0.05} for syn in reference.synapses]
    optimizer = torch.optim.SGD(groups, momentum=0.9, foreach=False)
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(1))
    beta = 1.0 if args.alg == "CL" else 0.5
    signs = (-1.0,) if args.nudge == "negative" else (1.0,)
    for b in range(4):
        idx = perm[b * 6:(b + 1) * 6]
        grads = reference_gradients(reference, data.x[idx], data.y[idx], 12, 6, beta, signs,
                                    args.alg != "EP")
        for p, g in zip(reference.parameters(), grads):
            p.grad = g.contiguous()
        optimizer.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-10)


def test_nudge_and_thirdphase_typed_at_a_resume_decide(tmp_path, capsys):
    """A run saved centered (--thirdphase) resumes with --nudge negative, and one saved
    positive resumes with --thirdphase: what is typed now decides."""
    from helpers import TINY_MLP, cli, only_run_dir
    for first, then, now in ((["--thirdphase"], ["--nudge", "negative"], "negative"),
                             ([], ["--thirdphase"], "centered")):
        root = tmp_path / now
        assert cli(TINY_MLP + first + ["--save", "--results-dir", root], capsys)[0] == 0
        run = only_run_dir(root)
        assert cli(["--load-path", run, "--epochs", "1", *then], capsys)[0] == 0
        args = torch.load(run / "checkpoint.tar", weights_only=True)["args"]
        assert (args["nudge"], args["thirdphase"]) == (now, now == "centered")


def test_rule_cosines_orders_the_rules_as_the_theory_says(float64, monkeypatch):
    """check/rule_cosines.py on a converged tiny MLP: hEP and centered EP point along BPTT's
    gradient (centered closer than either one-sided EP), CEP at a small lr as EP, CL least."""
    monkeypatch.syspath_prepend(str(ROOT / "check"))
    import rule_cosines
    flags = ["--model", "MLP", "--archi", "784", "16", "10", "--act", "sigmoid", "--T1", "60",
             "--T2", "60", "--betas", "0", "0.5", "--mbs", "16", "--lrs", "1e-6", "1e-6"]
    cos = {rule: c.mean().item() for rule, c in rule_cosines.cosines(
        flags, ["EP", "EP-N", "EP-C", "CEP", "CL", "hEP"], 2).items()}
    assert 1 - cos["hEP"] < 1e-6 < 1 - cos["EP-C"] < 1 - cos["EP"] < 1 - cos["CL"]
    assert 1 - cos["EP-C"] < 1 - cos["EP-N"] < 1 - cos["CL"]
    assert cos["CEP"] == pytest.approx(cos["EP"], abs=1e-6)
