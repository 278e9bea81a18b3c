"""The learned photo codec: its network, its training through the one trainer, its integer
tables and range coder, the version-2 .cae container, and the CLI on whole images of any size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import convae
from convae.cli import main
from convae.codec import rangecode as rc
from convae.codec.format import CodecError
from convae.codec.format2 import PhotoHeader, file_version, pack_photo, unpack_photo
from convae.codec.photo import decode_photo, encode_photo, single_thread
from convae.codec.photo_store import build_tables, is_photo_run, load_photo_codec
from convae.codec.tables import CdfTables, quantize_pmf
from convae.config import ModelConfig
from convae.models import HyperpriorCodec, build_model

GOLDEN_PAYLOAD = "92fff1f7c3caedc6"  # docs/format.md, version 2: the payload
TINY = ModelConfig(arch="hyperprior", channels=3, image_size=32, width=4, code_channels=8)


def _photo(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """uint8 [3, h, w]: smooth colour gradients plus a little noise (photo-like, compressible)."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in (0.0, 1.0, 2.0)])
    img = 127 + 100 * base + g.normal(0, 6, (3, h, w))
    return torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory) -> Path:
    """A tiny photo codec trained for one short epoch through `convae train --preset codec`."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photo")
    for i, (h, w) in enumerate([(48, 64), (64, 40), (40, 56), (56, 56)]):
        Image.fromarray(_photo(h, w, i).numpy().transpose(1, 2, 0)).save(root / f"p{i}.png")
    run = root / "run"
    argv = ["train", "--preset", "codec", "--data", f"folder:{root}", "--width", "4",
            "--code-channels", "8", "--crop", "32", "--crops-per-epoch", "16", "--batch-size",
            "4", "--epochs", "1", "--out", str(run), "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return run


@pytest.fixture(scope="module")
def codec(photo_run):
    return load_photo_codec(photo_run)


# ---------------------------------------------------------------------------------------------
# The network and its training


def test_forward_backward_at_odd_sizes():
    torch.manual_seed(0)
    model = build_model(TINY)
    x = torch.rand(2, 3, 37, 53)
    model.train()
    loss = model.training_loss(x, x)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.encoder.block.weight.grad is not None and model.log_gain.grad is not None
    model.eval()
    assert model(x).shape == x.shape


def test_pca_init_makes_a_block_codec():
    """After PCA initialization the untrained model reconstructs smooth images well."""
    torch.manual_seed(0)
    model = build_model(replace_cfg(code_channels=64))
    imgs = torch.stack([_photo(64, 64, s) for s in range(8)]).float() / 255
    model.init_from_data(imgs)
    with torch.no_grad():
        y = model.encoder(imgs)
        err = (model.decoder(y) - imgs).pow(2).mean()
    assert float(err) < 1e-3  # 64 of 768 axes keep smooth images nearly whole


def replace_cfg(**kw) -> ModelConfig:
    from dataclasses import replace

    return replace(TINY, **kw)


def test_preset_codec_means_the_photo_codec_on_folders_only(photo_run):
    cfg = json.loads((photo_run / "config.json").read_text())
    assert cfg["model"]["arch"] == "hyperprior" and cfg["preset"] == "codec-photo"
    from convae.config import preset_for_data

    assert preset_for_data("codec", "mnist-sample") == "codec"
    assert preset_for_data("codec", "folder:x") == "codec-photo"


def test_trained_run_loads_and_its_loss_is_recorded(photo_run):
    model = convae.load(photo_run)
    assert isinstance(model, HyperpriorCodec) and is_photo_run(photo_run)
    rows = [json.loads(r) for r in (photo_run / "history.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["train_loss"]) for r in rows)
    x = _photo(37, 53)[None].float() / 255
    assert model(x).shape == x.shape


def test_rate_distortion_steps_lower_the_loss():
    torch.manual_seed(0)
    model = build_model(TINY)
    x = torch.stack([_photo(32, 32, s) for s in range(4)]).float() / 255
    model.init_from_data(x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.eval()
    with torch.no_grad():
        before = float(model.training_loss(x, x))
    model.train()
    for _ in range(30):
        opt.zero_grad()
        model.training_loss(x, x).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert float(model.training_loss(x, x)) < before


# ---------------------------------------------------------------------------------------------
# Integer tables and the range coder


def test_quantized_tables_are_positive_integers_summing_to_2_16():
    pmf = np.array([1e-12, 0.2, 0.5, 0.3 - 1e-6])
    f = quantize_pmf(pmf)
    assert f.dtype == np.int32 and (f >= 1).all() and f.sum() == 1 << 16 and f.size == 5


def test_range_coder_round_trips_symbols_and_escapes():
    g = np.random.default_rng(0)
    pmfs = [quantize_pmf(np.full(k, 1.0 / k) * 0.99) for k in (3, 9)]
    width = max(p.size for p in pmfs)
    freqs = np.zeros((2, width), np.int32)
    for i, p in enumerate(pmfs):
        freqs[i, : p.size] = p
    tables = CdfTables(freqs, np.array([3, 9], np.int32), np.array([-1, -4], np.int32))
    models = rc.TableModels(tables)
    table = g.integers(0, 2, 500)
    values = g.integers(-6, 7, 500)  # some outside both tables: escapes
    values[:3] = [10**6, -(10**6), 0]
    enc = rc.Encoder()
    rc.encode_symbols(enc, values, table, models)
    payload = rc.finish(enc, rc.check_word(values))
    dec = rc.Decoder(payload)
    got = rc.decode_symbols(dec, table, models)
    rc.verify(dec, rc.check_word(got))
    assert np.array_equal(got, values)


def test_tables_are_rebuilt_identically_from_the_weights(codec):
    again = build_tables(codec.model)
    assert sorted(again) == sorted(codec.tables)
    assert all(torch.equal(again[k], codec.tables[k]) for k in again)
    assert all(v.dtype == torch.int32 for k, v in again.items() if k != "scales")


# ---------------------------------------------------------------------------------------------
# Whole images <-> version-2 .cae bytes


@pytest.mark.parametrize("h, w", [(37, 53), (1, 1), (16, 70)])
def test_round_trip_at_any_size(codec, h, w):
    img = _photo(h, w)
    data = encode_photo(codec, img, 3, name="x.png")
    out, name = decode_photo(codec, data)
    assert out.shape == img.shape and out.dtype == torch.uint8 and name == "x.png"
    assert encode_photo(codec, img, 3, name="x.png") == data  # deterministic


def test_decoded_pixels_match_the_model_and_rate_estimate(codec):
    img = _photo(37, 53)
    out, _ = decode_photo(codec, encode_photo(codec, img, 2.5))
    with torch.no_grad():
        r = codec.model.rate_distortion(img[None].float() / 255, torch.tensor([2.5]), noise=False)
    ref = (r["x_hat"][0].clamp(0, 1) * 255).round()
    assert (out.float() - ref).abs().max() <= 1  # float64 vs float32 means: at most one level


def test_files_and_pixels_do_not_depend_on_threads(codec):
    img = _photo(45, 77, seed=3)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = encode_photo(codec, img, 1.25)
        px1, _ = decode_photo(codec, one)
        torch.set_num_threads(2)
        two = encode_photo(codec, img, 1.25)
        px2, _ = decode_photo(codec, one)
    finally:
        torch.set_num_threads(n)
    assert one == two and torch.equal(px1, px2)


def test_single_thread_restores_the_thread_count():
    n = torch.get_num_threads()
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == n


def test_header_is_28_bytes_and_levels_are_eighths(codec):
    data = encode_photo(codec, _photo(20, 30), 1.3)
    header, payload = unpack_photo(data)
    assert len(data) == 28 + len(payload) and file_version(data) == 2
    assert header.level == 1.25 and (header.height, header.width) == (20, 30)
    for bad in (5.5, -0.2, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="quality level"):
            encode_photo(codec, _photo(8, 8), bad)


def _one_line(e: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(e.value)
    return str(e.value)


def test_truncated_flipped_and_foreign_files_are_one_line_errors(codec):
    data = encode_photo(codec, _photo(37, 53), 4)
    g = np.random.default_rng(1)
    for cut in [0, 3, 10, 27, len(data) // 2, len(data) - 1]:
        with pytest.raises(CodecError) as e:
            decode_photo(codec, data[:cut])
        _one_line(e)
    for bit in g.integers(0, 8 * len(data), 40):
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CodecError) as e:
            decode_photo(codec, bytes(bad))
        _one_line(e)


def test_payload_damage_behind_a_valid_crc_is_caught(codec):
    """A damaged payload under a recomputed CRC still fails: the range coder's check word."""
    data = encode_photo(codec, _photo(37, 53), 4)
    header, payload = unpack_photo(data)
    failed = 0
    for i in range(0, len(payload), max(1, len(payload) // 20)):
        bad = bytearray(payload)
        bad[i] ^= 0x5A
        try:
            decode_photo(codec, pack_photo(header, bytes(bad)))
        except CodecError as e:
            assert "\n" not in str(e)
            failed += 1
    assert failed >= 18


def test_wrong_model_is_a_clear_error(codec):
    data = encode_photo(codec, _photo(37, 53), 2)
    header, payload = unpack_photo(data)
    other = PhotoHeader(b"\x01" * 8, header.tables_hash, 3, 37, 53, 2.0)
    with pytest.raises(CodecError, match="encoded with model"):
        decode_photo(codec, pack_photo(other, payload))
    refit = PhotoHeader(header.fingerprint, b"\x00" * 4, 3, 37, 53, 2.0)
    with pytest.raises(CodecError, match="probability tables"):
        decode_photo(codec, pack_photo(refit, payload))


# ---------------------------------------------------------------------------------------------
# The command line


@pytest.mark.parametrize("h, w", [(300, 451), (768, 1024)])
def test_cli_encode_decode_info_whole_photo(photo_run, tmp_path, capsys, h, w):
    from PIL import Image

    src = tmp_path / "photo.jpg"
    Image.fromarray(_photo(h, w, seed=7).numpy().transpose(1, 2, 0)).save(src, quality=95)
    cae = tmp_path / "photo.cae"
    assert main(["encode", str(photo_run), str(src), "--out", str(cae), "--quality", "2.5",
                 "--json"]) == 0  # fmt: skip
    enc = json.loads(capsys.readouterr().out)
    assert enc["format_version"] == 2 and enc["bytes"] == cae.stat().st_size
    assert (enc["width"], enc["height"], enc["level"]) == (w, h, 2.5)
    assert main(["info", str(cae), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format_version"] == 2 and info["names"] == ["photo.png"]
    out = tmp_path / "dec"
    assert main(["decode", str(cae), "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    back = np.asarray(Image.open(out / "photo.png"))
    assert back.shape == (h, w, 3)
    model_px = decode_photo(load_photo_codec(photo_run), cae.read_bytes())[0]
    assert np.array_equal(back, model_px.numpy().transpose(1, 2, 0))


def test_cli_damaged_and_foreign_files_are_one_line_errors(photo_run, tiny_run, tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "p.png"
    Image.fromarray(_photo(37, 53).numpy().transpose(1, 2, 0)).save(src)
    cae = tmp_path / "p.cae"
    assert main(["encode", str(photo_run), str(src), "--out", str(cae), "--no-run-path"]) == 0
    data = cae.read_bytes()
    cases = {"cut.cae": data[: len(data) - 5], "flip.cae": data[:30] + bytes([data[30] ^ 4])
             + data[31:], "empty.cae": b""}  # fmt: skip
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        code = main(["decode", str(tmp_path / name), "--out", str(tmp_path / "o"), "--model",
                     str(photo_run)])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("convae: error:") and err.count("\n") == 1, name
    assert main(["decode", str(cae), "--out", str(tmp_path / "o")]) == 1  # no run recorded
    assert "--model" in capsys.readouterr().err
    assert main(["decode", str(cae), "--out", str(tmp_path / "o"), "--model", str(tiny_run)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("convae: error:") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_cli_one_photo_per_file(photo_run, tmp_path, capsys):
    from PIL import Image

    for i in range(2):
        Image.fromarray(_photo(20, 20, i).numpy().transpose(1, 2, 0)).save(tmp_path / f"{i}.png")
    code = main(["encode", str(photo_run), str(tmp_path), "--out", str(tmp_path / "x.cae")])
    assert code == 1 and "one photo" in capsys.readouterr().err


def test_version_1_reader_names_version_2_files(codec):
    from convae.codec import unpack

    with pytest.raises(CodecError, match="version-2 file"):
        unpack(encode_photo(codec, _photo(8, 8), 0))


def test_bd_rate_of_a_curve_against_itself_shifted():
    from convae.codec.rd import bd_rate

    rate = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    q = np.array([28.0, 30.0, 32.0, 34.0, 36.0])
    assert abs(bd_rate(rate, q, rate, q)) < 1e-9
    assert abs(bd_rate(rate, q, rate * 0.8, q) + 20.0) < 1e-6  # 20 % fewer bits everywhere


def test_cli_bench_codec_on_a_folder_of_photos(photo_run, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "held"
    folder.mkdir()
    Image.fromarray(_photo(180, 200, 5).numpy().transpose(1, 2, 0)).save(folder / "a.png")
    out = tmp_path / "bench"
    argv = ["bench", "codec", "--data", f"folder:{folder}", "--runs", str(photo_run), "--out",
            str(out), "--repeats", "1", "--json"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    pts = res["photos"]["a"]["points"]
    assert len(pts["convae"]) == 11 and {"jpeg", "webp"} <= set(pts)
    assert all(p["bytes"] > 28 and 0 < p["ms_ssim"] <= 1 for p in pts["convae"])
    assert res["speed"][0]["decode_mp_s"] > 0
    assert all((out / n).is_file() for n in ("rd.json", "rd.md", "rd.png"))


def test_version_2_header_bytes_are_stable():
    """Golden bytes of a version-2 header: a change here breaks every file already written."""
    header = PhotoHeader(bytes(range(8)), b"\xaa\xbb\xcc\xdd", 3, 300, 451, 2.5, name="a.png")
    data = pack_photo(header, b"\x01\x02")
    assert data[:30].hex() == (
        "89434145" "02" "01" "03" "14" "2c01" "c301" "0001020304050607" "aabbccdd" "05" "612e706e67"
    )  # fmt: skip
    assert data[30:32] == b"\x01\x02" and len(data) == 36
    assert unpack_photo(data) == (header, b"\x01\x02")


def test_range_coder_bytes_are_stable():
    """The payload of fixed symbols under fixed integer tables (constriction's coder pinned)."""
    freqs = np.array([[1 << 14, 1 << 15, (1 << 14) - 1, 1]], np.int32)
    models = rc.TableModels(CdfTables(freqs, np.array([3], np.int32), np.array([-1], np.int32)))
    values = np.array([0, 0, 1, -1, 0, 5, 0, 1])  # 5 escapes
    enc = rc.Encoder()
    rc.encode_symbols(enc, values, np.zeros(8, np.int64), models)
    assert rc.finish(enc, rc.check_word(values)).hex() == GOLDEN_PAYLOAD


def test_seeded_draws_make_training_steps_repeatable():
    torch.manual_seed(0)
    model = build_model(TINY).train()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        losses = [float(model.training_loss(x, x, torch.Generator().manual_seed(7))) for _ in "ab"]
        other = float(model.training_loss(x, x, torch.Generator().manual_seed(8)))
    assert losses[0] == losses[1] != other
