"""Checkpoints: atomic writes, save -> load gives identical outputs, trainer state, run-dir checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from convae import checkpoint, load
from convae.checkpoint import (
    TrainState,
    atomic_write,
    check_run_dir,
    commit_epoch,
    fingerprint,
    load_weights,
    read_json,
    read_state,
    restore_state,
    run_lock,
    save_weights,
    write_json,
)
from convae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from convae.models import available, build_model


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    atomic_write(p, "one")
    atomic_write(p, b"two")
    assert p.read_bytes() == b"two"
    assert _files(p.parent) == ["f.txt"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "model.safetensors"
    atomic_write(p, b"good")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(p, b"half-written")
    assert p.read_bytes() == b"good"
    assert _files(tmp_path) == ["model.safetensors"]  # the temp file was removed


def test_json_roundtrip_and_errors(tmp_path):
    write_json(tmp_path / "a.json", {"b": [1, 2], "a": 0.5})
    assert read_json(tmp_path / "a.json") == {"a": 0.5, "b": [1, 2]}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(tmp_path / "bad.json")


def test_run_config_roundtrip():
    cfg = RunConfig(
        model=ModelConfig(arch="seed-strided", latent_dim=12),
        data=DataConfig(classes=(1, 5, 6), spec="folder:/x"),
        train=TrainConfig(noise=("gaussian:0.4",), epochs=3),
        preset="default",
        version="0.1.0",
    )
    assert RunConfig.from_json(cfg.to_json()) == cfg
    d = cfg.to_dict()
    d["model"]["from_the_future"] = 1  # newer versions may add fields: ignored
    del d["train"]["lr"]  # older ones may lack fields: defaulted
    back = RunConfig.from_dict(d)
    assert back.model == cfg.model and back.train.lr == TrainConfig().lr
    with pytest.raises(ValueError):
        RunConfig.from_dict([1, 2])


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        (
            "model",
            "latent_dim",
            "two",
            "model.latent_dim must be an integer or null, not str 'two'",
        ),
        ("model", "latent_dim", 2.5, "model.latent_dim must be an integer or null, not float 2.5"),
        ("model", "image_size", "28", "model.image_size must be an integer, not str '28'"),
        ("model", "mean_image", 1, "model.mean_image must be true or false or null, not int 1"),
        ("data", "spec", 7, "data.spec must be a string, not int 7"),
        ("data", "val_fraction", "x", "data.val_fraction must be a number, not str 'x'"),
        ("data", "classes", "abc", "data.classes must be a list of integers or null, not str"),
        ("train", "noise", [1], "train.noise must be a list of strings, not list"),
        ("train", "lr", True, "train.lr must be a number or null, not bool True"),
    ],
)
def test_run_config_values_of_the_wrong_type_are_named(section, key, value, message):
    d = RunConfig().to_dict()
    d[section][key] = value
    with pytest.raises(ValueError) as e:
        RunConfig.from_dict(d)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_malformed_config_json_names_the_file(tmp_path):
    from convae.config import read_run_config

    path = tmp_path / "config.json"
    d = RunConfig().to_dict()
    d["model"] = "abc"
    path.write_text(json.dumps(d))
    with pytest.raises(
        ValueError, match=r"config.json: model must be a JSON object, not str 'abc'"
    ):
        read_run_config(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json: not valid JSON"):
        read_run_config(path)
    path.write_text(RunConfig().to_json())
    assert read_run_config(path) == RunConfig()


@pytest.mark.parametrize("arch", sorted(available()))
def test_save_load_identical_outputs(tmp_path, arch):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, channels=3, image_size=16, width=4)
    model = build_model(cfg)
    # make BatchNorm running stats non-trivial so that buffers are tested too
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 16, 16))
    model.eval()
    save_weights(model, tmp_path / "w.safetensors")
    torch.manual_seed(1)  # a different init: only the file can make them equal
    other = build_model(cfg).eval()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert not torch.equal(model(x), other(x))
        other.load_state_dict(load_weights(tmp_path / "w.safetensors"))
        assert torch.equal(model(x), other(x))
        if model.has_code:
            assert torch.equal(model.encode(x), other.encode(x))
    assert fingerprint(model.state_dict(), cfg) == fingerprint(other.state_dict(), cfg)


def test_fingerprint(make_images):
    cfg = ModelConfig(arch="seed-strided")
    model = build_model(cfg)
    fp = fingerprint(model.state_dict(), cfg)
    assert isinstance(fp, bytes) and len(fp) == 16
    assert fingerprint(model.state_dict(), cfg) == fp  # stable
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["encoder.0.bias"][0] += 1e-6
    assert fingerprint(sd, cfg) != fp  # any weight change
    other = ModelConfig(arch="seed-strided", latent_dim=12, image_size=28, width=8)
    assert fingerprint(model.state_dict(), other) != fp  # the model config is part of it


def test_load_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_weights(tmp_path / "junk.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.safetensors"):
        load_weights(tmp_path / "empty.safetensors")


def _stepped_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(2):
        opt.zero_grad()
        model(torch.rand(2, 1, 16, 16)).square().mean().backward()
        opt.step()
    return opt


def _committed(run, model, opt, epochs: int, best_epoch: int | None = None) -> TrainState:
    """Commit ``epochs`` epochs of a fake history; the best loss is at ``best_epoch``."""
    state = TrainState()
    for e in range(1, epochs + 1):
        loss = 0.1 if e == (best_epoch or e) else 1.0 + e
        state.record({"epoch": e, "step": 2 * e, "train_loss": loss, "val_loss": loss}, loss, 0)
        with torch.no_grad():
            next(model.parameters()).add_(0.01)  # each epoch's weights differ
        commit_epoch(run, model, opt, state)
    return state


def test_commit_and_restore_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="convae", image_size=16, width=4))
    opt = _stepped_optimizer(model)
    _committed(tmp_path, model, opt, 3, best_epoch=2)
    state, manifest = read_state(tmp_path)
    assert (state.epoch, state.step, state.best_epoch, state.best) == (3, 6, 2, 0.1)
    assert sorted(p.name for p in tmp_path.glob("state-*")) == [
        "state-0002.safetensors",  # the best epoch's, kept while it is older than the last
        "state-0003.safetensors",
    ]
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in lines] == [1, 2, 3]
    torch.manual_seed(5)
    fresh = build_model(ModelConfig(arch="convae", image_size=16, width=4))
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=5.0)
    restore_state(tmp_path, manifest, fresh, opt2)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == 1e-2
    for pid in a["state"]:
        for k, v in a["state"][pid].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][pid][k])), (pid, k)
    best = load_weights(tmp_path / "model.safetensors")  # epoch 2's weights, not the last
    assert not torch.equal(best["encoder.0.weight"], model.state_dict()["encoder.0.weight"])


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_restored_state_takes_the_layout_of_channels_last_weights(tmp_path, optimizer):
    # safetensors gives the moments back contiguous; the fused AdamW kernel would pair them
    # element-by-element with channels_last weights, in memory order, and silently go wrong.
    from convae.optim import build_optimizer

    def model():
        torch.manual_seed(0)
        m = build_model(ModelConfig(arch="seed-strided", image_size=16, latent_dim=4))
        return m.to(memory_format=torch.channels_last)

    def opt_for(m):
        return build_optimizer(list(m.parameters()), TrainConfig(optimizer=optimizer, lr=1e-2))

    x = torch.rand(4, 1, 16, 16).contiguous(memory_format=torch.channels_last)

    def steps(m, opt, n):
        for _ in range(n):
            opt.zero_grad()
            (m(x) - x).square().mean().backward()
            opt.step()

    uninterrupted = model()
    steps(uninterrupted, opt_for(uninterrupted), 6)
    m = model()
    opt = opt_for(m)
    steps(m, opt, 3)
    state = TrainState()
    state.record({"epoch": 1, "step": 3}, 1.0, 0)
    commit_epoch(tmp_path, m, opt, state)
    resumed = opt_for(m)
    restore_state(tmp_path, read_state(tmp_path)[1], m, resumed)
    for p in m.parameters():
        for v in resumed.state[p].values():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                assert v.stride() == p.stride()
    steps(m, resumed, 3)
    for a, b in zip(m.parameters(), uninterrupted.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_kill_between_the_writes_leaves_the_last_commit(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="seed-strided", image_size=16))
    opt = _stepped_optimizer(model)
    _committed(tmp_path, model, opt, 2)
    committed = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # killed after writing epoch 3's state file, before trainer.json named it
    (tmp_path / "state-0003.safetensors").write_bytes(b"half")
    (tmp_path / ".convae-abc.tmp").write_bytes(b"temp")
    state, manifest = read_state(tmp_path)
    assert state.epoch == 2 and manifest["state_file"] == "state-0002.safetensors"
    # killed after trainer.json, before model.safetensors and history.jsonl were derived
    (tmp_path / "model.safetensors").write_bytes(b"stale")
    (tmp_path / "history.jsonl").write_text("")
    from convae.checkpoint import reconcile

    reconcile(tmp_path, manifest)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == committed


def test_a_damaged_state_is_one_clear_error(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="seed-strided", image_size=16))
    opt = _stepped_optimizer(model)
    assert read_state(tmp_path) is None  # nothing committed yet
    _committed(tmp_path, model, opt, 1)
    (tmp_path / "state-0001.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        restore_state(tmp_path, read_state(tmp_path)[1], model, opt)
    (tmp_path / "state-0001.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="named by trainer.json"):
        read_state(tmp_path)
    (tmp_path / "trainer.json").write_text('{"epoch": 3}')
    with pytest.raises(ValueError, match="not a training state this convae can resume"):
        read_state(tmp_path)
    other = build_model(ModelConfig(arch="seed-strided", image_size=16, latent_dim=5))
    _committed(tmp_path, model, opt, 1)
    with pytest.raises(
        ValueError,
        match=r"encoder.4.weight is \[12, 32, 4, 4\] in the file, \[5, 32, 4, 4\] in the model",
    ):
        restore_state(tmp_path, read_state(tmp_path)[1], other, opt)


def test_one_writer_per_run(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(FileExistsError, match=f"another convae process \\(PID {os.getpid()}"):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released when the holder is done
        pass
    (tmp_path / "elsewhere").write_text("x")
    (tmp_path / "link").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "link" / ".lock")
    with pytest.raises(ValueError, match="symlink"):
        with run_lock(tmp_path / "link"):
            pass
    assert (tmp_path / "elsewhere").read_text() == "x"


def test_check_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run"):
        check_run_dir(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a run directory"):
        check_run_dir(tmp_path / "file")
    with pytest.raises(FileNotFoundError, match="config.json"):
        check_run_dir(tmp_path)


def test_load_run_gives_the_trained_model(tiny_run):
    model = load(tiny_run)
    assert not model.training
    assert model.run_dir == Path(tiny_run)
    cfg = model.run_config
    assert cfg.model.arch == "convae" and cfg.model.latent_dim == 8 and cfg.model.width == 4
    assert model.latent_dim == 8
    same = load(tiny_run)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), same(x))
    sd = load_weights(Path(tiny_run) / "model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    last = load(tiny_run, which="last")  # 1 epoch: best == last
    with torch.no_grad():
        assert torch.equal(last(x), model(x))


def test_load_mismatched_weights(tmp_path, tiny_run):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "model.safetensors"):
        (run / name).write_bytes((Path(tiny_run) / name).read_bytes())
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["latent_dim"] = 9
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match"):
        load(run)
    os.unlink(run / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load(run)
