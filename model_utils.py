"""Energy-based networks and how they learn: the energy, the dynamics, the gradient estimators.

A network is a chain of synapses; synapse k maps layer k to layer k+1 (layer 0 is the clamped
input x). Phi(x, s, beta) = sum_k <up_k(s_k), s_{k+1}> - beta * L(s, y), and one step of the
dynamics is s_k <- act(dPhi/ds_k) for all layers at once. `EnergyNet.step` computes that
derivative with explicit local terms (bottom-up `up`, top-down `down`); `EnergyNet.phi` is the
same energy for autograd, the reference the tests hold the explicit terms to.

Vector-field (VF) models give every inner synapse its own feedback weight B that carries the
top-down term in place of W: the field is no longer a gradient, but each layer's update is
still d/ds_k of Phi with the other layers held fixed (see `phi`'s `pre`).

Below the models: the dynamics (`relax`, `free_phase`) and the estimators that turn phases into
parameter gradients (`ep_gradients`, `bptt_gradients`, `bp_gradients`), on any EnergyNet.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.utils._pytree import tree_map_only

from lca_layer import LCANeurons, SparseCoding

# one entry per layer: a tensor, or a tuple (visible, *hidden) for a layer with hidden variables
LayerState = Tensor | tuple[Tensor, ...]
States = list[LayerState]


def mysig(x: Tensor) -> Tensor:
    return torch.sigmoid(x.mul(4).sub_(2))  # 1/(1+exp(-4(x-0.5))), one temporary


def hard_sigmoid(x: Tensor) -> Tensor:
    return x.clamp(0, 1)


def my_hard_sig(x: Tensor) -> Tensor:
    return (0.5 * x).clamp(0, 1)


def ctrd_hard_sig(x: Tensor) -> Tensor:
    return x.clamp(-0.5, 0.5)


def identity(x: Tensor) -> Tensor:
    return x


ACTIVATIONS = {
    "mysig": mysig,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "hard_sigmoid": hard_sigmoid,
    "my_hard_sig": my_hard_sig,
    "ctrd_hard_sig": ctrd_hard_sig,
}
POOLS = {"m": "max 2x2", "a": "avg 2x2", "i": "none"}


def _low(t: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    """t in the compute dtype of --precision bf16 (t itself at full precision)."""
    return t if dtype is None or t is None else t.to(dtype)


def _plus(a: Tensor, b: Tensor) -> Tensor:
    """a + b in a's dtype, b cast first: a mixed bfloat16 + float32 sum is not vectorised on
    CPU (~5x slower than the cast and a same-dtype sum)."""
    return a + b.to(a.dtype)


class LowPrecision:
    """--precision bf16: a synapse's convolutions and matrix products in the dynamics run in
    `compute_dtype`, while what goes in and comes out (the states, the fields) keeps the
    states' dtype. Its parameter gradients (the EP difference) always run at full precision."""

    compute_dtype: torch.dtype | None = None


class Linearisation(NamedTuple):
    """A synapse's products at the reference states of a linearised (bf16) step, in the
    states' dtype: its input h and bottom-up product, the input of its top-down product and
    that product, and (a VF synapse with max pooling) conv_B(h), whose arg-max routes it."""
    h: Tensor
    up: Tensor
    top: Tensor
    down: Tensor
    routing: Tensor | None = None


class Feedback:
    """What a synapse needs to carry its top-down term with its own weight B (VF models)."""

    feedback: nn.Parameter | None

    def add_feedback(self, enabled: bool, transposed: bool = False) -> None:
        """B has W's shape; registered after W and b, so parameters() is (W, b, B).

        Initialised like W, or with `transposed` like a layer from W's output to its input
        (the published VFMLP builds B that way, so its bound is 1/sqrt(W's output size)).
        """
        feedback = None
        if enabled:
            feedback = nn.Parameter(torch.empty_like(self.weight))
            with torch.no_grad():
                nn.init.kaiming_uniform_(feedback.t() if transposed else feedback, a=math.sqrt(5))
        self.register_parameter("feedback", feedback)

    @property
    def back(self) -> Tensor:
        """The weight of the top-down term: B for a VF synapse, else W itself."""
        return self.weight if self.feedback is None else self.feedback


class Dense(nn.Linear, Feedback, LowPrecision):
    """Fully connected synapse: up = W s + b, down = W^T s' (B^T s' with feedback)."""

    def __init__(self, n_in: int, n_out: int, feedback: bool = False,
                 feedback_transposed: bool = False):
        super().__init__(n_in, n_out)
        self.add_feedback(feedback, feedback_transposed)

    def up(self, s_in: Tensor, ref: Linearisation | None = None) -> tuple[Tensor, torch.Size]:
        dt = self.compute_dtype
        if ref is not None:  # linearised: the product at the reference plus that of the change
            change = F.linear(_low((s_in - ref.h).flatten(1), dt), _low(self.weight, dt))
            return _plus(ref.up, change), s_in.shape
        out = F.linear(_low(s_in.flatten(1), dt), _low(self.weight, dt), _low(self.bias, dt))
        return out.to(s_in.dtype), s_in.shape

    def feedback_up(self, s_in: Tensor) -> Tensor:
        """B s (no bias): the term whose derivative in s is the top-down input."""
        dt = self.compute_dtype
        return F.linear(_low(s_in.flatten(1), dt), _low(self.back, dt)).to(s_in.dtype)

    def down(self, s_out: Tensor, in_shape: torch.Size, acc: Tensor | None = None,
             ref: Linearisation | None = None) -> Tensor:
        """W^T s' (plus `acc`, fused into one matmul when the layer is flat)."""
        dt = self.compute_dtype
        if ref is not None:
            change = (_low(s_out - ref.top, dt) @ _low(self.back, dt)).view(in_shape)
            top_down = _plus(ref.down, change)
            return top_down if acc is None else acc + top_down
        if acc is not None and acc.dim() == 2 and dt is None:
            return torch.addmm(acc, s_out, self.back)
        top_down = (_low(s_out, dt) @ _low(self.back, dt)).view(in_shape)
        return top_down.to(s_out.dtype) if acc is None else _plus(acc, top_down)

    def linearisation(self, s_in: Tensor, s_out: Tensor) -> Linearisation:
        """The products at (s_in, s_out) at the states' precision: exact at the reference."""
        up = F.linear(s_in.flatten(1), self.weight, self.bias)
        return Linearisation(s_in, up, s_out, (s_out @ self.back).view(s_in.shape))

    def weight_grad(self, s_in: Tensor, s_out: Tensor) -> list[Tensor]:
        """d<up(s_in), s_out>/d(W, b), summed over the batch."""
        return [s_out.t() @ s_in.flatten(1), s_out.sum(0)]

    def feedback_grad(self, s_in: Tensor, s_out: Tensor) -> Tensor:
        """d<B s_in, s_out>/dB, summed over the batch."""
        return s_out.t() @ s_in.flatten(1)


