"""LCANet: the LCA code inside the energy. Its explicit step is the energy's derivative, EP's
gradient of every weight (the dictionary D included) tends to BPTT's, and D learns."""

import pytest
import torch

import config
import main
from gdu import gdu_check
from helpers import assert_same_weights, cli, metrics, only_run_dir, weights
from lca_layer import normalise_atoms, sparse_code, standardise
from model_utils import (LCAConfig, Phases, autograd_step, bp_gradients, bptt_gradients,
                         build_lcanet, ep_gradients, flat_states, free_phase, scale_init)

HEADS = [("mse", False), ("cel", False), ("cel", True)]

def lcanet(loss="cel", softmax=True, pool="m", **lca):
    """4 atoms of 3x3 on 12x12 images, a 3x3 conv with pooling, a linear layer."""
    config = dict(n_feats=4, kernel=3, stride=1, padding=1, lam=0.1, tau=3.0, iters=3)
    return build_lcanet((1, 12, 12), LCAConfig(**{**config, **lca}), [5], [3], [1], [0], pool,
                        [10], "mysig", loss, softmax)


def converging_lcanet(loss, softmax, **lca):
    """3 non-overlapping atoms (stride = kernel) on 6x6 images: a well-conditioned code whose
    dynamics reach their fixed point to rounding in 300 steps."""
    config = dict(n_feats=3, kernel=3, stride=3, padding=0, lam=0.05, tau=2.0, iters=2)
    model = build_lcanet((1, 6, 6), LCAConfig(**{**config, **lca}), [4], [2], [1], [0], "i",
                         [10], "tanh", loss, softmax)
    scale_init(model, 0.5)  # weak enough couplings for a contracting map
    return model


def random_states(model, n):
    """A random code a >= 0 with some zeros, random potentials and random other layers."""
    code = torch.randn(n, *model.state_shapes[0])
    return [(code.relu(), torch.randn_like(code))] + [torch.randn(n, *shape)
                                                       for shape in model.state_shapes[1:]]


