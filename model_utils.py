"""Energy-based networks: a chain of synapses that declares the primitive function Phi.

A network is a list of synapses; synapse k maps layer k to layer k+1 (layer 0 is the clamped
input x). Phi(x, s, beta) = sum_k <up_k(s_k), s_{k+1}> - beta * L(s, y), and one step of the
dynamics is s_k <- act(dPhi/ds_k) for all layers at once. `step` computes that derivative with
explicit local terms (bottom-up `up`, top-down `down`); `phi` is the same energy for autograd.

Vector-field (VF) models give every inner synapse its own feedback weight B (the shape of W, no
bias) that carries the top-down term in place of W: the field is no longer a gradient, but each
layer's update is still d/ds_k of Phi with the other layers held fixed (see `phi`'s `pre`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

States = list[Tensor]


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


class Feedback:
    """What a synapse needs to carry its top-down term with its own weight B (VF models)."""

    feedback: nn.Parameter | None

    def add_feedback(self, enabled: bool) -> None:
        # registered after W and b, so parameters() is (W, b, B); initialised like W
        feedback = None
        if enabled:
            feedback = nn.Parameter(torch.empty_like(self.weight))
            nn.init.kaiming_uniform_(feedback, a=math.sqrt(5))
        self.register_parameter("feedback", feedback)

    @property
    def back(self) -> Tensor:
        """The weight of the top-down term: B for a VF synapse, else W itself."""
        return self.weight if self.feedback is None else self.feedback


class Dense(nn.Linear, Feedback):
    """Fully connected synapse: up = W s + b, down = W^T s' (B^T s' with feedback)."""

    def __init__(self, n_in: int, n_out: int, feedback: bool = False):
        super().__init__(n_in, n_out)
        self.add_feedback(feedback)

    def up(self, s_in: Tensor) -> tuple[Tensor, torch.Size]:
        return F.linear(s_in.flatten(1), self.weight, self.bias), s_in.shape

    def feedback_up(self, s_in: Tensor) -> Tensor:
        """B s (no bias): the term whose derivative in s is the top-down input."""
        return F.linear(s_in.flatten(1), self.back)

    def down(self, s_out: Tensor, in_shape: torch.Size, acc: Tensor | None = None) -> Tensor:
        """W^T s' (plus `acc`, fused into one matmul when the layer is flat)."""
        if acc is not None and acc.dim() == 2:
            return torch.addmm(acc, s_out, self.back)
        top_down = (s_out @ self.back).view(in_shape)
        return top_down if acc is None else acc + top_down

    def weight_grad(self, s_in: Tensor, s_out: Tensor) -> list[Tensor]:
        """d<up(s_in), s_out>/d(W, b), summed over the batch."""
        return [s_out.t() @ s_in.flatten(1), s_out.sum(0)]

    def feedback_grad(self, s_in: Tensor, s_out: Tensor) -> Tensor:
        """d<B s_in, s_out>/dB, summed over the batch."""
        return s_out.t() @ s_in.flatten(1)


class ConvPool(nn.Conv2d, Feedback):
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

    def up(self, s_in: Tensor) -> tuple[Tensor, tuple]:
        """P(conv_W(s)) and the routing `down` needs (B's own arg-max in a VF synapse)."""
        vf_routing = self.feedback is not None and self.pool == "m"
        out, ctx = self._conv_pool(s_in, self.weight, self.bias, routing=not vf_routing)
        if vf_routing:
            ctx = self._conv_pool(s_in, self.feedback, None)[1]
        return out, ctx

    def feedback_up(self, s_in: Tensor) -> Tensor:
        """P(conv_B(s)) (no bias): the term whose derivative in s is the top-down input."""
        return self._conv_pool(s_in, self.back, None, routing=False)[0]

    def _conv_pool(self, s_in: Tensor, weight: Tensor, bias: Tensor | None,
                   routing: bool = True) -> tuple[Tensor, tuple]:
        """P(conv_weight(s)) and, with `routing`, the max-pool arg-max that `unpool` needs."""
        # channels-last: ~20x faster max-pooling on CPU and the layout cuDNN prefers
        s_in = s_in.contiguous(memory_format=torch.channels_last)
        c = F.conv2d(s_in, weight, bias, self.stride, self.padding)
        indices = None
        if self.pool == "m":
            out, indices = F.max_pool2d(c, 2, return_indices=True) if routing else (
                F.max_pool2d(c, 2), None)
        elif self.pool == "a":
            out = F.avg_pool2d(c, 2)
        else:
            out = c
        # a 1-channel input is ambiguous about layout, so fix the output's explicitly
        return out.contiguous(memory_format=torch.channels_last), (indices, c.shape, s_in.shape)

    def unpool(self, s_out: Tensor, ctx: tuple) -> Tensor:
        """The adjoint of the pooling at the state that gave `ctx` (arg-max routing for max)."""
        indices, c_shape, _ = ctx
        if self.pool == "m":
            return F.max_unpool2d(s_out, indices, 2, output_size=c_shape[-2:])
        if self.pool == "a":
            # spread each value over its 2x2 window (zeros for an odd last row or column)
            g = s_out.repeat_interleave(2, -2).repeat_interleave(2, -1) / 4
            return F.pad(g, (0, c_shape[-1] - g.shape[-1], 0, c_shape[-2] - g.shape[-2]))
        return s_out

    def down(self, s_out: Tensor, ctx: tuple, acc: Tensor | None = None) -> Tensor:
        """conv^T(unpool(s')) (plus `acc`)."""
        g, in_shape = self.unpool(s_out, ctx), ctx[2]
        k, st, p = self.kernel_size[0], self.stride[0], self.padding[0]
        extra = [in_shape[d] - ((g.shape[d] - 1) * st - 2 * p + k) for d in (-2, -1)]
        top_down = F.conv_transpose2d(g, self.back, None, st, p, output_padding=extra)
        return top_down if acc is None else acc + top_down

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
        dw = torch.nn.grad.conv2d_weight(s_in, weight.shape, g, self.stride, self.padding)
        return dw, g


