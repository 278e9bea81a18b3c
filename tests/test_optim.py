"""convae.optim: Muon's orthogonalization and update, its AdamW half, and the optimizer factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convae.config import ModelConfig, TrainConfig
from convae.models import build_model
from convae.optim import _NS_COEFFS, Muon, build_optimizer, orthogonalize, plan_batches


def _textbook(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Newton-Schulz on the matrix itself (Keller Jordan's Muon), the reference for the Gram form."""
    a, b, c = _NS_COEFFS
    x = g.float()
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    for _ in range(steps):  # x <- a x + (b S + c S^2) x with S = x x^T
        s = x @ x.mT
        x = a * x + (b * s + c * s @ s) @ x
    return x.mT if tall else x


@pytest.mark.parametrize("shape", [(12, 1568), (32, 144), (16, 9), (5, 5)])
def test_orthogonalize_flattens_the_singular_values(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[0] *= 100  # badly conditioned: one direction dominates the raw gradient
    o = orthogonalize(g)
    assert o.shape == g.shape
    sv = torch.linalg.svdvals(o)
    # Newton-Schulz with these coefficients lands every singular value in about [0.7, 1.2]
    assert sv.min() > 0.5 and sv.max() < 1.3, sv
    # and keeps the singular vectors: o is close to U V^T of g
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    assert torch.nn.functional.cosine_similarity(o.flatten(), (u @ vh).flatten(), dim=0) > 0.95


def test_orthogonalize_a_batch_equals_one_at_a_time():
    g = torch.randn(3, 8, 20, generator=torch.Generator().manual_seed(1))
    batched = orthogonalize(g)
    for i in range(3):
        torch.testing.assert_close(batched[i], orthogonalize(g[i]), rtol=1e-5, atol=1e-6)
    tall = torch.randn(20, 8)
    torch.testing.assert_close(orthogonalize(tall), orthogonalize(tall.T).T)


def test_first_muon_step_is_the_scaled_orthogonalized_gradient():
    w = nn.Parameter(torch.randn(6, 4, 3, 3))
    w0 = w.detach().clone()
    g = torch.randn_like(w)
    w.grad = g.clone()
    opt = Muon([{"params": [w], "muon": True}], lr=0.1, weight_decay=0.0)
    opt.step()
    # momentum starts at g, Nesterov gives g + 0.95 g: the same direction, and scale does not matter
    expect = w0 - 0.1 * 0.2 * 36**0.5 * orthogonalize(g.reshape(6, 36)).view_as(g)
    torch.testing.assert_close(w.detach(), expect, rtol=1e-5, atol=1e-6)


def test_padded_batches_equal_one_matrix_at_a_time():
    """Matrices share zero-padded Newton-Schulz batches (plan_batches): the update of every
    parameter must still be its own orthogonalized gradient."""
    shapes = [(16, 1, 3, 3), (32, 16, 3, 3), (12, 32, 7, 7), (12, 32, 7, 7), (1, 16, 3, 3), (40, 3)]
    g = torch.Generator().manual_seed(3)
    ws = [nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]
    before = [w.detach().clone() for w in ws]
    grads = [torch.randn(*s, generator=g) for s in shapes]
    for w, gr in zip(ws, grads, strict=True):
        w.grad = gr.clone()
    Muon([{"params": ws, "muon": True}], lr=0.1).step()
    for w, w0, gr in zip(ws, before, grads, strict=True):
        m = gr.reshape(gr.size(0), -1)
        expect = w0 - 0.1 * 0.2 * max(m.shape) ** 0.5 * orthogonalize(m).view_as(gr)
        torch.testing.assert_close(w.detach(), expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(12, 1568), (32, 144), (16, 9), (5, 5), (3, 40, 200), (1, 30)])
