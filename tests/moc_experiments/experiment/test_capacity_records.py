"""The bank-size sweep's machinery: finished runs kept as records (and reused only where recipe and model
match), seed-major scheduling, chapter use over training, IFT at a ratio of each model's own LR with the
whole memory path frozen, and the plan's time estimate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from moc.model import MoCModel
from moc.model.param_groups import param_category
from moc_experiments.experiment.capacity import load_capacity, model_config
from moc_experiments.experiment.capacity.models import model_records
from moc_experiments.experiment.capacity.pipeline import (
    CapacityJob,
    capacity_plan,
    estimated_hours,
    plan_jobs,
    prepare,
    record_path,
    save_record,
    saved_records,
)
from moc_experiments.experiment.capacity.train import _ift_config, chapter_use, fit


def _cfg(tmp_path: Path, *more: str):
    return load_capacity("capacity-bits-smoke", [f"records={tmp_path / 'records'}", *more])


def _job(cfg, key: str = "moc_2k", seed: int = 0, scale: float = 1.0) -> CapacityJob:
    return CapacityJob(key=key, seed=seed, steps=3, experiment=cfg.to_dict(), scale=scale)


def test_a_saved_record_is_reused_only_with_the_same_recipe_model_and_seeds(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    rec = {"seed": 0, "steps": 3, "train_s": 1.5, "bits": {"total": 12.0}}
    save_record(cfg, _job(cfg), rec, None)
    save_record(cfg, _job(cfg, "dense_backbone", 1, 0.5), rec | {"seed": 1}, None)
    assert record_path(tmp_path / "records", "moc_2k", 0, 1.0).is_file()
    assert set(saved_records(cfg)) == {("moc_2k", 0, 1.0), ("dense_backbone", 1, 0.5)}
    assert saved_records(cfg)[("moc_2k", 0, 1.0)] == rec
    # Another recipe, another model setting, a seed outside the experiment, another corpus: not reused.
    assert saved_records(_cfg(tmp_path, "train.lr=0.01")) == {}
    assert set(saved_records(_cfg(tmp_path, "models.moc_2k.lr_scale=0.5"))) == {("dense_backbone", 1, 0.5)}
    assert set(saved_records(_cfg(tmp_path, "seeds=1"))) == {("moc_2k", 0, 1.0)}
    assert saved_records(cfg, corpus_stamp="abc") == {}
    # Settings that change no number (workers, where results go) keep the records.
    assert len(saved_records(_cfg(tmp_path, "workers=1", f"out_dir={tmp_path / 'elsewhere'}"))) == 2


def test_fused_adamw_is_a_recipe_setting_off_for_the_records_made_without_it(tmp_path: Path) -> None:
    """Older records ran unfused AdamW: the default keeps them; fused is another recipe (a sweep's runs stay
    comparable within one setting), and it reaches every optimizer the runs build."""
    cfg = _cfg(tmp_path)
    save_record(cfg, _job(cfg), {"seed": 0}, None)
    assert set(saved_records(cfg)) == {("moc_2k", 0, 1.0)}
    fused = _cfg(tmp_path, "train.fused_optimizer=true")
    assert saved_records(fused) == {}
    assert _ift_config(fused, "full", 1e-3).fused_optimizer is True
    assert _ift_config(cfg, "full", 1e-3).fused_optimizer is False


def test_a_record_saved_before_a_recipe_field_existed_takes_its_default(tmp_path: Path) -> None:
    """A record written before ``train.fused_optimizer`` (or any later field) existed was made with the
    field's default: it is reused under the default and not under another setting."""
    cfg = _cfg(tmp_path)
    path = save_record(cfg, _job(cfg), {"seed": 0}, None)
    older = json.loads(path.read_text())
    del older["recipe"]["train"]["fused_optimizer"]
    path.write_text(json.dumps(older))
    assert set(saved_records(cfg)) == {("moc_2k", 0, 1.0)}
    assert saved_records(_cfg(tmp_path, "train.fused_optimizer=true")) == {}


def test_the_plan_counts_only_the_runs_it_would_train(tmp_path: Path) -> None:
    """A records folder may hold more than the sweep schedules (here a half-length run of a seed beyond
    ``saturation_seeds``): the plan's counts are of its own runs."""
    cfg = _cfg(tmp_path)
    for scale, seed in ((0.5, 0), (0.5, 1)):  # the sweep runs seed 0 at half length, not seed 1
        save_record(cfg, _job(cfg, "moc_2k", seed, scale), {"seed": seed, "steps": 3, "train_s": 0.1}, None)
    n = len(plan_jobs(cfg, prepare(cfg, progress=False), model_records(cfg, 100, 20)))
    text = capacity_plan(cfg)
    assert f"= {n} runs; 1 already run" in text and f"{n - 1} to train" in text


REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    "folder", sorted(p.name for p in (REPO / "docs/capacity/records").iterdir() if p.is_dir()), ids=str
)
def test_every_committed_record_is_read_by_its_preset(folder: str) -> None:
    """The published sweeps are rebuilt from their records: each file in docs/capacity/records/NAME is
    a run the preset NAME reads back (a recipe field added since must not orphan them)."""
    cfg = load_capacity(folder, [f"records={REPO / 'docs/capacity/records' / folder}", "reuse_records=[]"])
    files = sorted((REPO / "docs/capacity/records" / folder).glob("*.json"))
    assert files
    want = set()
    for f in files:
        r = json.loads(f.read_text())
        want.add((r["key"], r["seed"], float(r["scale"])))
    assert want <= set(saved_records(cfg))


def test_a_foreign_or_damaged_file_in_the_records_folder_is_passed_over(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    save_record(cfg, _job(cfg), {"seed": 0}, None)
    (tmp_path / "records" / "notes.json").write_text("[1, 2]")
    (tmp_path / "records" / "cut.json").write_text('{"kind": "capacity-run", "key"')
    assert set(saved_records(cfg)) == {("moc_2k", 0, 1.0)}


def test_runs_are_scheduled_seed_by_seed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "seeds=3", "train.saturation_seeds=2")
    data = prepare(cfg, progress=False)
    models = model_records(cfg, data.vocab_size, 20)
    jobs = sorted(plan_jobs(cfg, data, models), key=lambda j: -j.cost)  # the pool's order
    seeds = [j.seed for j in jobs]
    assert seeds == sorted(seeds)  # every run of seed 0 first, then seed 1, ...
    first = [j for j in jobs if j.seed == 0]
    assert len(first) == 2 * len(cfg.models)  # full and half-length runs of every model
    costs = [j.cost for j in first]
    assert costs == sorted(costs, reverse=True)  # costliest first within the seed


def test_chapter_use_counts_picks_and_the_steps_each_chapter_was_picked() -> None:
    picks = {1: torch.tensor([6.0, 0.0, 2.0, 4.0])}
    updated = {1: torch.tensor([3.0, 0.0, 1.0, 4.0])}
    use = chapter_use(picks, updated, steps=4)["1"]
    assert use["chapters"] == 4
    assert use["picks_per_step_mean"] == pytest.approx(12 / 16)
    assert use["steps_updated_mean"] == pytest.approx((3 + 0 + 1 + 4) / 16)
    assert use["never_picked"] == pytest.approx(0.25)
    assert use["counts"] == [6, 0, 2, 4]


def _tiny_moc(tmp_path: Path):
    cfg = _cfg(tmp_path)
    torch.manual_seed(0)
    model = MoCModel(model_config(cfg, "moc_2k", vocab_size=40, seq_len=12))
    g = torch.Generator().manual_seed(1)

    def next_batch():
        x = torch.randint(0, 40, (4, 12), generator=g)
        return x, torch.ones_like(x), x, None

    return cfg, model, next_batch


def test_fit_sums_the_routers_picks_over_the_run(tmp_path: Path) -> None:
    cfg, model, next_batch = _tiny_moc(tmp_path)
    _, _, _, use = fit(model, _ift_config(cfg, "full", 1e-3), 3, next_batch, 1.0, 1)
    (layer,) = use.values()
    # token routing: every one of the 3 x 4 x 12 positions picks top_k routed chapters
    assert sum(layer["counts"]) == 3 * 4 * 12 * model.config.memory.top_k
    assert 0 < layer["steps_updated_mean"] <= 1


def test_ift_with_the_memory_path_frozen_moves_only_the_backbone(tmp_path: Path) -> None:
    cfg, model, next_batch = _tiny_moc(tmp_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, _ift_config(cfg, "memory_frozen", 1e-2), 3, next_batch, 1.0, 1, freeze_memory=True)
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        if param_category(name) in ("bank", "memory"):
            assert not moved and not p.requires_grad, name
        elif "embed" in name:
            assert moved, name