class EnergyNet(nn.Module):
    """A layered energy-based network (MLP or CNN, decided by its synapses).

    With `softmax`, the last synapse is a read-out outside the energy: its logits are the
    prediction and the nudge reaches the last state through it.
    """

    def __init__(self, synapses: list[nn.Module], input_shape: tuple[int, ...], act: str,
                 loss: str, softmax: bool):
        super().__init__()
        self.synapses = nn.ModuleList(synapses)
        self.input_shape = tuple(input_shape)
        self.act_name, self.loss_name, self.softmax = act, loss, softmax
        self.n_states = len(synapses) - int(softmax)
        # a plain tuple (not a ModuleList slice, which costs ~15 us to build on every step)
        self.energy_synapses = tuple(self.synapses[: self.n_states])
        linear_output = loss == "cel" and not softmax
        self.acts = [ACTIVATIONS[act]] * self.n_states
        if linear_output:
            self.acts[-1] = identity
        with torch.no_grad():
            h, shapes = torch.zeros(1, *input_shape), []
            for syn in self.energy_synapses:
                h = syn.up(h)[0]
                shapes.append(h.shape[1:])
        self.state_shapes = shapes
        self.num_classes = self.synapses[-1].out_features

    def init_states(self, x: Tensor) -> States:
        return [x.new_zeros(x.shape[0], *shape).contiguous(memory_format=_layout(shape))
                for shape in self.state_shapes]

    def input_drive(self, x: Tensor) -> Tensor:
        """Bottom-up drive of the first layer: constant while x is clamped, so computed once."""
        return self.synapses[0].up(x)[0]

    def one_hot(self, y: Tensor, like: Tensor) -> Tensor:
        """The target of the cost: labels as one-hot rows, made once per phase."""
        return F.one_hot(y, self.num_classes).to(like.dtype)

    def logits(self, s: States) -> Tensor:
        return self.synapses[-1].up(s[-1])[0] if self.softmax else s[-1]

    def loss(self, s: States, target: Tensor) -> Tensor:
        """Per-sample cost: 1/2 ||out - target||^2 (mse) or cross-entropy (cel)."""
        out = self.logits(s)
        if self.loss_name == "mse":
            return 0.5 * (out - target).pow(2).sum(1)
        return F.cross_entropy(out, target, reduction="none")

    def dloss_dlogits(self, s: States, target: Tensor) -> Tensor:
        out = self.logits(s)
        return out - target if self.loss_name == "mse" else out.softmax(1) - target

    def loss_grad(self, s: States, target: Tensor) -> Tensor:
        """dL/ds_last per sample, written out so the nudged step needs no autograd."""
        g = self.dloss_dlogits(s, target)
        return self.synapses[-1].down(g, s[-1].shape) if self.softmax else g

    def phi(self, x: Tensor, s: States, target: Tensor | None = None,
            beta: float | Tensor = 0.0, pre: States | None = None) -> Tensor:
        """The primitive function Phi per sample (the reference the explicit step must match).

        `pre` (VF models) holds the pre-synaptic states: each W reads its input from `pre` and
        each B its target, so d/ds of this Phi is the vector field at s when pre equals s, and
        its parameter gradient pairs post-synaptic `s` with pre-synaptic `pre`.
        """
        pre = s if pre is None else pre
        phi = sum((syn.up(h)[0] * out).flatten(1).sum(1)
                  for syn, h, out in zip(self.energy_synapses, [x] + pre[:-1], s))
        for syn, h, out in zip(self.energy_synapses, [x] + s[:-1], pre):
            if syn.feedback is not None:
                phi = phi + (syn.feedback_up(h) * out).flatten(1).sum(1)
        if not _is_zero(beta):
            phi = phi - _per_sample(beta, phi) * self.loss(s, target)
        return phi

    def param_grads(self, x: Tensor, s: States, target: Tensor | None = None,
                    beta: float = 0.0, pre: States | None = None) -> list[Tensor]:
        """dPhi/dtheta summed over the batch, in parameters() order, without autograd."""
        pre = s if pre is None else pre
        grads = []
        for syn, h_pre, out, h, out_pre in zip(self.energy_synapses, [x] + pre[:-1], s,
                                               [x] + s[:-1], pre):
            grads += syn.weight_grad(h_pre, out)
            if syn.feedback is not None:
                grads.append(syn.feedback_grad(h, out_pre))
        if self.softmax:  # the read-out enters Phi only through -beta * L
            readout = self.synapses[-1]
            if _is_zero(beta):
                grads += [torch.zeros_like(p) for p in readout.parameters()]
            else:
                g_logits = self.dloss_dlogits(s, target)
                grads += [-beta * g for g in readout.weight_grad(s[-1], g_logits)]
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

    def step(self, drive: Tensor, s: States, target: Tensor | None = None,
             beta: float | Tensor = 0.0) -> States:
        """One synchronous step s_k <- act(dPhi/ds_k), from explicit local terms."""
        return [act(a) for act, a in zip(self.acts, self.field(drive, s, target, beta))]

    def field(self, drive: Tensor, s: States, target: Tensor | None = None,
              beta: float | Tensor = 0.0) -> States:
        """dPhi/ds_k for every layer (each layer's pre-activation), from local terms."""
        ups, ctxs, inner = [drive], [None], self.energy_synapses[1:]
        for syn, h in zip(inner, s[:-1]):
            out, ctx = syn.up(h)
            ups.append(out)
            ctxs.append(ctx)
        grads = [syn.down(top, ctx, up) for up, syn, top, ctx in zip(ups, inner, s[1:], ctxs[1:])]
        last = ups[-1]
        if isinstance(beta, Tensor):
            g = self.loss_grad(s, target)
            last = last - _per_sample(beta, g) * g
        elif beta != 0:
            last = last.add(self.loss_grad(s, target), alpha=-beta)
        grads.append(last)
        return grads

    def feedforward(self, x: Tensor) -> States:
        """One bottom-up pass through the same layers, no recurrence (the BP baseline)."""
        s, h = [], x
        for syn, act in zip(self.energy_synapses, self.acts):
            h = act(syn.up(h)[0])
            s.append(h)
        return s


