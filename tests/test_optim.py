"""convae.optim: Muon's orthogonalization and update, its AdamW half, and the optimizer factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convae.config import ModelConfig, TrainConfig
from convae.models import build_model
from convae.optim import Muon, build_optimizer, orthogonalize, plan_batches


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


def test_plan_batches_pads_only_where_it_pays():
    # seed-keras2d's matrices: the 2 x 3136 code layers must not be padded to 64 rows
    shapes = [(9, 32), (64, 288), (2, 3136), (2, 3136), (64, 288), (32, 49)]
    plan = plan_batches(shapes)
    assert sorted(i for b in plan for i in b) == list(range(len(shapes)))  # each exactly once
    assert [2, 3] in plan
    # a model of tiny matrices: one call for all of them
    tiny = [(9, 16), (4, 144), (4, 64), (4, 16)]
    assert plan_batches(tiny) == [[0, 1, 2, 3]]
    assert plan_batches([(5, 7)]) == [[0]]


def test_large_batches_iterate_in_bf16_where_it_is_fast(monkeypatch):
    import convae.optim as optim

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 200, 3136, generator=g)
    o16, o32 = orthogonalize(x, dtype=torch.bfloat16), orthogonalize(x)
    assert o16.dtype == torch.float32
    assert (o16 - o32).norm() / o32.norm() < 0.03  # bf16 rounding, not a different answer
    # a Muon step on such a matrix takes the bf16 path exactly when the device is fast at bf16
    scale = -0.1 * 0.2 * 3136**0.5
    for fast in (True, False):
        monkeypatch.setattr(optim, "bf16_is_fast", lambda device, fast=fast: fast)
        w = nn.Parameter(torch.zeros(200, 3136))
        w.grad = x[0].clone()
        Muon([{"params": [w], "muon": True}], lr=0.1).step()
        size = (scale * o32[0]).norm()
        err16 = (w.detach() - scale * o16[0]).norm() / size
        err32 = (w.detach() - scale * o32[0]).norm() / size
        if fast:  # bf16 rounding (~1 %), nearer the bf16 answer than the fp32 one
            assert 1e-3 < err32 and err16 < err32
        else:  # the fp32 answer up to float rounding
            assert err32 < 1e-5


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
    with pytest.raises(ValueError, match="no learning rate: resolve the recipe first"):
        build_optimizer(params, TrainConfig(optimizer="adamw"))