def test_ift_variants_set_each_part_s_learning_rate(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    ift = cfg.ift
    full, low, frozen = (_ift_config(cfg, v, 1e-3) for v in ("full", "low_lr", "frozen"))
    assert (full.lr, full.memory_lr, full.bank_lr, full.freeze_bank) == (1e-3, 1e-3, 1e-3, False)
    assert low.memory_lr == pytest.approx(1e-3 * ift.memory_lr_scale)
    assert low.bank_lr == pytest.approx(1e-3 * ift.bank_lr_scale)
    assert frozen.freeze_bank and not low.freeze_bank


def test_ift_lr_ratio_follows_each_model_s_own_pretraining_lr(tmp_path: Path) -> None:
    from moc_experiments.experiment.capacity import train as capacity_train

    seen = []

    def spy(cfg, variant, lr):
        seen.append(lr)
        return _ift_config(cfg, variant, lr)

    cfg = _cfg(tmp_path, "ift.lr_ratio=0.1", "ift.gentle=false", "ift.steps=2", "train.exposures=2")
    for key in ("dense_backbone", "moc_2k"):
        seen.clear()
        job = CapacityJob(key=key, seed=0, steps=2, experiment=cfg.to_dict())
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(capacity_train, "_ift_config", spy)
            capacity_train.train_run(job)
        own = cfg.train.lr * (cfg.models[key] or {}).get("lr_scale", 1.0)
        assert seen and all(lr == pytest.approx(0.1 * own) for lr in seen), (key, seen)


def test_the_plan_estimates_hours_from_finished_runs_or_a_timing_here(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    todo = [_job(cfg, "moc_2k", s) for s in (0, 1)] + [_job(cfg, "dense_backbone", 0)]
    done = {("moc_2k", 5, 1.0): {"train_s": 360.0, "steps": 3600}}  # 0.1 s per step, measured
    lines = estimated_hours(cfg, todo, done, n_workers=1)
    text = "\n".join(lines)
    assert "median of 1 finished runs" in text and "timed here now" in text
    moc_line = next(line for line in lines if line.startswith("moc_2k"))
    assert float(moc_line.split()[1]) == pytest.approx(100.0)


def test_records_written_by_a_run_rebuild_it_without_training(tmp_path: Path) -> None:
    from moc_experiments.cli import main

    common = ["--set", "seeds=1", "--set", "train.saturation_seeds=0", "--set", "ift.steps=0"]
    common += ["--set", f"records={tmp_path / 'records'}"]
    assert main(["run", "capacity-bits-smoke", "--out", str(tmp_path / "a"), *common]) == 0
    files = sorted(p.name for p in (tmp_path / "records").glob("*.json"))
    assert files == sorted(f"{k}-seed0.json" for k in load_capacity("capacity-bits-smoke").models)
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    # A fresh folder (a new clone): everything comes from the records, nothing is trained.
    assert main(["run", "capacity-bits-smoke", "--out", str(tmp_path / "b"), *common]) == 0
    second = json.loads((tmp_path / "b" / "results.json").read_text())
    assert second["runs"] == first["runs"]
    assert (tmp_path / "b" / "report.md").is_file()
    # `moc-lab report EXPERIMENT` rebuilds the report from the records alone (a preset or YAML file).
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        "kind: capacity\nextends: capacity-bits-smoke\nseeds: 1\ntrain: {saturation_seeds: 0}\n"
        f"ift: {{steps: 0}}\nrecords: {tmp_path / 'records'}\n"
    )
    assert main(["report", str(spec), "--out", str(tmp_path / "c")]) == 0
    third = json.loads((tmp_path / "c" / "results.json").read_text())
    assert third["runs"] == first["runs"] and (tmp_path / "c" / "report.md").is_file()
    assert "This report trained nothing: it was rebuilt from 4 finished runs' records" in (
        tmp_path / "c" / "report.md"
    ).read_text()
    assert "Run time:" in (tmp_path / "b" / "report.md").read_text()  # a run that trained says how long


def test_a_report_from_records_needs_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from moc_experiments.cli import main

    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"kind: capacity\nextends: capacity-bits-smoke\nrecords: {tmp_path / 'none'}\n")
    assert main(["report", str(spec), "--out", str(tmp_path / "c")]) == 2
    assert "no finished run to report" in capsys.readouterr().err
    # Half-length runs alone (a longer sweep just started from a shorter one's records): still nothing.
    cfg = _cfg(tmp_path)
    save_record(cfg, _job(cfg, "moc_2k", 0, 0.5), {"seed": 0}, None)
    spec.write_text(f"kind: capacity\nextends: capacity-bits-smoke\nrecords: {tmp_path / 'records'}\n")
    assert main(["report", str(spec), "--out", str(tmp_path / "c")]) == 2
    assert "no finished run to report at full length (only 1 half-length run(s))" in capsys.readouterr().err
    spec.write_text("kind: capacity\nextends: capacity-bits-smoke\n")
    assert main(["report", str(spec)]) == 2
    assert "keeps no records" in capsys.readouterr().err


