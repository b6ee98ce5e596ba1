"""The capacity report on synthetic results (no training): bits per parameter and per FLOP, marginal bits,
the saturation rule, findings that follow the numbers (and flip when the numbers flip), and the report
rendering both new results (bits, saturation, gentle IFT) and old ones (recall only)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

from moc_experiments.experiment.capacity import analysis
from moc_experiments.experiment.capacity import report as rep
from moc_experiments.experiment.stats import t_interval

SEEDS = [0, 1, 2, 3, 4]
WORLD_BITS = 1000 * 2 * 10.0  # 1,000 people x 2 attributes x log2(1024 values)
NOISE = [0.0, 100.0, -100.0, 50.0, -50.0]  # per-seed wobble shared by every model of a seed

# name -> (inference FLOPs/token, embedding, backbone, memory layers, bank, bank tokens, mean bits)
MODELS = {
    "dense_backbone": (10_000, 8_000, 20_000, 0, 0, None, 4_000.0),
    "dense_wide": (14_000, 8_000, 26_000, 0, 0, None, 5_000.0),  # 1.08x moc_small's FLOPs
    "dense_big": (20_000, 8_000, 40_000, 0, 0, None, 8_000.0),  # above 1.1x: the cheapest costlier one
    "moc_small": (13_000, 8_000, 20_000, 2_000, 16_000, 2_048, 6_000.0),
    "moc_big": (13_200, 8_000, 20_000, 2_000, 64_000, 8_192, 7_000.0),
}


def _model(key: str) -> dict:
    flops, emb, backbone, mem, bank, n_tokens, _ = MODELS[key]
    total = backbone + mem + bank
    m = {
        "label": key.replace("_", " "),
        "d_model": 16,
        "n_layers": 2,
        "params": {
            "total": total,
            "backbone": backbone,
            "bank": bank,
            "memory_layers": mem,
            "embedding": emb,
            "non_embedding": total - emb,
        },
        "flops_per_token": {"train": 3 * flops, "inference": flops},
        "lr_scale": 1.0,
    }
    if n_tokens:
        m["memory"] = {
            "layers": [1],
            "routing": "token",
            "n_tokens": n_tokens,
            "n_chapters": n_tokens // 32,
            "chapter_size": 32,
            "tokens_read": 64,
            "top_k": 2,
            "bank_lr_scale": 0.1,
        }
    return m


def _bits(total: float) -> dict:
    return {"total": total, "per_attribute": [total / 2] * 2, "cross_entropy": [1.0, 1.0], "of": WORLD_BITS}


def _measures(bits: float, moc: bool, seed: int) -> dict:
    """recall, answer type and bits (and for MoC the memory-off and shuffled forms) of one model."""
    r = bits / WORLD_BITS
    rec = {
        "recall": {"bio": r, "question_heldout": r / 2, "question_trained": r, "chat_heldout": r / 3},
        "type_accuracy": {"bio": 0.95 + NOISE[seed] / 1e4},
        "bits": _bits(bits),
    }
    if moc:
        rec["recall_memory_off"] = {k: v / 2 for k, v in rec["recall"].items()}
        rec["type_accuracy_memory_off"] = {"bio": 0.94 - NOISE[seed] / 1e4}
        rec["bits_memory_off"] = _bits(bits / 2)
        rec["recall_shuffled"] = {"bio": 0.8 * r}
        rec["type_accuracy_shuffled"] = {"bio": 0.95 - NOISE[seed] / 2e4}
        rec["bits_shuffled"] = _bits(0.8 * bits + NOISE[seed])
    return rec


IFT_KEEP = {
    "frozen": 0.6,
    "low_lr": 0.4,
    "full": 0.3,
    "gentle_frozen": 0.9,
    "gentle_low_lr": 0.8,
    "gentle_full": 0.7,
}


def _record(key: str, seed: int, bits: float, ift: bool = True) -> dict:
    moc = MODELS[key][5] is not None
    rec = {
        "seed": seed,
        "steps": 100,
        "exposures": 100.0,
        "tokens": 32_000,
        "train_s": 10.0,
        "loss_curve": [3.0, 2.0, 1.5, 1.2],
        "final_loss": 1.2,
        **_measures(bits, moc, seed),
    }
    if ift:
        variants = ("frozen", "low_lr", "gentle_frozen", "gentle_low_lr") if moc else ("full", "gentle_full")
        rec["ift"] = {
            v: {"loss_curve": [1.0, 0.9], **_measures(bits * IFT_KEEP[v] + NOISE[seed], moc, seed)}
            for v in variants
        }
    return rec


def make_results() -> dict:
    models = {k: _model(k) for k in MODELS}
    models["dense_big"]["lr_scale"] = 0.5  # a wider model at a scaled LR, as in capacity-bits
    runs = {
        k: [_record(k, s, MODELS[k][6] + NOISE[s] * (1 + i)) for s in SEEDS] for i, k in enumerate(MODELS)
    }
    # half length: 5% fewer bits for the dense models (capacity-bound), 30% fewer for MoC (still learning)
    saturation = {
        k: [
            {
                **_record(
                    k, r["seed"], r["bits"]["total"] / (1.3 if "memory" in models[k] else 1.05), ift=False
                )
            }
            for r in runs[k][:3]
        ]
        for k in MODELS
    }
    return {
        "format": 1,
        "kind": "capacity",
        "name": "synthetic",
        "description": "Synthetic results for the report tests.",
        "config": {
            "compare": [["moc_small", "dense_backbone"]],
            "baseline": "dense_backbone",
            "seed": 0,
            "seeds": len(SEEDS),
            "train": {
                "batch_size": 32,
                "lr": 0.003,
                "log_every": 25,
                "exposures": 100.0,
                "saturation_seeds": 3,
            },
            "ift": {
                "steps": 50,
                "batch_size": 32,
                "lr": 0.001,
                "bank_lr_scale": 0.1,
                "memory_lr_scale": 0.5,
                "data": "world_chat",
                "gentle": True,
                "gentle_lr_scale": 0.3,
                "gentle_replay": 0.5,
            },
            "text": {"fraction": 0.0},
        },  # fmt: skip
        "world": {
            "kind": "compositional",
            "n_people": 1000,
            "n_attributes": 2,
            "n_values": 1024,
            "first_names": 40,
            "last_names": 40,
            "doc_form": "compact",
            "facts": 2000,
            "bits": WORLD_BITS,
            "vocab": 2200,
            "qa_people": 500,
            "heldout_people": 500,
            "max_doc_len": 12,
            "chance": 1 / 1024,
            "majority": 0.002,
        },  # fmt: skip
        "steps": 100,
        "mean_doc_tokens": 10.0,
        "environment": {
            "torch": "2.x",
            "python": "3.11",
            "machine": "x86_64",
            "cores": 2,
            "workers": 1,
            "threads": 1,
        },  # fmt: skip
        "models": models,
        "runs": runs,
        "saturation": saturation,
        "timing": {"total_s": 12.0},
    }


@pytest.fixture
def results() -> dict:
    return make_results()


def _bits_of(results: dict, key: str, field: str = "bits", section: str = "runs") -> list[float]:
    return [r[field]["total"] for r in results[section][key]]


def _set_bits(results: dict, key: str, values: list[float], field: str = "bits") -> None:
    for r, v in zip(results["runs"][key], values):
        r[field]["total"] = v


def _text(results: dict) -> str:
    return "\n".join(rep.findings(results))


# ------------------------------------------------------------------------------------ the numbers


def test_efficiency_by_hand(results: dict) -> None:
    dense, moc = rep.efficiency(results, "dense_wide"), rep.efficiency(results, "moc_small")
    mean_dense = sum(_bits_of(results, "dense_wide")) / 5  # the seed wobble cancels: 5,000
    assert mean_dense == pytest.approx(5_000)
    assert dense["per_param"] == pytest.approx(5_000 / 18_000)  # non-embedding = backbone layers
    assert dense["per_backbone_param"] == pytest.approx(5_000 / 18_000)
    assert dense["per_flop"] == pytest.approx(5_000 / 14_000)
    assert moc["per_param"] == pytest.approx(6_000 / (12_000 + 2_000 + 16_000))
    assert moc["per_backbone_param"] == pytest.approx(6_000 / 12_000)
    assert rep.non_embedding(results["models"]["moc_small"]) == {
        "backbone_layers": 12_000, "memory_layers": 2_000, "bank": 16_000, "total": 30_000,
    }  # fmt: skip


def test_marginal_bits_per_flop_by_hand(results: dict) -> None:
    diffs = [a - b for a, b in zip(_bits_of(results, "moc_small"), _bits_of(results, "dense_backbone"))]
    mg = rep.marginal(results, "moc_small")
    assert mg["flops"] == 3_000
    assert mg["bits"].mean == pytest.approx(2_000) and mg["bits"].ci == pytest.approx(t_interval(diffs))
    lo, hi = t_interval(diffs)
    assert mg["per_flop"].mean == pytest.approx(2_000 / 3_000)
    assert mg["per_flop"].ci == pytest.approx((lo / 3_000, hi / 3_000))
    assert mg["per_bank_param"] == pytest.approx(2_000 / 16_000)
    assert rep.marginal(results, "dense_backbone") is None  # the baseline itself
    assert rep.marginal(results, "dense_big")["per_bank_param"] is None  # no bank
    results["config"]["baseline"] = None
    assert rep.marginal(results, "moc_small") is None


def test_saturation_rule() -> None:
    assert rep.saturation_status(0.05) == "capacity-bound"
    assert rep.saturation_status(0.30) == "still learning"
    assert rep.saturation_status(0.10) == "still learning"  # "less than 10%" is capacity-bound
    assert rep.saturation_status(-0.05) == "capacity-bound"  # a little lower: within the plateau
    assert rep.saturation_status(-0.10) == "fell" and rep.saturation_status(-0.12) == "fell"
    assert rep.saturation_gain(100.0, 105.0) == pytest.approx(0.05)
    assert rep.saturation_gain(0.0, 0.0) == 0.0 and rep.saturation_gain(0.0, 5.0) == math.inf


def test_saturation_pairs_by_seed(results: dict) -> None:
    dense, moc = rep.saturation(results, "dense_wide"), rep.saturation(results, "moc_small")
    assert dense["n"] == 3 and dense["full"] == _bits_of(results, "dense_wide")[:3]  # the seeds that ran both
    assert dense["gain"] == pytest.approx(0.05) and dense["status"] == "capacity-bound"
    assert moc["gain"] == pytest.approx(0.30) and moc["status"] == "still learning"
    assert moc["diff"].sign > 0  # full − half over the paired seeds
    del results["saturation"]["dense_wide"][0]  # seed 0's half-length run is missing: pair seeds 1 and 2
    again = rep.saturation(results, "dense_wide")
    assert again["n"] == 2 and again["full"] == _bits_of(results, "dense_wide")[1:3]
    assert again["gain"] == pytest.approx(0.05)
    for r in results["runs"]["moc_small"] + results["saturation"]["moc_small"]:
        r["bits"]["total"] = 0.0  # nothing learnt: not "capacity-bound" although the gain is 0
    assert rep.saturation(results, "moc_small")["status"] == "no bits at either length"
    del results["saturation"]
    assert rep.saturation(results, "moc_small") is None


# ------------------------------------------------------------------------------------ the findings


def test_frontier_finding_when_moc_is_clearly_above(results: dict) -> None:
    text = _text(results)
    assert "**moc small: MoC stores more bits than every dense model at <= 1.1x its FLOPs.**" in text
    # every dense model within 1.1x is listed (the backbone at 0.77x, the wide one at 1.08x) ...
    assert "dense backbone (0.77x its FLOPs): +2.00 kbit" in text and "dense wide (1.08x its FLOPs)" in text
    # ... and the cheapest dense model above that
    assert "Against the cheapest dense model with more FLOPs, dense big (1.54x its FLOPs): -2.00 kbit" in text
    assert "MoC stores fewer bits" in text  # ... which stores more


def test_frontier_finding_when_moc_is_clearly_below(results: dict) -> None:
    wide = _bits_of(results, "dense_wide")
    _set_bits(results, "moc_small", [w - 1_000 + 10 * i for i, w in enumerate(wide)])
    text = _text(results)
    assert "moc small: not shown that MoC stores more bits than every dense model" in text
    assert "dense wide (1.08x its FLOPs): -0.98 kbit" in text and "MoC stores fewer bits" in text
    assert "**moc small:" not in text


def test_frontier_finding_when_noisy(results: dict) -> None:
    wide = _bits_of(results, "dense_wide")
    _set_bits(results, "moc_small", [w + d for w, d in zip(wide, [500, -500, 400, -400, 0])])
    text = _text(results)
    assert "dense wide (1.08x its FLOPs): +0.00 kbit" in text and "within seed noise" in text
    assert "not shown that MoC stores more bits than every dense model" in text
    assert "**moc small:" not in text


def test_frontier_finding_with_one_seed_or_no_dense_model_near(results: dict) -> None:
    one = copy.deepcopy(results)
    for key in one["runs"]:
        one["runs"][key] = one["runs"][key][:1]
    assert "moc small vs the dense models at <= 1.1x its FLOPs: one seed: no claim." in _text(one)
    for key in ("dense_backbone", "dense_wide"):
        results["models"][key]["flops_per_token"]["inference"] = 14_400
    text = _text(results)
    assert "moc small: no dense model has <= 1.1x its inference FLOPs/token (13.0k)" in text
    assert "moc big: no dense model" not in text  # 14,400 <= 1.1 x 13,200
    results["models"]["dense_wide"]["flops_per_token"]["inference"] = 1.1 * 13_000  # exactly 1.1x counts
    assert "moc small: no dense model" not in _text(results)


def test_bank_size_finding_flips(results: dict) -> None:
    text = _text(results)
    assert "Bank size at constant read (64 tokens read per token, top-2, token routing): bits grow" in text
    assert "moc small → moc big (2,048 → 8,192 bank tokens): +1.00 kbit" in text
    small = _bits_of(results, "moc_small")
    _set_bits(results, "moc_big", [s + d for s, d in zip(small, [300, -300, 200, -200, 0])])
    text = _text(results)
    assert "bits do not grow beyond seed noise at any step" in text and "within seed noise" in text
    # A third bank that stores more than the second: one step of the two grows.
    three = copy.deepcopy(results)
    three["models"]["moc_huge"] = copy.deepcopy(three["models"]["moc_big"])
    three["models"]["moc_huge"]["memory"]["n_tokens"] = 32_768
    three["runs"]["moc_huge"] = copy.deepcopy(three["runs"]["moc_big"])
    big = _bits_of(three, "moc_big")
    _set_bits(three, "moc_huge", [b + 5_000 + d for b, d in zip(big, [0, 100, -100, 50, 0])])
    assert "bits grow beyond seed noise at 1 of the 2 steps" in _text(three)
    results["models"]["moc_big"]["memory"]["tokens_read"] = 128  # another read: nothing to compare
    assert "Bank size" not in _text(results)


def test_ablation_finding_and_its_control(results: dict) -> None:
    text = _text(results)
    # bits held in the bank: on − shuffled = 0.2 x bits − wobble, paired; the answer type stays
    assert "moc small: shuffling its routed chapters costs +1.20 kbit" in text
    assert "held in the bank beyond seed noise; answer type 95.0 ± 0.4%, drop +0.0 pt" in text
    assert "it still answers in format, so what it lost is facts" in text
    assert "Switching the memory off costs +3.00 kbit" in text and "a loss beyond seed noise" in text
    for r in results["runs"]["moc_small"]:  # the shuffled model no longer answers in format
        r["type_accuracy_shuffled"]["bio"] -= 0.5
    assert "it also loses the answer format, so not all of the loss is facts" in _text(results)


def test_saturation_finding(results: dict) -> None:
    text = _text(results)
    assert "capacity-bound: dense backbone (+5.0%), dense wide (+5.0%), dense big (+5.0%)" in text
    assert "still learning: moc small (+30.0%), moc big (+30.0%)" in text
    for k in ("dense_backbone", "dense_wide", "dense_big"):
        for r in results["saturation"][k]:
            r["bits"]["total"] /= 1.5
    assert "Every model is still learning: the bits comparisons above rank learning speed" in _text(results)
    for r in results["saturation"]["moc_big"]:  # half length 1.5x the full run's bits: they fell by a third
        r["bits"]["total"] *= 1.3 * 1.5
    text = _text(results)
    assert (
        "dense big (+57.5%), moc small (+30.0%); "
        "fell (bits lower at full length: no capacity reading): moc big (-33.3%)." in text
    )
    for r in results["saturation"]["moc_small"]:  # just under the rule: named with the digit that decides
        r["bits"]["total"] *= 1.30 / 1.098
    assert "capacity-bound: moc small (+9.8%)" in _text(results)


def test_retention_findings_flip(results: dict) -> None:
    text = _text(results)
    assert "frozen − low LR after IFT: +1.20 kbit" in text and "the frozen bank keeps more" in text
    assert "dense big, after IFT, gentle − plain (full fine-tune): +3.20 kbit" in text
    assert "the gentle IFT keeps more" in text
    for r in results["runs"]["moc_small"]:
        r["ift"]["frozen"]["bits"]["total"], r["ift"]["low_lr"]["bits"]["total"] = (
            r["ift"]["low_lr"]["bits"]["total"],
            r["ift"]["frozen"]["bits"]["total"],
        )
    assert "frozen − low LR after IFT: -1.20 kbit" in _text(results)
    assert "the low-LR bank keeps more" in _text(results)


# ------------------------------------------------------------------------------------ the report


def test_report_with_bits(results: dict, tmp_path: Path) -> None:
    text = rep.write_report(results, tmp_path).read_text()
    for png in ("bits_vs_flops", "bits_vs_params", "recall_vs_flops", "memory_off", "loss_curves"):
        assert (tmp_path / f"{png}.png").stat().st_size > 5000, png
        assert f"![{png}]({png}.png)" in text
    # main table: FLOPs, non-embedding split, kbit mean ± sd (wobble sd 79 bits), % of the world, per param
    # LR column: the pretraining LR x the model's lr_scale (and the bank's scale for MoC)
    assert "| dense backbone | 5 | 0.003 | 10.0k | 12.0k / 0.0k / 0.0k | 4.00 ± 0.08 |" in text
    # 95% CI, 4,000 of 20,000 bits, recall, answer type, bits per non-embedding / backbone-layer param and
    # per FLOP
    assert "| [3.90, 4.10] | 20.0 | 20.0 ± 0.4 | 95.0 ± 0.8 | 0.333 | 0.333 | 0.4 |" in text
    assert "| moc small | 5 | 0.003, bank x0.1 | 13.0k | 12.0k / 2.0k / 16.0k | 6.00 ± 0.32 |" in text
    assert "| dense big | 5 | 0.0015 | 20.0k |" in text and "LR 0.003 (scaled per model" in text
    # saturation, marginal, ablations, retention (gentle included)
    assert "| dense wide | 3 | 4.76 ± 0.19 | 5.00 ± 0.20 | +5.0 |" in text and "capacity-bound |" in text
    assert "| moc small | +3,000 | +2.00 kbit" in text and "| 0.667 |" in text and "| 0.125 |" in text
    assert "| moc small | 6.00 ± 0.32 / 3.00 ± 0.16 / 4.80 ± 0.33 |" in text
    assert "| moc small | gentle, bank frozen | 6.00 ± 0.32 → 5.40 ± 0.36 |" in text
    assert "Gentle IFT: LR x0.3 and 50% of each batch replayed pretraining documents." in text
    assert (
        "1000 people named by 40 first x 40 last name tokens" in text and "100 documents per person" in text
    )
    assert "Rule for every comparison" in text and "MoC stores more bits than every dense model" in text


def _old(results: dict) -> dict:
    """The same results as written before bits, saturation and gentle IFT existed."""
    old = copy.deepcopy(results)
    del old["saturation"], old["config"]["baseline"], old["config"]["train"]["saturation_seeds"]
    for k in ("kind", "bits", "first_names", "last_names", "doc_form"):
        del old["world"][k]
    for m in old["models"].values():
        del m["params"]["embedding"], m["params"]["non_embedding"]
    for runs in old["runs"].values():
        for r in runs:
            r.pop("exposures")
            r["ift"] = {v: x for v, x in r["ift"].items() if not v.startswith("gentle")}
            for rec in (r, *r["ift"].values()):
                for f in ("bits", "bits_memory_off", "bits_shuffled"):
                    rec.pop(f, None)
    return old


def test_report_of_old_results(results: dict, tmp_path: Path) -> None:
    old = _old(results)
    text = rep.write_report(old, tmp_path).read_text()
    assert "Knowledge in bits" not in text and "kbit" not in text
    assert not (tmp_path / "bits_vs_flops.png").exists()
    for png in ("recall_vs_flops", "memory_off", "loss_curves"):
        assert (tmp_path / f"{png}.png").stat().st_size > 5000, png
    assert "| model | seeds | params (bank) |" in text
    assert "| model | IFT | bio before | bio after |" in text  # the old retention table
    # findings on recall, by the same rule
    assert "Highest bio recall: dense big" in text
    assert "**moc small: MoC recalls more than every dense model at <= 1.1x its FLOPs.**" in text
    assert "recall grows with bank size at every step" in text


def test_printed_tables_are_in_the_report(results: dict, tmp_path: Path) -> None:
    report = rep.write_report(results, tmp_path).read_text()
    assert rep.tables(results) in report


def test_ablation_table_shows_the_routing_spread(results: dict) -> None:
    for r, distinct in zip(results["runs"]["moc_small"], [0.5, 0.6, 0.7, 0.8, 0.9]):
        first = {"distinct_sets": distinct, "usage_entropy_bits": 3.0, "busiest_share": 0.1}
        second = {"distinct_sets": 0.01, "usage_entropy_bits": 0.5, "busiest_share": 0.9}  # not shown
        r["routing_spread"] = [first, second]
        r["routing_consistency"] = [distinct / 2, 1.0]  # first layer shown: 25 .. 45%
    text = "\n".join(rep.ablation_table(results))
    assert "a memory can only hold person-specific facts where different people are routed" in text
    assert "| distinct chapter sets % | chapter-use entropy, bits | maximum entropy, bits |" in text
    # first memory layer, mean ± sd over seeds; maximum = log2(64 chapters − 1 shared) = log2(63)
    assert "| 70.0 ± 15.8 | 3.00 ± 0.00 | 5.98 | 10.0 ± 0.0 | 35.0 ± 7.9 |" in text
    assert "| busiest chapter, % of prompts | routing consistency % |" in text
    # records without routing_spread: "–", the maximum still from the model (log2(256 − 1))
    big = next(line for line in text.splitlines() if line.startswith("| moc big |"))
    assert big.endswith("| – | – | 7.99 | – | – |")
    del results["models"]["moc_big"]["memory"]["n_chapters"]  # no chapter count: no maximum either
    assert "\n".join(rep.ablation_table(results)).endswith("| – | – | – | – | – |")
    assert analysis.max_usage_entropy(results["models"]["dense_big"]) is None


def _with_chapter_use_and_full_ift(moc_keep: float) -> dict:
    """The synthetic results plus chapter use and the IFT variants of the bank-size series: MoC fine-tuned
    with nothing frozen keeps ``moc_keep`` of its bits, the dense backbone 0.3."""
    results = make_results()
    for key, runs in results["runs"].items():
        moc = "memory" in results["models"][key]
        for r in runs:
            if moc:
                chapters = results["models"][key]["memory"]["n_chapters"] - 1
                r["chapter_use"] = {
                    "1": {
                        "chapters": chapters,
                        "picks_per_step_mean": 64 / chapters,
                        "picks_per_step_p10_p50_p90": [0.1, 0.5, 0.9],
                        "steps_updated_mean": min(1.0, 20 / chapters),
                        "steps_updated_p10_p50_p90": [0.05, 0.25, 0.5],
                        "never_picked": 0.0,
                        "counts": [1] * chapters,
                    }
                }
            keep = moc_keep if moc else IFT_KEEP["full"]
            bits = r["bits"]["total"] * keep + NOISE[r["seed"]] / 10
            r["ift"]["full"] = {"loss_curve": [1.0], **_measures(bits, moc, r["seed"])}
            if moc:
                frozen = r["bits"]["total"] * (keep + 0.2) + NOISE[r["seed"]] / 10
                r["ift"]["memory_frozen"] = {"loss_curve": [1.0], **_measures(frozen, moc, r["seed"])}
    return results


def test_the_chapter_use_table_shows_each_bank_s_update_share() -> None:
    from moc_experiments.experiment.capacity.tables import chapter_use_table

    text = "\n".join(chapter_use_table(_with_chapter_use_and_full_ift(0.5)))
    small = next(line for line in text.splitlines() if line.startswith("| moc small"))
    big = next(line for line in text.splitlines() if line.startswith("| moc big"))
    assert "| 63 |" in small and "| 255 |" in big  # routed chapters (one shared)
    assert "31.7 ± 0.0" in small  # 20 / 63 of the steps
    assert "7.8 ± 0.0" in big  # 20 / 255
    assert chapter_use_table(make_results()) == []  # older results without chapter use: no table


@pytest.mark.parametrize(("keep", "verdict"), [(0.6, "MoC forgets less"), (0.1, "MoC forgets more")])
def test_forgetting_findings_follow_the_numbers(keep: float, verdict: str) -> None:
    from moc_experiments.experiment.capacity.findings import forgetting_findings

    lines = forgetting_findings(_with_chapter_use_and_full_ift(keep), analysis.BITS)
    full = next(s for s in lines if "moc small (full fine-tune) − dense backbone (full fine-tune)" in s)
    assert verdict in full


def test_freezing_the_memory_path_is_compared_with_nothing_frozen() -> None:
    from moc_experiments.experiment.capacity.findings import retention_findings

    lines = retention_findings(_with_chapter_use_and_full_ift(0.3), analysis.BITS)
    line = next(s for s in lines if s.startswith("moc small, after IFT, memory path frozen − nothing frozen"))
    assert "the memory path frozen keeps more" in line
