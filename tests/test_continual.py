"""Continual EP (--alg CEP): the weights after several batches of Trainer.fit equal a plain loop
written from the published code's formulas (autograd of Phi, its update pairing, its decay
division and weight-decay conversion, --cep-debug, --thirdphase) on torch.optim's for-loop
optimizer; with --cep-debug one batch's update is EP's; its GDU check moves the weights."""

import copy

import pytest
import torch

import config
import main
from data_utils import Split
from model_utils import Phases, autograd_step, ep_gradients
from trainer import Trainer

ARCHS = {
    "MLP": ["--model", "MLP", "--archi", "784", "24", "10"],
    "MLP-softmax": ["--model", "MLP", "--archi", "784", "24", "16", "10", "--loss", "cel",
                    "--softmax"],
    "CNN": ["--model", "CNN", "--channels", "4", "6", "--kernels", "5", "3", "--pools", "mm",
            "--fc", "10"],
}
OPTIMS = {"sgd": ["--optim", "sgd", "--mmt", "0.9"], "adam": ["--optim", "adam"]}
VARIANTS = {"plain": [], "thirdphase": ["--thirdphase"], "debug": ["--cep-debug"],
            "random-sign": ["--random-sign"]}
CASES = [(a, o, v) for a in ARCHS for o in OPTIMS for v in VARIANTS
         if a == "MLP" or v in ("plain", "thirdphase")]


def published_cep(model, args, data, n_batches):
    """The published train loop's CEP branch, on our model's Phi and its autograd step."""
    T2, (beta1, beta2) = args.T2, args.betas
    wds = args.wds if args.cep_debug else [(1 - (1 - wd * 0.1) ** (1 / T2)) / lr
                                           for lr, wd in zip(args.lrs, args.wds)]
    groups = [{"params": list(syn.parameters()), "lr": lr, "weight_decay": wd}
              for syn, lr, wd in zip(model.synapses, args.lrs, wds)]
    opt = (torch.optim.SGD(groups, momentum=args.mmt, foreach=False) if args.optim == "sgd"
           else torch.optim.Adam(groups, foreach=False))
    gen = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(len(data), generator=gen)

    def run(x, y, s, steps, beta):
        for _ in range(steps):
            s = [t.detach() for t in autograd_step(model, model.batch(x, y, beta), s)]
        return s

    def compute_syn_grads(x, y, s1, s2, b1, b2):
        opt.zero_grad()
        phi1 = model.phi(model.batch(x, y, b1), s1).mean()
        phi2 = model.phi(model.batch(x, y, b2), s2).mean()
        ((phi2 - phi1) / (b1 - b2)).backward()

    for b in range(n_batches):
        idx = perm[b * args.mbs:(b + 1) * args.mbs]
        x, y = data.x[idx], data.y[idx]
        b2 = beta2
        if args.random_sign:
            b2 *= 2.0 * torch.randint(0, 2, (), generator=gen).item() - 1
        s1 = run(x, y, model.init_states(x), args.T1, beta1)
        if args.cep_debug:
            prev = [p.detach().clone() for p in model.parameters()]
            lrs = [g["lr"] for g in opt.param_groups]
            for g in opt.param_groups:
                g["lr"] *= 6e-5
        for k in range(T2):
            s = run(x, y, s1, 1, b2)
            compute_syn_grads(x, y, s1, s, beta1, b2)
            for g in opt.param_groups:
                for p in g["params"]:
                    p.grad.div_((1 - g["lr"] * g["weight_decay"]) ** (T2 - 1 - k))
            opt.step()
            s1 = s
        if args.cep_debug:  # the published debug()
            opt.zero_grad()
            with torch.no_grad():
                for i, g in enumerate(opt.param_groups):
                    for p in g["params"]:
                        q = prev[[id(r) for r in model.parameters()].index(id(p))]
                        p.grad = (q - p) / g["lr"]
                        p.copy_(q)
                    g["lr"] = lrs[i]
            opt.step()
        if args.thirdphase:
            s2 = run(x, y, s1, T2, 0.0)
            for _ in range(T2):
                s3 = run(x, y, s2, 1, -b2)
                compute_syn_grads(x, y, s2, s3, b2, -b2)
                opt.step()
                s2 = s3


def cep_args(*flags):
    args, typed = main.parse(["--alg", "CEP", "--T1", "8", "--T2", "3", "--mbs", "8",
                              "--betas", "0", "0.5", "--seed", "3", *flags])
    config.validate(args, typed)
    return args


