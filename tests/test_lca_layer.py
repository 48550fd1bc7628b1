"""The LCA solver against an independent LASSO solver (scikit-learn), and the dictionary step."""

import math

import pytest
import torch
from sklearn.linear_model import Lasso

from lca_layer import (dictionary_step, lasso_energy, normalise_atoms, reconstruct, sparse_code,
                       standardise)

pytestmark = pytest.mark.usefixtures("float64")
SIZE = (8, 8)


def synthesis_matrix(dictionary, code_shape, stride, padding):
    """D^T as a matrix (pixels x code units): the reconstruction of every one-hot code."""
    n = math.prod(code_shape)
    basis = torch.eye(n).view(n, *code_shape)
    return reconstruct(basis, dictionary, stride, padding, SIZE).flatten(1).T


# (atoms, kernel, stride, padding): one atom as large as the image (a dense LASSO), and a
# strided, padded convolution whose code overlaps itself
SHAPES = [(24, 8, 1, 0), (4, 3, 2, 1)]


@pytest.mark.parametrize("nonneg", [True, False], ids=["nonneg", "signed"])
@pytest.mark.parametrize("atoms,kernel,stride,padding", SHAPES, ids=["dense", "conv"])
def test_sparse_code_solves_the_lasso(atoms, kernel, stride, padding, nonneg):
    dictionary = normalise_atoms(torch.randn(atoms, 1, kernel, kernel))
    x = torch.randn(3, 1, *SIZE)
    lam = 0.5
    probe = sparse_code(x, dictionary, lam, 1.0, 0, stride, padding)
    M = synthesis_matrix(dictionary, probe.shape[1:], stride, padding)
    tau = torch.linalg.eigvalsh(M.T @ M).max().item()  # a stable step for the largest mode
    a = sparse_code(x, dictionary, lam, tau, 20000, stride, padding, nonneg)
    for i in range(len(x)):
        # scikit-learn minimises 1/(2 n) ||y - M w||^2 + alpha ||w||_1 over n = pixels
        lasso = Lasso(alpha=lam / M.shape[0], fit_intercept=False, positive=nonneg, tol=1e-14,
                      max_iter=1_000_000).fit(M.numpy(), x[i].flatten().numpy())
        reference = torch.tensor(lasso.coef_).view(1, *a.shape[1:])
        e_ours = lasso_energy(x[i:i + 1], a[i:i + 1], dictionary, lam, stride, padding).item()
        e_ref = lasso_energy(x[i:i + 1], reference, dictionary, lam, stride, padding).item()
        assert abs(e_ours - e_ref) <= 1e-3 * abs(e_ref), (e_ours, e_ref)
        support_ours, support_ref = a[i].abs() > 1e-6, reference[0].abs() > 1e-6
        assert torch.equal(support_ours, support_ref)
        assert 0 < support_ref.sum() < support_ref.numel()  # sparse, not empty
        if nonneg:
            assert (a >= 0).all()


def test_the_dictionary_step_lowers_the_reconstruction_error_and_keeps_unit_atoms():
    dictionary = normalise_atoms(torch.randn(6, 1, 3, 3))
    x = torch.randn(5, 1, *SIZE)
    a = sparse_code(x, dictionary, 0.2, 8.0, 300, stride=1, padding=1)
    before = (x - reconstruct(a, dictionary, 1, 1, SIZE)).pow(2).sum()
    dictionary_step(dictionary, x, a, eta=0.01, stride=1, padding=1)
    after = (x - reconstruct(a, dictionary, 1, 1, SIZE)).pow(2).sum()
    assert after < before
    torch.testing.assert_close(dictionary.flatten(1).norm(dim=1), torch.ones(6))


def test_standardise_gives_zero_mean_unit_variance_per_image():
    x = 3 + 2 * torch.rand(4, 3, 5, 5)
    z = standardise(x).flatten(1)
    torch.testing.assert_close(z.mean(1), torch.zeros(4), atol=1e-12, rtol=0)
    torch.testing.assert_close(z.std(1), torch.ones(4), atol=1e-5, rtol=0)
