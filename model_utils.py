"""Energy-based networks: a chain of synapses that declares the primitive function Phi.

A network is a list of synapses; synapse k maps layer k to layer k+1 (layer 0 is the clamped
input x). Phi(x, s, beta) = sum_k <up_k(s_k), s_{k+1}> - beta * L(s, y), and one step of the
dynamics is s_k <- act(dPhi/ds_k) for all layers at once. `step` computes that derivative with
explicit local terms (bottom-up `up`, top-down `down`); `phi` is the same energy for autograd.
"""

from __future__ import annotations

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


class Dense(nn.Linear):
    """Fully connected synapse: up = W s + b, down = W^T s' (reshaped to the input layer)."""

    def up(self, s_in: Tensor) -> tuple[Tensor, torch.Size]:
        return F.linear(s_in.flatten(1), self.weight, self.bias), s_in.shape

    def down(self, s_out: Tensor, in_shape: torch.Size, acc: Tensor | None = None) -> Tensor:
        """W^T s' (plus `acc`, fused into one matmul when the layer is flat)."""
        if acc is not None and acc.dim() == 2:
            return torch.addmm(acc, s_out, self.weight)
        top_down = (s_out @ self.weight).view(in_shape)
        return top_down if acc is None else acc + top_down

    def weight_grad(self, s_in: Tensor, s_out: Tensor) -> list[Tensor]:
        """d<up(s_in), s_out>/d(W, b), summed over the batch."""
        return [s_out.t() @ s_in.flatten(1), s_out.sum(0)]


class ConvPool(nn.Conv2d):
    """Convolution followed by a 2x2 pooling: up = P(conv(s)), down = conv^T(unpool(s'))."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, pool: str):
        super().__init__(c_in, c_out, kernel, stride, padding)
        self.pool = pool

    def extra_repr(self) -> str:
        return super().extra_repr() + f", pool={self.pool!r}"

    def up(self, s_in: Tensor) -> tuple[Tensor, tuple]:
        # channels-last: ~20x faster max-pooling on CPU and the layout cuDNN prefers
        s_in = s_in.contiguous(memory_format=torch.channels_last)
        c = F.conv2d(s_in, self.weight, self.bias, self.stride, self.padding)
        indices = None
        if self.pool == "m":
            out, indices = F.max_pool2d(c, 2, return_indices=True)
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
        top_down = F.conv_transpose2d(g, self.weight, None, st, p, output_padding=extra)
        return top_down if acc is None else acc + top_down

    def weight_grad(self, s_in: Tensor, s_out: Tensor) -> list[Tensor]:
        """d<P(conv(s_in)), s_out>/d(W, b), summed over the batch."""
        s_in = s_in.contiguous(memory_format=torch.channels_last)
        g = self.unpool(s_out, self.up(s_in)[1])
        dw = torch.nn.grad.conv2d_weight(s_in, self.weight.shape, g, self.stride, self.padding)
        return [dw, g.sum((0, 2, 3))]


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
            beta: float | Tensor = 0.0) -> Tensor:
        """The primitive function Phi per sample (the reference the explicit step must match)."""
        inputs = [x] + s[:-1]
        phi = sum((syn.up(h)[0] * out).flatten(1).sum(1)
                  for syn, h, out in zip(self.energy_synapses, inputs, s))
        if not _is_zero(beta):
            phi = phi - _per_sample(beta, phi) * self.loss(s, target)
        return phi

    def param_grads(self, x: Tensor, s: States, target: Tensor | None = None,
                    beta: float = 0.0) -> list[Tensor]:
        """dPhi/dtheta summed over the batch, in parameters() order, without autograd."""
        inputs = [x] + s[:-1]
        grads = [g for syn, h, out in zip(self.energy_synapses, inputs, s)
                 for g in syn.weight_grad(h, out)]
        if self.softmax:  # the read-out enters Phi only through -beta * L
            readout = self.synapses[-1]
            if _is_zero(beta):
                grads += [torch.zeros_like(p) for p in readout.parameters()]
            else:
                g_logits = self.dloss_dlogits(s, target)
                grads += [-beta * g for g in readout.weight_grad(s[-1], g_logits)]
        return grads

    def step(self, drive: Tensor, s: States, target: Tensor | None = None,
             beta: float | Tensor = 0.0) -> States:
        """One synchronous step s_k <- act(dPhi/ds_k), from explicit local terms."""
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
        return [act(g) for act, g in zip(self.acts, grads)]

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


def build_mlp(archi: list[int], act: str, loss: str, softmax: bool) -> EnergyNet:
    synapses = [Dense(a, b) for a, b in zip(archi[:-1], archi[1:])]
    return EnergyNet(synapses, (archi[0],), act, loss, softmax)


def build_cnn(input_shape: tuple[int, int, int], channels: list[int], kernels: list[int],
              strides: list[int], paddings: list[int], pools: str, fc: list[int], act: str,
              loss: str, softmax: bool) -> EnergyNet:
    c_in, size, _ = input_shape
    synapses: list[nn.Module] = []
    for c_out, k, st, p, pool in zip(channels, kernels, strides, paddings, pools):
        synapses.append(ConvPool(c_in, c_out, k, st, p, pool))
        c_in, size = c_out, conv_output_size(size, k, st, p, pool)
    widths = [c_in * size * size] + list(fc)
    synapses += [Dense(a, b) for a, b in zip(widths[:-1], widths[1:])]
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

