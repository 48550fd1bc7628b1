"""The explicit step equals act(autograd.grad(Phi, s)); the energy's EP gradient matches BPTT."""

import pytest
import torch

from model_utils import (ACTIVATIONS, EnergyNet, Neurons, Phases, autograd_step, bp_gradients,
                         bptt_gradients, build_cnn, build_mlp, ep_gradients, free_phase, relax,
                         scale_init)

HEADS = [("mse", False), ("cel", False), ("cel", True)]


pytestmark = pytest.mark.usefixtures("float64")


def random_states(model, n):
    return [torch.randn(n, *shape) for shape in model.state_shapes]


def assert_steps_match(model, x, y):
    s, batch = random_states(model, x.shape[0]), model.batch(x, y)
    for beta in (0.0, 0.7, torch.tensor([0.3, -0.2, 0.5, 1.0])):
        explicit = model.step(batch.nudged(beta), s)
        reference = autograd_step(model, batch.nudged(beta), s)
        for e, r in zip(explicit, reference, strict=True):
            assert (e - r).norm() <= 1e-10 * r.norm()


@pytest.mark.parametrize("vf", [False, True], ids=["MLP", "VFMLP"])
@pytest.mark.parametrize("loss,softmax", HEADS)
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_mlp_step_is_autograd_of_phi(loss, softmax, act, vf):
    model = build_mlp([20, 15, 12, 10], act, loss, softmax, vf)
    assert_steps_match(model, torch.randn(4, 20), torch.randint(0, 10, (4,)))


@pytest.mark.parametrize("vf", [False, True], ids=["CNN", "VFCNN"])
@pytest.mark.parametrize("loss,softmax", HEADS)
@pytest.mark.parametrize("pools", ["mm", "aa", "ii", "ma", "im"])
def test_cnn_step_is_autograd_of_phi(loss, softmax, pools, vf):
    # odd sizes (11 -> 11 -> 5, 5 -> 4 -> 2) exercise pooling edges and output padding
    model = cnn_with_random_weights(loss, softmax, pools, vf)
    assert_steps_match(model, torch.randn(4, 3, 11, 11), torch.randint(0, 10, (4,)))


def test_explicit_dynamics_need_no_autograd(monkeypatch):
    """The free phase and a whole EP batch run with autograd off and never call it; the states
    equal the autograd reference's."""
    model = build_cnn((1, 12, 12), [3], [3], [1], [1], "m", [10], "hard_sigmoid", "mse", False)
    x, y = torch.rand(2, 1, 12, 12), torch.tensor([1, 7])
    reference = relax(model, model.batch(x), model.init_states(x), 5, explicit=False)

    def no_autograd(*args, **kwargs):
        raise AssertionError("autograd called")

    monkeypatch.setattr(torch.autograd, "grad", no_autograd)
    monkeypatch.setattr(torch.Tensor, "backward", no_autograd)
    with torch.no_grad():
        s = free_phase(model, x, 5)
    ep_gradients(model, x, y, Phases(5, 2, 0.0, 0.5, thirdphase=True))
    for a, b in zip(s, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def flat_grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("loss,softmax", HEADS)
def test_ep_gradient_tends_to_bptt(loss, softmax):
    """At a converged fixed point, EP -> BPTT as beta -> 0; the symmetric estimate is closer."""
    model = build_mlp([12, 10, 8, 5], "tanh", loss, softmax)
    x, y = torch.randn(16, 12), torch.randint(0, 5, (16,))
    s = free_phase(model, x, 300)
    assert max((a - b).abs().max() for a, b in zip(s, model.step(model.batch(x), s))) < 1e-8
    bptt_gradients(model, x, y, Phases(T1=300, T2=100))
    g_bptt = flat_grads(model)

    def error(beta, thirdphase):
        ep_gradients(model, x, y, Phases(300, 100, 0.0, beta, thirdphase))
        return ((flat_grads(model) - g_bptt).norm() / g_bptt.norm()).item()

    betas = [0.2, 0.05, 0.01]
    symmetric = [error(b, True) for b in betas]
    one_sided = [error(b, False) for b in betas]
    assert symmetric == sorted(symmetric, reverse=True)
    assert one_sided == sorted(one_sided, reverse=True)
    assert symmetric[-1] < 0.01
    assert all(s < o for s, o in zip(symmetric, one_sided))


def test_random_sign_flips_beta():
    """A negative beta2 gives the one-sided estimate from below: close to the +beta one."""
    model = build_mlp([6, 5, 3], "tanh", "mse", False)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    ep_gradients(model, x, y, Phases(200, 100, 0.0, 0.01), sign=1.0)
    plus = flat_grads(model)
    ep_gradients(model, x, y, Phases(200, 100, 0.0, 0.01), sign=-1.0)
    minus = flat_grads(model)
    ep_gradients(model, x, y, Phases(200, 100, 0.0, 0.01, thirdphase=True))
    torch.testing.assert_close((plus + minus) / 2, flat_grads(model), rtol=1e-6, atol=1e-9)
    assert not torch.allclose(plus, minus, rtol=1e-6, atol=1e-9)


def test_bp_baseline_trains_every_layer():
    model = build_cnn((1, 8, 8), [3], [3], [1], [1], "m", [6, 10], "mysig", "cel", True)
    bp_gradients(model, torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,)))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def cnn_with_random_weights(loss, softmax, pools, vf=False):
    model = build_cnn((3, 11, 11), [4, 5], [3, 2], [1, 2], [1, 0], pools, [7, 10], "tanh",
                      loss, softmax, vf)
    with torch.no_grad():  # random weights large enough that every pooled max matters
        for p in model.parameters():
            p.normal_()
    return model


