"""Architectures and the registry: every registered model trains, has the promised shapes, and
bad configurations are refused with a clear error."""

from __future__ import annotations

import math

import pytest
import torch

from convae import models
from convae.config import ModelConfig
from convae.models import available, build_model, default_latent_dim, register, summary

ARCHS = sorted(available())


def _cfg(arch: str, channels: int = 1, size: int = 28, **kw) -> ModelConfig:
    # width 4 keeps the configurable `convae` arch tiny; the seed archs ignore it
    return ModelConfig(arch=arch, channels=channels, image_size=size, width=4, **kw)


def test_registry_has_the_issue_architectures():
    for name in (
        "seed-strided",
        "seed-pool",
        "seed-upsample",
        "seed-dense",
        "seed-keras2d",
        "convae",
    ):
        assert name in ARCHS
        assert available()[name]  # every architecture has a one-line description
    from convae.models import resolve_model_config

    assert resolve_model_config(ModelConfig()).arch == "convae"  # the default architecture


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward(arch, channels, size):
    torch.manual_seed(0)
    model = build_model(_cfg(arch, channels, size))
    model.train()
    x = torch.rand(2, channels, size, size)
    if not model.has_code:  # a restoration network: forward only (tested below)
        with pytest.raises(ValueError, match="no code"):
            model.encode(x)
        with pytest.raises(ValueError, match="no code"):
            model.decode(torch.zeros(2, model.latent_dim))
        return
    z = model.encode(x)
    assert z.shape == (2, model.latent_dim)
    assert model.latent_dim == default_latent_dim(model.config)
    y = model.decode(z)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    if model.sigmoid_output:
        assert y.min() >= 0 and y.max() <= 1
    if hasattr(model, "training_loss"):  # a codec's objective: evaluation mode uses every level
        model.eval()
        x6 = x.repeat(3, 1, 1, 1)
        model.training_loss(x6, x6).backward()
    else:
        torch.nn.functional.mse_loss(model(x), x).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{arch}: {name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{arch}: {name} has a non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_mode_is_deterministic_and_batch_independent(arch):
    torch.manual_seed(0)
    model = build_model(_cfg(arch)).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        full = model(x)
        one = model(x[1:2])
    torch.testing.assert_close(full[1:2], one, rtol=1e-5, atol=1e-6)
    if not model.has_code:
        return
    with torch.no_grad():
        torch.testing.assert_close(model.forward(x), model.decode(model.encode(x)), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_explicit_latent_dim(arch):
    if not build_model(_cfg(arch)).has_code:
        with pytest.raises(ValueError, match="no code"):
            build_model(_cfg(arch, latent_dim=7))
        return
    # the pool and map archs keep a (s/4)^2 code map, so their latent dim is a multiple of 49 at 28 px
    L = 2 * 49 if arch in ("seed-pool", "seed-upsample", "convae-map") else 7
    L = 2 * 16 if arch == "hyperprior" else L  # a 4x4 code map (28 px padded to 64)
    model = build_model(_cfg(arch, latent_dim=L))
    assert model.latent_dim == L
    assert model.encode(torch.rand(2, 1, 28, 28)).shape == (2, L)


def _layer_shapes(s: dict, part: str, kinds: tuple[str, ...]) -> list[list[int]]:
    return [list(r["shape"]) for r in s["layers"] if r["part"] == part and r["kind"] in kinds]


def test_summary_seed_strided_shapes():
    s = summary(build_model(ModelConfig(arch="seed-strided", image_size=28)), batch=2)
    assert _layer_shapes(s, "encoder", ("Conv2d",)) == [
        [2, 16, 14, 14],
        [2, 32, 7, 7],
        [2, 12, 1, 1],
    ]
    assert _layer_shapes(s, "decoder", ("ConvTranspose2d",)) == [
        [2, 32, 7, 7],
        [2, 16, 14, 14],
        [2, 1, 28, 28],
    ]
    assert s["layers"][-1]["kind"] == "Sigmoid"
    assert s["latent_shape"] == [12, 1, 1]
    assert s["latent_dim"] == 12
    assert s["compression_ratio"] == pytest.approx(784 / 12)  # ~65:1
    assert s["input_shape"] == [1, 28, 28]


def test_summary_seed_pool_and_keras_and_dense_shapes():
    s = summary(build_model(ModelConfig(arch="seed-pool")))
    assert _layer_shapes(s, "encoder", ("MaxPool2d",)) == [[1, 16, 14, 14], [1, 4, 7, 7]]
    assert s["latent_dim"] == 4 * 7 * 7
    s = summary(build_model(ModelConfig(arch="seed-keras2d")))
    assert _layer_shapes(s, "encoder", ("Conv2d",)) == [
        [1, 32, 14, 14],
        [1, 64, 7, 7],
        [1, 2, 1, 1],
    ]
    assert list(s["layers"][-1]["shape"]) == [1, 1, 28, 28]
    assert s["latent_dim"] == 2
    s = summary(build_model(ModelConfig(arch="seed-dense", channels=3, image_size=32)))
    assert _layer_shapes(s, "encoder", ("Flatten",)) == [[1, 4096]]  # 64 x 8 x 8
    assert _layer_shapes(s, "encoder", ("Linear",)) == [[1, 200]]
    assert s["compression_ratio"] == pytest.approx(3 * 32 * 32 / 200)


def test_summary_convae_map_shapes():
    s = summary(build_model(ModelConfig(arch="convae-map", width=4, latent_dim=4 * 49)), batch=2)
    assert s["latent_shape"] == [4, 7, 7]  # a code map, no dense layer
    assert not any(r["kind"] == "Linear" for r in s["layers"])
    assert _layer_shapes(s, "encoder", ("Conv2d",))[-1] == [2, 4, 7, 7]
    assert list(s["layers"][-1]["shape"]) == [2, 1, 28, 28]
    assert default_latent_dim(ModelConfig(arch="convae-map", image_size=32)) == 8 * 8 * 8


@pytest.mark.parametrize("arch", ARCHS)
def test_summary_counts_and_mode(arch):
    model = build_model(_cfg(arch, 3, 32))
    model.train()
    s = summary(model)
    assert model.training  # summary restores the mode it found
    n = sum(p.numel() for p in model.parameters())
    assert s["params"] == n == s["encoder_params"] + s["decoder_params"] + s["entropy_model_params"]
    assert s["entropy_model_params"] == 0 or arch == "hyperprior"
    layered = n - s["entropy_model_params"]  # every encoder/decoder parameter in a listed layer
    assert sum(r["params"] for r in s["layers"]) == layered
    side = (
        64 if arch == "hyperprior" else 32
    )  # the codec decodes its map padded to 64 px, then crops
    assert tuple(s["layers"][-1]["shape"]) == (1, 3, side, side)
    assert s["latent_dim"] == math.prod(s["latent_shape"])
    assert s["compression_ratio"] == pytest.approx(3 * 32 * 32 / s["latent_dim"])


@pytest.mark.parametrize(
    "over, match",
    [
        ({"arch": "no-such-arch"}, "unknown architecture"),
        ({"channels": 2}, "channels"),
        ({"image_size": 30}, "multiple of 4"),
        ({"image_size": 4}, "at least 8"),
        ({"latent_dim": 0}, "latent dim"),
        ({"decoder": "pixelshuffle"}, "decoder"),
        ({"norm": "layer"}, "norm"),
        ({"width": 0}, "width"),
        ({"arch": "seed-pool", "latent_dim": 50}, "multiple of 49"),
        ({"arch": "seed-upsample", "latent_dim": 10}, "multiple of 49"),
        ({"arch": "convae-map", "latent_dim": 100}, "multiple of 49"),
    ],
)
def test_build_model_errors(over, match):
    with pytest.raises(ValueError, match=match):
        build_model(ModelConfig(**{"arch": "convae", **over}))


def test_unknown_arch_error_lists_choices():
    with pytest.raises(ValueError) as e:
        build_model(ModelConfig(arch="nope"))
    for name in ARCHS:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="unknown architecture"):
        default_latent_dim(ModelConfig(arch="nope"))


def test_register_duplicate_raises():
    with pytest.raises(ValueError, match="already registered"):

        @register("seed-strided", lambda cfg: 12, "again")
        def again(cfg):  # pragma: no cover - never built
            raise AssertionError

    assert "seed-strided" in available()


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registry dicts copied for the test, so a test architecture never leaks into the others."""
    from convae.models import core

    monkeypatch.setattr(core, "_REGISTRY", dict(core._REGISTRY))


def test_register_new_architecture(scratch_registry):
    @register("test-linear", lambda cfg: 5)
    def linear_ae(cfg):
        """A linear autoencoder for the registry test.

        More text that is not part of the one-line description.
        """
        d = cfg.channels * cfg.image_size**2
        enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, cfg.latent_dim or 5))
        dec = torch.nn.Sequential(
            torch.nn.Linear(cfg.latent_dim or 5, d),
            torch.nn.Unflatten(1, (cfg.channels, cfg.image_size, cfg.image_size)),
        )
        return models.AutoEncoder(enc, dec, (cfg.latent_dim or 5,), cfg, sigmoid_output=False)

    assert available()["test-linear"] == "A linear autoencoder for the registry test."
    m = build_model(ModelConfig(arch="test-linear", image_size=16))
    assert m.latent_dim == 5
    assert m(torch.rand(2, 1, 16, 16)).shape == (2, 1, 16, 16)


def test_register_without_description_or_docstring(scratch_registry):
    @register("test-nodoc", lambda cfg: 12)
    def nodoc(cfg):
        return models.seeds.seed_strided(cfg)

    assert "test-nodoc" in available()
    assert build_model(ModelConfig(arch="test-nodoc")).latent_dim == 12


# ---------------------------------------------------------------------------------------------
# The mean image: the decoder's output starts from it


@pytest.mark.parametrize("arch", ARCHS)
def test_mean_image_is_the_output_when_the_decoder_adds_nothing(arch):
    # photos of any size (hyperprior), or the noise predicted instead of the image (no code)
    if arch == "hyperprior" or not build_model(_cfg(arch)).has_code:
        with pytest.raises(ValueError, match="mean-image"):
            build_model(_cfg(arch, mean_image=True))
        return
    model = build_model(_cfg(arch, mean_image=True)).eval()
    gen = torch.Generator().manual_seed(0)
    mean = torch.rand(model.input_shape, generator=gen)
    mean[0, :3, :3] = 0.0  # always-black background pixels must stay finite
    model.set_mean_image(mean)
    assert torch.isfinite(model.output_offset).all()
    layers = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)
    last = [m for m in model.decoder.modules() if isinstance(m, layers)][-1]
    with torch.no_grad():  # the decoder's own contribution: zero
        last.weight.zero_()
        last.bias.zero_()
        out = model.decode(torch.randn(2, model.latent_dim, generator=gen))
    want = mean.clamp(1e-3, 1 - 1e-3) if model.sigmoid_output else mean
    torch.testing.assert_close(out, want.expand_as(out), atol=1e-6, rtol=1e-5)


def test_without_mean_image_the_model_is_unchanged():
    torch.manual_seed(0)
    plain = build_model(_cfg("seed-strided", mean_image=False))
    torch.manual_seed(0)
    with_mean = build_model(_cfg("seed-strided"))  # offset still zero: the same function
    assert "output_offset" not in plain.state_dict() and plain.output_offset is None
    assert set(with_mean.state_dict()) == set(plain.state_dict()) | {"output_offset"}
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(with_mean(x), plain(x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="without a mean image"):
        plain.set_mean_image(torch.zeros(1, 28, 28))
    with pytest.raises(ValueError, match=r"must be \[1, 28, 28\]"):
        with_mean.set_mean_image(torch.zeros(28, 28))


def test_mean_image_default_is_the_architectures():
    on = {a for a in ARCHS if build_model(_cfg(a)).output_offset is not None}
    assert on == {"seed-strided", "seed-keras2d"}  # measured: docs/benchmarks.md, docs/latent.md
    assert build_model(_cfg("convae", mean_image=True)).config.mean_image is True
    assert build_model(_cfg("seed-strided", mean_image=False)).output_offset is None


def test_summary_still_lists_the_final_sigmoid():
    rows = summary(build_model(_cfg("seed-strided")))["layers"]
    assert rows[-1]["part"] == "decoder" and rows[-1]["kind"] == "Sigmoid"


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("bias", [True, False])
def test_code_layers_are_the_convolutions_they_replace(fmt, bias):
    """CodeConv2d / CodeConvTranspose2d compute the 1x1-code layers as matrix products: same
    outputs, input and weight gradients as nn.Conv2d / nn.ConvTranspose2d, in either layout."""
    from torch import nn

    torch.manual_seed(0)
    pairs = [
        (models.CodeConv2d(6, 5, 4, bias=bias), nn.Conv2d(6, 5, 4, bias=bias), (3, 6, 4, 4)),
        (
            models.CodeConvTranspose2d(5, 6, 4, bias=bias),
            nn.ConvTranspose2d(5, 6, 4, bias=bias),
            (3, 5, 1, 1),
        ),
        # any other input size takes the convolution's own path
        (models.CodeConv2d(6, 5, 4, bias=bias), nn.Conv2d(6, 5, 4, bias=bias), (3, 6, 9, 7)),
        (
            models.CodeConvTranspose2d(5, 6, 4, bias=bias),
            nn.ConvTranspose2d(5, 6, 4, bias=bias),
            (3, 5, 2, 3),
        ),
    ]
    for fast, ref, shape in pairs:
        ref.load_state_dict(fast.state_dict())  # same parameters, same state-dict keys
        fast.to(memory_format=fmt)
        ref.to(memory_format=fmt)
        x = torch.randn(shape).contiguous(memory_format=fmt)
        outs = []
        for m in (fast, ref):
            xi = x.clone().requires_grad_()
            y = m(xi)
            y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
            outs.append([y.detach(), xi.grad] + [p.grad for p in m.parameters()])
        assert outs[0][0].shape == outs[1][0].shape
        for a, b in zip(*outs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the channels-last code layer hands the next convolution a channels-last map
    up = models.CodeConvTranspose2d(5, 6, 4).to(memory_format=torch.channels_last)
    assert up(torch.randn(2, 5, 1, 1)).is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------
# Sizes against memory (tests/test_hardening.py has the commands' side)


@pytest.mark.parametrize("arch", ARCHS)
def test_memory_estimate_of_every_architecture(arch):
    """Every registered architecture builds on the meta device for the size check, and its
    activation estimate is positive, linear in the batch and checked by summary."""
    from convae.limits import MemoryLimitError, memory_limit
    from convae.models import check_memory, memory_estimate

    model = build_model(_cfg(arch))
    one = memory_estimate(model, 1)
    assert 0 < one < memory_estimate(model, 1, training=True)
    assert memory_estimate(model, 8) == pytest.approx(8 * one, rel=1e-6)
    check_memory(model, 64)
    with memory_limit(one // 2), pytest.raises(MemoryLimitError, match=f"running a {arch}"):
        summary(model)
    with memory_limit(1000), pytest.raises(MemoryLimitError, match="parameters needs about"):
        build_model(_cfg(arch))


def test_a_builder_that_cannot_run_on_meta_is_built_unchecked(scratch_registry):
    """A user's builder that does something the meta device cannot: the real build decides."""

    @register("item-init", lambda cfg: 4)
    def item_init(cfg):
        k = int(torch.tensor([3]).item())  # .item() has no value on the meta device: it raises
        enc = torch.nn.Conv2d(1, 4, k)
        return models.AutoEncoder(enc, torch.nn.Identity(), (4, 26, 26), cfg)

    assert build_model(ModelConfig(arch="item-init")).encoder.kernel_size == (3, 3)


# ---------------------------------------------------------------------------------------------
# The restoration network: any size, the noise it predicts subtracted, its own noise estimate


@pytest.mark.parametrize("hw", [(28, 28), (37, 23), (5, 9), (64, 48), (1, 1)])
def test_unet_forward_backward_at_any_size(hw):
    torch.manual_seed(0)
    model = build_model(_cfg("convae-unet", 3, 32))
    assert model.fully_conv and model.stride == 16 and not model.has_code
    x = torch.rand(2, 3, *hw)
    y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    torch.nn.functional.l1_loss(y, x).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_unet_returns_its_input_when_it_predicts_no_noise():
    model = build_model(_cfg("convae-unet", 3, 32)).eval()
    with torch.no_grad():
        model.decoder.tail.weight.zero_()
        model.decoder.tail.bias.zero_()
        x = torch.rand(1, 3, 21, 30)
        assert torch.equal(model(x), x)  # colour and detail kept exactly


def test_unet_is_told_the_noise_level_by_its_own_estimate():
    from convae.models.restore import estimate_noise

    g = torch.Generator().manual_seed(0)
    flat = torch.full((4, 3, 64, 64), 0.5)
    sigmas = torch.tensor([0.0, 0.02, 0.1, 0.2])
    noisy = flat + sigmas.view(4, 1, 1, 1) * torch.randn(flat.shape, generator=g)
    est = estimate_noise(noisy)
    assert est[0] == 0
    torch.testing.assert_close(est[1:], sigmas[1:], rtol=0.08, atol=0)
    # a smooth gradient is no noise
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64)
    assert estimate_noise(ramp)[0] < 1e-6


def test_unet_width_and_depth_and_summary():
    s = summary(build_model(ModelConfig(arch="convae-unet", channels=3, image_size=64, width=32)))
    assert s["params"] == 2_307_180 and s["has_code"] is False
    assert s["layers"][0]["kind"] == "NoiseLevel" and s["layers"][0]["shape"] == (1, 1, 32, 32)
    bottom = [r for r in s["layers"] if r["name"] == "bottom"][0]
    assert bottom["shape"] == (1, 256, 4, 4)  # 8w at 1/16
    shallow = build_model(ModelConfig(arch="convae-unet", width=4, depth=1))
    assert shallow.stride == 4 and shallow(torch.rand(1, 1, 9, 7)).shape == (1, 1, 9, 7)