class ConvPool(nn.Conv2d, Feedback, LowPrecision):
    """Convolution followed by a 2x2 pooling: up = P(conv(s)), down = conv^T(unpool(s')).

    With feedback, the top-down term is B's transposed conv, un-pooled through the arg-max of
    P(conv_B(s)): the derivative of <P(conv_B(s)), s'> in s.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, pool: str,
                 feedback: bool = False):
        super().__init__(c_in, c_out, kernel, stride, padding)
        self.pool = pool
        self.add_feedback(feedback)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", pool={self.pool!r}"

    @property
    def vf_routing(self) -> bool:
        """Whether the top-down term is routed by B's own arg-max (VF, max pooling)."""
        return self.feedback is not None and self.pool == "m"

    def up(self, s_in: Tensor, ref: Linearisation | None = None) -> tuple[Tensor, tuple]:
        """P(conv_W(s)) and the routing `down` needs (B's own arg-max in a VF synapse)."""
        dt = self.compute_dtype
        c = self._conv(s_in, self.weight, self.bias, dt, None if ref is None else (ref.h, ref.up))
        out, ctx = self._pool(c, not self.vf_routing, s_in.shape, s_in.dtype)
        if self.vf_routing:
            at = None if ref is None else (ref.h, ref.routing)
            ctx = self._conv_pool(s_in, self.feedback, None, True, dt, at)[1]
        return out, ctx

    def feedback_up(self, s_in: Tensor) -> Tensor:
        """P(conv_B(s)) (no bias): the term whose derivative in s is the top-down input."""
        return self._conv_pool(s_in, self.back, None, False, self.compute_dtype)[0]

    def _conv_pool(self, s_in: Tensor, weight: Tensor, bias: Tensor | None,
                   routing: bool = True, dt: torch.dtype | None = None,
                   at: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple]:
        """P(conv_weight(s)) and, with `routing`, the max-pool arg-max that `unpool` needs."""
        return self._pool(self._conv(s_in, weight, bias, dt, at), routing, s_in.shape,
                          s_in.dtype)

    def _conv(self, s_in: Tensor, weight: Tensor, bias: Tensor | None,
              dt: torch.dtype | None = None, at: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """conv_weight(s), computed in `dt` (--precision bf16); linearised `at` a reference
        state h and the conv there: that conv plus the conv of the change (in s's dtype)."""
        # channels-last: ~20x faster max-pooling on CPU and the layout cuDNN prefers
        s_in = s_in.contiguous(memory_format=torch.channels_last)
        if at is not None:
            h, value = at
            change = F.conv2d(_low(s_in - h, dt), _low(weight, dt), None, self.stride,
                              self.padding)
            return _plus(value, change)
        return F.conv2d(_low(s_in, dt), _low(weight, dt), _low(bias, dt), self.stride,
                        self.padding)

    def _pool(self, c: Tensor, routing: bool, in_shape: torch.Size,
              dtype: torch.dtype) -> tuple[Tensor, tuple]:
        """P(c) in `dtype` (the states'), and the context `unpool` and `down` need. A max is
        taken in c's own dtype (it rounds nothing), an average after the cast to `dtype`."""
        if self.pool != "m":
            c = c.to(dtype)
        indices = None
        if self.pool == "m":
            out, indices = F.max_pool2d(c, 2, return_indices=True) if routing else (
                F.max_pool2d(c, 2), None)
        elif self.pool == "a" and c.is_complex():  # (holomorphic EP) linear: each part alone
            out = torch.complex(F.avg_pool2d(c.real, 2), F.avg_pool2d(c.imag, 2))
        elif self.pool == "a":
            out = F.avg_pool2d(c, 2)
        else:
            out = c
        # a 1-channel input is ambiguous about layout, so fix the output's explicitly
        out = out.to(dtype).contiguous(memory_format=torch.channels_last)
        return out, (indices, c.detach(), in_shape)

    def unpool(self, s_out: Tensor, ctx: tuple) -> Tensor:
        """The adjoint of the pooling at the state that gave `ctx` (arg-max routing for max)."""
        indices, c, _ = ctx
        c_shape = c.shape
        if self.pool == "m":
            # max-pool's backward is this routing too (bit for bit), with a deterministic
            # kernel on CUDA, where max_unpool2d has none (--deterministic would refuse it)
            return torch.ops.aten.max_pool2d_with_indices_backward(
                s_out, c, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)
        if self.pool == "a":
            # spread each value over its 2x2 window (zeros for an odd last row or column)
            g = s_out.repeat_interleave(2, -2).repeat_interleave(2, -1) / 4
            return F.pad(g, (0, c_shape[-1] - g.shape[-1], 0, c_shape[-2] - g.shape[-2]))
        return s_out

    def down(self, s_out: Tensor, ctx: tuple, acc: Tensor | None = None,
             ref: Linearisation | None = None) -> Tensor:
        """conv^T(unpool(s')) (plus `acc`); linearised: the reference's plus that of the
        change of the un-pooled s' (which also carries any change of routing)."""
        dt = self.compute_dtype
        if ref is not None:
            change = self._conv_t(_low(self.unpool(s_out, ctx) - ref.top, dt), ctx)
            top_down = _plus(ref.down, change)
            return top_down if acc is None else acc + top_down
        top_down = self._conv_t(self.unpool(_low(s_out, dt), ctx), ctx)
        return top_down.to(s_out.dtype) if acc is None else _plus(acc, top_down)

    def _conv_t(self, g: Tensor, ctx: tuple) -> Tensor:
        """conv_B^T(g) back to the input's size (in g's dtype)."""
        in_shape = ctx[2]
        k, st, p = self.kernel_size[0], self.stride[0], self.padding[0]
        if g.dtype != self.back.dtype and st == 1 and p < k:
            # the same sum as the conv of g with B's flipped kernels, which oneDNN runs faster
            flipped = self.back.to(g.dtype).flip(-2, -1).transpose(0, 1)
            return F.conv2d(g, flipped, None, 1, k - 1 - p)
        extra = [in_shape[d] - ((g.shape[d] - 1) * st - 2 * p + k) for d in (-2, -1)]
        return F.conv_transpose2d(g, self.back.to(g.dtype), None, st, p, output_padding=extra)

    def linearisation(self, s_in: Tensor, s_out: Tensor) -> Linearisation:
        """The products at (s_in, s_out) at the states' precision: exact at the reference,
        with the routing the linearised step finds there (the arg-max of these products)."""
        s_in = s_in.contiguous(memory_format=torch.channels_last)
        c = self._conv(s_in, self.weight, self.bias)
        routing = self._conv(s_in, self.feedback, None) if self.vf_routing else None
        ctx = self._pool(c if routing is None else routing, True, s_in.shape, s_in.dtype)[1]
        g = self.unpool(s_out, ctx)
        return Linearisation(s_in, c, g, self._conv_t(g, ctx), routing)

    def weight_grad(self, s_in: Tensor, s_out: Tensor) -> list[Tensor]:
        """d<P(conv(s_in)), s_out>/d(W, b), summed over the batch."""
        dw, g = self._kernel_grad(s_in, s_out, self.weight, self.bias)
        return [dw, g.sum((0, 2, 3))]

    def feedback_grad(self, s_in: Tensor, s_out: Tensor) -> Tensor:
        """d<P(conv_B(s_in)), s_out>/dB, summed over the batch."""
        return self._kernel_grad(s_in, s_out, self.feedback, None)[0]

    def _kernel_grad(self, s_in: Tensor, s_out: Tensor, weight: Tensor,
                     bias: Tensor | None) -> tuple[Tensor, Tensor]:
        """d<P(conv_weight(s_in)), s_out>/dweight, and s_out un-pooled at that conv's arg-max."""
        s_in = s_in.contiguous(memory_format=torch.channels_last)
        g = self.unpool(s_out, self._conv_pool(s_in, weight, bias)[1])

        def kernel(a: Tensor, b: Tensor) -> Tensor:
            return torch.nn.grad.conv2d_weight(a, weight.shape, b, self.stride, self.padding)

        if s_in.is_complex():  # (holomorphic EP) no complex kernel: bilinear in the parts
            a, b, c, d = s_in.real, s_in.imag, g.real, g.imag
            return torch.complex(kernel(a, c) - kernel(b, d), kernel(a, d) + kernel(b, c)), g
        return kernel(s_in, g), g


# dropout: one inverted mask per synapse for the layer it reads (input first), None = keep all
Masks = tuple[Tensor | None, ...] | None


@dataclass(frozen=True)
class Batch:
    """What stays fixed while the states of one mini-batch relax: the clamped input x, its
    bottom-up drive into layer 1 (computed once), the one-hot target, the nudge beta (a
    number, or one value per sample when several nudged phases share one batch), the
    dropout masks (--dropouts; drawn once per batch, the same in every phase), for a
    bf16 nudged phase the states it is linearised at (`EnergyNet.linearised`) and, for a
    clamped phase (contrastive and coupled learning), the output layer's held value."""

    x: Tensor
    drive: Tensor
    target: Tensor | None = None
    beta: float | Tensor = 0.0
    masks: Masks = None
    reference: tuple[Linearisation, ...] | None = None  # EnergyNet.linearised
    clamp: Tensor | None = None  # the output layer's state throughout the phase

    def nudged(self, beta: float | Tensor) -> Batch:
        return replace(self, beta=beta)

    def clamped(self, output: Tensor) -> Batch:
        """Coupled learning's second phase at this batch's beta: the output layer held at
        (1 - beta) o + beta y (o: its free state `output`, y: the target; beta 1: the target,
        contrastive learning), instead of nudged."""
        beta = _per_sample(self.beta, output)
        return replace(self, beta=0.0, clamp=output + beta * (self.target - output))

    def stacked(self, beta: float) -> Batch:
        """Two copies as one batch of 2B, nudged by +beta and -beta (the symmetric estimate)."""
        n = self.x.shape[0]
        betas = torch.full((2 * n,), beta, dtype=self.x.dtype, device=self.x.device)
        betas[n:] = -beta
        return self.per_sample(lambda t: torch.cat([t, t])).nudged(betas)

    def subset(self, index: Tensor) -> Batch:
        """The samples `index` (a --tol phase goes on with those not yet converged)."""
        return self.per_sample(lambda t: t[index])

    def per_sample(self, fn) -> Batch:
        """fn applied to every tensor with a row per sample: x, the drive, the target, a beta
        per sample, the masks, the reference products."""
        def each(t: Tensor | None) -> Tensor | None:
            return None if t is None else fn(t)

        return Batch(each(self.x), each(self.drive), each(self.target),
                     fn(self.beta) if isinstance(self.beta, Tensor) else self.beta,
                     self.masks and tuple(map(each, self.masks)),
                     self.reference and tuple(Linearisation(*map(each, r))
                                              for r in self.reference), each(self.clamp))


class Neurons:
    """A layer of neurons: after a step its state is act(dPhi/ds). A layer type with hidden
    variables (`lca_layer.LCANeurons`: the code and its potentials) has the same methods, its
    state is (visible, *hidden) and `hidden` is True."""

    hidden = False

    def __init__(self, act):
        self.act = act

    def init(self, zeros: Tensor) -> LayerState:
        return zeros

    def update(self, field: Tensor, state: LayerState) -> LayerState:
        return self.act(field)

    def feedforward(self, field: Tensor) -> LayerState:
        """The state a bottom-up field alone gives (the feed-forward pass of BP)."""
        return self.act(field)


def map_states(fn, *states: States) -> States:
    """`fn` applied to every tensor of one or more state lists, layer by layer."""
    return [tuple(map(fn, *layer)) if isinstance(layer[0], tuple) else fn(*layer)
            for layer in zip(*states)]


def flat_states(s: States) -> list[Tensor]:
    """Every tensor of a state list, hidden ones included, in order."""
    return [t for layer in s for t in (layer if isinstance(layer, tuple) else (layer,))]


class EnergyNet(nn.Module):
    """A layered energy-based network (MLP or CNN, decided by its synapses).

    With `softmax`, the last synapse is a read-out outside the energy: its logits are the
    prediction and the nudge reaches the last state through it. `forward(x)` runs
    `free_steps` free steps from zero and returns the logits.
    """

    def __init__(self, synapses: list[nn.Module], input_shape: tuple[int, ...], act: str,
                 loss: str, softmax: bool, neurons: list | None = None):
        super().__init__()
        self.synapses = nn.ModuleList(synapses)
        self.input_shape = tuple(input_shape)
        self.act_name, self.loss_name, self.softmax = act, loss, softmax
        self.n_states = len(synapses) - int(softmax)
        self.free_steps = 30  # forward()'s default; config.build_model sets it from --T1
        self.compiled = False  # --compile: the phase loops step through torch.compile
        # --solver, --nudged-solver: how free and nudged phases relax (solvers.py); None: the
        # published synchronous steps, a fixed number
        self.solver = self.nudged_solver = None
        self.compute_dtype: torch.dtype | None = None  # --precision bf16: see LowPrecision
        # a plain tuple (not a ModuleList slice, which costs ~15 us to build on every step)
        self.energy_synapses = tuple(self.synapses[: self.n_states])
        defaults = [Neurons(ACTIVATIONS[act]) for _ in range(self.n_states)]
        if loss == "cel" and not softmax:  # a linear output layer
            defaults[-1] = Neurons(identity)
        neurons = neurons or []  # given for the first layers (LCANet's code)
        self.neurons = list(neurons) + defaults[len(neurons):]
        self.hidden_states = any(n.hidden for n in neurons)
        # synapses that couple their output layer to itself (LCA's lateral inhibition)
        self.self_coupled = tuple((k, syn) for k, syn in enumerate(self.energy_synapses)
                                  if hasattr(syn, "self_field"))
        with torch.no_grad():
            h, shapes = torch.zeros(1, *input_shape), []
            for syn in self.energy_synapses:
                h = syn.up(h)[0]
                shapes.append(h.shape[1:])
        self.state_shapes = shapes
        self.num_classes = self.synapses[-1].out_features

    def forward(self, x: Tensor, steps: int | None = None) -> Tensor:
        """Logits after `steps` (default `free_steps`) free steps from zero, explicit dynamics.

        Under torch.no_grad it keeps no graph; with autograd on it is differentiable in x
        through the unrolled steps (the gradient an attack needs).
        """
        return self.logits(free_phase(self, x, self.free_steps if steps is None else steps))

    def set_compute_dtype(self, dtype: torch.dtype | None) -> None:
        """The dtype of the dynamics' convolutions and matrix products (--precision bf16);
        None: the states' own. The first synapse stays at the states' dtype: its product is
        the input drive, computed once per batch, and rounding it would shift every fixed
        point (so does LCANet's sparse-coding layer, which is first)."""
        self.compute_dtype = dtype
        for syn in self.synapses[1:]:
            if isinstance(syn, LowPrecision):
                syn.compute_dtype = dtype

    def init_states(self, x: Tensor) -> States:
        return [n.init(x.new_zeros(x.shape[0], *shape).contiguous(memory_format=_layout(shape)))
                for n, shape in zip(self.neurons, self.state_shapes)]

    def visible(self, s: States) -> list[Tensor]:
        """The tensors the synapses see: each layer's state without its hidden variables."""
        if not self.hidden_states:
            return s
        return [t[0] if isinstance(t, tuple) else t for t in s]

    def input_drive(self, x: Tensor, masks: Masks = None) -> Tensor:
        """Bottom-up drive of the first layer: constant while x is clamped, so computed once."""
        return self.synapses[0].up(_masked(masks, 0, x))[0]

    def one_hot(self, y: Tensor, like: Tensor) -> Tensor:
        """The target of the cost: labels as one-hot rows, made once per batch."""
        return F.one_hot(y, self.num_classes).to(like.dtype)

    def batch(self, x: Tensor, y: Tensor | None = None, beta: float = 0.0,
              masks: Masks = None) -> Batch:
        return Batch(x, self.input_drive(x, masks), None if y is None else self.one_hot(y, x),
                     beta, masks)

    def dropout_masks(self, x: Tensor, keep: list[float],
                      gen: torch.Generator | None = None) -> Masks:
        """Inverted dropout masks (0 or 1/keep) for the batch x, one per synapse's input layer
        (x first); None where keep is 1 (and None for all: exactly the model without dropout)."""
        if all(p == 1 for p in keep):
            return None
        shapes = [x.shape[1:]] + list(self.state_shapes)
        masks = []
        for p, shape in zip(keep, shapes):
            if p == 1:
                masks.append(None)
                continue
            draw = torch.rand(len(x), *shape, generator=gen, device=x.device, dtype=x.dtype)
            masks.append((draw < p).to(x.dtype).div_(p).contiguous(
                memory_format=_layout(shape)))
        return tuple(masks)

    def logits(self, s: States, masks: Masks = None) -> Tensor:
        last = self.visible(s)[-1]
        return self.synapses[-1].up(_masked(masks, self.n_states, last))[0] if self.softmax \
            else last

    def loss(self, s: States, target: Tensor, masks: Masks = None) -> Tensor:
        """Per-sample cost: 1/2 ||out - target||^2 (mse) or cross-entropy (cel)."""
        out = self.logits(s, masks)
        if self.loss_name == "mse":
            return 0.5 * (out - target).pow(2).sum(1)
        return F.cross_entropy(out, target, reduction="none")

    def dloss_dlogits(self, s: list[Tensor], target: Tensor, masks: Masks = None) -> Tensor:
        out = self.logits(s, masks)
        return out - target if self.loss_name == "mse" else out.softmax(1) - target

    def loss_grad(self, s: list[Tensor], target: Tensor, masks: Masks = None) -> Tensor:
        """dL/ds_last per sample, written out so the nudged step needs no autograd."""
        g = self.dloss_dlogits(s, target, masks)
        if not self.softmax:
            return g
        return _masked(masks, self.n_states, self.synapses[-1].down(g, s[-1].shape))

    def inputs(self, batch: Batch, s: list[Tensor]) -> list[Tensor]:
        """What each energy synapse reads: x, then every state but the last (times the
        dropout masks)."""
        layers = [batch.x] + s[:-1]
        if batch.masks is None:
            return layers
        return [_masked(batch.masks, k, t) for k, t in enumerate(layers)]

    def phi(self, batch: Batch, s: States, pre: States | None = None) -> Tensor:
        """The primitive function Phi per sample (the reference the explicit step must match).

        `pre` (VF models) holds the pre-synaptic states: each W reads its input from `pre` and
        each B its target, so d/ds of this Phi is the vector field at s when pre equals s, and
        its parameter gradient pairs post-synaptic `s` with pre-synaptic `pre`.
        """
        s = self.visible(s)
        pre = s if pre is None else self.visible(pre)
        phi = sum((syn.up(h)[0] * out).flatten(1).sum(1)
                  for syn, h, out in zip(self.energy_synapses, self.inputs(batch, pre), s))
        for syn, h, out in zip(self.energy_synapses, self.inputs(batch, s), pre):
            if syn.feedback is not None:
                phi = phi + (syn.feedback_up(h) * out).flatten(1).sum(1)
        for k, syn in self.self_coupled:
            phi = phi + syn.self_energy(s[k])
        if not _is_zero(batch.beta):
            phi = phi - _per_sample(batch.beta, phi) * self.loss(s, batch.target, batch.masks)
        return phi

    def param_grads(self, batch: Batch, s: States, pre: States | None = None) -> list[Tensor]:
        """dPhi/dtheta summed over the batch, in parameters() order, without autograd."""
        s = self.visible(s)
        pre = s if pre is None else self.visible(pre)
        grads, masks = [], batch.masks
        for syn, h_pre, out, h, out_pre in zip(self.energy_synapses, self.inputs(batch, pre), s,
                                               self.inputs(batch, s), pre):
            grads += syn.weight_grad(h_pre, out)
            if syn.feedback is not None:
                grads.append(syn.feedback_grad(h, out_pre))
        if self.softmax:  # the read-out enters Phi only through -beta * L
            readout = self.synapses[-1]
            if _is_zero(batch.beta):
                grads += [torch.zeros_like(p) for p in readout.parameters()]
            else:
                g_logits = self.dloss_dlogits(s, batch.target, masks)
                grads += [-batch.beta * g for g in readout.weight_grad(
                    _masked(masks, self.n_states, s[-1]), g_logits)]
        return grads

    @property
    def has_feedback(self) -> bool:
        return any(syn.feedback is not None for syn in self.synapses)

    @torch.no_grad()
    def feedback_angles(self) -> dict[str, float]:
        """Angle in degrees between each B and its W, keyed by weight layer (1 = first)."""
        angles = {}
        for k, syn in enumerate(self.synapses, 1):
            if syn.feedback is not None:
                cos = F.cosine_similarity(syn.feedback.flatten(), syn.weight.flatten(), dim=0)
                angles[f"angle_{k}"] = math.degrees(math.acos(cos.clamp(-1, 1).item()))
        return angles

    def linearised(self, batch: Batch, s: States) -> Batch:
        """`batch` whose steps compute each product as its value at the states s, at the
        states' precision, plus the product of the change since s (--precision bf16, for the
        end of the free phase and the nudged phases): near s the change is small, so bfloat16
        rounds it, not the whole field, and at s itself the step is the fp32 one."""
        s = self.visible(s)
        readers = s[:-1] if batch.masks is None else self.inputs(batch, s)[1:]
        return replace(batch, reference=tuple(
            syn.linearisation(h, top)
            for syn, h, top in zip(self.energy_synapses[1:], readers, s[1:])))

    def step(self, batch: Batch, s: States) -> States:
        """One synchronous step s_k <- act(dPhi/ds_k), from explicit local terms."""
        fields = self.field(batch, self.visible(s))
        return held(batch, [n.update(a, old) for n, a, old in zip(self.neurons, fields, s)])

    @property
    def halves(self) -> tuple[tuple[int, ...], ...]:
        """The even-odd sweep's two groups of layers: 1, 3, 5, ... then 2, 4, ... (indices
        into the states; no layer of a group is another's neighbour)."""
        return tuple(h for h in (tuple(range(0, self.n_states, 2)),
                                 tuple(range(1, self.n_states, 2))) if h)

    def sweep(self, batch: Batch, s: States, routes: tuple) -> tuple[States, tuple]:
        """One even-odd sweep (solvers.py): each half updates its layers from the others' latest
        states. `routes`: what the first half's top-down terms need of the synapses that the
        second half computes (`first_routes`), given back for the next sweep."""
        s = list(s)
        for half in self.halves:
            fields, routes = self.layer_fields(batch, self.visible(s), half, routes)
            for k, a in zip(half, fields):
                s[k] = self.neurons[k].update(a, s[k])
            s = held(batch, s)
        return s, routes

    def first_routes(self, batch: Batch, s: list[Tensor]) -> tuple:
        """The routing at the states s of the synapses into the sweep's second half: their
        bottom-up products' context (a max-pool's arg-max), which the first half's top-down
        terms need before the second half computes it."""
        inner, readers, refs = self.synapse_inputs(batch, s)
        return tuple(syn.up(h, ref)[1] if k % 2 == 0 else None
                     for k, (syn, h, ref) in enumerate(zip(inner, readers, refs)))

    def synapse_inputs(self, batch: Batch, s: list[Tensor]) -> tuple[tuple, list, tuple]:
        """The inner synapses (all but the first, whose product is the drive), what each reads
        (a state, masked) and its linearisation reference (--precision bf16) or None."""
        inner = self.energy_synapses[1:]
        readers = s[:-1] if batch.masks is None else self.inputs(batch, s)[1:]
        return inner, readers, batch.reference or (None,) * len(inner)

    def field(self, batch: Batch, s: list[Tensor]) -> list[Tensor]:
        """dPhi/ds_k for every layer (each layer's pre-activation), from local terms."""
        return self.layer_fields(batch, s, range(len(s)))[0]

    def layer_fields(self, batch: Batch, s: list[Tensor], layers,
                     routes: tuple | None = None) -> tuple[list[Tensor], tuple]:
        """dPhi/ds_k for the layers k in `layers`, and the routing of every inner synapse (the
        context of its bottom-up product, which its top-down term needs): computed here for
        the synapses into `layers`, taken from `routes` for the others."""
        inner, readers, refs = self.synapse_inputs(batch, s)  # read once per step
        ctxs, masks, top_layer = [None] * len(inner) if routes is None else list(routes), \
            batch.masks, len(s) - 1
        ups = {}
        for k in layers:
            if k == 0:
                ups[k] = batch.drive
            else:
                ups[k], ctxs[k - 1] = inner[k - 1].up(readers[k - 1], refs[k - 1])
        grads = {}
        for k in layers:  # a layer's top-down input comes through synapse k + 1 (inner[k])
            if k == top_layer:
                continue
            syn, top, ctx, ref = inner[k], s[k + 1], ctxs[k], refs[k]
            if masks is None:
                grads[k] = syn.down(top, ctx, ups[k], ref)
            else:  # ... and through the mask by which that synapse reads the layer
                grads[k] = ups[k] + _masked(masks, k + 1, syn.down(top, ctx, None, ref))
        if top_layer in ups:
            last, beta = ups[top_layer], batch.beta
            if isinstance(beta, Tensor):
                g = self.loss_grad(s, batch.target, masks)
                last = last - _per_sample(beta, g) * g
            elif beta != 0:
                last = last.add(self.loss_grad(s, batch.target, masks), alpha=-beta)
            grads[top_layer] = last
        for k, syn in self.self_coupled:
            if k in grads:
                grads[k] = grads[k] + syn.self_field(s[k])
        return [grads[k] for k in layers], tuple(ctxs)

    def feedforward(self, x: Tensor, masks: Masks = None) -> States:
        """One bottom-up pass through the same layers, no recurrence (the BP baseline)."""
        s, h = [], x
        for k, (syn, n) in enumerate(zip(self.energy_synapses, self.neurons)):
            state = n.feedforward(syn.up(_masked(masks, k, h))[0])
            s.append(state)
            h = state[0] if n.hidden else state
        return s

    @property
    def sparse_coding(self) -> SparseCoding | None:
        """LCANet's dictionary layer (the first synapse), or None."""
        first = self.synapses[0]
        return first if isinstance(first, SparseCoding) else None

    def code_stats(self, x: Tensor, s: States) -> dict[str, Tensor]:
        """LCANet's code at states s, per sample: reconstruction error 1/2 ||x - D^T a||^2 and
        sparsity, the fraction of code entries that are active (not zero). Empty for others."""
        if self.sparse_coding is None:
            return {}
        a = self.visible(s)[0]
        return {"recon_error": self.sparse_coding.reconstruction_error(x, a),
                "sparsity": (a != 0).flatten(1).to(a.dtype).mean(1)}

    @torch.no_grad()
    def after_update(self, x: Tensor, s_free: States, all_sum=None,
                     batch_size: int | None = None) -> None:
        """What follows each optimizer step: LCANet's unsupervised dictionary step at the free
        code (with --dict_loss recon or both) and its atoms back to unit norm. Under torchrun
        x is this process's share of a batch of `batch_size`, `all_sum` sums over processes."""
        if self.sparse_coding is not None:
            self.sparse_coding.after_update(x, self.visible(s_free)[0], all_sum, batch_size)


def _layout(shape: torch.Size) -> torch.memory_format:
    return torch.channels_last if len(shape) == 3 else torch.contiguous_format


def _masked(masks: Masks, k: int, t: Tensor) -> Tensor:
    """t times dropout mask k (t itself without one)."""
    return t if masks is None or masks[k] is None else t * masks[k]


def held(batch: Batch, s: States) -> States:
    """s with the output layer at the batch's clamp, in a clamped phase."""
    return s if batch.clamp is None else [*s[:-1], batch.clamp]


def _is_zero(beta: float | Tensor) -> bool:
    return isinstance(beta, (int, float)) and beta == 0


def _per_sample(beta: float | Tensor, like: Tensor) -> float | Tensor:
    """beta is a number or one value per sample (several nudges stacked in one batch)."""
    if isinstance(beta, Tensor):
        return beta.view(-1, *([1] * (like.dim() - 1)))
    return beta



# ---- dynamics: relaxing the states towards a fixed point (free and nudged phases) -----------

def autograd_step(model: EnergyNet, batch: Batch, s: States, layers=None) -> States:
    """Reference step s_k <- act(dPhi/ds_k) by autograd; keeps the graph when grad mode is on.
    With `layers`, only those layers move (a half of the even-odd sweep).

    Phi is differentiated in fresh views `post` of the states: a partial derivative in each
    layer, not through another layer computed from it (a half-sweep's new layers come from the
    others); BPTT still flows through the views. A VF model differentiates Phi(post=s, pre=s)
    in `post` only (the other layers held fixed).
    """
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        leaves = [t if t.requires_grad else t.detach().requires_grad_()
                  for t in model.visible(s)]
        post = [t.view_as(t) for t in leaves]
        phi = model.phi(batch, post, pre=leaves) if model.has_feedback else model.phi(batch, post)
        grads = torch.autograd.grad(phi.sum(), post, create_graph=keep_graph)
    return held(batch, [n.update(g, old) if layers is None or k in layers else old
                        for k, (n, g, old) in enumerate(zip(model.neurons, grads, s))])


def autograd_sweep(model: EnergyNet, batch: Batch, s: States,
                   routes: tuple | None = None) -> tuple[States, None]:
    """Reference even-odd sweep: each half an autograd step that moves only its layers (the
    derivative at the current states needs no routing carried over)."""
    for half in model.halves:
        s = autograd_step(model, batch, s, half)
    return s, None


@functools.cache
def compiled_step(mode: str | None, method: str = "step"):
    """EnergyNet.step (or .sweep) through torch.compile (one per mode; the model is an
    argument, so each model, dtype and batch shape gets its own graph and a deep copy never
    runs another's)."""
    torch._dynamo.config.cache_size_limit = 64  # betas, shapes, grad mode: a few graphs each
    return torch.compile(getattr(EnergyNet, method), mode=mode, dynamic=False)


def graphed_step(model: EnergyNet, *args, method: str = "step"):
    """One step (or sweep) replayed as a CUDA graph: its outputs live in the graph's memory,
    which the next replay reuses, so they are copied out before they become the next input."""
    torch.compiler.cudagraph_mark_step_begin()
    return tree_map_only(Tensor, torch.clone, compiled_step("reduce-overhead", method)(model,
                                                                                     *args))


def step_function(model: EnergyNet, explicit: bool = True, method: str = "step"):
    """What `relax` iterates: the explicit step (or even-odd sweep, `method`), through
    torch.compile with `model.compiled`, as CUDA graphs on a GPU where autograd is off; or
    the autograd reference."""
    if not explicit:
        return functools.partial(autograd_step if method == "step" else autograd_sweep, model)
    if not model.compiled:
        return getattr(model, method)
    # each replay frees what the previous one returned, what autograd saved for backward too
    if next(model.parameters()).is_cuda and not torch.is_grad_enabled():
        return functools.partial(graphed_step, model, method=method)
    return functools.partial(compiled_step(None, method), model)


def relax(model: EnergyNet, batch: Batch, s: States, steps: int, explicit: bool = True,
          check_every: int | None = None) -> States:
    """`steps` synchronous steps of the dynamics from states `s`, with batch.x clamped and the
    output nudged by batch.beta; explicit local terms, or the autograd reference. A model with
    a solver (`model.solver`, --solver; solvers.py) relaxes by it instead (`check_every`: its
    --tol checks that often, if not every --check-every steps)."""
    return relax_by(model.solver, model, batch, s, steps, explicit, check_every)


def nudged_phase(model: EnergyNet, batch: Batch, s: States, steps: int,
                 explicit: bool = True) -> States:
    """EP's nudged phase from s: `steps` synchronous steps (the published dynamics, whose EP
    update is BPTT's through as many steps, converged or not: the GDU theorem), or the
    relaxation of `model.nudged_solver` (--nudged-solver)."""
    return relax_by(model.nudged_solver, model, batch, s, steps, explicit)


def relax_by(solver, model: EnergyNet, batch: Batch, s: States, steps: int, explicit: bool,
             check_every: int | None = None) -> States:
    """The published loop of `steps` synchronous steps, or `solver`'s relaxation."""
    if solver is not None:
        return solver.relax(model, batch, s, steps, explicit, check_every)
    step = step_function(model, explicit)
    for _ in range(steps):
        s = step(batch, s)
    return s


def checkpointed_relax(model: EnergyNet, batch: Batch, s: States, steps: int,
                       segment: int) -> States:
    """`relax` for a gradient through many steps: only the states between segments of
    `segment` steps are kept for the backward pass, each segment is recomputed there (one
    extra forward pass; memory of steps / segment + segment steps instead of steps)."""
    for start in range(0, steps, segment):
        s = torch.utils.checkpoint.checkpoint(relax, model, batch, s, min(segment, steps - start),
                                              use_reentrant=False)
    return s


def free_phase(model: EnergyNet, x: Tensor, steps: int, explicit: bool = True) -> States:
    """`steps` free steps (beta = 0) from zero states: the network's prediction."""
    return relax(model, model.batch(x), model.init_states(x), steps, explicit)


# ---- gradient estimators: EP (one-sided, random-sign, symmetric), BPTT, feed-forward BP ------
# Each writes the batch-mean parameter gradients into .grad and returns the free states, whose
# read-out gives the running training accuracy.

@dataclass(frozen=True)
class Phases:
    T1: int
    T2: int
    beta1: float = 0.0
    beta2: float = 0.1
    thirdphase: bool = False
    explicit: bool = True
    same_update: bool = False  # VF models: W and its B both get the mean of their updates
    clamped: bool = False  # contrastive / coupled learning: the output clamped, not nudged


def write_grads(model: EnergyNet, grads: list[Tensor]) -> None:
    """.grad <- grads, each in its parameter's memory layout: a fused optimizer pairs the two
    by memory position, so a channels-last conv gradient would be applied scrambled."""
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)


