"""The one config loader (moc.configio) serves the run and the experiment configs alike: nested
dataclasses, dotted overrides at any depth, "did you mean" at every level, base: chains, and the README
names only keys that exist."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from moc.config import ConfigError, RunConfig, load_config
from moc.configio import apply_overrides, build, describe, field_paths, read_spec, resolve_base
from moc_experiments.experiment.capacity import CapacityConfig
from moc_experiments.experiment.protocol.config import ExperimentConfig, load_experiment

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Inner:
    rate: float = 0.5
    kind: str = "a"


@dataclass
class Middle:
    inner: Inner = field(default_factory=Inner)
    steps: int = 3


@dataclass
class Outer:
    middle: Middle = field(default_factory=Middle)
    extra: dict = field(default_factory=dict)
    name: str = "x"


def test_build_and_overrides_reach_any_depth() -> None:
    d: dict = {"middle": {"steps": 4}}
    apply_overrides(d, ["middle.inner.rate=2", "extra.free.form=[1, 2]"])
    cfg = build(Outer, d)
    assert cfg.middle.inner == Inner(rate=2.0, kind="a") and cfg.middle.steps == 4  # int widened to float
    assert cfg.extra == {"free": {"form": [1, 2]}}  # dict fields keep free-form mappings
    assert build(Outer, {"middle": None}).middle == Middle()  # a null section takes its defaults


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["middle.inner.rtae=1"], r"unknown key middle\.inner\.rtae \(did you mean 'rate'\?\)"),
        (["midle.steps=1"], r"did you mean 'middle'"),
        (["rate=1"], r"unknown key rate \(did you mean 'middle\.inner\.rate'\?\)"),
        (["middle.steps.deeper=1"], r"middle\.steps: expected int, got dict"),
        (["middle.inner.rate=fast"], r"middle\.inner\.rate: expected float"),
        (["middle=3"], r"middle: expected a mapping"),
        (["middle..steps=1"], r"empty key part"),
        (["middle.steps"], r"must look like key\.sub=value"),
    ],
)
def test_errors_name_the_key_and_suggest(overrides: list[str], message: str) -> None:
    d: dict = {}
    with pytest.raises(ConfigError, match=message):
        apply_overrides(d, overrides)
        build(Outer, d)


def test_both_config_families_share_the_loader(tmp_path: Path) -> None:
    # A nested experiment key three levels deep, and the run config inside the experiment.
    exp = load_experiment("smoke", ["data.corpus.seed=5", "moc.memory.top_k=2"])
    assert exp.data.corpus.seed == 5 and exp.moc_config.memory.top_k == 2
    with pytest.raises(ConfigError, match=r"unknown key data\.corpus\.sed \(did you mean 'seed'\?\)"):
        load_experiment("smoke", ["data.corpus.sed=5"])
    with pytest.raises(ConfigError, match=r"did you mean 'pretrain\.steps' or 'ift\.steps'\?"):
        load_experiment("smoke", ["steps=5"])  # a missing section: the nested keys of that name
    # Overrides never write into a dict the caller passed.
    given = {"base": "tiny-moc", "memory": {"top_k": 2}}
    assert load_config(given, ["memory.top_k=3"]).memory.top_k == 3 and given["memory"]["top_k"] == 2


def test_base_chains_and_presets(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\nmemory: {top_k: 2}\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\n")

    def read(spec: str) -> dict:
        return read_spec(spec if "/" in spec else str(tmp_path / spec), tmp_path, "config")

    with pytest.raises(ConfigError, match="'base' chain loops"):
        resolve_base(read("a.yaml"), read)
    with pytest.raises(ConfigError, match=r"no config preset or file named 'tiny-mok' \(did you mean"):
        load_config("tiny-mok")


def test_describe_lists_every_key_with_its_default() -> None:
    rows = {key: (tp, default) for key, tp, default in describe(RunConfig)}
    assert rows["memory.top_k"] == ("int", 64) and rows["memory.routing"][1] == "causal"
    assert rows["memory.layers"] == ("list of int or str", [])
    assert list(rows) == field_paths(RunConfig)


def test_readme_names_only_real_config_keys() -> None:
    """A config key written in the README or docs (``memory.top_k``, ``pretrain.steps``) exists, so a
    renamed key cannot leave the docs behind."""
    keys = set(field_paths(RunConfig)) | set(field_paths(ExperimentConfig)) | set(field_paths(CapacityConfig))
    sections = "model|memory|train|data|pretrain|ift|eval"
    pattern = re.compile(rf"(?<![\w./-])((?:{sections})\.[a-z_]+(?:\.[a-z_]+)*)(?=[=`\s,)])")
    files = "bin|py|safetensors|yaml|jsonl|json|md"  # a linked page such as data.md is no key
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        named = {k for k in pattern.findall(doc.read_text()) if not re.search(rf"\.({files})$", k)}
        assert named or doc.name != "README.md"  # the pattern still finds the README's keys
        unknown = sorted(k for k in named if k not in keys)
        assert not unknown, f"{doc.name} names config keys that do not exist: {unknown}"


def test_resolve_base_with_another_parent_key_and_replaced_keys() -> None:
    """Capacity presets point at their parent with ``extends`` (``base`` is a field there) and a child's
    ``models`` replace the parent's rather than adding to them; other mappings still merge."""
    files = {
        "parent": {"base": {"x": 1}, "models": {"a": {}, "b": {}}, "train": {"lr": 1, "steps": 2}},
        "child": {"extends": "parent", "models": {"c": {}}, "train": {"lr": 3}},
    }

    def read(name: str) -> dict:
        return dict(files[name])

    out = resolve_base(read("child"), read, parent_key="extends", replace=("models",))
    assert out == {"base": {"x": 1}, "models": {"c": {}}, "train": {"lr": 3, "steps": 2}}
    merged = resolve_base(read("child"), read, parent_key="extends")
    assert merged["models"] == {"a": {}, "b": {}, "c": {}}
