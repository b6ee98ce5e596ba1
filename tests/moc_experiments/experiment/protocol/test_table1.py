"""The table1 sweep's machinery on the table1-smoke preset (tiny models, 2 seeds, 3 steps): the wide dense
model's FLOPs, per-model LRs, held-out facts and prose, ablations, records reused across runs (and only
where recipe, model and corpus match), the report rebuilt from records, the paired verdicts, --plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moc.config import ConfigError
from moc_experiments.errors import ExperimentError
from moc_experiments.experiment.protocol.config import load_experiment
from moc_experiments.experiment.protocol.models import inference_flops, model_specs, phase_config
from moc_experiments.experiment.protocol.plan import plan_text
from moc_experiments.experiment.protocol.runner import run_experiment
from moc_experiments.experiment.protocol.table1 import loss_verdicts


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("table1")
    exp = load_experiment(
        "table1-smoke",
        [f"out_dir={root / 'run'}", f"records={root / 'rec'}", f"data.cache_dir={root / 'data'}"],
    )
    return root, run_experiment(exp, progress=False)


def _load(root: Path, *over: str):
    return load_experiment(
        "table1-smoke",
        [f"out_dir={root / 'again'}", f"records={root / 'rec'}", f"data.cache_dir={root / 'data'}", *over],
    )


def test_models_and_their_own_lrs() -> None:
    exp = load_experiment("table1-smoke")
    specs = model_specs(exp, 400)
    assert list(specs) == ["moc", "dense_backbone", "dense_isoflop", "dense_wide", "moc_causal"]
    assert specs["moc"].cfg.memory.routing == "token" and specs["moc_causal"].cfg.memory.routing == "causal"
    # The wide model keeps the depth and matches MoC's inference FLOPs better than one width step less.
    wide, moc = specs["dense_wide"].cfg, specs["moc"].cfg
    assert wide.model.n_layers == moc.model.n_layers and wide.model.d_model > moc.model.d_model
    target = inference_flops(moc, 64, 4)
    narrower = wide.replace({"model.d_model": wide.model.d_model - 2 * wide.model.n_heads})
    assert abs(inference_flops(wide, 64, 4) - target) < abs(inference_flops(narrower, 64, 4) - target)
    lr = {
        k: phase_config(s, exp, "pretrain", seed=0, out_dir=Path("."), prepared_dir=Path(".")).train
        for k, s in specs.items()
    }
    assert lr["dense_wide"].lr == 2.0e-3 and lr["dense_backbone"].lr == exp.pretrain.lr
    assert lr["moc"].bank_lr == exp.pretrain.lr * exp.pretrain.bank_lr_scale


def test_config_refuses_what_cannot_work() -> None:
    with pytest.raises(ConfigError, match="lrs names"):
        load_experiment("table1-smoke", ["lrs={moc_sequence: 1.0e-3}"])
    with pytest.raises(ConfigError, match="records keeps pretraining runs only"):
        load_experiment("table1-smoke", ["records=/tmp/x", "ift.steps=2"])
    with pytest.raises(ConfigError, match="also_routings"):
        load_experiment("table1-smoke", ["also_routings=[token]"])


def test_heldout_documents_are_the_prepared_validation_split(sweep: tuple[Path, dict]) -> None:
    """Facts + prose tokens add up to the prepared val split, so the held-out sets are what no model
    trained on (a different split rule would break this)."""
    root, results = sweep
    held = np.load(root / "data" / "heldout.npz")
    assert len(held["facts_lens"]) > 0 and len(held["prose_lens"]) > 0
    assert int(held["facts_lens"].sum() + held["prose_lens"].sum()) == results["data"]["pretrain_val_tokens"]


def test_sweep_measures_every_row(sweep: tuple[Path, dict]) -> None:
    root, results = sweep
    assert [r["seed"] for r in results["runs"]] == [0, 1]
    for seed_run in results["runs"]:
        for key, run in seed_run["pretrain"].items():
            assert run["val_split"]["facts"]["loss"] > 0 and run["val_split"]["prose"]["loss"] > 0
            assert ("ablations" in run) == key.startswith("moc")
            assert run["probes"]["tasks"]
        moc = seed_run["pretrain"]["moc"]
        # The shuffled bank and the zeroed memory really change the model (3 steps moved the bank).
        assert moc["ablations"]["memory_off"]["val"] != moc["val"]["loss"]
        assert moc["ablations"]["shuffled"]["val"] != moc["val"]["loss"]
    assert len(list((root / "rec").glob("*.json"))) == 10
    report = (root / "run" / "report.md").read_text()
    assert "Paired verdicts over seeds" in report and "itself with shuffled chapters" in report


def test_records_are_reused_only_where_they_match(sweep: tuple[Path, dict]) -> None:
    root, first = sweep
    again = run_experiment(_load(root), progress=False)
    assert again["timing"]["train_s"] < 1.0  # nothing trained
    assert again["runs"][1]["pretrain"]["moc"]["val"] == first["runs"][1]["pretrain"]["moc"]["val"]
    # Another LR for one model retrains that model only: its records are replaced, the others kept.
    before = {p.name: p.stat().st_mtime_ns for p in (root / "rec").glob("*.json")}
    changed = run_experiment(_load(root, "lrs={dense_wide: 1.0e-3}"), progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (root / "rec").glob("*.json")}
    assert {n for n in after if after[n] != before[n]} == {"dense_wide-seed0.json", "dense_wide-seed1.json"}
    assert (
        changed["runs"][0]["pretrain"]["dense_wide"]["val"]
        != first["runs"][0]["pretrain"]["dense_wide"]["val"]
    )
    # MoC's memory and bank LR retrains the MoC runs only: the dense models have no memory parameters.
    before = after
    run_experiment(
        _load(root, "lrs={dense_wide: 1.0e-3}", "pretrain.memory_lr_scale=3.0", "pretrain.bank_lr_scale=3.0"),
        progress=False,
    )
    after = {p.name: p.stat().st_mtime_ns for p in (root / "rec").glob("*.json")}
    with_memory = [k for k, m in first["models"].items() if m.get("memory_layers")]
    moc_runs = {f"{k}-seed{s}.json" for k in with_memory for s in (0, 1)}
    assert moc_runs and {n for n in after if after[n] != before[n]} == moc_runs


def test_a_record_made_before_fused_adamw_or_kept_memory_still_matches() -> None:
    """train.fused_optimizer changes rounding only, train.retain_freed_memory where memory comes from: a
    record stored without them keeps matching; the rest of the training config still decides."""
    from moc_experiments.experiment.protocol.records import model_identity

    memory = {"enabled": True, "layers": [1]}
    train = {"lr": 1e-3, "seed": 2, "fused_optimizer": True, "retain_freed_memory": True}
    now = {"train": train, "memory": memory}
    stored = {"train": {"lr": 1e-3, "seed": 0}, "memory": memory}
    assert model_identity(now) == model_identity(stored)
    assert model_identity(now) != model_identity({"train": {"lr": 2e-3}, "memory": memory})


def test_report_from_records_trains_nothing(sweep: tuple[Path, dict], tmp_path: Path) -> None:
    root, first = sweep
    exp = load_experiment(
        "table1-smoke",
        [
            f"out_dir={tmp_path / 'r'}",
            f"records={root / 'rec'}",
            f"data.cache_dir={root / 'data'}",
            "seeds=3",
        ],
    )
    results = run_experiment(exp, progress=False, train=False)
    assert [r["seed"] for r in results["runs"]] == [0, 1]  # seed 2 has no record: left out, not trained
    assert not (tmp_path / "r" / "logs").exists() or not any((tmp_path / "r" / "logs").iterdir())
    assert "Paired verdicts" in (tmp_path / "r" / "report.md").read_text()
    empty = load_experiment("table1-smoke", [f"out_dir={tmp_path / 'e'}", f"records={tmp_path / 'none'}",
                                             f"data.cache_dir={root / 'data'}"])  # fmt: skip
    with pytest.raises(ExperimentError, match="no finished run"):
        run_experiment(empty, progress=False, train=False)


def _results(moc: list[float], dense: list[float], shuffled: list[float]) -> dict:
    runs = [
        {"seed": i, "pretrain": {
            "moc": {"val": {"loss": m}, "ablations": {"shuffled": {"val": s}}},
            "dense": {"val": {"loss": d}},
        }}
        for i, (m, d, s) in enumerate(zip(moc, dense, shuffled))
    ]  # fmt: skip
    models = {"moc": {"label": "MoC", "role": "moc"}, "dense": {"label": "Dense", "role": "baseline"}}
    return {"models": models, "runs": runs, "ift_runs": {}}


def test_verdicts_follow_the_paired_t_rule() -> None:
    # Consistently lower by 0.1 with little spread: claimed lower. The same mean with seed noise larger
    # than the effect (one seed the other way): no claim.
    rows = loss_verdicts(_results([3.0, 3.1, 2.9], [3.1, 3.21, 2.99], [3.2, 3.3, 3.1]))
    by = {(o, w): v for _, o, w, v in rows}
    assert by[("Dense", "validation windows")].word() == "lower"
    assert by[("itself with shuffled chapters", "validation windows")].word() == "higher"
    noisy = loss_verdicts(_results([3.0, 3.4, 2.6], [3.3, 3.2, 2.8], [3.0, 3.4, 2.6]))
    assert {o: v.word() for o, _, v in [(r[1], r[2], r[3]) for r in noisy]}["Dense"] == "within seed noise"


def test_plan_estimates_hours_from_timed_steps() -> None:
    text = plan_text(load_experiment("table1-smoke"))
    assert "estimated pretraining time" in text and "dense_wide" in text
    assert "inference-FLOP mismatch" in text
    wide = next(line for line in text.splitlines() if line.startswith("dense_wide "))
    assert wide.split()[1] == "0.002"  # its own LR (lrs), the others pretrain.lr
