"""The report generator on a fixed results file: tables hold the numbers, plots exist, and the wording
follows the numbers (it must say so when MoC does not beat the baselines)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from moc_experiments.experiment import load_experiment
from moc_experiments.experiment.protocol import summary
from moc_experiments.experiment.protocol.report import tables, write_report
from moc_experiments.experiment.protocol.runner import _description
from moc_experiments.experiment.protocol.verdict import findings

FIXTURE = Path(__file__).parent / "fixtures" / "results.json"


@pytest.fixture
def results() -> dict:
    return json.loads(FIXTURE.read_text())


def _set_val(results: dict, phase: str, key: str, value: float) -> None:
    """Move a run's validation loss (and its windows) to ``value``."""
    val = results["runs"][0][phase][key]["val"]
    shift = value - val["loss"]
    val["loss"] = value
    val["window_losses"] = [x + shift for x in val["window_losses"]]


def test_report_files_and_numbers(results: dict, tmp_path: Path) -> None:
    path = write_report(results, tmp_path)
    text = path.read_text()
    for png in ("loss_curves.png", "probe_accuracy.png", "chapter_usage.png"):
        assert (tmp_path / png).stat().st_size > 5000, png
        assert f"]({png})" in text
    # Validation losses, IFT losses and their changes appear as computed from the file.
    for number in ("3.412", "3.587", "3.533", "3.441", "3.701", "+0.114", "2.200"):
        assert number in text, number
    # Table 2 layout: pooled accuracy (62*100 + 48*50) / 150 = 57.3%, after IFT 55.3%, delta -2.0 pp,
    # with chance 25.0, majority (27*100 + 25*50) / 150 = 26.3, shortest 30.3 and unigram 32.0 on the row.
    assert (
        "| MoC, IFT bank frozen | 57.3 ± 4.0 | -2.0 ± 5.7 | 55.3 ± 4.1 | 25.0 | 26.3 | 30.3 | 32.0 |" in text
    )
    assert "| moc_capitals | 100 | Dense backbone (4 layers) | 41.0 ± 4.9 | -8.0" in text
    # Compute: the iso-FLOP mismatch, FLOPs per run, parameter split.
    assert "+2.7%" in text and "3.96e+04" in text and "| 3,000 | 2,000 | 200 | 800 |" in text
    # Router: 6 of 8 chapters used per layer; the top chapter has 40 + 8 of the 240 picks = 20.0%.
    assert "| 1.933 / 2.079 | 75.0 | 20.0 | 8 |" in text
    # Leak ablation, clearly labelled.
    assert "**NO**" in text and "3.204" in text and "3.655" in text
    assert "Fixture: every number here is made up." in text


def test_printed_tables_match_report(results: dict, tmp_path: Path) -> None:
    printed = tables(results)
    report = write_report(results, tmp_path).read_text()
    for line in printed.splitlines():
        if line.startswith("| MoC"):
            assert line in report


def test_wording_when_moc_wins(results: dict) -> None:
    text = "\n".join(findings(results))
    assert "MoC beats every dense baseline on validation loss" in text
    assert "does NOT beat" not in text
    assert "Clearly above every knowledge-free baseline" in text


def test_wording_when_moc_loses(results: dict) -> None:
    worse = copy.deepcopy(results)
    _set_val(worse, "pretrain", "moc", 3.70)
    text = "\n".join(findings(worse))
    assert "does not clearly beat" in text and "does NOT beat the Dense backbone" in text
    assert "beats every dense baseline" not in text
    assert "3.700 vs 3.587" in text


def test_wording_when_indistinguishable(results: dict) -> None:
    tied = copy.deepcopy(results)
    _set_val(tied, "pretrain", "moc", 3.588)
    text = "\n".join(findings(tied))
    assert "MoC and the Dense backbone (4 layers) are indistinguishable" in text


def test_wording_when_probes_at_chance(results: dict) -> None:
    flat = copy.deepcopy(results)
    for phase in ("pretrain", "ift"):
        for run in flat["runs"][0][phase].values():
            if run.get("probes"):
                for t in run["probes"]["tasks"].values():
                    t["acc"] = 0.28
    text = "\n".join(findings(flat))
    assert "No model scores clearly above the best knowledge-free baseline" in text
    assert "changed by +0.0 pp (within noise, one seed)" in text


