"""The whole protocol end to end on the `smoke` preset: corpus -> tokenizer -> pretrain 4 models ->
lm-eval probes -> IFT -> measure again -> results.json + report.md + plots, through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from moc_experiments.cli import main
from moc_experiments.experiment import load_experiment, run_experiment


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    root = tmp_path_factory.mktemp("smoke")
    out = root / "run"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(
            [
                "run",
                "smoke",
                "--out",
                str(out),
                "--set",
                f"data.cache_dir={root / 'data'}",
                "--set",
                "workers=2",
                "--quiet",
            ]
        )
    assert rc == 0
    return out, json.loads((out / "results.json").read_text()), buf.getvalue()


def test_outputs(smoke_run: tuple[Path, dict, str]) -> None:
    out, results, printed = smoke_run
    for name in (
        "report.md",
        "loss_curves.png",
        "probe_accuracy.png",
        "chapter_usage.png",
        "experiment.yaml",
    ):
        assert (out / name).is_file(), name
    assert "### Knowledge probes" in printed and "### Leak ablation" in printed
    assert results["kind"] == "protocol"  # moc-lab report reads it to pick the report
    assert set(results["models"]) == {"moc", "dense_backbone", "dense_isoflop", "moc_sequence"}
    assert results["environment"]["workers"] == 2
    (seed_run,) = results["runs"]
    assert set(seed_run["pretrain"]) == set(results["models"])
    assert set(seed_run["ift"]) == {"moc_frozen", "moc_low_lr", "dense_backbone", "dense_isoflop"}
    exp = load_experiment("smoke")
    for phase, steps in (("pretrain", exp.pretrain.steps), ("ift", exp.ift.steps)):
        for key, run in seed_run[phase].items():
            assert len(run["loss_curve"]) == steps, (phase, key)
            assert math.isfinite(run["val"]["loss"]) and run["val"]["windows"] > 0
            assert run["train_flops"] > 0
    # Probes scored by lm-eval on every causal model, before and after IFT; not on the leaky one.
    assert seed_run["pretrain"]["moc_sequence"].get("probes") is None
    tasks = seed_run["ift"]["moc_frozen"]["probes"]["tasks"]
    assert set(tasks) == set(results["probe_tasks"]) and all(
        t["n"] == exp.eval.probe_limit for t in tasks.values()
    )
    assert seed_run["pretrain"]["moc"]["probes"]["scorer"] == "lm-evaluation-harness"
    # Leak ablation: the sequence-routed weights are also measured with causal routing.
    assert math.isfinite(seed_run["pretrain"]["moc_sequence"]["val_causal"]["loss"])
    # Router usage was recorded for the MoC runs only.
    assert (
        seed_run["pretrain"]["moc"]["router"]["layers"]
        and seed_run["pretrain"]["dense_backbone"]["router"] is None
    )


def check_report_matches_results(report: str, results: dict) -> int:
    """Every validation loss and probe accuracy row of ``report`` (report.md) against the raw run records
    of ``results`` (results.json), recomputed here without the runner's summary code. One seed.

    Returns the number of rows checked; raises AssertionError naming the first row that disagrees."""
    (run,) = results["runs"]
    lines = report.splitlines()

    def row(prefix: str, *cells: str) -> None:
        hits = [x for x in lines if x.startswith(prefix)]
        assert len(hits) == 1, f"report.md: expected one row starting {prefix!r}, found {len(hits)}"
        for cell in cells:
            assert cell in hits[0], f"report.md row {hits[0]!r} lacks {cell!r} (from results.json)"

    checked = 0
    tasks = results.get("probe_tasks", {})
    for key, info in results["ift_runs"].items():
        pre, post = run["pretrain"][info["base"]], run["ift"][key]
        a, b = pre["val"]["loss"], post["val"]["loss"]
        row(f"| {info['label']} | {a:.3f} ± ", f"| {b:.3f} ± ", f"| {b - a:+.3f} |")
        checked += 1
        for task, base in tasks.items():
            if not pre.get("probes"):
                continue
            x, y = pre["probes"]["tasks"][task], post["probes"]["tasks"][task]
            assert x["n"] == y["n"] == base["n"], f"{task}: question counts disagree in results.json"
            baselines = " | ".join(
                f"{100 * base[k]:.1f}" for k in ("chance", "majority", "shortest_answer", "unigram")
            )
            row(
                f"| {task} | {x['n']} | {info['label']} | {100 * x['acc']:.1f} ± ",
                f"| {100 * y['acc']:.1f} ± ",
                f"| {baselines} |",
            )
            checked += 1
    return checked


def test_report_matches_results_json(smoke_run: tuple[Path, dict, str]) -> None:
    out, _, _ = smoke_run
    results = json.loads((out / "results.json").read_text())
    assert check_report_matches_results((out / "report.md").read_text(), results) >= 4


def test_report_check_catches_a_wrong_number(tmp_path: Path) -> None:
    """The check above on the report tests' fixture: it passes, and fails once one number is off."""
    from moc_experiments.experiment.protocol.report import write_report

    results = json.loads((Path(__file__).parent / "fixtures" / "results.json").read_text())
    report = write_report(results, tmp_path).read_text()
    assert check_report_matches_results(report, results) == 4 + 4 * 2
    results["runs"][0]["ift"]["dense_backbone"]["val"]["loss"] += 0.01
    with pytest.raises(AssertionError, match="Dense backbone"):
        check_report_matches_results(report, results)
    results["runs"][0]["ift"]["dense_backbone"]["val"]["loss"] -= 0.01
    results["runs"][0]["pretrain"]["moc"]["probes"]["tasks"]["moc_capitals"]["acc"] = 0.61
    with pytest.raises(AssertionError, match="moc_capitals"):
        check_report_matches_results(report, results)


