"""The Locally Competitive Algorithm (LCA): convolutional sparse coding of a batch of images.

A dictionary D of `n_feats` atoms (a conv weight of shape (n_feats, C, k, k), every atom of unit
L2 norm) codes an image x by the code a (n_feats maps) that minimises the LASSO energy

    E(a) = 1/2 ||x - D^T a||^2 + lambda ||a||_1        (a >= 0 for the non-negative code)

where D^T a, the reconstruction, is the transposed convolution of a with D. LCA runs one leaky
integrator u per code unit and thresholds it (Rozell et al. 2008):

    u <- u + (1/tau) (D * x - u - (D * D^T - I) a),      a = T_lambda(u)

with D * x the correlation of the image with the atoms (the drive) and (D * D^T - I) a the
inhibition between overlapping atoms (each atom's own overlap, 1, removed). Its fixed points
are E's minima: the tests hold `sparse_code` to scikit-learn's Lasso.

In LCANet the layer is the first synapse of an energy network (`SparseCoding`, with the code's
neurons `LCANeurons`): its term of the network's primitive function is

    Phi_LCA(x, a) = (<D * x, a> - 1/2 ||D^T a||^2 + 1/2 ||a||^2) / f
                  = (1/2 ||a||^2 - 1/2 ||x - D^T a||^2 + const) / f

whose a-derivative, times f, is LCA's input D * x - (D * D^T - I) a. The sparse-coding energy
E is thus a term of Phi (its lambda ||a||_1 is the threshold of the neurons, the 1/2 ||a||^2
their leak), the first conv layer's top-down term adds f times its input to u, and the EP and
BPTT gradients of D follow from Phi like any other weight's. f (--lca_feedback, default 1)
scales the top-down input against the image's drive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def soft_threshold(u: Tensor, lam: float, nonneg: bool = True) -> Tensor:
    """T_lambda(u): u shrunk towards 0 by lambda (and cut at 0 for the non-negative code)."""
    return F.relu(u - lam) if nonneg else u - u.clamp(-lam, lam)


def correlate(x: Tensor, dictionary: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    """D * x: every atom's correlation with the image, one map per atom."""
    return F.conv2d(x, dictionary, stride=stride, padding=padding)


def reconstruct(a: Tensor, dictionary: Tensor, stride: int, padding: int,
                size: tuple[int, int]) -> Tensor:
    """D^T a: the image the code stands for (the adjoint of `correlate`), of height x width
    `size` (a stride can leave the last rows and columns that no atom reaches).

    Written as one matmul and a fold: on CPU, 5x faster than a transposed convolution into a
    single image channel."""
    n, c, k, _ = dictionary.shape
    patches = dictionary.reshape(n, c * k * k).t() @ a.reshape(a.shape[0], n, -1)
    return F.fold(patches, tuple(size), k, padding=padding, stride=stride)


def inhibition(a: Tensor, dictionary: Tensor, stride: int, padding: int,
               size: tuple[int, int]) -> Tensor:
    """(D * D^T - I) a: what the active atoms explain of each other's drive."""
    return correlate(reconstruct(a, dictionary, stride, padding, size), dictionary, stride,
                     padding) - a


def lca_iterations(drive: Tensor, a: Tensor, u: Tensor, inhibit, lam: float, tau: float,
                   iters: int, nonneg: bool = True) -> tuple[Tensor, Tensor]:
    """`iters` LCA iterations u <- u + (1/tau)(input - u), a = T_lambda(u), from (a, u).

    `drive` is the potentials' whole input at the starting code a (D * x - (G - I) a, plus any
    top-down input); as the code moves, the inhibition `inhibit` (the linear map (G - I)) moves
    with it, so the input at a_j is drive - inhibit(a_j - a).
    """
    a0 = a
    for j in range(iters):
        target = drive if j == 0 else drive - inhibit(a - a0)
        u = u + (target - u) / tau
        a = soft_threshold(u, lam, nonneg)
    return a, u


def sparse_code(x: Tensor, dictionary: Tensor, lam: float, tau: float, iters: int,
                stride: int = 1, padding: int = 0, nonneg: bool = True) -> Tensor:
    """The LCA code of the images x (as given: the LCANet layer standardises them first) after
    `iters` iterations from zero potentials."""
    drive = correlate(x, dictionary, stride, padding)
    zeros = torch.zeros_like(drive)

    def inhibit(a: Tensor) -> Tensor:
        return inhibition(a, dictionary, stride, padding, x.shape[-2:])

    return lca_iterations(drive, zeros, zeros, inhibit, lam, tau, iters, nonneg)[0]