def test_the_gram_form_is_the_same_iteration(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    g[..., 0, :] *= 50  # badly conditioned, as raw gradients are
    # fp32 rounding only: the Gram form squares the condition number, so it is ~1e-4 of an entry
    # (~0.3) on this badly conditioned input instead of ~1e-6; Muon's bf16 iterations were ~1e-2
    torch.testing.assert_close(orthogonalize(g), _textbook(g), rtol=1e-3, atol=2e-4)


def test_muon_on_channels_last_kernels_matches_contiguous():
    """fit() trains channels_last: Muon reads those kernels in memory order (a view), which
    permutes the matrix's columns; the update must come out the same."""
    shapes = [(16, 1, 3, 3), (32, 16, 3, 3), (12, 32, 7, 7), (32, 12, 7, 7), (1, 16, 3, 3)]
    g = torch.Generator().manual_seed(4)
    grads = [torch.randn(*s, generator=g) for s in shapes]
    inits = [torch.randn(*s, generator=g) for s in shapes]
    out = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        ws = [nn.Parameter(w.clone().contiguous(memory_format=fmt)) for w in inits]
        opt = Muon([{"params": ws, "muon": True}], lr=0.1, weight_decay=0.01)
        for _ in range(3):
            for w, gr in zip(ws, grads, strict=True):
                w.grad = gr.clone().contiguous(memory_format=fmt)
            opt.step()
        assert all(w.is_contiguous(memory_format=fmt) for w in ws)
        out.append([w.detach().contiguous() for w in ws])
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_plan_batches_pads_only_where_it_pays():
    # seed-dense's Gram sizes: the two 200-row code layers must not pad the small convs to 200
    sizes = [9, 64, 64, 200, 200, 64, 64, 9]
    plan = plan_batches(sizes)
    assert sorted(i for b in plan for i in b) == list(range(len(sizes)))  # each exactly once
    assert [3, 4] in plan
    # seed-strided's: one call for all of them (padding 9 and 12 to 32 costs less than a call)
    assert plan_batches([9, 32, 12, 12, 32, 9]) == [[0, 1, 2, 3, 4, 5]]
    assert plan_batches([5]) == [[0]]


def test_a_large_matrix_gets_the_float32_answer():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3136, generator=g)
    w = nn.Parameter(torch.zeros(200, 3136))
    w.grad = x.clone()
    Muon([{"params": [w], "muon": True}], lr=0.1).step()
    expect = -0.1 * 0.2 * 3136**0.5 * orthogonalize(x)
    assert (w.detach() - expect).norm() / expect.norm() < 1e-4


def test_the_adamw_half_matches_torch_adamw():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(7))
    b = nn.Parameter(a.detach().clone())
    mine = Muon([{"params": [a], "muon": False}], lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW([b], lr=1e-2, weight_decay=0.1)
    for step in range(5):
        g = torch.randn(7, generator=torch.Generator().manual_seed(step))
        a.grad, b.grad = g.clone(), g.clone()
        mine.step()
        ref.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)


def test_build_optimizer_splits_matrices_from_biases():
    model = build_model(ModelConfig(arch="convae", width=4, latent_dim=8, image_size=16))
    params = list(model.parameters())
    opt = build_optimizer(params, TrainConfig(optimizer="muon", lr=1e-2))
    muon, adamw = (
        (g for g in opt.param_groups if g["muon"]),
        (g for g in opt.param_groups if not g["muon"]),
    )
    mats, rest = next(muon)["params"], next(adamw)["params"]
    assert all(p.ndim >= 2 for p in mats) and all(p.ndim < 2 for p in rest)
    assert len(mats) + len(rest) == len(params)
    assert isinstance(
        build_optimizer(params, TrainConfig(optimizer="adamw", lr=1e-2)), torch.optim.AdamW
    )
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer(params, TrainConfig(optimizer="sgd", lr=1e-2))
    with pytest.raises(ValueError, match="no learning rate: fill the recipe first"):
        build_optimizer(params, TrainConfig(optimizer="adamw"))