def energy_gradients(model: EnergyNet, batch: Batch, s_a: States, beta_a: float, s_b: States,
                     beta_b: float, explicit: bool = True,
                     pre: States | None = None) -> list[Tensor]:
    """-(dPhi/dtheta(s_b, beta_b) - dPhi/dtheta(s_a, beta_a)) / (beta_b - beta_a), batch mean.

    Explicit local products, or autograd of Phi (the reference). `pre`: the pre-synaptic
    states of a VF update (see EnergyNet.phi).
    """
    a, b = batch.nudged(beta_a), batch.nudged(beta_b)
    if explicit:
        with torch.no_grad():
            # (an empty batch, a process's share of a small last batch under torchrun: zeros)
            scale = 1.0 / ((beta_b - beta_a) * max(batch.x.shape[0], 1))
            return [(ga - gb).mul_(scale) for ga, gb in zip(model.param_grads(a, s_a, pre),
                                                              model.param_grads(b, s_b, pre))]
    with torch.enable_grad():
        delta = model.phi(b, s_b, pre).mean() - model.phi(a, s_a, pre).mean()
        return list(torch.autograd.grad(delta / (beta_a - beta_b), list(model.parameters()),
                                        materialize_grads=True))


def share_feedback_updates(model: EnergyNet, updates: list[Tensor]) -> None:
    """--same-update: each W and its B both get the mean of their two updates (in place)."""
    by_param = dict(zip(model.parameters(), updates, strict=True))
    for syn in model.synapses:
        if syn.feedback is not None:
            w, b = by_param[syn.weight], by_param[syn.feedback]
            w.add_(b).mul_(0.5)
            b.copy_(w)