@torch.no_grad()
def gram_norm(dictionary: Tensor, stride: int, padding: int, size: tuple[int, int],
              iters: int = 50) -> float:
    """The largest eigenvalue of D * D^T (power iteration on one code map, seeded: it draws
    nothing from the global generator). LCA settles only when tau exceeds half of it."""
    gen = torch.Generator(device=dictionary.device).manual_seed(0)
    probe = torch.zeros(1, dictionary.shape[1], *size, device=dictionary.device,
                        dtype=dictionary.dtype)
    v = torch.randn(correlate(probe, dictionary, stride, padding).shape, generator=gen,
                    device=dictionary.device, dtype=dictionary.dtype)
    norm = v.new_zeros(())
    for _ in range(iters):
        v = correlate(reconstruct(v, dictionary, stride, padding, size), dictionary, stride,
                      padding)
        norm = v.norm()
        v = v / norm.clamp_min(1e-30)
    return norm.item()


def lasso_energy(x: Tensor, a: Tensor, dictionary: Tensor, lam: float, stride: int = 1,
                 padding: int = 0) -> Tensor:
    """E(a) per image: 1/2 ||x - D^T a||^2 + lambda ||a||_1."""
    residual = x - reconstruct(a, dictionary, stride, padding, x.shape[-2:])
    return 0.5 * residual.pow(2).flatten(1).sum(1) + lam * a.abs().flatten(1).sum(1)