def test_same_tokens_same_init(smoke_run: tuple[Path, dict, str]) -> None:
    """MoC with causal and with sequence routing start identical (memory output projections start at
    zero) and read the same batches, so their first training losses agree exactly."""
    _, results, _ = smoke_run
    pre = results["runs"][0]["pretrain"]
    assert pre["moc"]["loss_curve"][0] == pre["moc_sequence"]["loss_curve"][0]
    assert pre["moc"]["loss_curve"][1] != pre["moc_sequence"]["loss_curve"][1]  # then routing matters


def test_ift_variants(smoke_run: tuple[Path, dict, str]) -> None:
    _, results, _ = smoke_run
    ift = results["runs"][0]["ift"]
    bank = results["models"]["moc"]["params"]["bank"]
    # A frozen bank is really frozen: no gradient, no Adam state.
    assert ift["moc_low_lr"]["trainable_params"] - ift["moc_frozen"]["trainable_params"] == bank
    assert (
        ift["moc_low_lr"]["optimizer_state_bytes"] - ift["moc_frozen"]["optimizer_state_bytes"]
        >= 2 * 4 * bank
    )
    assert results["phases"]["ift"]["bank_lr"] == pytest.approx(results["phases"]["ift"]["lr"] / 6, rel=1e-3)


def test_deterministic(smoke_run: tuple[Path, dict, str], tmp_path: Path) -> None:
    """The same seed and thread count give the same numbers (in-process here, in worker processes above)."""
    out, results, _ = smoke_run
    exp = load_experiment(
        "smoke",
        [
            f"out_dir={tmp_path}",
            f"data.cache_dir={out.parent / 'data'}",
            "baselines=[]",
            "leak_ablation=false",
            "ift.steps=0",
            "eval.probes=false",
            "workers=1",
            "threads=1",
        ],
    )
    again = run_experiment(exp, progress=False)
    assert (
        again["runs"][0]["pretrain"]["moc"]["loss_curve"]
        == results["runs"][0]["pretrain"]["moc"]["loss_curve"]
    )
    assert (
        again["runs"][0]["pretrain"]["moc"]["val"]["loss"]
        == results["runs"][0]["pretrain"]["moc"]["val"]["loss"]
    )


def test_user_files_data(smoke_run: tuple[Path, dict, str], tmp_path: Path) -> None:
    """data.source=files: the user's text, chat and lm-eval task folder (here: the smoke corpus files)."""
    from moc_experiments.experiment.protocol.data import prepare_experiment_data

    corpus = smoke_run[0].parent / "data" / "corpus"
    exp = load_experiment(
        "smoke",
        [
            "data.source=files",
            f"data.pretrain=[{corpus / 'pretrain' / 'text.jsonl'}]",
            f"data.ift=[{corpus / 'ift' / 'train.jsonl'}]",
            f"data.probes_dir={corpus / 'probes'}",
            "data.probe_tasks=[moc_capitals]",
        ],
    )
    data = prepare_experiment_data(exp, tmp_path, progress=False)
    assert data.probe_tasks == ["moc_capitals"] and data.ift_dir is not None
    base = data.probe_info["moc_capitals"]
    assert base["n"] == exp.eval.probe_limit and base["chance"] == 0.25
    assert 0 <= base["unigram"] <= 1 and 0 <= base["shortest_answer"] <= 1
    assert data.vocab_size <= exp.data.vocab_size and data.summary["pretrain_train_tokens"] > 0