def update_rule_pre(model: EnergyNet, same_update: bool, s_free: States) -> States | None:
    """VF default rule: nudged post-synaptic change times free pre-synaptic states."""
    return s_free if model.has_feedback and not same_update else None


BF16_ANCHORS = 4  # fewer leave some samples' free states 0.1-1 away from a fixed point


def bf16_anchors(ph: Phases) -> list[int]:
    """--precision bf16: how many free steps run from each reference state at the end of the
    free phase (T2 apart, the last BF16_ANCHORS of them; the nudged phases use the last)."""
    t2 = max(ph.T2, 1)
    tail = min(BF16_ANCHORS * t2, ph.T1)
    return ([tail % t2] if tail % t2 else []) + [t2] * (tail // t2)


def ep_gradients(model: EnergyNet, x: Tensor, y: Tensor, ph: Phases, sign: float = 1.0,
                 masks: Masks = None) -> States:
    """EP: free phase to s*, nudged phase(s) from s*, then the energy-difference gradient
    (with dropout `masks`, the same in every phase). With `ph.clamped`, coupled learning
    (contrastive at beta 1): the second phase clamps the output instead of nudging it."""
    beta = sign * ph.beta2
    # bf16: the nudge moves the states by less than bfloat16's rounding of a field, and that
    # rounding keeps the free phase off any fixed point; so the last free steps and the
    # nudged ones round only the change since a reference state whose products are exact
    # (EnergyNet.linearised), taken anew every T2 steps: s* is then a fixed point of fp32's
    # dynamics, and the nudge is kept
    anchors = bf16_anchors(ph) if ph.explicit and model.compute_dtype is not None else []
    with torch.no_grad():
        batch = model.batch(x, y, ph.beta1, masks)  # the drive once: x is clamped throughout
        s_free = relax(model, batch, model.init_states(x), ph.T1 - sum(anchors), ph.explicit)
        for steps in anchors:  # (with --tol, each stops once converged: it starts close)
            batch = model.linearised(batch, s_free)
            s_free = relax(model, batch, s_free, steps, check_every=1)
        if ph.thirdphase:  # both nudged phases as one batch of 2B with beta = +beta2, -beta2
            nudged, start = batch.stacked(beta), map_states(lambda t: torch.cat([t, t]), s_free)
        else:
            nudged, start = batch.nudged(beta), s_free
        if ph.clamped:
            nudged = nudged.clamped(model.visible(start)[-1])
            start = held(nudged, start)
        s_nudged = nudged_phase(model, nudged, start, ph.T2, ph.explicit)
        if ph.thirdphase:
            n = x.shape[0]
            s_nudged, s_ref = (map_states(lambda t: t[:n], s_nudged),
                               map_states(lambda t: t[n:], s_nudged))
            beta_ref = -beta
        else:
            s_ref, beta_ref = s_free, ph.beta1
    grads = energy_gradients(model, batch, s_ref, beta_ref, s_nudged, beta, ph.explicit,
                             update_rule_pre(model, ph.same_update, s_free))
    if ph.same_update:
        share_feedback_updates(model, grads)
    write_grads(model, grads)
    return s_free


def bptt_gradients(model: EnergyNet, x: Tensor, y: Tensor, ph: Phases,
                   masks: Masks = None) -> States:
    """BPTT: T1-T2 steps without a graph, T2 steps with one, loss at the last state, backward
    (with dropout `masks`, the same in every step)."""
    with torch.no_grad():
        s = relax(model, model.batch(x, masks=masks), model.init_states(x), ph.T1 - ph.T2,
                  ph.explicit)
    with torch.enable_grad():  # the drive again, now with its graph to W_0
        batch = model.batch(x, y, masks=masks)
        s = relax(model, batch, s, ph.T2, ph.explicit)
        write_grads(model, loss_gradients(model, batch.target, s, masks))
    return map_states(Tensor.detach, s)


def loss_gradients(model: EnergyNet, target: Tensor, s: States,
                   masks: Masks = None) -> list[Tensor]:
    """d(mean loss at s)/dtheta; zero for weights the loss does not reach (a layer deeper than
    T2 steps back, or B in a feed-forward pass)."""
    return list(torch.autograd.grad(model.loss(s, target, masks).mean(),
                                    list(model.parameters()), materialize_grads=True))


def bp_gradients(model: EnergyNet, x: Tensor, y: Tensor, masks: Masks = None) -> States:
    """Feed-forward backprop through the same layers (no recurrence)."""
    with torch.enable_grad():
        s = model.feedforward(x, masks)
        write_grads(model, loss_gradients(model, model.one_hot(y, x), s, masks))
    return map_states(Tensor.detach, s)


# ---- building the models -----------------------------------------------------------------

def conv_output_size(size: int, kernel: int, stride: int, padding: int, pool: str) -> int:
    size = (size + 2 * padding - kernel) // stride + 1
    return size // 2 if pool in "ma" else size


def gets_feedback(k: int, n_synapses: int, vf: bool, softmax: bool) -> bool:
    """VF: every synapse gets a B except the first (x is clamped) and a softmax read-out."""
    return vf and 0 < k < n_synapses - int(softmax)


def build_mlp(archi: list[int], act: str, loss: str, softmax: bool,
              vf: bool = False) -> EnergyNet:
    n = len(archi) - 1
    synapses = [Dense(a, b, gets_feedback(k, n, vf, softmax), feedback_transposed=True)
                for k, (a, b) in enumerate(zip(archi[:-1], archi[1:]))]
    return EnergyNet(synapses, (archi[0],), act, loss, softmax)


def build_cnn(input_shape: tuple[int, int, int], channels: list[int], kernels: list[int],
              strides: list[int], paddings: list[int], pools: str, fc: list[int], act: str,
              loss: str, softmax: bool, vf: bool = False) -> EnergyNet:
    return EnergyNet(conv_synapses(input_shape, channels, kernels, strides, paddings, pools, fc,
                                   softmax, vf), input_shape, act, loss, softmax)


def conv_synapses(input_shape: tuple[int, int, int], channels: list[int], kernels: list[int],
                  strides: list[int], paddings: list[int], pools: str, fc: list[int],
                  softmax: bool, vf: bool = False, first: int = 0) -> list[nn.Module]:
    """Conv layers (one per entry of channels) then linear layers; `first`: the index of the
    first of them in the whole network (where VF feedback starts)."""
    c_in, size, _ = input_shape
    n = first + len(channels) + len(fc)
    synapses: list[nn.Module] = []
    for k, (c_out, kern, st, p, pool) in enumerate(zip(channels, kernels, strides, paddings,
                                                        pools), first):
        feedback = gets_feedback(k, n, vf, softmax)
        synapses.append(ConvPool(c_in, c_out, kern, st, p, pool, feedback))
        c_in, size = c_out, conv_output_size(size, kern, st, p, pool)
    widths = [c_in * size * size] + list(fc)
    synapses += [Dense(a, b, gets_feedback(k, n, vf, softmax))
                 for k, (a, b) in enumerate(zip(widths[:-1], widths[1:]), first + len(channels))]
    return synapses


@dataclass(frozen=True)
class LCAConfig:
    """The sparse-coding layer of LCANet (--n_feats, --lca_lambda, --tau, ...)."""
    n_feats: int = 32
    kernel: int = 5
    stride: int = 1
    padding: int = 0
    lam: float = 0.25
    tau: float = 100.0
    iters: int = 1
    learned: bool = True  # D trained by the classification gradient (--dict_loss class, both)
    eta: float = 0.0  # the unsupervised dictionary step (--dict_loss recon, both)
    nonneg: bool = True
    standardise: bool = True
    feedback_scale: float = 1.0


def build_lcanet(input_shape: tuple[int, int, int], lca: LCAConfig, channels: list[int],
                 kernels: list[int], strides: list[int], paddings: list[int], pools: str,
                 fc: list[int], act: str, loss: str, softmax: bool) -> EnergyNet:
    """LCANet: the LCA code of the image, then a CNN (conv layers `channels`, the first of
    which reads the code's n_feats maps, then linear layers `fc`) over it."""
    coding = SparseCoding(input_shape, lca.n_feats, lca.kernel, lca.stride, lca.padding,
                          lca.learned, lca.eta, lca.standardise, lca.feedback_scale)
    size = conv_output_size(input_shape[1], lca.kernel, lca.stride, lca.padding, "i")
    synapses = [coding] + conv_synapses((lca.n_feats, size, size), channels, kernels, strides,
                                        paddings, pools, fc, softmax, first=1)
    neurons = [LCANeurons(coding, lca.lam, lca.tau, lca.iters, lca.nonneg)]
    return EnergyNet(synapses, input_shape, act, loss, softmax, neurons)


PRECISIONS = ("fp32", "tf32", "bf16")


def set_precision(model: EnergyNet, precision: str) -> None:
    """--precision: fp32 is IEEE float32 throughout (TF32 off on CUDA, where PyTorch lets
    cuDNN use it by default); tf32 lets CUDA's matrix products and convolutions use TF32
    (no effect on a CPU); bf16 runs the dynamics' products in bfloat16 (LowPrecision)."""
    fp32 = "tf32" if precision == "tf32" else "ieee"
    torch.backends.cuda.matmul.fp32_precision = fp32
    torch.backends.cudnn.conv.fp32_precision = fp32
    model.set_compute_dtype(torch.bfloat16 if precision == "bf16" else None)


def scale_init(model: nn.Module, scale: float) -> None:
    """Multiply the default (kaiming-uniform) init of every weight and bias by `scale`."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(model: EnergyNet) -> str:
    shapes = " -> ".join("x".join(map(str, s)) for s in [model.input_shape] + model.state_shapes)
    readout = f" -> read-out {model.num_classes}" if model.softmax else ""
    code = f"\ncode: {model.neurons[0]}" if model.sparse_coding is not None else ""
    return (f"{model}\nstates: {shapes}{readout}{code}\n"
            f"parameters: {count_parameters(model):,}")

