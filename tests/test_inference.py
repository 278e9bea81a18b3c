"""The one inference path: whole images of any size, batched application, load's checks."""

from __future__ import annotations

import pytest
import torch

from convae.config import ModelConfig
from convae.inference import apply_batched, evaluate, map_image, map_images, reconstruct, to_float
from convae.models import build_model


def _model(arch: str, channels: int = 1, size: int = 16, **kw):
    torch.manual_seed(0)
    return build_model(
        ModelConfig(arch=arch, channels=channels, image_size=size, width=4, **kw)
    ).eval()


@pytest.mark.parametrize("arch", ["convae-map", "seed-pool", "seed-upsample"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (33, 47), (16, 16), (60, 20)])
def test_fully_convolutional_models_return_the_input_size(arch, shape):
    model = _model(arch, channels=3)
    assert model.fully_conv and model.stride == 4
    img = torch.randint(0, 256, (3, *shape), dtype=torch.uint8)
    out = map_image(model, img)
    assert out.shape == (3, *shape) and out.dtype == torch.float32
    # Inside, away from the padded border, it is the model run on the padded image itself
    h, w = shape
    if h % 4 == 0 and w % 4 == 0:
        with torch.no_grad():
            torch.testing.assert_close(out, model(to_float(img)[None])[0])


@pytest.mark.parametrize("arch", ["convae", "seed-dense", "seed-strided"])
@pytest.mark.parametrize("shape", [(1, 5), (16, 16), (33, 47), (40, 17)])
def test_fixed_size_models_tile_with_blended_seams(arch, shape):
    model = _model(arch)
    assert not model.fully_conv
    img = torch.randint(0, 256, (1, *shape), dtype=torch.uint8)
    out = map_image(model, img)
    assert out.shape == (1, *shape)
    if shape == (16, 16):  # the model's own size: exactly one pass
        with torch.no_grad():
            torch.testing.assert_close(out, model(to_float(img)[None])[0])


def test_a_constant_map_stays_constant_across_tiles():
    # fn ignores the content: blending overlapping tiles of ones must give exactly ones
    model = _model("convae")
    out = map_image(
        model, torch.zeros(1, 50, 70, dtype=torch.uint8), fn=lambda x: torch.ones_like(x)
    )
    torch.testing.assert_close(out, torch.ones(1, 50, 70))


def test_large_images_go_through_tiles(monkeypatch):
    from convae import inference

    model = _model("convae-map")
    img = torch.randint(0, 256, (1, 90, 130), dtype=torch.uint8)
    whole = map_image(model, img)
    monkeypatch.setattr(inference, "WHOLE_PIXELS", 64 * 64)  # force tiles of at most 64x64
    monkeypatch.setattr(inference, "_TILE", 64)
    tiled = map_image(model, img)
    assert tiled.shape == whole.shape
    # BatchNorm in eval mode and a small receptive field: tiles agree with the whole pass
    assert (tiled - whole).abs().max() < 0.05


def test_map_images_batches_what_the_model_takes_and_lists_the_rest():
    model = _model("convae-map")
    batch = torch.randint(0, 256, (5, 1, 24, 24), dtype=torch.uint8)
    out = map_images(model, batch)
    assert isinstance(out, torch.Tensor) and out.shape == (5, 1, 24, 24)
    odd = [torch.randint(0, 256, (1, h, w), dtype=torch.uint8) for h, w in [(9, 13), (30, 5)]]
    outs = map_images(model, odd)
    assert [tuple(o.shape) for o in outs] == [(1, 9, 13), (1, 30, 5)]


def test_reconstruct_refuses_floats_and_keeps_sizes():
    model = _model("convae-map")
    imgs = [torch.randint(0, 256, (1, 9, 13), dtype=torch.uint8)]
    out = reconstruct(model, imgs)
    assert out[0].shape == (1, 9, 13) and 0 <= out[0].min() and out[0].max() <= 1
    with pytest.raises(ValueError, match="expected uint8"):
        reconstruct(model, [imgs[0].float()])
    with pytest.raises(ValueError, match="C = 1"):
        map_image(model, torch.zeros(3, 8, 8, dtype=torch.uint8))


def test_evaluate_any_sizes_matches_per_image_scores():
    model = _model("convae-map")
    imgs = [torch.randint(0, 256, (1, h, w), dtype=torch.uint8) for h, w in [(12, 20), (16, 16)]]
    m = evaluate(model, imgs, per_image=True)
    assert m["images"] == 2 and len(m["per_image"]["psnr"]) == 2
    assert m["psnr"] == pytest.approx(sum(m["per_image"]["psnr"]) / 2)
    batch = torch.stack([imgs[1], imgs[1]])
    assert evaluate(model, batch)["mse"] == pytest.approx(m["per_image"]["mse"][1], rel=1e-5)


def test_apply_batched_keeps_the_output_shape_of_an_empty_input():
    model = _model("convae")
    out = apply_batched(model, torch.zeros(0, 1, 16, 16, dtype=torch.uint8), torch.device("cpu"))
    assert out.shape == (0, 1, 16, 16)


def test_reflect_padding_takes_tiny_and_odd_images():
    model = _model("convae-map", channels=3, padding="reflect")
    for shape in [(1, 1), (1, 9), (7, 3), (33, 47)]:
        img = torch.randint(0, 256, (3, *shape), dtype=torch.uint8)
        assert map_image(model, img).shape == (3, *shape)