def grads_of(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("loss,softmax", HEADS)
@pytest.mark.parametrize("pool", ["m", "a", "i"])
@pytest.mark.parametrize("lca", [{}, {"feedback_scale": 0.3}, {"nonneg": False, "iters": 1},
                                 {"standardise": False, "stride": 2, "iters": 2}],
                         ids=["default", "feedback", "signed", "raw-stride2"])
@pytest.mark.usefixtures("float64")
def test_step_is_the_update_of_the_energys_derivative(loss, softmax, pool, lca):
    """Each layer's explicit step equals its update applied to autograd.grad(Phi, s): the code's
    potentials run their LCA iterations from f * dPhi/da, the other layers take act(dPhi/ds)."""
    torch.manual_seed(0)
    model = lcanet(loss, softmax, pool, **lca)
    x, y = torch.rand(4, 1, 12, 12), torch.randint(0, 10, (4,))
    s, batch = random_states(model, 4), model.batch(x, y)
    for beta in (0.0, 0.7, torch.tensor([0.3, -0.2, 0.5, 1.0])):
        explicit = flat_states(model.step(batch.nudged(beta), s))
        reference = flat_states(autograd_step(model, batch.nudged(beta), s))
        for e, r in zip(explicit, reference, strict=True):
            assert (e - r).norm() <= 1e-10 * r.norm()


@pytest.mark.usefixtures("float64")
def test_code_dynamics_written_out():
    """The code's step with the layer above silent is LCA itself: u <- u + (D*x - u - (G-I)a)/tau
    with the inhibition recomputed at every inner iteration, i.e. `sparse_code`."""
    torch.manual_seed(1)
    model = lcanet(iters=4)
    with torch.no_grad():
        for p in list(model.parameters())[1:]:
            p.zero_()  # no top-down input: the conv layer's weights are zero
    x = torch.rand(3, 1, 12, 12)
    s = free_phase(model, x, 5)
    D = model.sparse_coding.weight
    expected = sparse_code(standardise(x), D, 0.1, 3.0, 20, stride=1, padding=1)
    torch.testing.assert_close(s[0][0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("float64")
def test_param_grads_are_autograd_of_phi():
    torch.manual_seed(2)
    for model in (lcanet(), lcanet("mse", False, feedback_scale=2.0)):
        s, x = random_states(model, 4), torch.rand(4, 1, 12, 12)
        batch = model.batch(x, torch.randint(0, 10, (4,)))
        for beta in (0.0, 0.6):
            explicit = model.param_grads(batch.nudged(beta), s)
            reference = torch.autograd.grad(model.phi(batch.nudged(beta), s).sum(),
                                            list(model.parameters()), allow_unused=True)
            for e, r in zip(explicit, reference, strict=True):
                r = torch.zeros_like(e) if r is None else r
                assert (e - r).norm() <= 1e-10 * max(r.norm(), 1e-30)


@pytest.mark.parametrize("loss,softmax", [("mse", False), ("cel", True)])
@pytest.mark.usefixtures("float64")
def test_ep_gradient_of_every_weight_tends_to_bptt(loss, softmax):
    """At a converged fixed point EP -> BPTT as beta -> 0, for D as for the other weights."""
    torch.manual_seed(1)
    model = converging_lcanet(loss, softmax)
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 10, (8,))
    s = free_phase(model, x, 300)
    step = model.step(model.batch(x), s)
    assert max((a - b).abs().max() for a, b in zip(flat_states(s), flat_states(step))) < 1e-10
    assert 0 < (s[0][0] != 0).double().mean() < 1  # a sparse code: the threshold is active
    bptt_gradients(model, x, y, Phases(T1=300, T2=100))
    g_bptt, d_bptt = grads_of(model), model.sparse_coding.weight.grad.clone()
    assert d_bptt.norm() > 0.1 * g_bptt.norm() / len(list(model.parameters()))

    def error(beta, thirdphase):
        ep_gradients(model, x, y, Phases(300, 100, 0.0, beta, thirdphase))
        d_ep = model.sparse_coding.weight.grad
        return (((grads_of(model) - g_bptt).norm() / g_bptt.norm()).item(),
                ((d_ep - d_bptt).norm() / d_bptt.norm()).item())

    betas = [0.2, 0.05, 0.01]
    symmetric = [error(b, True) for b in betas]
    one_sided = [error(b, False) for b in betas]
    for errors in (symmetric, one_sided):
        for k in (0, 1):
            assert [e[k] for e in errors] == sorted((e[k] for e in errors), reverse=True)
    assert symmetric[-1][0] < 0.01 and symmetric[-1][1] < 0.01
    assert all(s[0] < o[0] for s, o in zip(symmetric, one_sided))


@pytest.mark.parametrize("estimator", ["EP", "BPTT", "BP"])
@pytest.mark.usefixtures("float64")
def test_every_layer_and_the_dictionary_get_a_classification_gradient(estimator):
    """The published code's dictionary got no classification signal and its BP baseline
    trained only the read-out: here every weight, D included, gets a non-zero gradient."""
    torch.manual_seed(3)
    model = lcanet()
    x, y = torch.rand(6, 1, 12, 12), torch.randint(0, 10, (6,))
    if estimator == "EP":
        ep_gradients(model, x, y, Phases(20, 5, 0.0, 0.2, thirdphase=True))
    elif estimator == "BPTT":
        bptt_gradients(model, x, y, Phases(20, 20))
    else:
        bp_gradients(model, x, y)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.usefixtures("float64")
def test_recon_only_dictionary_is_no_parameter_and_its_step_lowers_the_error():
    """--dict_loss recon: D is a buffer (no optimizer, no gradient) that only the unsupervised
    step moves; on a fixed batch the step lowers the reconstruction error; atoms stay unit."""
    torch.manual_seed(4)
    model = lcanet(learned=False, eta=0.02, tau=10.0, iters=5)
    coding = model.sparse_coding
    assert all(p is not coding.weight for p in model.parameters())
    x = torch.rand(16, 1, 12, 12)
    errors = []
    for _ in range(6):
        with torch.no_grad():
            s = free_phase(model, x, 10)
        errors.append(model.code_stats(x, s)["recon_error"].mean().item())
        model.after_update(x, s)
        torch.testing.assert_close(coding.weight.flatten(1).norm(dim=1), torch.ones(4))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.9 * errors[0]


@pytest.mark.usefixtures("float64")
def test_atoms_stay_unit_norm_after_an_optimizer_step():
    torch.manual_seed(5)
    model = lcanet(eta=0.0)
    x, y = torch.rand(6, 1, 12, 12), torch.randint(0, 10, (6,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    s = ep_gradients(model, x, y, Phases(10, 4, 0.0, 0.2))
    before = model.sparse_coding.weight.detach().clone()
    optimizer.step()
    model.after_update(x, s)
    D = model.sparse_coding.weight
    torch.testing.assert_close(D.flatten(1).norm(dim=1), torch.ones(4))
    assert not torch.allclose(D, before)
    stepped = before - 0.5 * D.grad
    torch.testing.assert_close(D, normalise_atoms(stepped.clone()))


@pytest.mark.usefixtures("float64")
def test_code_stats():
    torch.manual_seed(6)
    model = lcanet()
    x = torch.rand(5, 1, 12, 12)
    s = free_phase(model, x, 10)
    stats = model.code_stats(x, s)
    a = s[0][0]
    D = model.sparse_coding.weight
    recon = torch.nn.functional.conv_transpose2d(a, D, padding=1)
    torch.testing.assert_close(stats["recon_error"],
                               0.5 * (standardise(x) - recon).pow(2).sum((1, 2, 3)))
    torch.testing.assert_close(stats["sparsity"], (a != 0).double().mean((1, 2, 3)))
    assert 0 < stats["sparsity"].mean() < 1


@pytest.mark.usefixtures("float64")
def test_forward_is_differentiable_in_x():
    """What an attack needs: d(loss)/dx through the standardised input, the code's iterations
    and the network's steps equals a central finite difference."""
    torch.manual_seed(7)
    model = lcanet(pool="a")
    scale_init(model, 0.5)
    model.free_steps = 6
    x = torch.rand(2, 1, 12, 12, requires_grad=True)
    y = torch.tensor([1, 4])
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), x)
    direction = torch.randn_like(x)
    with torch.no_grad():
        plus, minus = (torch.nn.functional.cross_entropy(model(x + h * direction), y)
                       for h in (1e-6, -1e-6))
    torch.testing.assert_close((grad * direction).sum(), (plus - minus) / 2e-6, rtol=1e-5,
                               atol=1e-9)


@pytest.mark.usefixtures("float64")
def test_gdu_check_compares_the_dictionary():
    """gducheck on LCANet: D is among the tensors, and at a converged fixed point with a small
    symmetric nudge EP's cumulative update of D ends where BPTT's does."""
    torch.manual_seed(1)
    model = converging_lcanet("cel", True)
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 10, (8,))
    result = gdu_check(model, x, y, 300, 100, 0.01, thirdphase=True)
    assert "D1" in result["bptt"] and "D1" in result["metrics"]["symmetric"]
    assert result["free_drift"] < 1e-10
    ep_total, bptt_total = (result[k]["D1"].sum(0) for k in ("symmetric", "bptt"))
    assert (ep_total - bptt_total).norm() < 1e-3 * bptt_total.norm()


TINY_LCANET = ["--model", "LCACNN", "--channels", "4", "4", "6", "--kernels", "5", "3",
               "--strides", "2", "1", "--paddings", "2", "1", "--pools", "im", "--tau", "8",
               "--lca_iters", "2", "--T1", "4", "--T2", "2", "--mbs", "500", "--lrs", "0.01",
               "0.01", "0.01", "--softmax", "--loss", "cel", "--thirdphase", "--seed", "2",
               "--save"]


def test_run_resumes_bit_for_bit_writes_code_metrics_and_evaluates(tmp_path, capsys):
    assert cli(TINY_LCANET + ["--epochs", "2", "--results-dir", tmp_path / "a"])[0] == 0
    assert cli(TINY_LCANET + ["--epochs", "1", "--results-dir", tmp_path / "b"])[0] == 0
    a, b = only_run_dir(tmp_path / "a"), only_run_dir(tmp_path / "b")
    assert cli(["--todo", "train", "--load-path", b, "--epochs", "1"])[0] == 0
    assert_same_weights(weights(a / "final_model.pt"), weights(b / "final_model.pt"))
    assert metrics(a) == metrics(b)
    rows = metrics(a)
    assert len(rows) == 2
    for row in rows:
        assert float(row["recon_error"]) > 0 and 0 < float(row["sparsity"]) < 1
    for name in ("dictionary.png", "train-test_acc.png", "neural_activity.png"):
        assert (a / name).stat().st_size > 0
    D = weights(a / "final_model.pt")["synapses.0.weight"]
    torch.testing.assert_close(D.flatten(1).norm(dim=1), torch.ones(4))
    capsys.readouterr()
    rc, out, _ = cli(["--todo", "evaluate", "--load-path", a], capsys)
    assert rc == 0 and "reconstruction error" in out and "sparsity" in out
    assert "reconstruction error" in (a / "hyperparameters.txt").read_text()
    rc, out, _ = cli(["--todo", "gducheck", "--load-path", a, "--mbs", "5"], capsys)
    assert rc == 0 and "D1" in out


@pytest.mark.parametrize("dict_loss", ["recon", "class", "combo"])
def test_dict_loss_decides_what_moves_the_dictionary(dict_loss, tmp_path):
    """recon: the unsupervised step alone (D is no parameter); class: the optimizer alone
    (--eta does not apply); combo (both): the two."""
    argv = TINY_LCANET + ["--epochs", "1", "--dict_loss", dict_loss, "--results-dir", str(tmp_path)]
    args, typed = main.parse(argv)
    config.validate(args, typed)
    assert args.dict_loss == {"combo": "both"}.get(dict_loss, dict_loss)
    torch.manual_seed(args.seed)  # as main does
    model = config.build_model(args)
    coding = model.sparse_coding
    assert (coding.weight in set(model.parameters())) == (dict_loss != "recon")
    assert coding.eta == (0.0 if dict_loss == "class" else 1e-3)
    before = coding.weight.detach().clone()
    assert cli(argv)[0] == 0
    after = weights(only_run_dir(tmp_path) / "final_model.pt")["synapses.0.weight"]
    assert not torch.allclose(before, after)


def test_a_tau_too_small_for_the_dictionary_gets_a_notice(tmp_path, capsys):
    """Below half the largest eigenvalue of D * D^T the code oscillates: say so, with a fix."""
    argv = TINY_LCANET + ["--epochs", "1", "--results-dir", str(tmp_path)]
    torch.manual_seed(2)
    args, typed = main.parse(argv)
    config.validate(args, typed)
    least = config.build_model(args).sparse_coding.stable_tau()
    assert 1 < least < 8  # the line's --tau 8 settles
    for tau, noticed in (("8", False), ("1", True)):
        rc, out, _ = cli(argv + ["--tau", tau], capsys)
        assert rc == 0 and ("notice: --tau 1 is below" in out) == noticed
