"""Typed config: presets, YAML, overrides and every validation error."""

from __future__ import annotations

import pytest

import moc
from moc.config import ConfigError, RunConfig, load_config


def test_presets_load() -> None:
    for name in moc.preset_names():
        assert isinstance(load_config(name), RunConfig)
    cfg = load_config("paper-moc")
    assert cfg.memory_layers == [2, 6, 10, 14]
    assert cfg.memory.n_selected_tokens == 4160 and cfg.memory.chapter_size == 64
    assert load_config("paper-dense-iso").model.n_layers == 24


def test_overrides_and_yaml_round_trip(tmp_path) -> None:
    cfg = load_config("tiny-moc", overrides=["memory.top_k=2", "model.n_layers=6", "memory.routing=token"])
    assert (cfg.memory.top_k, cfg.model.n_layers, cfg.memory.routing) == (2, 6, "token")
    path = tmp_path / "c.yaml"
    cfg.save(path)
    assert load_config(path) == cfg
    (tmp_path / "child.yaml").write_text("base: tiny-moc\nmemory: {top_k: 3}\n")
    child = load_config(tmp_path / "child.yaml")
    assert child.memory.top_k == 3 and child.memory.n_chapters == 32


@pytest.mark.parametrize(
    ("spec", "layers"),
    [
        ("all", [0, 1, 2, 3]),
        ("first:2", [0, 1]),
        ("last:2", [2, 3]),
        ("every:2", [0, 2]),
        ("every:2:1", [1, 3]),
    ],
)
def test_placement_specs(spec: str, layers: list[int]) -> None:
    assert load_config("tiny-moc", [f"memory.layers={spec}"]).memory_layers == layers


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["memory.n_tokens=500"], "not divisible by memory.n_chapters"),
        (["memory.top_k=32"], "larger than the 31 routed chapters"),
        (["model.n_heads=5"], "does not divide model.d_model"),
        (["model.n_kv_heads=3"], "does not divide model.n_heads"),
        (["memory.n_heads=3"], "does not divide model.d_model"),
        (["memory.n_kv_heads=3"], "does not divide memory.n_heads"),
        (["memory.layers=[1, 4]"], "out of range for model.n_layers=4"),
        (["memory.layers=[1, 1]"], "twice"),
        (["memory.layers=sideways"], "cannot read"),
        (["memory.top_kk=3"], "did you mean 'top_k'"),
        (["memroy.top_k=3"], "did you mean 'memory'"),
        (["model.d_model=big"], "expected int"),
        (["memory.enabled=maybe"], "expected bool"),
        (["memory.routing=global"], "not one of"),
        (["memory.layers=[1.5]"], "memory.layers"),
        (["model.d_model=-4"], "must be positive"),
        (["memory.n_shared_chapters=32"], "n_shared_chapters"),
        (["memory.bank_type=reduced", "memory.bank_dim=30"], "memory.bank_dim=30"),
        (["top_k=3"], "unknown key top_k \\(did you mean 'memory.top_k'"),
        (["memory.routing=casual"], "did you mean 'causal'"),
        (["model.d_model.width=3"], "'d_model' is not a section"),
    ],
)
def test_validation_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("tiny-moc", overrides)


def test_unknown_preset_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'tiny-moc'"):
        load_config("tiny-mok")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("missing.yaml")


def test_dense_config_skips_memory_checks() -> None:
    cfg = load_config("tiny-dense", ["memory.top_k=1000"])
    assert cfg.memory_layers == []


def test_float_overrides_accept_exponent_without_dot() -> None:
    assert load_config("tiny-moc", ["train.lr=3e-4"]).train.lr == 3e-4
    with pytest.raises(ConfigError, match="expected float"):
        load_config("tiny-moc", ["train.lr=fast"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.seq_len=4096"], "longer than model.max_seq_len"),
        (["train.micro_batch_size=0"], "train.micro_batch_size must be positive"),
        (["train.epochs=0"], "train.epochs must be positive"),
        (["train.min_lr_ratio=2"], r"train.min_lr_ratio must be in \[0, 1\]"),
        (["train.warmup_steps=50", "train.decay_start=10"], "before the end of warmup"),
    ],
)
def test_train_validation(overrides: list[str], message: str) -> None:
    """Checks a training run adds: the config loads (it may only build a model), training refuses it."""
    from moc.config import validate_train

    cfg = load_config("tiny-moc", overrides)
    with pytest.raises(ConfigError, match=message):
        validate_train(cfg)