@pytest.mark.parametrize("vf", [False, True], ids=["sym", "VF"])
@pytest.mark.parametrize("loss,softmax", HEADS)
@pytest.mark.parametrize("pools", [None, "mm", "aa", "ii", "ma"])
def test_param_grads_are_autograd_of_phi(loss, softmax, pools, vf):
    if pools is None:
        model, x = build_mlp([20, 15, 12, 10], "tanh", loss, softmax, vf), torch.randn(4, 20)
    else:
        model, x = cnn_with_random_weights(loss, softmax, pools, vf), torch.randn(4, 3, 11, 11)
    s = random_states(model, 4)
    pre = random_states(model, 4) if vf else None  # VF: post- and pre-synaptic states differ
    batch = model.batch(x, torch.randint(0, 10, (4,)))
    for beta in (0.0, 0.6):
        explicit = model.param_grads(batch.nudged(beta), s, pre)
        reference = torch.autograd.grad(model.phi(batch.nudged(beta), s, pre).sum(),
                                        list(model.parameters()), allow_unused=True)
        for (name, _), e, r in zip(model.named_parameters(), explicit, reference, strict=True):
            r = torch.zeros_like(e) if r is None else r
            assert (e - r).norm() <= 1e-10 * max(r.norm(), 1e-30), name


