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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_threshold(u: Tensor, lam: float, nonneg: bool = True) -> Tensor:
    """T_lambda(u): u shrunk towards 0 by lambda (and cut at 0 for the non-negative code)."""
    return F.relu(u - lam) if nonneg else u - u.clamp(-lam, lam)


def correlate(x: Tensor, dictionary: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    """D * x: every atom's correlation with the image, one map per atom."""
    return F.conv2d(x, dictionary, stride=stride, padding=padding)


def reconstruct(a: Tensor, dictionary: Tensor, stride: int, padding: int,
                size: tuple[int, int]) -> Tensor:
    """D^T a: the image the code stands for (the adjoint of `correlate`), of height x width
    `size` (a stride can leave the last rows and columns that no atom reaches)."""
    k = dictionary.shape[-1]
    extra = [size[d] - ((a.shape[2 + d] - 1) * stride - 2 * padding + k) for d in (0, 1)]
    return F.conv_transpose2d(a, dictionary, stride=stride, padding=padding,
                              output_padding=extra)


def inhibition(a: Tensor, dictionary: Tensor, stride: int, padding: int,
               size: tuple[int, int]) -> Tensor:
    """(D * D^T - I) a: what the active atoms explain of each other's drive."""
    return correlate(reconstruct(a, dictionary, stride, padding, size), dictionary, stride,
                     padding) - a


def lca_step(u: Tensor, a: Tensor, drive: Tensor, dictionary: Tensor, lam: float, tau: float,
             stride: int, padding: int, size: tuple[int, int], nonneg: bool = True,
             top_down: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    """One LCA iteration; `top_down` is an extra input to the potentials (a network above)."""
    lateral = inhibition(a, dictionary, stride, padding, size)
    u = u + (drive - u - lateral + top_down) / tau
    return u, soft_threshold(u, lam, nonneg)


def sparse_code(x: Tensor, dictionary: Tensor, lam: float, tau: float, iters: int,
                stride: int = 1, padding: int = 0, nonneg: bool = True) -> Tensor:
    """The LCA code of the images x (as given: the LCANet layer standardises them first) after
    `iters` iterations from zero potentials."""
    drive = correlate(x, dictionary, stride, padding)
    u = torch.zeros_like(drive)
    a = torch.zeros_like(drive)
    for _ in range(iters):
        u, a = lca_step(u, a, drive, dictionary, lam, tau, stride, padding, x.shape[-2:], nonneg)
    return a


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


@torch.no_grad()
def dictionary_step(dictionary: Tensor, x: Tensor, a: Tensor, eta: float, stride: int = 1,
                    padding: int = 0) -> Tensor:
    """The unsupervised LCA update D += eta * a (x) residual (batch mean), then unit atoms:
    a gradient step on the reconstruction error 1/2 ||x - D^T a||^2 at the code a."""
    residual = x - reconstruct(a, dictionary, stride, padding, x.shape[-2:])
    grad = torch.nn.grad.conv2d_weight(residual, dictionary.shape, a, stride, padding)
    dictionary.add_(grad, alpha=eta / x.shape[0])
    return normalise_atoms(dictionary)
