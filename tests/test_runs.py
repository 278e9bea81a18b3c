"""Run configurations: resolving one for its data, naming a run, comparing recipes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from convae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from convae.runs import default_run_dir, resolve_config, same_recipe
from convae.version import __version__


def test_same_recipe_compares_what_is_built():
    def cfg(**m):
        return resolve_config(RunConfig(model=ModelConfig(**m)))

    k16, k32 = cfg(arch="seed-keras2d", width=16), cfg(arch="seed-keras2d", width=32)
    assert same_recipe(k16, k32)  # the seed models ignore width: the same network
    assert not same_recipe(cfg(arch="convae", width=4), cfg(arch="convae", width=8))
    assert not same_recipe(k16, cfg(arch="seed-keras2d", latent_dim=3))
    assert not same_recipe(k16, replace(k16, train=replace(k16.train, epochs=3)))
    assert not same_recipe(k16, replace(k16, data=replace(k16.data, classes=(1,))))


def test_resolve_config_takes_the_data_shape_unless_forced():
    cfg = resolve_config(RunConfig(), channels=3, image_size=32)
    assert (cfg.model.channels, cfg.model.image_size, cfg.model.latent_dim) == (3, 32, 16)
    assert cfg.version == __version__ and cfg.train.epochs == 10
    forced = RunConfig(data=DataConfig(channels=1, image_size=24))
    assert resolve_config(forced, 3, 32).model.image_size == 24
    crops = RunConfig(data=DataConfig(crop=40))  # a crop size is the model's size
    m = resolve_config(crops, 3, 512).model
    assert (m.image_size, m.arch, m.padding) == (40, "convae-map", "reflect")
    assert resolve_config(RunConfig()).model.padding == "zeros"
    assert resolve_config(RunConfig(train=TrainConfig(epochs=2))).train.epochs == 2


def test_default_run_dir_is_new(tmp_path):
    cfg = RunConfig(data=DataConfig(spec="folder:/some/photos/"))
    a = default_run_dir(cfg, tmp_path)
    assert a.parent == tmp_path and a.name.endswith("-convae-some_photos")
    a.mkdir()
    b = default_run_dir(cfg, tmp_path)
    assert b != a and not b.exists() and isinstance(b, Path)