@pytest.mark.parametrize("vf,same_update", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("thirdphase", [False, True])
def test_explicit_and_autograd_ep_updates_agree(vf, same_update, thirdphase):
    model = cnn_with_random_weights("cel", True, "ma", vf)
    x, y = torch.randn(4, 3, 11, 11), torch.randint(0, 10, (4,))
    grads = []
    for explicit in (True, False):
        ep_gradients(model, x, y, Phases(5, 3, 0.0, 0.5, thirdphase, explicit, same_update))
        grads.append(flat_grads(model))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("vf", [False, True], ids=["CNN", "VFCNN"])
@pytest.mark.parametrize("loss,softmax", HEADS)
def test_bptt_through_explicit_steps_equals_bptt_through_autograd(loss, softmax, vf):
    model = cnn_with_random_weights(loss, softmax, "ma", vf)
    x, y = torch.randn(4, 3, 11, 11), torch.randint(0, 10, (4,))
    grads = []
    for explicit in (True, False):
        bptt_gradients(model, x, y, Phases(6, 4, explicit=explicit))
        grads.append(flat_grads(model))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_scale_multiplies_the_default_init():
    torch.manual_seed(1)
    reference = build_mlp([6, 5, 3], "tanh", "mse", False)
    torch.manual_seed(1)
    scaled = build_mlp([6, 5, 3], "tanh", "mse", False)
    scale_init(scaled, 0.25)
    for a, b in zip(reference.parameters(), scaled.parameters(), strict=True):
        torch.testing.assert_close(0.25 * a, b, rtol=0, atol=0)


@pytest.mark.parametrize("build", ["mlp", "cnn"])
def test_forward_is_the_free_phase_and_differentiable_in_x(build):
    """forward(x): logits after T free steps; with autograd on, d(loss)/dx through the unrolled
    steps equals a central finite difference (what an attack library calls)."""
    if build == "mlp":
        model, x = build_mlp([12, 10, 5], "tanh", "cel", True), torch.randn(3, 12)
    else:
        model, x = cnn_with_random_weights("mse", False, "ma"), torch.randn(3, 3, 11, 11)
        scale_init(model, 0.3)
    model.free_steps = 7
    with torch.no_grad():
        logits = model(x)
    assert not logits.requires_grad
    torch.testing.assert_close(logits, model.logits(free_phase(model, x, 7)), rtol=0, atol=0)
    y = torch.tensor([0, 3, 4])
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), x)
    direction = torch.randn_like(x)
    h = 1e-6
    with torch.no_grad():
        plus, minus = (torch.nn.functional.cross_entropy(model(x + h * direction), y)
                       for h in (h, -h))
    torch.testing.assert_close((grad * direction).sum(), (plus - minus) / (2e-6), rtol=1e-6,
                               atol=1e-9)
    assert grad.abs().sum() > 0


class LeakyNeurons(Neurons):
    """A layer with a hidden potential u: u <- u + (field - u) / 2, visible state tanh(u)."""

    hidden = True

    def init(self, zeros):
        return zeros, zeros.clone()

    def update(self, field, state):
        u = state[1] + (field - state[1]) / 2
        return torch.tanh(u), u


def test_a_layer_state_may_carry_hidden_tensors():
    """Layer 1 keeps (s, u): the dynamics, EP (stacked symmetric phases) and BPTT carry u, and
    the other layers stay plain tensors."""
    plain = build_mlp([6, 5, 4], "tanh", "mse", False)
    model = EnergyNet(list(plain.synapses), (6,), "tanh", "mse", False,
                      neurons=[LeakyNeurons(torch.tanh), Neurons(torch.tanh)])
    x, y = torch.randn(3, 6), torch.tensor([0, 1, 3])
    s = free_phase(model, x, 4)
    assert isinstance(s[0], tuple) and isinstance(s[1], torch.Tensor)
    W, b = [syn.weight for syn in plain.synapses], [syn.bias for syn in plain.synapses]
    h, u, out = torch.zeros(3, 5), torch.zeros(3, 5), torch.zeros(3, 4)
    for _ in range(4):  # the same dynamics written out
        field = x @ W[0].T + b[0] + out @ W[1]
        u = u + (field - u) / 2
        h, out = torch.tanh(u), torch.tanh(h @ W[1].T + b[1])
    torch.testing.assert_close(s[0][0], h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s[0][1], u, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s[1], out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(x, steps=4), out, rtol=0, atol=0)
    for estimator in (lambda: ep_gradients(model, x, y, Phases(4, 3, 0.0, 0.5, True)),
                      lambda: bptt_gradients(model, x, y, Phases(4, 3))):
        s_free = estimator()
        assert isinstance(s_free[0], tuple) and len(s_free[0]) == 2
        assert all(p.grad.abs().sum() > 0 for p in model.parameters())
