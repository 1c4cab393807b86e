"""The repeated-query rMLE's data term in the input space (a quadratic form per item) is the same function as in the
output space: same values and gradients, and the attack finds the same reconstructions."""

from __future__ import annotations

import numpy as np
import torch

from daonet.audit.attacks import PooledSums, pooled_data_term


def _problem(seed: int = 0, n: int = 24, m: int = 160, items: int = 9, k: int = 3):
    rng = np.random.default_rng(seed)
    a = (rng.normal(size=(m, n)) / np.sqrt(n)).astype(np.float32)
    c = rng.normal(size=m).astype(np.float32) * 0.1
    x_true = rng.normal(size=(items, n)).astype(np.float32)
    pre = x_true @ a.T + c
    keep = rng.random((k, items, m)) < 0.4
    h = np.where(keep & (pre[None] > 0), pre[None], 0.0).astype(np.float32)
    return torch.from_numpy(a), torch.from_numpy(c), PooledSums.of(h), x_true


def test_quadratic_form_equals_the_output_space_sum_in_value_and_gradient():
    a, c, sums, _ = _problem()
    sl = slice(0, len(sums))
    x = torch.randn((len(sums), a.shape[1]), generator=torch.Generator().manual_seed(1), requires_grad=True)
    direct = pooled_data_term(sums, sl, a, c, quadratic=False)(x)
    (g_direct,) = torch.autograd.grad(direct.sum(), x)
    quad = pooled_data_term(sums, sl, a, c, quadratic=True)(x)
    (g_quad,) = torch.autograd.grad(quad.sum(), x)
    assert torch.allclose(quad, direct, rtol=1e-4, atol=1e-5)
    assert torch.allclose(g_quad, g_direct, rtol=1e-3, atol=1e-5)
    # at the true inputs every kept equation holds: the data term is zero in both forms
    _, _, _, x_true = _problem()
    at_truth = pooled_data_term(sums, sl, a, c, quadratic=True)(torch.from_numpy(x_true))
    assert float(at_truth.abs().max()) < 1e-4


def test_the_quadratic_form_is_chosen_only_when_inputs_are_few():
    a, c, sums, _ = _problem(n=24, m=160)  # n / m = 0.15: quadratic by default
    x = torch.zeros((len(sums), 24))
    assert torch.allclose(pooled_data_term(sums, slice(0, len(sums)), a, c)(x),
                          pooled_data_term(sums, slice(0, len(sums)), a, c, quadratic=False)(x), rtol=1e-5)