def _layout(shape: torch.Size) -> torch.memory_format:
    return torch.channels_last if len(shape) == 3 else torch.contiguous_format


def _is_zero(beta: float | Tensor) -> bool:
    return isinstance(beta, (int, float)) and beta == 0


def _per_sample(beta: float | Tensor, like: Tensor) -> float | Tensor:
    """beta is a number or one value per sample (several nudges stacked in one batch)."""
    if isinstance(beta, Tensor):
        return beta.view(-1, *([1] * (like.dim() - 1)))
    return beta


def conv_output_size(size: int, kernel: int, stride: int, padding: int, pool: str) -> int:
    size = (size + 2 * padding - kernel) // stride + 1
    return size // 2 if pool in "ma" else size


def gets_feedback(k: int, n_synapses: int, vf: bool, softmax: bool) -> bool:
    """VF: every synapse gets a B except the first (x is clamped) and a softmax read-out."""
    return vf and 0 < k < n_synapses - int(softmax)


def build_mlp(archi: list[int], act: str, loss: str, softmax: bool,
              vf: bool = False) -> EnergyNet:
    n = len(archi) - 1
    synapses = [Dense(a, b, gets_feedback(k, n, vf, softmax))
                for k, (a, b) in enumerate(zip(archi[:-1], archi[1:]))]
    return EnergyNet(synapses, (archi[0],), act, loss, softmax)


def build_cnn(input_shape: tuple[int, int, int], channels: list[int], kernels: list[int],
              strides: list[int], paddings: list[int], pools: str, fc: list[int], act: str,
              loss: str, softmax: bool, vf: bool = False) -> EnergyNet:
    c_in, size, _ = input_shape
    n = len(channels) + len(fc)
    synapses: list[nn.Module] = []
    for k, (c_out, kern, st, p, pool) in enumerate(zip(channels, kernels, strides, paddings,
                                                        pools)):
        feedback = gets_feedback(k, n, vf, softmax)
        synapses.append(ConvPool(c_in, c_out, kern, st, p, pool, feedback))
        c_in, size = c_out, conv_output_size(size, kern, st, p, pool)
    widths = [c_in * size * size] + list(fc)
    synapses += [Dense(a, b, gets_feedback(k, n, vf, softmax))
                 for k, (a, b) in enumerate(zip(widths[:-1], widths[1:]), len(channels))]
    return EnergyNet(synapses, input_shape, act, loss, softmax)


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
    return f"{model}\nstates: {shapes}{readout}\nparameters: {count_parameters(model):,}"