@pytest.mark.parametrize("arch,optim,variant", CASES, ids=["-".join(c) for c in CASES])
def test_weights_after_cep_batches_equal_the_published_formulas(arch, optim, variant, float64):
    n_layers = {"MLP": 2, "MLP-softmax": 3, "CNN": 3}[arch]
    args = cep_args(*ARCHS[arch], *OPTIMS[optim], *VARIANTS[variant],
                    "--lrs", *["0.05"] * n_layers, "--wds", *["0.3"] * n_layers)
    model = config.build_model(args)
    with torch.no_grad():  # large enough weights that every layer's update matters
        for p in model.parameters():
            p.mul_(3)
    reference, initial = copy.deepcopy(model), copy.deepcopy(model.state_dict())
    data = Split(torch.rand(32, 1, 28, 28), torch.arange(32) % 10)
    assert Trainer(model, data, data, args, None).fit(1)
    published_cep(reference, args, data, n_batches=4)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-10)
        assert not torch.equal(p, initial[name]), name  # every weight took steps


def debug_vs_ep(args) -> list[float]:
    """Per weight: |CEP --cep-debug's change - EP's| / |EP's| after one batch (SGD, no
    momentum, no weight decay) from the same weights."""
    model = config.build_model(args)
    start, ep_model = copy.deepcopy(model), copy.deepcopy(model)
    data = Split(torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)),
                 torch.arange(8) % 10)
    assert Trainer(model, data, data, args, None).fit(1)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(args.seed))
    ep_gradients(ep_model, data.x[perm], data.y[perm], Phases(args.T1, args.T2, *args.betas))
    with torch.no_grad():
        for group, lr in zip(ep_model.synapses, args.lrs):
            for p in group.parameters():
                p.sub_(lr * p.grad)
        return [((p - q).norm() / (q - p0).norm()).item() for p, q, p0 in
                zip(model.parameters(), ep_model.parameters(), start.parameters())]


def test_cep_debug_tends_to_ep_as_its_lr_factor_falls(float64, monkeypatch):
    """The published check that CEP tends to EP: with the steps inside the phase scaled down
    (by 6e-5), one batch moves the weights as EP's update would, the closer the smaller."""
    import continual
    args = cep_args(*ARCHS["MLP"], "--optim", "sgd", "--lrs", "0.1", "0.05", "--cep-debug")
    published = debug_vs_ep(args)
    monkeypatch.setattr(continual, "CEP_DEBUG_LR", continual.CEP_DEBUG_LR / 10)
    smaller = debug_vs_ep(args)
    assert max(published) < 1e-2
    for a, b in zip(published, smaller):
        assert b < a / 5  # first order in the factor


def test_cep_gdu_check_moves_the_weights_between_steps(float64):
    """gducheck --alg CEP, as published: the nudged steps update the weights (at lr 1e-5), so
    its updates differ from EP's, to first order in that lr; the model itself never moves."""
    from gdu import gdu_check
    model = config.build_model(cep_args(*ARCHS["MLP"]))
    weights = copy.deepcopy(model.state_dict())
    x, y = torch.rand(5, 1, 28, 28), torch.arange(5)
    ep = gdu_check(model, x, y, 30, 5, 0.5)["one_sided"]

    def distance(lr: float) -> float:
        cep = gdu_check(model, x, y, 30, 5, 0.5, continual_lr=lr)["one_sided"]
        assert all(torch.equal(ep[k][0], cep[k][0]) for k in ep)  # the first step: same weights
        return max((ep[k] - cep[k]).abs().max().item() for k in ep)

    published, larger = distance(1e-5), distance(1e-4)
    assert 0 < published and 5 < larger / published < 20
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name


def test_a_resume_converts_the_weight_decay_for_its_own_t2(tmp_path, capsys):
    """CEP's per-step decay depends on --T2: a resume with another one uses its own."""
    from helpers import TINY_MLP, cli, only_run_dir
    from trainer import weight_decays
    argv = TINY_MLP + ["--alg", "CEP", "--wds", "0.2", "0.2", "--save", "--results-dir",
                       tmp_path]
    assert cli(argv, capsys)[0] == 0
    run = only_run_dir(tmp_path)
    assert cli(["--load-path", run, "--T2", "4", "--epochs", "1"], capsys)[0] == 0
    saved = torch.load(run / "checkpoint.tar", weights_only=True)
    expected = weight_decays(cep_args(*ARCHS["MLP"], "--wds", "0.2", "0.2", "--T2", "4",
                                      "--lrs", "0.05", "0.05"))
    assert [g["weight_decay"] for g in saved["optimizer"]["param_groups"]] == pytest.approx(
        expected)


def test_cep_debug_keeps_a_frozen_layer(tmp_path, capsys):
    from helpers import TINY_MLP, cli, only_run_dir, weights
    argv = TINY_MLP + ["--alg", "CEP", "--cep-debug", "--lrs", "0", "0.05", "--save",
                       "--results-dir", tmp_path]
    assert cli(argv, capsys)[0] == 0
    run = only_run_dir(tmp_path)
    trained = weights(run / "final_model.pt")
    torch.manual_seed(0)
    assert all(torch.isfinite(t).all() for t in trained.values())
    start = config.build_model(cep_args(*TINY_MLP, "--seed", "0"))
    assert torch.equal(trained["synapses.0.weight"], start.synapses[0].weight)
    assert not torch.equal(trained["synapses.1.weight"], start.synapses[1].weight)
