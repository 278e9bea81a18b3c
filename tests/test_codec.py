"""The .cae codec: container, entropy coding, fine-tune, determinism, bad files, CLI."""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from convae import codec as C
from convae.cli import main
from convae.data import load_split
from convae.limits import MemoryLimitError

FIT = C.CodecFitConfig(epochs=1, lmbda=0.01, batch_size=64, steps=(2.0, 1.0, 0.5), default_level=1)


@pytest.fixture(scope="module")
def codec_run(tiny_run, tmp_path_factory) -> Path:
    """A private copy of the shared tiny run (the codec writes into its run directory), fitted once."""
    run = tmp_path_factory.mktemp("codec") / "run"
    shutil.copytree(tiny_run, run)
    from convae.inference import load

    model = load(run)
    x, _ = load_split(model.run_config.data, "train")
    C.save_codec(run, C.fit_codec(model, x[:256], FIT))  # codec.safetensors + codec.json
    return run


@pytest.fixture(scope="module")
def codec(codec_run) -> C.Codec:
    return C.load_codec(codec_run, fit_if_missing=False)


@pytest.fixture(scope="module")
def test_x(codec) -> torch.Tensor:
    x, _ = load_split(codec.run_config.data, "test")
    return x[:64]


def _header(**kw) -> C.Header:
    base = dict(
        fingerprint=bytes(range(16)),
        tables_hash=bytes(range(100, 108)),
        channels=1,
        height=28,
        width=28,
        latent_dim=8,
        count=3,
        level=1,
        step=1.0,
        coder="range",
    )
    return C.Header(**{**base, **kw})


# ---------------------------------------------------------------------------------------------
# Container


def test_pack_unpack_roundtrip_with_and_without_names():
    for kw in (
        {},
        {"names": ("a.png", "b.png", "ü.png")},
        {"run": "/some/run"},
        {"names": ("x.png", "y.png", "z.png"), "run": "r", "coder": "lzma", "level": 7},
    ):
        h = _header(**kw)
        data = C.pack(h, b"\x01\x02\x03\x04")
        h2, payload = C.unpack(data)
        assert h2 == h and payload == b"\x01\x02\x03\x04"
        assert C.verify(data) == h


def test_photo_sizes_roundtrip_and_must_match_the_tiles():
    # 28 x 28 tiles: 30x60 takes 2 x 3, 28x28 one, 1x57 one row of 3 -> 10 tiles
    h = _header(count=10, sizes=((30, 60), (28, 28), (1, 57)), names=("a.png", "b.png", "c.png"))
    h2, payload = C.unpack(C.pack(h, b"PAYL"))
    assert h2 == h and h2.photos == 3 and payload == b"PAYL"
    with pytest.raises(ValueError, match="take 10 tiles, not 9"):
        C.pack(replace(h, count=9), b"P")
    with pytest.raises(ValueError, match="2 names for 3 images"):
        C.pack(replace(h, names=("a.png", "b.png")), b"P")
    # a crafted file (valid CRC) whose sizes do not make its tile count
    data = bytearray(C.pack(h, b"PAYL"))
    i = bytes(data).index(struct.pack("<3I", 3, 30, 60))
    data[i + 4 : i + 8] = struct.pack("<I", 90)  # 90x60: 4 x 3 tiles
    data = data[:-4] + struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    with pytest.raises(C.CodecError, match="the photo sizes do not make 10 tiles"):
        C.unpack(bytes(data))


