"""report.md and plots of `moc-lab run capacity`, written from results.json alone.

When the runs measured knowledge in bits (Allen-Zhu & Li's bit complexity, see
:mod:`moc_experiments.experiment.capacity.metrics`) the report leads with it: the main table (bits per
model with their cost in inference FLOPs and non-embedding parameters), the saturation check (is a model
capacity-bound: does doubling its run length raise its bits by less than 10%?), the marginal bits per
extra inference FLOP over the baseline, the ablations (bits held in the bank, and how the router spreads
people over chapters) and retention through instruction fine-tuning. Older results without bits keep
their recall tables and plots.

Every finding follows one rule (:func:`moc_experiments.experiment.stats.verdict`): a difference is
claimed only when the 95% Student-t confidence interval of the mean of its per-seed paired differences
excludes zero; otherwise it is within seed noise, and with one seed no claim is made.

This module assembles the document; the pieces live next to it, dependencies pointing one way:

- :mod:`.formatting`: numbers as text (mean ± sd, intervals, kbit, FLOPs);
- :mod:`.analysis`: the numbers (pairing by seed, measures, efficiency, saturation, marginal bits,
  routing spread, dense models around a FLOP budget, bank-size groups);
- :mod:`.tables`, :mod:`.findings`, :mod:`.figures`: the markdown tables, the finding sentences and the
  plots (one colour per model in every plot: ``model_colors``), each built on :mod:`.analysis`.

The names they export that callers use are re-exported here.
"""

from __future__ import annotations

import json
from pathlib import Path

from moc_experiments.experiment.capacity.analysis import (
    BITS,
    IFT_LABELS,
    NEAR_FLOPS,
    NO_BITS,
    RECALL,
    SATURATION_GAIN,
    Measure,
    bank_groups,
    compare,
    dense_around,
    efficiency,
    has_bits,
    ift_variants,
    inference_flops,
    is_moc,
    marginal,
    measure_of,
    non_embedding,
    paired,
    read_signature,
    saturation,
    saturation_gain,
    saturation_status,
    seed_values,
    world_bits,
)
from moc_experiments.experiment.capacity.figures import PALETTE, bits_plots, model_colors, plots
from moc_experiments.experiment.capacity.findings import (
    ABLATIONS,
    ablation_findings,
    bank_size_findings,
    findings,
    frontier_findings,
    leader_findings,
    retention_findings,
    saturation_findings,
)
from moc_experiments.experiment.capacity.tables import (
    ablation_table,
    bits_compare_table,
    bits_retention_table,
    bits_table,
    marginal_table,
    recall_tables,
    retention_caption,
    retention_table,
    saturation_table,
    tables,
)
from moc_experiments.experiment.pool import results_path

__all__ = [
    "ABLATIONS", "BITS", "IFT_LABELS", "NEAR_FLOPS", "NO_BITS", "PALETTE", "RECALL", "SATURATION_GAIN",
    "Measure", "ablation_findings", "ablation_table", "bank_groups", "bank_size_findings",
    "bits_compare_table", "bits_plots", "bits_retention_table", "bits_table", "compare", "dense_around",
    "efficiency", "findings", "frontier_findings", "has_bits", "ift_variants", "inference_flops",
    "is_moc", "leader_findings", "marginal", "marginal_table", "measure_of", "model_colors",
    "non_embedding", "paired", "plots", "read_signature", "recall_tables", "retention_caption",
    "retention_findings", "retention_table", "saturation", "saturation_findings", "saturation_gain",
    "saturation_status", "saturation_table", "seed_values", "tables", "world_bits", "write_report",
]  # fmt: skip


def _text_note(results: dict) -> list[str]:
    """A paragraph on the real text mixed in (nothing for the world alone)."""
    info = results.get("text")
    if not info:
        return []
    frac = results["config"]["text"]["fraction"]
    sources = ", ".join(info.get("sources") or []) or "the demo corpus"
    ift = "real chat examples" if info.get("ift_data") == "real_chat" else "the world chat form"
    return [
        "",
        f"Real text: {100 * frac:.0f}% of the pretraining documents are [BOS] + a window of real text "
        f"({sources}; {info['text_tokens']} tokens in {info['text_documents']} documents, "
        f"{100 * info['unk_rate']:.1f}% <unk>); vocabulary {info['vocab']} words (the world's "
        f"{info['world_vocab']}, <unk>, the most frequent real-text words). IFT data: {ift}.",
    ]


