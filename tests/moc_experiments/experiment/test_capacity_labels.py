"""Every capacity preset's model labels say what the model is: a label that names a bank size
("MoC 512-token bank", "2k-token") names the bank the model really gets once the preset and its
``extends`` chain are resolved, and a key that names another size (``moc_2k`` shrunk to 512 tokens in a
smoke run) is explained in the label, so a report's key and label never disagree without a word."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import moc_experiments.experiment.capacity as capacity
from moc_experiments.experiment.capacity import load_capacity, model_config

PRESETS = sorted(p.stem for p in (Path(capacity.__file__).parent / "presets").glob("*.yaml"))


def _tokens(size: str) -> int:
    """A bank size as written in a label or key: 512 -> 512 tokens, 2k -> 2048."""
    return int(size[:-1]) * 1024 if size.endswith("k") else int(size)


def _banks(preset: str) -> list[tuple[str, str, int]]:
    cfg = load_capacity(preset)
    out = []
    for key, spec in cfg.models.items():
        mc = model_config(cfg, key, vocab_size=40, seq_len=12)
        if mc.memory.enabled:
            out.append((key, spec.get("label") or key, mc.memory.n_tokens))
    return out


@pytest.mark.parametrize("preset", PRESETS)
def test_labels_and_keys_name_the_bank_the_model_gets(preset: str) -> None:
    for key, label, n_tokens in _banks(preset):
        said = re.search(r"(\d+k?)-token bank", label)
        if said:
            assert _tokens(said.group(1)) == n_tokens, f"{preset}: {key} labelled {label!r} has {n_tokens}"
        named = re.fullmatch(r"moc_(\d+k?)", key)
        if named and _tokens(named.group(1)) != n_tokens:
            why = f"{preset}: {key} has a {n_tokens}-token bank; its label {label!r} must say why"
            assert key in label, why


def test_the_smoke_runs_moc_2k_is_a_512_token_bank() -> None:
    banks = {key: (label, n) for key, label, n in _banks("capacity-bits-smoke")}
    label, n_tokens = banks["moc_2k"]
    assert n_tokens == 512 and label.startswith("MoC 512-token bank") and "moc_2k shrunk" in label
