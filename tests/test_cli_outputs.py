"""Where the commands write: an input is never an output, a folder output never replaces a file
unless --overwrite, every target is checked before the first write, a bad --out is one clear line,
and a long or odd file name works. Also --z values that are not finite numbers.

One private tiny run (trained with --noise, with a fitted codec) serves the whole module.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from cli_helpers import one_line_error, run_cli, snapshot

from convae.checkpoint import atomic_write
from convae.data import load_dataset
from convae.images import write_png


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny denoising run (width 4, latent 8, 1 epoch on digits 0 and 1) with a fitted codec."""
    from convae import codec as C
    from convae import train
    from convae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from convae.data import load_split
    from convae.inference import load

    cfg = RunConfig(
        model=ModelConfig(arch="convae", width=4, latent_dim=8),
        data=DataConfig(spec="mnist-sample", classes=(0, 1)),
        train=TrainConfig(epochs=1, batch_size=32, seed=0, noise=("gaussian:0.4",)),
    )
    d = train(cfg, tmp_path_factory.mktemp("outputs") / "run", device="cpu")
    model = load(d)
    x, _ = load_split(model.run_config.data, "train")
    fit = C.CodecFitConfig(epochs=1, batch_size=64, steps=(1.0,), default_level=0)
    C.save_codec(d, C.fit_codec(model, x[:128], fit))
    return d


@pytest.fixture(scope="module")
def digit_images():
    x, _ = load_dataset("mnist-sample", "test", classes=[0, 1])
    return x[:3]


@pytest.fixture
def digits(tmp_path, digit_images) -> Path:
    """tmp_path/digits/d0.png, d1.png, d2.png (28 x 28 grey)."""
    d = tmp_path / "digits"
    for i, img in enumerate(digit_images):
        write_png(img, d / f"d{i}.png")
    return d


@pytest.fixture
def cae(run, digits, tmp_path) -> Path:
    """digits/ encoded into tmp_path/digits.cae (names d0.png, d1.png, d2.png)."""
    rc, _, err = run_cli("encode", run, digits, "--out", tmp_path / "digits.cae", "-q")
    assert rc == 0, err
    return tmp_path / "digits.cae"


FOLDER_KINDS = ["reconstruct", "denoise", "denoise-noisy", "decode"]


def _args(kind: str, run: Path, digits: Path, request) -> list:
    """The command line of a folder-output command, up to its --out."""
    if kind == "decode":
        return ["decode", request.getfixturevalue("cae")]
    noisy = ["--add-noise", "gaussian:0.4"] if kind == "denoise-noisy" else []
    return [kind.split("-")[0], run, digits, *noisy]


# ---------------------------------------------------------------------------------------------
# 1a: an output is never one of the command's input files