def test_fit_through_torch_compile_trains_like_eager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.compile``: the same run through the compiler (the CPU's gathered read) as eagerly, to
    rounding. The traced graph runs as aot_eager here (seconds, no C compiler); the sweep and
    bench/capacity_step.py run it through inductor."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    curves = []
    for compiled in (False, True):
        cfg, model, next_batch = _tiny_moc(tmp_path)
        torch._dynamo.reset()
        curve, *_ = fit(model, _ift_config(cfg, "full", 1e-3), 3, next_batch, 1.0, 1, compile_model=compiled)
        curves.append(curve)
    torch._dynamo.reset()
    assert curves[0] == pytest.approx(curves[1], rel=1e-4)


@pytest.mark.parametrize(
    ("flags", "header", "read"),
    [
        ([], "malloc: freed memory kept, read: auto)", "memory read: cpu backward, cpu forward"),
        (
            ["--default-malloc", "--torch-read"],
            "malloc: glibc defaults, read: torch)",
            "memory read: the PyTorch path",
        ),
        (
            ["--isolated"],
            "each MoC model and its pair in a fresh process",
            "memory read: cpu backward, cpu forward",
        ),
    ],
)
def test_the_step_bench_runs_and_pairs_each_moc_with_its_dense_model(
    flags: list[str], header: str, read: str
) -> None:
    import subprocess
    import sys

    from moc.kernels import cpu_read

    bench = Path(__file__).parents[3] / "bench" / "capacity_step.py"
    out = subprocess.run(
        [sys.executable, str(bench), "--preset", "capacity-bits-smoke", "--rounds", "1", "--steps", "1",
         "--compile", "eager", "--unfused-adamw", *flags],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    assert "moc_2k" in out and "x dense_" in out  # a ratio against the nearest-FLOP dense model
    if "--isolated" in flags:  # the dense model's time from the MoC model's own process
        assert re.search(r"moc_2k .* [0-9.]+x dense_\w+ \([0-9.]+ ms,", out), out
    assert "(unfused AdamW," in out.splitlines()[0] and header in out.splitlines()[0]
    if flags or cpu_read.unavailable(torch.float32, 16) is None:  # the C kernels need a compiler
        assert f"eager ({read}):" in out


def test_the_step_profile_lists_a_model_s_ops_per_step() -> None:
    import subprocess
    import sys

    bench = Path(__file__).parents[3] / "bench" / "step_profile.py"
    flags = ["--preset", "capacity-bits-smoke", "--eager", "--steps", "1"]
    run = [sys.executable, str(bench), "moc_2k", *flags, "--top", "5"]
    out = subprocess.run(run, capture_output=True, text=True, timeout=300, check=True).stdout
    head, *rows = out.strip().splitlines()
    assert head.startswith("moc_2k (capacity-bits-smoke, eager, 1 thread)") and len(rows) == 5
    assert all(float(r.split()[0]) >= 0 for r in rows) and any("aten::" in r for r in rows)
    wrong = subprocess.run(
        [sys.executable, str(bench), "moc_9k", *flags], capture_output=True, text=True, timeout=300
    )
    assert wrong.returncode == 2 and "no model 'moc_9k' in capacity-bits-smoke" in wrong.stderr


def test_a_shorter_sweep_s_full_runs_are_a_longer_sweep_s_half_length_runs(tmp_path: Path) -> None:
    short = _cfg(tmp_path, "train.exposures=12")
    save_record(short, _job(short, "moc_2k", 0, 1.0), {"seed": 0, "steps": 45}, None)
    save_record(short, _job(short, "moc_2k", 0, 0.5), {"seed": 0, "steps": 22}, None)
    longer = [f"reuse_records=[{tmp_path / 'records'}]", "train.exposures=24"]
    cfg = load_capacity("capacity-bits-smoke", [f"records={tmp_path / 'long'}", *longer])
    # the 12-biography full run is the 24-biography sweep's half-length run; its own half run is neither
    assert saved_records(cfg) == {("moc_2k", 0, 0.5): {"seed": 0, "steps": 45}}
    other = load_capacity("capacity-bits-smoke", [f"records={tmp_path / 'long'}", *longer, "train.lr=0.01"])
    assert saved_records(other) == {}  # another recipe apart from the length: nothing
    assert saved_records(load_capacity("capacity-bits-smoke", [f"records={tmp_path / 'long'}"])) == {}
