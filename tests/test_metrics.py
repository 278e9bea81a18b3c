import json
import math
import re

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from convae.metrics import (
    json_restore,
    json_safe,
    mse_per_image,
    psnr_per_image,
    ssim_maps,
    ssim_per_image,
    summarize,
)


def _pair(n=4, c=1, s=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, s, s, generator=g)
    y = (x + 0.1 * torch.randn(n, c, s, s, generator=g)).clamp(0, 1)
    return x, y


def test_mse_and_psnr_per_image():
    x, y = _pair()
    mse = mse_per_image(x, y)
    assert mse.shape == (4,)
    assert torch.allclose(mse, ((x - y) ** 2).flatten(1).mean(1).double())
    assert torch.allclose(psnr_per_image(x, y), -10 * torch.log10(mse))
    assert psnr_per_image(x, x).tolist() == [math.inf] * 4  # perfect: infinite, as defined
    y[0] = x[0]
    assert psnr_per_image(x, y)[0] == math.inf and psnr_per_image(x, y)[1:].isfinite().all()


@pytest.mark.parametrize("c,s", [(1, 28), (3, 32), (1, 8)])
def test_ssim_matches_scikit_image_and_its_map(c, s):
    x, y = _pair(3, c, s)
    got = ssim_per_image(x, y)
    small = s < 11
    for i in range(3):
        want = structural_similarity(
            x[i].numpy(),
            y[i].numpy(),
            data_range=1.0,
            channel_axis=0,
            gaussian_weights=not small,
            sigma=1.5,
            use_sample_covariance=small,
            win_size=7 if small else None,
        )
        assert got[i] == pytest.approx(want, abs=1e-6)
    maps = ssim_maps(x, y)
    assert maps.shape == (3, s, s) and maps.dtype == np.float32
    pad = 5 if not small else 3  # scikit-image's mean skips the half-window border
    assert maps[:, pad:-pad, pad:-pad].mean(axis=(1, 2)) == pytest.approx(got, abs=1e-5)
    assert ssim_per_image(x, x) == pytest.approx(np.ones(3))


def test_summarize_means():
    x, y = _pair()
    m = summarize(x, y)
    assert m["mse"] == pytest.approx(float(mse_per_image(x, y).mean()))
    assert m["psnr"] == pytest.approx(float(psnr_per_image(x, y).mean()))
    assert 0 < m["ssim"] < 1
    assert "ssim" not in summarize(x, y, ssim=False)


def test_json_safe_writes_infinity_as_null_with_a_reason():
    res = {"psnr": math.inf, "mse": 0.0, "rows": [{"psnr": -math.inf, "x": 1}], "n": 3}
    safe = json_safe(res)
    text = json.dumps(safe, allow_nan=False)  # valid JSON: no Infinity token
    assert json.loads(text) == {
        "psnr": None,
        "psnr_inf": "+inf",
        "mse": 0.0,
        "rows": [{"psnr": None, "psnr_inf": "-inf", "x": 1}],
        "n": 3,
    }
    assert float(safe["psnr_inf"]) == math.inf
    assert json_restore(json.loads(text)) == res
    assert json_safe({"a": np.float32(2.5), "b": torch.tensor(1.5)}) == {"a": 2.5, "b": 1.5}


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"psnr": math.nan}, "result.psnr"),
        ({"rows": [{"ssim": np.nan}]}, "result.rows[0].ssim"),
        ([1.0, math.inf], "result[1]"),
    ],  # fmt: skip
)
def test_json_safe_refuses_nan_and_unexplained_infinity(bad, where):
    with pytest.raises(ValueError, match=rf"^{re.escape(where)} is"):
        json_safe(bad)
