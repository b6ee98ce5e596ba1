"""Experiment config: presets, overrides, base chains, and every validation error."""

from __future__ import annotations

from pathlib import Path

import pytest

from moc.accounting import isoflop
from moc.config import ConfigError
from moc_experiments.experiment.protocol.config import check_data_given, experiment_presets, load_experiment
from moc_experiments.experiment.protocol.models import ift_runs, model_specs, phase_config


def test_presets_load_and_differ() -> None:
    assert {"demo", "smoke", "paper"} <= set(experiment_presets())
    demo, smoke, paper = (load_experiment(n) for n in ("demo", "smoke", "paper"))
    # the demo is a small Table 1: MoC with token routing (leak-free, per token) and with causal routing
    table1 = load_experiment("table1")
    assert demo.moc_config.memory.routing == "token" and demo.also_routings == ["causal"]
    assert demo.moc_config.to_dict() == table1.moc_config.to_dict() and demo.lrs == table1.lrs
    assert demo.baselines == table1.baselines and demo.eval.split_val and demo.eval.ablations
    assert smoke.pretrain.steps < demo.pretrain.steps < paper.pretrain.steps
    assert paper.data.source == "files"


def test_paper_preset_matches_spec() -> None:
    exp = load_experiment("paper")
    cfg = exp.moc_config
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.memory_layers) == (16, 768, [2, 6, 10, 14])
    assert cfg.memory.n_tokens == 262208 and cfg.memory.top_k == 64
    assert exp.pretrain.steps == 9600 and exp.pretrain.lr == 3e-4
    assert exp.pretrain.lr * exp.pretrain.memory_lr_scale == pytest.approx(6e-4)
    assert exp.ift.lr == 3e-5 and exp.ift.lr * exp.ift.bank_lr_scale == pytest.approx(5e-6, rel=1e-3)
    assert exp.ift.lr * exp.ift.memory_lr_scale == pytest.approx(1.5e-5)
    specs = model_specs(exp)
    assert specs["moc_sequence"].cfg.memory.routing == "sequence"  # the paper's routing, as the ablation
    # The iso-FLOP depth follows moc.accounting for the (causal) main model at the pretraining length and
    # micro-batch (batch-aware: distinct chapters are projected once per micro-batch).
    micro = exp.pretrain.micro_batch_size or cfg.train.micro_batch_size
    assert specs["dense_isoflop"].cfg.model.n_layers == isoflop(exp.moc_config, 1024, micro)["dense_layers"]
    assert abs(specs["dense_isoflop"].isoflop_mismatch) < 0.01


def test_paper_preset_errors_without_data() -> None:
    exp = load_experiment("paper")
    with pytest.raises(ConfigError, match="data.pretrain") as e:
        check_data_given(exp)
    assert "data.ift" in str(e.value) and "data.probes_dir" in str(e.value)


def test_user_data_paths_must_exist(tmp_path: Path) -> None:
    exp = load_experiment(
        "paper", [f"data.pretrain=[{tmp_path / 'nope.txt'}]", "ift.steps=0", "eval.probes=false"]
    )
    with pytest.raises(ConfigError, match="does not exist"):
        check_data_given(exp)
    (tmp_path / "t.txt").write_text("hello")
    check_data_given(load_experiment(exp, [f"data.pretrain=[{tmp_path / 't.txt'}]"]))


def test_overrides_deep_and_base_chain(tmp_path: Path) -> None:
    exp = load_experiment("smoke", ["pretrain.steps=7", "moc.memory.top_k=3", "data.corpus.max_text_mb=0.5"])
    assert exp.pretrain.steps == 7 and exp.moc_config.memory.top_k == 3 and exp.data.corpus.max_text_mb == 0.5
    f = tmp_path / "mine.yaml"
    f.write_text("base: smoke\nift: {steps: 5}\nmoc: {memory: {top_k: 1}}\n")
    mine = load_experiment(f)
    assert mine.name == "mine" and mine.ift.steps == 5 and mine.moc_config.memory.top_k == 1
    assert mine.ift.lr == load_experiment("smoke").ift.lr  # the rest comes from the base


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pretrain.stepz=3"], "did you mean 'steps'"),
        (["pretrain.steps=0"], "pretrain.steps must be positive"),
        (["ift.lr=-1"], "ift.lr must be positive"),
        (["ift.variants=[frozen, frozen]"], "twice"),
        (["ift.variants=[thawed]"], "not one of"),
        (["baselines=[dense_tall]"], "not one of"),
        (["seeds=0"], "seeds must be >= 1"),
        (["moc.memory.enabled=false", "moc.memory.layers=[]"], "moc.memory.enabled is false"),
        (["moc.memory.top_k=99"], "moc: memory.top_k=99"),
        (["pretrain.seq_len=4096"], "exceeds moc.model.max_seq_len"),
        (["data.val_fraction=1.5"], "val_fraction"),
        (["data.source=files", "data.probes_dir=/x"], "probe_tasks is empty"),
        (["eval.batch_size=0"], "eval.batch_size"),
        (["data.source=web"], "not one of"),
        (["pretrain=3"], "expected a mapping"),
        (["steps=3"], "unknown key steps"),
    ],
)
def test_validation_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_experiment("smoke", overrides)


def test_unknown_experiment_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'demo'"):
        load_experiment("demi")


def test_models_share_the_recipe(tmp_path: Path) -> None:
    exp = load_experiment("smoke", ["ift.steps=40"])  # the paper's protocol: leak ablation, IFT variants
    specs = model_specs(exp, vocab_size=1000)
    assert list(specs) == ["moc", "dense_backbone", "dense_isoflop", "moc_sequence"]
    assert specs["moc_sequence"].cfg.memory.routing == "sequence"
    assert not specs["dense_backbone"].has_memory and specs["dense_backbone"].cfg.model.n_layers == 2
    cfgs = {
        k: phase_config(s, exp, "pretrain", seed=3, out_dir=tmp_path / k, prepared_dir=tmp_path)
        for k, s in specs.items()
    }
    shared = {
        "seed",
        "lr",
        "seq_len",
        "micro_batch_size",
        "grad_accum_steps",
        "max_steps",
        "weight_decay",
        "schedule",
        "warmup_steps",
        "grad_clip",
    }
    for c in cfgs.values():
        assert c.model.vocab_size == 1000
        assert {k: getattr(c.train, k) for k in shared} == {k: getattr(cfgs["moc"].train, k) for k in shared}
    moc = cfgs["moc"].train
    assert moc.memory_lr == moc.bank_lr == pytest.approx(2 * moc.lr)
    runs = ift_runs(exp, specs)
    assert runs == {
        "moc_frozen": ("moc", "frozen"),
        "moc_low_lr": ("moc", "low_lr"),
        "dense_backbone": ("dense_backbone", None),
        "dense_isoflop": ("dense_isoflop", None),
    }
    frozen = phase_config(
        specs["moc"], exp, "ift", seed=3, out_dir=tmp_path, prepared_dir=tmp_path, variant="frozen"
    ).train
    low = phase_config(
        specs["moc"], exp, "ift", seed=3, out_dir=tmp_path, prepared_dir=tmp_path, variant="low_lr"
    ).train
    assert frozen.freeze_bank and not low.freeze_bank
    assert low.bank_lr == pytest.approx(low.lr / 6, rel=1e-3) and low.memory_lr == pytest.approx(low.lr / 2)