def standardise(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Each image to zero mean and unit variance (over its pixels), before it is coded."""
    flat = x.flatten(1)
    mean, std = flat.mean(1), flat.std(1)
    shape = (-1,) + (1,) * (x.dim() - 1)
    return (x - mean.view(shape)) / (std.view(shape) + eps)


@torch.no_grad()
def normalise_atoms(dictionary: Tensor) -> Tensor:
    """Every atom to unit L2 norm, in place (an atom of zeros is left as it is)."""
    norms = dictionary.flatten(1).norm(dim=1).clamp_min(1e-12)
    return dictionary.div_(norms.view(-1, 1, 1, 1))


def code_times_residual(x: Tensor, a: Tensor, dictionary: Tensor, stride: int,
                        padding: int) -> Tensor:
    """a (x) (x - D^T a) summed over the batch: minus the D-gradient of 1/2 ||x - D^T a||^2."""
    residual = x - reconstruct(a, dictionary, stride, padding, x.shape[-2:])
    return torch.nn.grad.conv2d_weight(residual, dictionary.shape, a, stride, padding)


@torch.no_grad()
def dictionary_step(dictionary: Tensor, x: Tensor, a: Tensor, eta: float, stride: int = 1,
                    padding: int = 0, all_sum=None, batch_size: int | None = None) -> Tensor:
    """The unsupervised LCA update D += eta * a (x) residual (batch mean), then unit atoms:
    a gradient step on the reconstruction error 1/2 ||x - D^T a||^2 at the code a. With
    `all_sum` (several processes), x is a share of a batch of `batch_size` images."""
    update = code_times_residual(x, a, dictionary, stride, padding)
    if all_sum is not None:
        update = all_sum(update)
    dictionary.add_(update, alpha=eta / (batch_size or x.shape[0]))
    return normalise_atoms(dictionary)


class SparseCoding(nn.Module):
    """The LCA dictionary as the first synapse of an energy network: image x -> code a.

    Its energy term is Phi_LCA above (on the standardised image unless `standardise` is off).
    With `learned` the dictionary is a parameter that the classification gradient trains;
    otherwise a buffer that only the unsupervised step (`eta`) moves. Either way every atom is
    renormalised after each update (`after_update`).
    """

    feedback = None  # no feedback weights: the image is clamped
    weight_letter = "D"

    def __init__(self, input_shape: tuple[int, int, int], n_feats: int, kernel: int,
                 stride: int, padding: int, learned: bool, eta: float = 0.0,
                 standardise: bool = True, feedback_scale: float = 1.0):
        super().__init__()
        dictionary = normalise_atoms(torch.randn(n_feats, input_shape[0], kernel, kernel))
        if learned:
            self.weight = nn.Parameter(dictionary)
        else:
            self.register_buffer("weight", dictionary)
        self.stride, self.padding, self.image_size = stride, padding, tuple(input_shape[1:])
        self.eta, self.standardise, self.feedback_scale = eta, standardise, feedback_scale

    def extra_repr(self) -> str:
        d = self.weight
        return (f"{d.shape[0]} atoms of {d.shape[1]}x{d.shape[2]}x{d.shape[3]}, "
                f"stride={self.stride}, padding={self.padding}, "
                f"learned={isinstance(d, nn.Parameter)}, eta={self.eta:g}, "
                f"standardise={self.standardise}, feedback_scale={self.feedback_scale:g}")

    def code_input(self, x: Tensor) -> Tensor:
        """The image as the code sees it (standardised per image by default)."""
        return standardise(x) if self.standardise else x

    def up(self, x: Tensor) -> tuple[Tensor, None]:
        """(D * x) / f: the drive of the code (the part of dPhi/da that the image gives)."""
        drive = correlate(self.code_input(x), self.weight, self.stride, self.padding)
        return drive / self.feedback_scale, None

    def reconstruct(self, a: Tensor) -> Tensor:
        return reconstruct(a, self.weight, self.stride, self.padding, self.image_size)

    def inhibit(self, a: Tensor) -> Tensor:
        """(D * D^T - I) a."""
        return inhibition(a, self.weight, self.stride, self.padding, self.image_size)

    def self_field(self, a: Tensor) -> Tensor:
        """The code's coupling to itself in dPhi/da: -(D * D^T - I) a / f."""
        return self.inhibit(a).div_(-self.feedback_scale)

    def self_energy(self, a: Tensor) -> Tensor:
        """Per sample: (1/2 ||a||^2 - 1/2 ||D^T a||^2) / f, the terms of Phi_LCA in a alone."""
        energy = 0.5 * (a.pow(2).flatten(1).sum(1) - self.reconstruct(a).pow(2).flatten(1).sum(1))
        return energy / self.feedback_scale

    def weight_grad(self, x: Tensor, a: Tensor) -> list[Tensor]:
        """dPhi_LCA/dD summed over the batch: a (x) residual / f (nothing for a buffer)."""
        if not isinstance(self.weight, nn.Parameter):
            return []
        grad = code_times_residual(self.code_input(x), a, self.weight, self.stride,
                                   self.padding)
        return [grad.div_(self.feedback_scale)]

    def stable_tau(self) -> float:
        """The least tau at which LCA with this dictionary settles instead of oscillating."""
        return gram_norm(self.weight, self.stride, self.padding, self.image_size) / 2

    def reconstruction_error(self, x: Tensor, a: Tensor) -> Tensor:
        """Per image: 1/2 ||x - D^T a||^2 (x as the code sees it)."""
        return 0.5 * (self.code_input(x) - self.reconstruct(a)).pow(2).flatten(1).sum(1)

    @torch.no_grad()
    def after_update(self, x: Tensor, a: Tensor, all_sum=None,
                     batch_size: int | None = None) -> None:
        """After each optimizer step: the unsupervised step at the free code a (if eta > 0),
        then every atom back to unit norm (x a share of the batch: see dictionary_step)."""
        if self.eta > 0:
            dictionary_step(self.weight, self.code_input(x), a, self.eta, self.stride,
                            self.padding, all_sum, batch_size)
        else:
            normalise_atoms(self.weight)


class LCANeurons:
    """The code's neurons: state (a, u). A network step runs `iters` LCA iterations with the
    step's input f * dPhi/da (the image's drive, the inhibition and the top-down term) held
    except for the inhibition, which follows the code as it moves."""

    hidden = True

    def __init__(self, synapse: SparseCoding, lam: float, tau: float, iters: int,
                 nonneg: bool = True):
        self.synapse, self.lam, self.tau, self.iters, self.nonneg = synapse, lam, tau, iters, nonneg

    def __repr__(self) -> str:
        sign = "non-negative" if self.nonneg else "signed"
        return (f"LCANeurons(lambda={self.lam:g}, tau={self.tau:g}, iters={self.iters} per "
                f"step, {sign})")

    def init(self, zeros: Tensor) -> tuple[Tensor, Tensor]:
        return zeros, zeros.clone()

    def update(self, field: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        a, u = state
        scale = self.synapse.feedback_scale
        drive = field if scale == 1 else field * scale
        return lca_iterations(drive, a, u, self.synapse.inhibit, self.lam, self.tau, self.iters,
                              self.nonneg)

    def feedforward(self, field: Tensor) -> tuple[Tensor, Tensor]:
        """The code from the image alone: `iters` iterations from zero potentials."""
        return self.update(field, self.init(torch.zeros_like(field)))