@pytest.mark.parametrize("hw", [(1, 37), (33, 47), (28, 28), (57, 1)])
def test_tiles_cover_a_photo_and_give_it_back_exactly(hw):
    from convae.codec.core import tile, untile

    img = torch.randint(0, 256, (3, *hw), dtype=torch.uint8)
    tiles = tile(img, 28, 28)
    assert tiles.shape == (-(-hw[0] // 28) * -(-hw[1] // 28), 3, 28, 28)
    assert torch.equal(untile(tiles, *hw), img)
    assert torch.equal(tiles[0, :, : min(28, hw[0]), : min(28, hw[1])],
                       img[:, :28, :28])  # fmt: skip
    assert (tiles[-1, :, -1, -1] == img[:, -1, -1]).all()  # the edge repeated into the padding


def test_photos_of_any_size_encode_in_tiles_and_decode_whole(codec, test_x):
    x = test_x[:6]
    photo = torch.cat([torch.cat([x[0], x[1]], 2), torch.cat([x[2], x[3]], 2)], 1)  # 56x56
    photos = [photo[:, :50, :33], x[4], photo[:, :1, :]]
    data = C.encode(codec, photos, names=["a.png", "b.png", "c.png"])
    header = C.verify(data)
    assert header.sizes == ((50, 33), (28, 28), (1, 56)) and header.count == 4 + 1 + 2
    out, names = C.decode(codec, data)
    assert names == ("a.png", "b.png", "c.png")
    assert [tuple(t.shape) for t in out] == [(1, 50, 33), (1, 28, 28), (1, 1, 56)]
    # each tile is coded as an image of the model's size: a tile that is a whole digit decodes
    # to the pixels that digit alone decodes to
    digits, _ = C.decode(codec, C.encode(codec, x[:1]))
    assert torch.equal(out[0][:, :28, :28], digits[0])
    # images all of the model's size stay a plain file, byte for byte
    assert C.encode(codec, list(x[:3])) == C.encode(codec, x[:3])


def test_names_that_cannot_be_stored_are_refused_when_writing_and_corrupt_when_read():
    for names, why in (
        (("a.png", "a.png", "b.png"), "appears twice"),
        (("a\nb.png", "c.png", "d.png"), "newline"),
        (("caf\udce9.png", "c.png", "d.png"), "not valid UTF-8"),
        (("x" * 200 + "é" * 40 + ".png", "c.png", "d.png"), "longer than 255 bytes"),
    ):
        with pytest.raises(ValueError, match=why) as e:
            C.pack(_header(names=names), b"P")
        assert "corrupt" not in str(e.value)  # the input is at fault, not a file
    # a crafted file (valid CRC) whose names repeat: two images would land in one file
    data = bytearray(C.pack(_header(names=("a.png", "b.png", "c.png")), b"P"))
    blob = zlib.compress(b"a.png\nb.png\na.png", 9)
    old = zlib.compress(b"a.png\nb.png\nc.png", 9)
    i = bytes(data).index(old)
    data[i - 4 : i + len(old)] = struct.pack("<I", len(blob)) + blob
    data = data[:-4] + struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    with pytest.raises(C.CodecError, match="corrupt file: image name 'a.png' appears twice"):
        C.unpack(bytes(data))


def test_header_layout_is_stable():
    """Golden bytes of a v1 file: a change here breaks every file already written (docs/format.md)."""
    data = C.pack(_header(), b"PAYL")
    fixed = struct.pack(
        "<4sBBBB16s8sBHHHfII",
        b"\x89CAE",
        1,
        1,
        1,
        0,
        bytes(range(16)),
        bytes(range(100, 108)),
        1,
        28,
        28,
        8,
        1.0,
        3,
        4,
    )
    assert data == fixed + b"PAYL" + struct.pack("<I", zlib.crc32(fixed + b"PAYL"))
    assert len(data) == 51 + 4 + 4  # fixed header, payload, CRC-32


def test_range_coder_bytes_are_stable():
    """Golden bytes of the range coder with fixed tables: guards the format against library changes."""
    lv = C.Level(
        step=1.0,
        offset=np.zeros(2, np.float32),
        lo=np.array([-2, 0], np.int32),
        size=np.array([5, 3], np.int32),
        counts=np.array([[1, 3, 9, 3, 1], [5, 2, 1, 0, 0]], np.int32),
    )
    q = np.array([[0, 0], [1, 2], [-2, 1], [0, 0], [2, 0], [-1, 1]])
    payload = C.encode_symbols(q, lv, "range")
    assert payload.hex() == "ec26eaa4"
    assert np.array_equal(C.decode_symbols(payload, lv, len(q), "range"), q)


@pytest.mark.parametrize("coder", ["range", "zlib", "lzma"])
def test_symbols_roundtrip_random_tables(coder):
    rng = np.random.default_rng(3)
    for _ in range(5):
        L = int(rng.integers(1, 12))
        size = rng.integers(1, 300, L).astype(np.int32)
        lo = rng.integers(-150, 10, L).astype(np.int32)
        counts = np.zeros((L, size.max()), np.int32)
        for j in range(L):
            counts[j, : size[j]] = rng.integers(1, 1000, size[j])
        lv = C.Level(1.0, np.zeros(L, np.float32), lo, size, counts)
        n = int(rng.integers(1, 200))
        q = lo + (rng.random((n, L)) * size).astype(np.int64)
        payload = C.encode_symbols(q, lv, coder)
        assert np.array_equal(C.decode_symbols(payload, lv, n, coder), q)


def test_range_coder_is_close_to_the_tables_entropy():
    rng = np.random.default_rng(0)
    L, n = 8, 2000
    counts = np.tile(np.array([1, 10, 100, 400, 100, 10, 1], np.int32), (L, 1))
    lv = C.Level(
        1.0, np.zeros(L, np.float32), np.full(L, -3, np.int32), np.full(L, 7, np.int32), counts
    )
    p = counts[0] / counts[0].sum()
    q = rng.choice(7, size=(n, L), p=p) - 3
    bits = lv.entropy_bits(q)
    got = 8 * len(C.encode_symbols(q, lv, "range"))
    assert bits <= got <= bits * 1.01 + 64


# ---------------------------------------------------------------------------------------------
# Bad files: every defect is a CodecError (one line in the CLI), never garbage or a traceback


def _mutations(data: bytes, rng: np.random.Generator):
    yield "empty", b""
    yield "foreign-png", b"\x89PNG\r\n\x1a\n" + bytes(60)
    yield "text", b"hello, this is not an image file at all\n" * 3
    yield "random", rng.bytes(len(data))
    yield "magic-only", data[:4]
    for _ in range(150):
        cut = int(rng.integers(0, len(data)))
        yield f"truncated@{cut}", data[:cut]
    for _ in range(300):
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 9))):
            pos = int(rng.integers(0, len(b) * 8))
            b[pos // 8] ^= 1 << (pos % 8)
        yield "bitflip", bytes(b)
    for _ in range(50):
        b = bytearray(data)
        pos = int(rng.integers(0, len(b)))
        b[pos : pos + 4] = rng.bytes(4)
        if bytes(b) != data:
            yield f"overwrite@{pos}", bytes(b)
    yield "appended", data + b"\x00"


def test_corrupted_files_always_raise_codec_error(codec, test_x):
    data = C.encode(codec, test_x[:10], names=[f"n{i}.png" for i in range(10)], run_hint="/r")
    rng = np.random.default_rng(2024)
    n = 0
    for what, bad in _mutations(data, rng):
        with pytest.raises(C.CodecError) as e:
            C.decode(codec, bad)
        assert "\n" not in str(e.value), what
        n += 1
    assert n > 500


def test_forged_photo_sizes_are_corrupt_or_decode_whole(codec, test_x):
    x = test_x[:4]
    photos = [torch.cat([x[0], x[1]], 2)[:, :20, :50], x[2], x[3][:, :5, :9]]
    data = C.encode(codec, photos, names=["a.png", "b.png", "c.png"])
    start = data.index(struct.pack("<I", 3))  # the photo count, then the sizes
    rng = np.random.default_rng(7)
    decoded = 0
    for _ in range(300):
        b = bytearray(data)
        pos = start + int(rng.integers(0, 28))
        b[pos : pos + int(rng.integers(1, 5))] = rng.bytes(4)[: len(b[pos : pos + 4])]
        b[-4:] = struct.pack("<I", zlib.crc32(bytes(b[:-4])))  # a forger recomputes the CRC
        try:
            out, names = C.decode(codec, bytes(b))
        except C.CodecError as e:
            assert "\n" not in str(e)
            continue
        header = C.verify(bytes(b))  # accepted: every photo whole, at the size its header says
        assert [tuple(t.shape[1:]) for t in out] == list(header.sizes) and len(names) == len(out)
        decoded += 1
    assert decoded < 300


def test_newer_version_says_upgrade():
    data = bytearray(C.pack(_header(), b"x"))
    data[4] = 3
    body = bytes(data[:-4])
    data[-4:] = struct.pack("<I", zlib.crc32(body))
    with pytest.raises(C.CodecError, match="newer.*upgrade"):
        C.unpack(bytes(data))


def test_wrong_model_is_a_clear_error(codec, test_x, tiny_run):
    other = C.fit_codec(
        codec.model, test_x, replace(FIT, seed=1, epochs=1), run_config=codec.run_config
    )
    data = C.encode(codec, test_x[:4])
    with pytest.raises(C.CodecError, match="encoded with model"):
        C.decode(other, data)


def test_refitted_tables_are_detected(codec, test_x):
    data = C.encode(codec, test_x[:4])
    lv = codec.levels[codec.default_level]
    changed = replace(lv, counts=lv.counts + (lv.counts > 0))
    other = C.Codec(
        codec.model,
        [*codec.levels[: codec.default_level], changed, *codec.levels[codec.default_level + 1 :]],
        codec.default_level,
        codec.run_config,
    )
    with pytest.raises(C.CodecError, match="tables"):
        C.decode(other, data)


def test_a_header_with_the_wrong_latent_size_is_corrupt(codec, test_x):
    header, payload = C.unpack(C.encode(codec, test_x[:4]))
    lv = codec.levels[header.level]
    crafted = C.pack(replace(header, latent_dim=lv.latent_dim + 1), payload)
    with pytest.raises(C.CodecError, match="corrupt file: its header says") as e:
        C.decode(codec, crafted)
    assert lv.hash().hex() not in str(e.value)  # not the refitted-tables message (hash twice)


# ---------------------------------------------------------------------------------------------
# Forged files: a valid CRC recomputed over changed fields


def _forge(header: C.Header, payload: bytes) -> bytes:
    """.cae bytes as a forger writes them: any fields, no checks, a correct CRC-32."""
    flags, extra = 0, b""
    if header.run is not None:
        run = header.run.encode()
        flags, extra = flags | 2, extra + struct.pack("<H", len(run)) + run
    if header.names is not None:
        blob = zlib.compress("\n".join(header.names).encode(), 9)
        flags, extra = flags | 1, extra + struct.pack("<I", len(blob)) + blob
    fixed = struct.pack(
        "<4sBBBB16s8sBHHHfII", C.MAGIC, 1, C.format.CODER_IDS[header.coder], header.level,
        flags, header.fingerprint, header.tables_hash, header.channels, header.height,
        header.width, header.latent_dim, header.step, header.count, len(payload),
    )  # fmt: skip
    body = fixed + extra + payload
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("coder", ["range", "zlib", "lzma"])
def test_a_forged_count_or_payload_is_corrupt(codec, test_x, coder):
    data = C.encode(codec, test_x[:10], coder=coder)
    header, payload = C.unpack(data)
    assert _forge(header, payload) == data  # the forger's writer is the real one
    cases = {
        "fewer images": _forge(replace(header, count=4), payload),
        "more images": _forge(replace(header, count=11), payload),
        "1000 images": _forge(replace(header, count=1000), payload),
        "empty payload": _forge(replace(header, count=4), b""),
        "trailing word": _forge(header, payload + b"\0\0\0\0"),
        "trailing byte": _forge(header, payload + b"\0"),
    }
    if coder == "range":
        cases["one word less"] = _forge(header, payload[:-4])
    for what, bad in cases.items():
        with pytest.raises(C.CodecError, match="corrupt file") as e:
            C.decode(codec, bad)
        assert "\n" not in str(e.value), what


def test_a_huge_forged_count_is_refused_before_anything_is_allocated(
    codec, test_x, tmp_path, monkeypatch
):
    header, payload = C.unpack(C.encode(codec, test_x[:10]))
    f = tmp_path / "big.cae"
    f.write_bytes(_forge(replace(header, count=1 << 28), payload))
    monkeypatch.setenv("CONVAE_MEMORY_LIMIT", "4G")
    with pytest.raises(MemoryLimitError, match="decoding its 268,435,456 images of 1x28x28"):
        C.read_header(f)
    monkeypatch.setenv("CONVAE_MEMORY_LIMIT", "off")
    with pytest.raises(C.CodecError, match="images need at least"):  # the tables' bound
        C.decode(codec, f.read_bytes())
    names = tuple(f"{i}.png" for i in range(10))
    forged = _forge(replace(header, names=names), payload)
    data = bytearray(forged)
    data[43:47] = struct.pack("<I", 1 << 20)  # the count, the names left as they are
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    with pytest.raises(C.CodecError, match="names cannot fit"):
        C.unpack(bytes(data))


@pytest.mark.parametrize(
    "name", [".bashrc", "config.json", "model.safetensors", ".hidden.png", "a.png.sh", "x\ty.png",
             "../up.png", "png", ".png", "trainer.json"]
)  # fmt: skip
def test_forged_names_are_corrupt_and_write_nothing(name, codec, codec_run, test_x, tmp_path):
    header, payload = C.unpack(C.encode(codec, test_x[:2], run_hint=str(codec_run)))
    f = tmp_path / "names.cae"
    f.write_bytes(_forge(replace(header, names=(name, "ok.png")), payload))
    with pytest.raises(C.CodecError, match="corrupt file: invalid image name"):
        C.unpack(f.read_bytes())
    with pytest.raises(ValueError, match="cannot be stored"):
        C.pack(replace(header, names=(name, "ok.png")), payload)
    assert main(["decode", str(f), "--out", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()


def test_files_written_today_still_decode(codec, test_x):
    """The checks added for forged files accept every file the encoder writes."""
    for coder in ("range", "zlib", "lzma"):
        for n in (1, 2, 7, 64):
            data = C.encode(codec, test_x[:n], names=[f"img {i}.PNG" for i in range(n)],
                            coder=coder)  # fmt: skip
            images, names = C.decode(codec, data)
            assert len(images) == n and names[0] == "img 0.PNG"


def _codec_copy(codec_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(codec_run, run)
    return run


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda t: t.update({"model.encoder.0.weight": torch.zeros(3, 3)}), "encoder.0.weight is [3, 3]"),
        (lambda t: t.pop("model.decoder.0.weight"), "missing decoder.0.weight"),
        (lambda t: t.update({"model.encoder.0.weight": t["model.encoder.0.weight"] * float("nan")}),
         "encoder.0.weight holds NaN"),
        (lambda t: t.pop("level.1.counts"), "level.1.counts is missing"),
        (lambda t: t.update({"level.0.counts": t["level.0.counts"] * 0}), "positive count"),
        (lambda t: t.update({"level.0.size": t["level.0.size"].double()}), "level.0.size is torch.float64"),
        (lambda t: t.update({"transform.basis": t["transform.basis"][:2]}), "transform.basis is"),
        (lambda t: t.update({"level.2.offset": t["level.2.offset"] * float("inf")}), "infinite"),
    ],
)  # fmt: skip
def test_a_damaged_codec_file_is_one_line(edit, says, codec_run, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = _codec_copy(codec_run, tmp_path)
    path = run / C.CODEC_FILE
    meta = safe_open(str(path), "pt").metadata()  # kept as it is
    t = load_file(str(path))
    edit(t)
    save_file(t, str(path), metadata=meta)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=re.escape(says)) as e:
        C.load_codec(run, fit_if_missing=False)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    out = tmp_path / "x.cae"
    assert main(["encode", str(run), "--data", "mnist-sample", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("convae: error:") and "\n" not in err and says in err
    assert path.read_bytes() == before and not out.exists()


@pytest.mark.parametrize(
    "meta", [{"steps": "nan"}, {"steps": "[]"}, {"steps": "[1, -2]"}, {"default_level": "9"},
             {"default_level": "x"}, {"format": "other"}]
)  # fmt: skip
def test_damaged_codec_metadata_is_one_line(meta, codec_run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = _codec_copy(codec_run, tmp_path)
    path = run / C.CODEC_FILE
    old = safe_open(str(path), "pt").metadata()
    save_file(load_file(str(path)), str(path), metadata={**old, **meta})
    with pytest.raises(ValueError) as e:
        C.load_codec(run, fit_if_missing=False)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_fitting_on_nan_codes_is_one_line(codec, test_x):
    bad = C.Codec(codec.model, codec.levels, codec.default_level, codec.run_config).model
    import copy

    bad = copy.deepcopy(bad)
    with torch.no_grad():
        for p in bad.parameters():
            if p.ndim > 1:
                p.mul_(1e25)  # finite weights whose forward overflows
    with pytest.raises(ValueError, match="NaN or infinite.*no codec can be fitted"):
        C.fit_codec(bad, test_x, FIT, run_config=codec.run_config)


# ---------------------------------------------------------------------------------------------
# Codec behaviour


def test_encode_decode_deterministic_and_consistent(codec, test_x):
    a = C.encode(codec, test_x)
    b = C.encode(codec, test_x.clone())
    assert a == b
    y1, names = C.decode(codec, a)
    y2, _ = C.decode(codec, a)
    assert names is None
    assert y1.dtype == torch.uint8 and y1.shape == test_x.shape
    assert torch.equal(y1, y2)
    q, _ = C.quantize(codec, test_x)
    assert torch.equal(C.dequantize(codec, q), y1)
    # a file of one image decodes to the same pixels as that image inside a bigger file
    y_one, _ = C.decode(codec, C.encode(codec, test_x[5:6]))
    assert torch.equal(y_one[0], y1[5])


def test_levels_trade_bytes_for_quality(codec, test_x):
    rows = C.codec_rd(codec, test_x, repeats=1, ssim=False)
    assert [r["level"] for r in rows] == [0, 1, 2]
    sizes = [r["bytes_per_image"] for r in rows]
    assert sizes[0] <= sizes[1] <= sizes[2]
    for r in rows:
        assert r["payload_range"] <= min(r["payload_zlib"], r["payload_lzma"])
        assert r["entropy_bytes"] <= r["payload_range"]
        assert r["file_bytes"] == r["overhead_bytes"] + r["payload_range"]


def test_fine_tune_lowers_the_rate_distortion_loss(codec_run, test_x):
    from convae.inference import load

    model = load(codec_run)
    x, _ = load_split(model.run_config.data, "train")
    x = x[:256]
    cfg = replace(FIT, epochs=2, lmbda=0.05, steps=(1.0,), default_level=0, distortion="mse")
    before = C.fit_codec(model, x, replace(cfg, epochs=1, lr=1e-12), run_config=model.run_config)
    after = C.fit_codec(model, x, cfg, run_config=model.run_config)

    def loss(c):
        q, _ = C.quantize(c, x)
        y = C.dequantize(c, q).float() / 255
        mse = float(((y - x.float() / 255) ** 2).mean())
        return mse + cfg.lmbda * c.levels[0].entropy_bits(q) / x[0].numel() / len(x)

    assert loss(after) < loss(before)


def test_codec_files_saved_and_reloaded(codec_run, codec, test_x):
    info = json.loads((codec_run / "codec.json").read_text())
    assert info["fingerprint"] == codec.fingerprint.hex()
    assert [lv["step"] for lv in info["levels"]] == [2.0, 1.0, 0.5]
    again = C.load_codec(codec_run, fit_if_missing=False)
    assert again.fingerprint == codec.fingerprint
    assert C.encode(again, test_x) == C.encode(codec, test_x)


def test_load_codec_fits_once_when_missing(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with pytest.raises(FileNotFoundError, match="convae encode"):
        C.load_codec(run, fit_if_missing=False)
    fitted = C.load_codec(run, cfg=FIT)
    assert (run / "codec.safetensors").is_file() and (run / "codec.json").is_file()
    assert C.load_codec(run, fit_if_missing=False).fingerprint == fitted.fingerprint


def test_bytes_at_psnr_interpolates_the_pareto_front():
    rows = [
        {"psnr": 20.0, "bytes_per_image": 10.0},
        {"psnr": 30.0, "bytes_per_image": 40.0},
        {"psnr": 19.0, "bytes_per_image": 50.0},
    ]  # dominated: ignored
    assert C.bytes_at_psnr(rows, 20.0) == pytest.approx(10.0)
    assert C.bytes_at_psnr(rows, 25.0) == pytest.approx(20.0)  # geometric mean of 10 and 40
    assert C.bytes_at_psnr(rows, 31.0) is None
    assert C.bytes_at_psnr(rows, 15.0) is None


def test_baselines_measure_pillow_formats(make_images):
    x = make_images(4, 1, 16)
    rows = C.baseline_rd(
        x, [("png", "lossless", "PNG", {}), ("jpeg", "q50", "JPEG", {"quality": 50})]
    )
    assert rows[0]["psnr"] == math.inf and rows[0]["bytes_per_image"] > 0  # lossless: MSE 0
    assert 10 < rows[1]["psnr"] < 100
    assert {"bpp", "ssim", "encode_per_s", "decode_per_s"} <= set(rows[1])


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_encode_info_decode_files(
    codec_run, codec, test_x, tmp_path, write_image_folder, capsys
):
    paths = write_image_folder(tmp_path / "in", test_x[:6])
    out = tmp_path / "x.cae"
    assert main(["encode", str(codec_run), str(tmp_path / "in"), "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["images"] == 6 and res["bytes"] == out.stat().st_size
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["names"] == [p.name for p in paths] and info["model"] == codec.fingerprint.hex()
    h, w = test_x.shape[-2:]  # bpp: file bits per image pixel, whatever the channel count
    assert info["bpp"] == pytest.approx(8 * info["bytes"] / (6 * h * w))
    assert main(["decode", str(out), "--out", str(tmp_path / "dec")]) == 0
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == sorted(p.name for p in paths)
    from convae.images import read_image_files

    got, _ = read_image_files([tmp_path / "dec"], 1, 28)
    want, _ = C.decode(codec, C.encode(codec, test_x[:6]))
    assert torch.equal(got, want)


def test_cli_encode_dataset_names_by_index(codec_run, tmp_path, capsys):
    out = tmp_path / "d.cae"
    assert (
        main(
            [
                "encode",
                str(codec_run),
                "--data",
                "mnist-sample",
                "--classes",
                "0,1",
                "--split",
                "val",
                "--out",
                str(out),
                "--quality",
                "0",
            ]
        )
        == 0
    )
    assert (
        main(["decode", str(out), "--out", str(tmp_path / "dec"), "--model", str(codec_run)]) == 0
    )
    names = sorted(p.name for p in (tmp_path / "dec").iterdir())
    assert names[0] == "00000.png" and len(names) == 80
    assert "quality level 0" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kind", ["empty", "truncated", "bitflip", "foreign", "wrong-model", "missing"]
)
def test_cli_bad_files_fail_cleanly(kind, codec_run, codec, test_x, tiny_run, tmp_path, capsys):
    data = C.encode(codec, test_x[:3], run_hint=str(codec_run))
    bad = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "foreign": b"GIF89a" + bytes(40),
        "bitflip": data[:20] + bytes([data[20] ^ 4]) + data[21:],
        "wrong-model": data,
    }.get(kind)
    f = tmp_path / "bad.cae"
    if bad is not None:
        f.write_bytes(bad)
    args = ["decode", str(f), "--out", str(tmp_path / "out")]
    if kind == "wrong-model":
        other = tmp_path / "other"
        shutil.copytree(tiny_run, other)
        C.save_codec(
            other,
            C.fit_codec(codec.model, test_x, replace(FIT, seed=5), run_config=codec.run_config),
        )
        args += ["--model", str(other)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("convae: error:") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    if kind != "missing":
        assert main(["info", str(f)]) == (0 if kind == "wrong-model" else 1)


def test_cli_decode_without_recorded_run_needs_model(codec_run, test_x, tmp_path, capsys):
    out = tmp_path / "x.cae"
    assert (
        main(
            [
                "encode",
                str(codec_run),
                "--data",
                "mnist-sample",
                "--classes",
                "0,1",
                "--out",
                str(out),
                "--no-run-path",
            ]
        )
        == 0
    )
    assert main(["decode", str(out), "--out", str(tmp_path / "dec")]) == 1
    assert "--model" in capsys.readouterr().err
    assert not (tmp_path / "dec").exists()


def testprincipal_axes_decorrelate_and_invert():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(500, 6, generator=g) @ torch.randn(6, 6, generator=g)  # correlated codes
    mean, basis = C.principal_axes(y)
    assert np.allclose(basis @ basis.T, np.eye(6), atol=1e-5)
    lv = C.Level(
        0.01,
        np.zeros(6, np.float32),
        np.full(6, -(10**6), np.int32),
        np.full(6, 2 * 10**6, np.int32),
        np.ones((6, 1), np.int32),
        mean,
        basis,
    )
    z = lv.to_components(y)
    cov = np.cov(z.numpy().T)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-6 * np.abs(cov).max()
    assert np.all(np.diff(np.diag(cov)) <= 1e-9)  # decreasing variance
    assert torch.allclose(lv.dequantize(lv.quantize(y)), y, atol=0.01)
    other = C.Level(0.01, lv.offset, lv.lo, lv.size, lv.counts, mean, basis[::-1].copy())
    assert other.hash() != lv.hash()


def test_fit_without_decorrelation(codec, test_x):
    from convae.inference import load

    model = load(codec.run_dir)
    x, _ = load_split(model.run_config.data, "train")
    c = C.fit_codec(model, x[:128], replace(FIT, epochs=1, decorrelate=False))
    assert c.levels[0].basis is None
    y, _ = C.decode(c, C.encode(c, test_x[:8]))
    assert y.shape == test_x[:8].shape


def test_code_map_model_through_the_codec(test_x):
    """The codec preset's architecture (a [K, 7, 7] code map): fitted, coded, decoded bit-exactly."""
    from convae.config import DataConfig, ModelConfig
    from convae.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="convae-map", width=4, latent_dim=2 * 49))
    x, _ = load_split(DataConfig(spec="mnist-sample", classes=(0, 1)), "train")
    c = C.fit_codec(model, x[:128], replace(FIT, epochs=1))
    assert c.levels[0].latent_dim == 98
    data = C.encode(c, test_x[:16])
    assert C.verify(data).latent_dim == 98 and C.encode(c, test_x[:16]) == data
    y, _ = C.decode(c, data)
    q, _ = C.quantize(c, test_x[:16])
    assert torch.equal(y, C.dequantize(c, q))


def test_codec_preset_and_default_levels():
    from convae.config import PRESETS, RunConfig, apply_preset
    from convae.models import build_model

    model = build_model(apply_preset(RunConfig(), "codec").model)
    assert model.config.arch == "convae-map" and model.latent_shape == (4, 7, 7)
    steps = C.CodecFitConfig().steps
    assert all(a > b for a, b in zip(steps, steps[1:], strict=False))  # level 0 = smallest files
    assert 0 <= C.CodecFitConfig().default_level < len(steps)
    assert PRESETS["codec"]["train"]["epochs"] >= 1


def test_thread_count_changes_neither_bytes_nor_pixels(codec, test_x):
    """The CLI picks the torch thread count from the machine's load, so it must not matter."""
    before = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            torch.set_num_threads(n)
            data = C.encode(codec, test_x)
            out.append((data, C.decode(codec, data)[0]))
    finally:
        torch.set_num_threads(before)
    assert out[0][0] == out[1][0]
    assert torch.equal(out[0][1], out[1][1])
