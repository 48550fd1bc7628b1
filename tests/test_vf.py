"""Vector-field models: feedback weights B in the top-down terms, their update rules, angles."""

import pytest
import torch

from model_utils import Phases, build_cnn, build_mlp, ep_gradients, free_phase, relax


pytestmark = pytest.mark.usefixtures("float64")


def feedback_synapses(model):
    return [syn for syn in model.synapses if syn.feedback is not None]


def test_vf_mlp_step_by_hand():
    """s_k <- act(W_{k-1} s_{k-1} + b_{k-1} + B_k^T s_{k+1}): B, not W, carries the top-down."""
    model = build_mlp([6, 5, 4, 3], "tanh", "mse", False, vf=True)
    W = [syn.weight for syn in model.synapses]
    b = [syn.bias for syn in model.synapses]
    B = [syn.feedback for syn in model.synapses]
    assert B[0] is None and B[1] is not None and B[2] is not None
    x, s = torch.randn(2, 6), [torch.randn(2, n) for n in (5, 4, 3)]
    by_hand = [torch.tanh(x @ W[0].T + b[0] + s[1] @ B[1]),
               torch.tanh(s[0] @ W[1].T + b[1] + s[2] @ B[2]),
               torch.tanh(s[1] @ W[2].T + b[2])]
    with torch.no_grad():
        for a, e in zip(model.step(model.batch(x), s), by_hand, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_vf_default_update_pairs_nudged_post_with_free_pre():
    model = build_mlp([6, 5, 4, 3], "tanh", "mse", False, vf=True)
    x, y, beta = torch.randn(8, 6), torch.randint(0, 3, (8,)), 0.3
    ep_gradients(model, x, y, Phases(40, 15, 0.0, beta))
    s = free_phase(model, x, 40)
    s_b = relax(model, model.batch(x, y, beta), s, 15)
    layers, nudged = [x] + s, [x] + s_b
    for k, syn in enumerate(model.synapses):
        post_change = nudged[k + 1] - layers[k + 1]
        torch.testing.assert_close(syn.weight.grad, -post_change.T @ layers[k] / (8 * beta))
        torch.testing.assert_close(syn.bias.grad, -post_change.sum(0) / (8 * beta))
        if syn.feedback is not None:  # B_k's post-synaptic layer is k (it feeds s_{k+1} down)
            own_change = nudged[k] - layers[k]
            torch.testing.assert_close(syn.feedback.grad,
                                       -layers[k + 1].T @ own_change / (8 * beta))


def copy_into_vf(symmetric, vf):
    """The symmetric model's weights into a VF model, with every B set to its W."""
    with torch.no_grad():
        for s_syn, v_syn in zip(symmetric.synapses, vf.synapses, strict=True):
            v_syn.weight.copy_(s_syn.weight)
            v_syn.bias.copy_(s_syn.bias)
            if v_syn.feedback is not None:
                v_syn.feedback.copy_(s_syn.weight)


def twin_models(kind):
    if kind == "MLP":
        sym = build_mlp([6, 5, 4, 3], "tanh", "mse", False)
        vf = build_mlp([6, 5, 4, 3], "tanh", "mse", False, vf=True)
        return sym, vf, torch.randn(8, 6)
    args = ((1, 10, 10), [3, 4], [3, 3], [1, 1], [1, 1], "mm", [6, 3], "tanh", "cel", True)
    return build_cnn(*args), build_cnn(*args, vf=True), torch.randn(8, 1, 10, 10)


@pytest.mark.parametrize("kind", ["MLP", "CNN"])
def test_vf_with_b_equal_w_is_the_symmetric_model(kind):
    sym, vf, x = twin_models(kind)
    copy_into_vf(sym, vf)
    y = torch.randint(0, 3, (8,))
    for model_pair_states in zip(*(relax(m, m.batch(x, y, 0.5), free_phase(m, x, 12), 6)
                                   for m in (sym, vf))):
        torch.testing.assert_close(*model_pair_states, rtol=1e-12, atol=1e-12)
    ph = Phases(12, 6, 0.0, 0.5, thirdphase=True, same_update=True)
    ep_gradients(sym, x, y, ph)
    ep_gradients(vf, x, y, ph)
    for s_syn, v_syn in zip(sym.synapses, vf.synapses, strict=True):
        torch.testing.assert_close(v_syn.weight.grad, s_syn.weight.grad)
        torch.testing.assert_close(v_syn.bias.grad, s_syn.bias.grad)
        if v_syn.feedback is not None:
            torch.testing.assert_close(v_syn.feedback.grad, s_syn.weight.grad)


def test_vf_default_update_with_b_equal_w_splits_the_symmetric_update():
    """W's and B's updates add up to the symmetric one but for the term -dS_{k+1} dS_k^T/beta."""
    sym, vf, x = twin_models("MLP")
    copy_into_vf(sym, vf)
    y, beta = torch.randint(0, 3, (8,)), 0.2
    ep_gradients(sym, x, y, Phases(40, 20, 0.0, beta))
    ep_gradients(vf, x, y, Phases(40, 20, 0.0, beta))
    s = free_phase(sym, x, 40)
    s_b = relax(sym, sym.batch(x, y, beta), s, 20)
    change = [torch.zeros_like(x)] + [b - a for a, b in zip(s, s_b)]
    for k, (s_syn, v_syn) in enumerate(zip(sym.synapses, vf.synapses, strict=True)):
        together = v_syn.weight.grad + (0 if v_syn.feedback is None else v_syn.feedback.grad)
        second_order = -change[k + 1].T @ change[k] / (8 * beta)
        torch.testing.assert_close(together + second_order, s_syn.weight.grad)
        torch.testing.assert_close(v_syn.bias.grad, s_syn.bias.grad)


@pytest.mark.parametrize("thirdphase", [False, True])
def test_same_update_gives_b_and_w_identical_updates(thirdphase):
    model = build_cnn((1, 10, 10), [3, 4], [3, 3], [1, 1], [1, 1], "ma", [6, 3], "tanh", "mse",
                      False, vf=True)
    x, y = torch.randn(8, 1, 10, 10), torch.randint(0, 3, (8,))
    own = {}
    for same in (False, True):
        ep_gradients(model, x, y, Phases(10, 5, 0.0, 0.5, thirdphase, same_update=same))
        own[same] = {syn: (syn.weight.grad.clone(), syn.feedback.grad.clone())
                     for syn in feedback_synapses(model)}
    assert len(own[True]) == 3
    for syn, (w, b) in own[True].items():
        torch.testing.assert_close(w, b, rtol=0, atol=0)
        assert not torch.allclose(*own[False][syn])  # the default rule gives them different ones


def test_angles_between_b_and_w():
    model = build_mlp([6, 5, 4, 3], "tanh", "mse", False, vf=True)
    start = model.feedback_angles()
    assert list(start) == ["angle_2", "angle_3"] and all(60 < a < 120 for a in start.values())
    with torch.no_grad():
        model.synapses[1].feedback.copy_(model.synapses[1].weight)
        model.synapses[2].feedback.copy_(-model.synapses[2].weight)
    angles = model.feedback_angles()
    assert angles["angle_2"] == pytest.approx(0, abs=1e-5)
    assert angles["angle_3"] == pytest.approx(180, abs=1e-5)
    assert build_mlp([6, 5, 3], "tanh", "mse", False).feedback_angles() == {}


def test_vfmlp_feedback_init_is_the_published_transposed_layer():
    """The published VFMLP builds B as a layer from the upper to the lower layer, so its
    default init bound is 1/sqrt(upper size); VFCNN's B is initialised like its W."""
    model = build_mlp([784, 512, 10], "mysig", "mse", False, vf=True)
    top = model.synapses[1].feedback
    assert top.shape == (10, 512)
    assert 0.9 / 10 ** 0.5 < top.abs().max() <= 1 / 10 ** 0.5  # 7x W's own bound 1/sqrt(512)
    cnn = build_cnn((1, 28, 28), [4, 8], [5, 5], [1, 1], [0, 0], "mm", [10], "tanh", "mse",
                    False, vf=True)
    conv_b, fc_b = cnn.synapses[1].feedback, cnn.synapses[2].feedback
    assert 0.9 / 100 ** 0.5 < conv_b.abs().max() <= 1 / 100 ** 0.5  # fan-in 4 x 5 x 5
    assert 0.9 / 128 ** 0.5 < fc_b.abs().max() <= 1 / 128 ** 0.5