@pytest.mark.parametrize("kind", ["reconstruct", "denoise", "denoise-noisy"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_folder_output_onto_the_inputs_is_refused(kind, overwrite, run, digits, request):
    before = snapshot(digits)
    args = _args(kind, run, digits, request)
    line = one_line_error(*run_cli(*args, "--out", digits, *(["--overwrite"] if overwrite else [])))
    assert "input file" in line and "d0.png" in line
    assert snapshot(digits) == before


def test_decode_never_replaces_its_cae_file(run, tmp_path, cae):
    # a .cae whose image names include its own file name
    renamed = tmp_path / "d1.png"
    shutil.copy(cae, renamed)
    before = renamed.read_bytes()
    line = one_line_error(*run_cli("decode", renamed, "--out", tmp_path, "--overwrite"))
    assert "input file" in line and "d1.png" in line
    assert renamed.read_bytes() == before


@pytest.mark.parametrize("which", ["a", "b"])
def test_interpolate_out_onto_an_input_is_refused(which, run, digits):
    a, b = digits / "d0.png", digits / "d1.png"
    target = a if which == "a" else digits / "." / "d1.png"  # resolved, not compared as text
    before = snapshot(digits)
    line = one_line_error(*run_cli("interpolate", run, a, b, "--out", target))
    assert "input" in line and f"d{0 if which == 'a' else 1}.png" in line
    assert snapshot(digits) == before


def test_single_file_outputs_never_replace_the_runs_files(run, tmp_path):
    before = snapshot(run)
    for args in (
        ["latent", run, "--out", run / "model.safetensors"],
        ["latent", run, "--out", tmp_path / "m.png", "--csv", run / "config.json"],
        ["generate", run, "--z", ",".join(["0"] * 8), "--out", run / "config.json"],
    ):
        line = one_line_error(*run_cli(*args))
        assert "input" in line
    assert snapshot(run) == before


def test_latent_map_and_csv_must_differ(run, tmp_path):
    line = one_line_error(
        *run_cli("latent", run, "--out", tmp_path / "m.png", "--csv", tmp_path / "m.png")
    )
    assert "--csv" in line and "--out" in line
    assert not (tmp_path / "m.png").exists()


# ---------------------------------------------------------------------------------------------
# 1b: folder outputs refuse existing files unless --overwrite


@pytest.mark.parametrize("kind", FOLDER_KINDS)
def test_folder_output_refuses_existing_files_unless_overwrite(
    kind, run, digits, tmp_path, request
):
    args = _args(kind, run, digits, request)
    out = tmp_path / "out"
    out.mkdir()
    (out / "d1.png").write_bytes(b"the user's own file")
    (out / "notes.txt").write_bytes(b"not ours")
    line = one_line_error(*run_cli(*args, "--out", out))
    assert "1 of the" in line and "d1.png" in line and "--overwrite" in line
    assert sorted(p.name for p in out.iterdir()) == ["d1.png", "notes.txt"]  # nothing written
    assert (out / "d1.png").read_bytes() == b"the user's own file"

    rc, _, err = run_cli(*args, "--out", out, "--overwrite")
    assert rc == 0, err
    assert (out / "d1.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "notes.txt").read_bytes() == b"not ours"
    # a second run into the same folder: every target exists now
    line = one_line_error(*run_cli(*args, "--out", out))
    n = 6 if kind == "denoise-noisy" else 3
    assert f"{n} of the {n}" in line and "d0.png" in line


def test_interpolate_frames_refuse_existing_files_unless_overwrite(run, digits, tmp_path):
    a, b, frames = digits / "d0.png", digits / "d1.png", tmp_path / "frames"
    frames.mkdir()
    (frames / "step-002.png").write_bytes(b"mine")
    cmd = [
        "interpolate",
        run,
        a,
        b,
        "--steps",
        "4",
        "--out",
        tmp_path / "s.png",
        "--frames",
        frames,
    ]
    line = one_line_error(*run_cli(*cmd))
    assert "--frames" in line and "step-002.png" in line and "--overwrite" in line
    assert not (tmp_path / "s.png").exists()  # the strip is not written either
    assert (frames / "step-002.png").read_bytes() == b"mine"
    rc, _, err = run_cli(*cmd, "--overwrite")
    assert rc == 0, err
    assert sorted(p.name for p in frames.iterdir()) == [f"step-{i:03d}.png" for i in range(4)]
    assert (frames / "step-002.png").read_bytes()[:4] == b"\x89PNG"


def test_interpolate_strip_cannot_be_one_of_its_frames(run, digits, tmp_path):
    frames = tmp_path / "frames"
    cmd = ["interpolate", run, digits / "d0.png", digits / "d1.png", "--steps", "4",
           "--out", frames / "step-001.png", "--frames", frames]  # fmt: skip
    line = one_line_error(*run_cli(*cmd))
    assert "step-001.png is also --out" in line
    assert not frames.exists() or not any(frames.iterdir())


def test_single_file_outputs_still_replace_a_file_of_that_name(run, digits, tmp_path):
    strip = tmp_path / "s.png"
    strip.write_bytes(b"old")
    rc, _, err = run_cli("interpolate", run, digits / "d0.png", digits / "d1.png", "--out", strip)
    assert rc == 0, err
    assert strip.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------
# 1c and 3: every target checked before anything is written


@pytest.mark.parametrize("kind", FOLDER_KINDS)
def test_a_folder_in_the_way_stops_everything_before_any_write(
    kind, run, digits, tmp_path, request
):
    args = _args(kind, run, digits, request)
    out = tmp_path / "out"
    # the LAST target is a folder: with per-file checks the others would already be written
    blocker = out / "noisy" / "d2.png" if kind == "denoise-noisy" else out / "d2.png"
    blocker.mkdir(parents=True)
    before = snapshot(out)
    line = one_line_error(*run_cli(*args, "--out", out, "--overwrite"))
    assert "d2.png" in line and "folder" in line
    assert snapshot(out) == before


def test_denoise_noisy_folder_that_is_a_file(run, digits, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "noisy").write_bytes(b"a file")
    line = one_line_error(
        *run_cli("denoise", run, digits, "--add-noise", "gaussian:0.4", "--out", out)
    )
    assert "noisy" in line and "not a folder" in line
    assert sorted(p.name for p in out.iterdir()) == ["noisy"]


def test_interpolate_frames_that_is_a_file_writes_no_strip(run, digits, tmp_path):
    (tmp_path / "afile.txt").write_text("hi")
    line = one_line_error(
        *run_cli(
            "interpolate",
            run,
            digits / "d0.png",
            digits / "d1.png",
            "--out",
            tmp_path / "s.png",
            "--frames",
            tmp_path / "afile.txt",
        )  # fmt: skip
    )
    assert "--frames" in line and "not a folder" in line
    assert not (tmp_path / "s.png").exists()
    assert (tmp_path / "afile.txt").read_text() == "hi"


# ---------------------------------------------------------------------------------------------
# 2: a sweep never goes into a run directory


def test_sweep_into_a_run_directory_is_refused(run):
    before = snapshot(run)
    line = one_line_error(
        *run_cli(
            "sweep",
            "--arch",
            "seed-strided",
            "--latent-dims",
            "2",
            "--epochs",
            "1",
            "--classes",
            "1",
            "--threads",
            "1",
            "--out",
            run,
        )  # fmt: skip
    )
    assert "config.json" in line
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------------
# 5: a bad --out said in words


@pytest.mark.parametrize(
    "cmd, says",
    [
        (
            ["train", "--classes", "1", "--epochs", "1", "--out", "{file}"],
            "is a file, not a folder",
        ),
        (["train", "--classes", "1", "--epochs", "1", "--out", "{file}/run"], "is a file"),
        (["reconstruct", "{run}", "{digits}", "--out", "{file}"], "is a file, not a folder"),
        (["denoise", "{run}", "{digits}", "--out", "{file}"], "is a file, not a folder"),
        (["anomaly", "{run}", "{digits}", "--out", "{file}"], "is a file, not a folder"),
        (
            ["sweep", "--arch", "seed-strided", "--latent-dims", "2", "--out", "{file}"],
            "is a file, not a folder",
        ),  # fmt: skip
        (["decode", "{cae}", "--out", "{file}"], "is a file, not a folder"),
        (["latent", "{run}", "--out", "{dir}"], "is a folder; give a file name"),
        (["latent", "{run}", "--out", "{file}/map.png"], "is a file"),
        (["latent", "{run}", "--out", "{tmp}/m.png", "--csv", "{dir}"], "is a folder"),
        (["generate", "{run}", "--grid", "3", "--out", "{dir}"], "is a folder; give a file name"),
        (["anomaly", "{run}", "{digits}", "--csv", "{dir}"], "is a folder; give a file name"),
        (["encode", "{run}", "{digits}", "--out", "{file}/x.cae"], "is a file"),
    ],
)
def test_bad_out_paths_are_one_clear_line(cmd, says, run, digits, tmp_path, request):
    (tmp_path / "afile.txt").write_text("keep me")
    (tmp_path / "emptydir").mkdir()
    cae = request.getfixturevalue("cae") if "{cae}" in cmd else ""
    subs = {"{file}": tmp_path / "afile.txt", "{dir}": tmp_path / "emptydir", "{run}": run,
            "{digits}": digits, "{cae}": cae, "{tmp}": tmp_path}  # fmt: skip
    args = []
    for a in cmd:
        for k, v in subs.items():
            a = a.replace(k, str(v))
        args.append(a)
    line = one_line_error(*run_cli(*args))
    assert says in line, line
    assert (tmp_path / "afile.txt").read_text() == "keep me"
    assert not any((tmp_path / "emptydir").iterdir())
    assert not (tmp_path / "m.png").exists()


# ---------------------------------------------------------------------------------------------
# 4: long file names; atomic_write


LONG = "x" * 246 + ".png"  # 250 bytes: a legal name (the limit is 255)


def test_atomic_write_takes_a_255_byte_name(tmp_path):
    p = tmp_path / ("y" * 255)
    atomic_write(p, b"data")
    assert p.read_bytes() == b"data"
    assert [q.name for q in tmp_path.iterdir()] == [p.name]  # no temp file left


def test_atomic_write_failure_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(p, b"new")
    monkeypatch.undo()
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_write_onto_a_folder_or_under_a_file_says_so(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        atomic_write(tmp_path / "d", b"x")
    (tmp_path / "f").write_bytes(b"keep")
    with pytest.raises(NotADirectoryError, match="a file is in the way"):
        atomic_write(tmp_path / "f" / "x.png", b"x")
    assert (tmp_path / "f").read_bytes() == b"keep"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["d", "f"]


def test_long_file_names_through_denoise_and_decode(run, digit_images, tmp_path):
    src = tmp_path / "src"
    write_png(digit_images[0], src / LONG)
    rc, _, err = run_cli("denoise", run, src, "--out", tmp_path / "den")
    assert rc == 0, err
    assert [p.name for p in (tmp_path / "den").iterdir()] == [LONG]
    rc, _, err = run_cli("encode", run, src, "--out", tmp_path / "l.cae")
    assert rc == 0, err
    rc, _, err = run_cli("decode", tmp_path / "l.cae", "--out", tmp_path / "dec")
    assert rc == 0, err
    assert [p.name for p in (tmp_path / "dec").iterdir()] == [LONG]


# ---------------------------------------------------------------------------------------------
# 6: --z takes finite numbers only


@pytest.mark.parametrize(
    "z", ["nan,0", "0,inf", "-inf,0", "1e40,0", "1,,2", "-8,0,", ",1", "1, ,2"]
)
def test_generate_rejects_non_finite_or_empty_values(z, run, tmp_path):
    out = tmp_path / "g.png"
    rc, o, e = run_cli("generate", run, "--z", z, "--out", out)
    line = one_line_error(rc, o, e)
    assert "--z" in line
    assert not out.exists()


def test_generate_still_takes_negative_and_exponent_values(run, tmp_path):
    z = "-8,0,1e3,-2.5e-1,3,0,0,-0"
    rc, _, err = run_cli("generate", run, "--z", z, "--out", tmp_path / "g.png")
    assert rc == 0, err
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------
# 7: odd file names as heat-map titles


def test_anomaly_titles_from_odd_file_names(run, digit_images, tmp_path):
    src = tmp_path / "odd"
    names = ["$\\frac$.png", "a$b$c$d$e$f$g$h.png", "$x^$.png"]
    for name, img in zip(names, digit_images, strict=True):
        write_png(img, src / name)
    raw = b"bad\xff\xfe_x.png"  # not UTF-8: some file systems refuse such a name
    try:
        write_png(digit_images[0], src / os.fsdecode(raw))
        names.append(os.fsdecode(raw))
    except (OSError, UnicodeError):
        pass
    csv = tmp_path / "scores.csv"
    rc, out, err = run_cli(
        "anomaly", run, src, "--csv", csv, "--out", tmp_path / "an", "--top", "8"
    )
    assert rc == 0, err
    assert "Traceback" not in err
    assert (tmp_path / "an" / "heatmaps.png").read_bytes()[:4] == b"\x89PNG"
    rows = csv.read_bytes().splitlines()
    assert len(rows) == 1 + len(names)
    for name in names:  # the original bytes of every name, as in the file system
        assert any(os.fsencode(name) in r for r in rows), name
    # and the human output prints them without an encoding error
    rc, out, err = run_cli("anomaly", run, src, "--out", tmp_path / "an")
    assert rc == 0, err
    assert out.count("\n") >= len(names)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names")
def test_anomaly_json_keeps_odd_names(run, digit_images, tmp_path):
    src = tmp_path / "odd"
    write_png(digit_images[0], src / "$\\alpha$.png")
    rc, out, err = run_cli("anomaly", run, src, "--json", "--out", tmp_path / "an")
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["results"][0]["path"].endswith("$\\alpha$.png")


def test_denoise_mistake_with_a_run_trained_without_noise_is_still_one_line(tiny_run, digits):
    # tiny_run has no --noise: its warning must not come before (and double) the error line
    one_line_error(*run_cli("denoise", tiny_run, digits, "--out", digits))