def test_forgetting_wording_switches(results: dict) -> None:
    assert (
        "MoC forgets less: MoC, IFT bank frozen vs Dense backbone (4 layers) (+0.029 vs +0.114"
        in "\n".join(findings(results))
    )
    more = copy.deepcopy(results)
    for key in ("moc_frozen", "moc_low_lr"):
        _set_val(more, "ift", key, 3.9)
    assert "MoC does NOT forget less than the dense models" in "\n".join(findings(more))
    same = copy.deepcopy(results)
    for key in ("moc_frozen", "moc_low_lr"):
        _set_val(same, "ift", key, 3.412 + 0.114)
    assert "forget about equally (within noise, one seed)" in "\n".join(findings(same))


def test_several_seeds_use_spread(results: dict, tmp_path: Path) -> None:
    two = copy.deepcopy(results)
    second = copy.deepcopy(two["runs"][0])
    second["seed"] = 1
    for phase in ("pretrain", "ift"):
        for run in second[phase].values():
            run["val"]["loss"] += 0.02
    two["runs"].append(second)
    est = summary.val_loss(two, "pretrain", "moc")
    assert (
        est.kind == "sd" and est.value == pytest.approx(3.422) and est.err == pytest.approx(0.01414, rel=1e-3)
    )
    text = write_report(two, tmp_path).read_text()
    assert "Mean ± sd over 2 seeds" in text and "3.422 ± 0.014" in text


def test_report_without_ift_or_probes(results: dict, tmp_path: Path) -> None:
    bare = copy.deepcopy(results)
    bare["ift_runs"], bare["probe_tasks"] = {}, {}
    bare["runs"][0]["ift"] = {}
    for run in bare["runs"][0]["pretrain"].values():
        run.pop("probes", None)
    text = write_report(bare, tmp_path).read_text()
    assert "Knowledge probes" not in text and "3.412" in text
    assert not (tmp_path / "probe_accuracy.png").exists()


def test_cli_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from moc_experiments.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(FIXTURE.read_text())
    assert main(["report", str(run)]) == 0
    assert (run / "report.md").is_file()
    assert "Validation loss" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2


def _seeds_with_moc_shifts(results: dict, shifts: list[float]) -> dict:
    """The fixture's seed repeated once per shift, MoC's pretraining validation loss moved by the shift."""
    out = copy.deepcopy(results)
    first = out["runs"][0]
    out["runs"] = []
    for seed, shift in enumerate(shifts):
        run = copy.deepcopy(first)
        run["seed"] = seed
        run["pretrain"]["moc"]["val"]["loss"] += shift
        out["runs"].append(run)
    return out


def test_several_seeds_use_the_t_interval_of_paired_differences(results: dict) -> None:
    # Differences to the backbone -0.175 + [0, 0.01, -0.01]: 95% t interval over 3 seeds excludes zero.
    tight = "\n".join(findings(_seeds_with_moc_shifts(results, [0.0, 0.01, -0.01])))
    assert "MoC reaches a lower validation loss than the Dense backbone (4 layers)" in tight
    assert "over 3 seeds" in tight
    # -0.175 + [0, 0.3, -0.3]: sd 0.3, half-width 4.303 x 0.3 / sqrt(3) = 0.745 > 0.175: seed noise, although
    # each seed's own window standard error would call it clear.
    wide = "\n".join(findings(_seeds_with_moc_shifts(results, [0.0, 0.3, -0.3])))
    assert (
        "MoC and the Dense backbone (4 layers) are indistinguishable on validation loss (within seed noise)"
        in wide
    )
    assert "95% CI [-0.920, +0.570], over 3 seeds" in wide


def test_setup_sums_the_runs_own_training_time(results: dict, tmp_path: Path) -> None:
    """A report rebuilt from records takes seconds; the setup still says what the training cost."""
    for phase in ("pretrain", "ift"):
        for run in results["runs"][0][phase].values():
            run["train_s"] = 900.0
    text = write_report(results, tmp_path).read_text()
    assert "total wall time 20 s; training of the 8 run(s), summed: 7200 s (2.00 h) of one worker." in text


def test_description_names_ift_only_when_it_runs() -> None:
    with_ift = load_experiment("smoke")
    assert with_ift.ift.steps > 0 and "instruction fine-tune" in _description(with_ift)
    table1 = load_experiment("table1")
    assert table1.ift.steps == 0 and "instruction fine-tune" not in _description(table1)