def _world_line(w: dict) -> str:
    """The world in one sentence: people, attributes, values (and names and bits for the compositional
    world)."""
    if w.get("kind") == "compositional":
        return (
            f"World: {w['n_people']} people named by {w['first_names']} first x {w['last_names']} last name "
            "tokens (shared by many people, so no single embedding row identifies a person), "
            f"{w['doc_form']} biographies; {w['n_attributes']} attributes x {w['n_values']} values "
            f"({w['facts']} facts, {w['bits'] / 1e3:.2f} kbit, vocabulary {w['vocab']} words)"
        )
    return (
        f"World: {w['n_people']} people x {w['n_attributes']} attributes ({w['facts']} facts, "
        f"{w['n_values']} values per attribute, vocabulary {w['vocab']} words)"
    )


def _setup(results: dict) -> str:
    """What was trained: the world, the run length and the seeds."""
    w = results["world"]
    t = results["config"]["train"]
    first = next((r for runs in results["runs"].values() for r in runs), {})
    exposures = f", {first['exposures']:.0f} documents per person" if "exposures" in first else ""
    sat = results["config"]["train"].get("saturation_seeds") or 0
    questions = (
        f"question documents for {w['qa_people']} people, the question form about the other "
        f"{w['heldout_people']} is held out"
        if t.get("qa_doc_fraction", 1.0) > 0
        else "pretraining on biographies only (no question documents: the question columns measure the "
        "untrained question form)"
    )
    return (
        f"{_world_line(w)}; {questions}. "
        f"Every model: {results['steps']} steps x {t['batch_size']} documents (~"
        f"{results['steps'] * t['batch_size'] * results['mean_doc_tokens'] / 1e6:.2f}M tokens{exposures}), "
        f"LR {t['lr']}"
        + (
            " (scaled per model: the bits table's LR column), "
            if any(m.get("lr_scale", 1.0) != 1.0 for m in results["models"].values())
            else ", "
        )
        + f"seeds {results['config']['seed']}..{results['config']['seed'] + results['config']['seeds'] - 1}"
        + (f" (the first {sat} also at half the run length: the saturation check)" if sat else "")
        + ". Recall is exact (argmax next token = the value); 'memory off' re-scores the trained model with "
        "its memory output projections zeroed; 'drop' is recall minus memory-off recall, paired by seed."
    )


def _run_time(results: dict) -> str:
    if results.get("timing", {}).get("trained") is False:
        runs = [r for name in ("runs", "saturation") for rs in (results.get(name) or {}).values() for r in rs]
        core_h = sum(r.get("train_s", 0.0) for r in runs) / 3600
        return (
            f"This report trained nothing: it was rebuilt from {len(runs)} finished runs' records (their "
            f"pretraining took {core_h:.1f} core-hours in all, the sum of their train s)."
        )
    env = results["environment"]
    where = ", ".join(f"{k} {env[k]}" for k in ("machine", "processor", "cores") if env.get(k) is not None)
    return (
        (
            f"Run time: {results['timing']['total_s']:.0f} s on "
            if "timing" in results
            else "Run time: not recorded (the run was stopped early; partial results) on "
        )
        + f"{env.get('workers')} worker(s) x {env.get('threads')} thread(s)"
        + (f" ({where}; torch {env.get('torch')}, Python {env.get('python')})" if where else "")
        + "."
    )


def write_report(results: dict | str | Path, out: Path | None = None) -> Path:
    """Write report.md and the plots next to results.json (or into ``out``)."""
    if not isinstance(results, dict):
        path = results_path(results)
        out = out or path.parent
        results = json.loads(path.read_text())
    assert out is not None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = plots(results, out)
    lines = [
        f"# Knowledge capacity: {results['name']}",
        "",
        results.get("description") or "",
        "",
        _setup(results),
        *_text_note(results),
        "",
        "## Results",
        "",
        tables(results),
        "",
        "## Findings (written from the numbers above)",
        "",
        "Rule for every comparison: a difference is claimed only when the 95% confidence interval of the "
        "mean of its per-seed paired differences (Student t) excludes zero; otherwise it is within seed "
        "noise; with one seed no claim is made.",
        "",
        *[f"- {s}" for s in findings(results)],
        "",
        "## Plots (one colour per model in every plot)",
        "",
        *[f"![{name}]({p.name})" for name, p in paths.items()],
        "",
        _run_time(results),
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
