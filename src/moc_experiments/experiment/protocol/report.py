"""``results.json`` -> ``report.md`` + PNG plots. Everything in the report is computed from the file.

    from moc_experiments.experiment.protocol.report import write_report, tables
    write_report("runs/demo/results.json")       # writes runs/demo/report.md and runs/demo/*.png
    print(tables(results))                       # the tables alone (what `moc-lab demo` prints at the end)

Also on the command line: ``moc-lab report runs/demo`` (regenerate after editing or merging results).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moc_experiments.experiment.pool import results_path
from moc_experiments.experiment.protocol import summary
from moc_experiments.experiment.protocol.plots import make_plots
from moc_experiments.experiment.protocol.table1 import table1
from moc_experiments.experiment.protocol.verdict import findings
from moc_experiments.experiment.stats import Estimate

REPORT_FILE = "report.md"


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results.json (or the one inside a run folder)."""
    return json.loads(results_path(path).read_text())


# --------------------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _est(e: Estimate | None, digits: int = 3, scale: float = 1.0) -> str:
    return "—" if e is None else e.fmt(digits, scale)


def _pct(e: Estimate | None) -> str:
    return _est(e, 1, 100.0)


def _signed_pct(e: Estimate | None) -> str:
    if e is None:
        return "—"
    v = f"{100 * e.value:+.1f}"
    return v if e.err is None else f"{v} ± {100 * e.err:.1f}"


def _flops(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def _int(x: int | None) -> str:
    return "—" if x is None else f"{x:,}"


def _n_seeds(results: dict) -> int:
    return len(results.get("runs", []))


def _err_note(results: dict, one_seed: str) -> str:
    n = _n_seeds(results)
    return f"± is {one_seed} (one seed)." if n == 1 else f"Mean ± sd over {n} seeds."


def _label(results: dict, phase: str, key: str) -> str:
    return results["models"][key]["label"] if phase == "pretrain" else results["ift_runs"][key]["label"]


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def val_loss_table(results: dict) -> str:
    rows = []
    for ift_key, info in results.get("ift_runs", {}).items():
        before = summary.val_loss(results, "pretrain", info["base"])
        after = summary.val_loss(results, "ift", ift_key)
        change = None if before is None or after is None else f"{after.value - before.value:+.3f}"
        chat = [r.get("ift_val_loss") for r in summary.phase_runs(results, "ift", ift_key)]
        chat_s = "—" if not chat or None in chat else f"{sum(chat) / len(chat):.3f}"
        rows.append([info["label"], _est(before), _est(after), change or "—", chat_s])
    with_ift = {info["base"] for info in results.get("ift_runs", {}).values()}
    for key in summary.model_keys(results):
        if key in with_ift or results["models"][key]["role"] == "leak_ablation":
            continue
        rows.append(
            [results["models"][key]["label"], _est(summary.val_loss(results, "pretrain", key)), "—", "—", "—"]
        )
    head = ["Model", "Val loss after pretraining", "Val loss after IFT", "Change", "IFT val loss (chat)"]
    note = _err_note(results, "the standard error over validation windows")
    return _table(head, rows) + f"\n\nLoss on held-out pretraining text (nats/token, lower is better). {note}"


def _bpct(base: dict | None, key: str) -> str:
    return "—" if not base or base.get(key) is None else f"{100 * base[key]:.1f}"


def _probe_row(
    results: dict,
    label: str,
    before: Estimate | None,
    delta: Estimate | None,
    after: Estimate | None,
    base: dict | None,
) -> list[str]:
    return [
        label,
        _pct(before),
        _signed_pct(delta),
        _pct(after),
        *(_bpct(base, k) for k in summary.BASELINES),
    ]


_BASE_HEAD = ["Chance %", "Majority %", "Shortest %", "Unigram %"]


def probe_table(results: dict, task: str = summary.POOLED) -> str | None:
    base = summary.baseline(results, task)
    rows = []
    for ift_key, info in results.get("ift_runs", {}).items():
        before = summary.probe_acc(results, "pretrain", info["base"], task)
        after = summary.probe_acc(results, "ift", ift_key, task)
        if before is None and after is None:
            continue
        delta = summary.probe_delta(results, ift_key, task)
        rows.append(_probe_row(results, info["label"], before, delta, after, base))
    with_ift = {info["base"] for info in results.get("ift_runs", {}).values()}
    for key in summary.model_keys(results):
        acc = summary.probe_acc(results, "pretrain", key, task)
        if key in with_ift or acc is None:
            continue
        rows.append(_probe_row(results, results["models"][key]["label"], acc, None, None, base))
    if not rows:
        return None
    head = ["Model", "Pretrain %", "Δ pp", "IFT %", *_BASE_HEAD]
    what = "all probe questions pooled" if task == summary.POOLED else f"task {task}"
    n = f" ({base['n']} questions)" if base else ""
    note = _err_note(results, "the binomial standard error")
    return _table(head, rows) + f"\n\nAccuracy on {what}{n}. {note}"


def probe_task_table(results: dict) -> str | None:
    """Every task x model, long form."""
    rows = []
    tasks = summary.probe_tasks(results) or sorted(
        {
            t
            for r in results.get("runs", [])[:1]
            for run in r.get("pretrain", {}).values()
            for t in ((run.get("probes") or {}).get("tasks") or {})
        }
    )
    for task in tasks:
        base = summary.baseline(results, task)
        for ift_key, info in results.get("ift_runs", {}).items():
            before = summary.probe_acc(results, "pretrain", info["base"], task)
            if before is None:
                continue
            after = summary.probe_acc(results, "ift", ift_key, task)
            row = _probe_row(
                results, info["label"], before, summary.probe_delta(results, ift_key, task), after, base
            )
            rows.append([task, str(base["n"]) if base else "—", *row])
    if not rows:
        return None
    return _table(["Task", "n", "Model", "Pretrain %", "Δ pp", "IFT %", *_BASE_HEAD], rows)


def compute_table(results: dict) -> str:
    moc_fwd = results["models"].get("moc", {}).get("forward_flops_per_seq")
    rows = []
    for key, m in results["models"].items():
        pre = [r.get("train_flops") for r in summary.phase_runs(results, "pretrain", key)]
        ift = [
            r.get("train_flops")
            for ik, info in results.get("ift_runs", {}).items()
            if info["base"] == key
            for r in summary.phase_runs(results, "ift", ik)
        ]
        p = m.get("params", {})
        rel = "—" if not moc_fwd else f"{100 * (m['forward_flops_per_seq'] / moc_fwd - 1):+.1f}%"
        rows.append(
            [
                m["label"],
                str(m.get("n_layers", "—")),
                _int(p.get("total")),
                _int(p.get("backbone")),
                _int(p.get("memory_layers")),
                _int(p.get("bank")),
                _flops(m.get("forward_flops_per_seq")),
                rel,
                _flops(pre[0] if pre else None),
                _flops(sum(x for x in ift if x) / _n_seeds(results) if ift else None),
            ]
        )
    head = [
        "Model",
        "Layers",
        "Params",
        "Backbone",
        "Memory layers",
        "Bank",
        "Fwd FLOPs/seq",
        "vs MoC",
        "Pretrain FLOPs",
        "IFT FLOPs",
    ]
    return (
        _table(head, rows)
        + (
            "\n\nFLOPs follow the paper's accounting (training = 3 x forward) at the pretraining sequence "
            "length and micro-batch: a MoC micro-batch projects each distinct chapter once, counted as the "
            "expected number under uniform routing (README, accounting); run FLOPs = counted FLOPs per "
            "sequence x sequences trained (per seed; IFT summed over the model's IFT variants)."
        )
        + _measured_chapters(results)
    )


def _measured_chapters(results: dict) -> str:
    """Measured distinct chapters per micro-batch (last pretraining step) and MFU, per MoC model."""
    lines = []
    for key, m in results["models"].items():
        runs = [r for r in summary.phase_runs(results, "pretrain", key) if r.get("distinct_chapters")]
        if not runs:
            continue
        r = runs[0]
        mfu = ""
        if r.get("mfu") is not None and r.get("mfu_measured") is not None:
            mfu = f"; MFU {100 * r['mfu']:.1f}% (expected count), {100 * r['mfu_measured']:.1f}% (measured)"
        lines.append(
            f"- {m['label']}: {r['distinct_chapters']:,.1f} distinct chapters per micro-batch measured in "
            f"the last pretraining step{mfu}"
        )
    return "\n\n" + "\n".join(lines) if lines else ""


def router_table(results: dict) -> str | None:
    rows = []
    for phase in ("pretrain", "ift"):
        keys = summary.model_keys(results) if phase == "pretrain" else summary.ift_keys(results)
        for key in keys:
            u = summary.router_usage(results, phase, key)
            if u is None:
                continue
            rows.append(
                [
                    _label(results, phase, key),
                    "after pretraining" if phase == "pretrain" else "after IFT",
                    f"{u['router_entropy'].fmt(3)} / {u['max_entropy']:.3f}",
                    f"{u['usage_entropy'].fmt(3)} / {u['max_entropy']:.3f}",
                    _pct(u["used_fraction"]),
                    _pct(u["top_share"]),
                    str(u["n_chapters"]),
                ]
            )
    if not rows:
        return None
    head = [
        "Model",
        "When",
        "Router entropy / max (nats)",
        "Usage entropy / max",
        "Chapters used %",
        "Top chapter %",
        "Routed chapters",
    ]
    return _table(head, rows) + (
        "\n\nOn the pretraining validation windows. Router entropy: mean entropy of the router's softmax per "
        "decision. Usage entropy: entropy of how the picks spread over chapters (max = log of the number of "
        "routed chapters). Chapters used: routed chapters picked at least once (mean over memory layers)."
    )


def leak_table(results: dict) -> str | None:
    keys = summary.model_keys(results, "leak_ablation")
    if not keys:
        return None
    rows = []
    for key in ["moc", keys[0]]:
        m = results["models"][key]
        routing = m.get("routing", "?")
        est = summary.val_loss(results, "pretrain", key)
        valid = (
            "yes"
            if routing != "sequence"
            else "**NO**: chapters chosen from the whole sequence (sees the future)"
        )
        rows.append([m["label"], routing, _est(est), valid])
        as_causal = summary.val_loss(results, "pretrain", key, field="val_causal")
        if as_causal is not None:
            rows.append(
                [f"{m['label']}, evaluated with causal routing", "causal (eval only)", _est(as_causal), "yes"]
            )
    return _table(["Model", "Routing", "Val loss", "Valid LM loss?"], rows) + (
        "\n\nSame data, seed and recipe; only memory.routing differs. Pretraining only (no IFT)."
    )


def timing_table(results: dict) -> str | None:
    rows = []
    for seed_run in results.get("runs", []):
        for phase in ("pretrain", "ift"):
            for key, run in seed_run.get(phase, {}).items():
                rows.append(
                    [
                        str(seed_run["seed"]),
                        phase,
                        _label(results, phase, key),
                        f"{run.get('train_s', 0):.1f}",
                        f"{run.get('eval_s', 0):.1f}",
                        _int(run.get("tokens")),
                    ]
                )
    if not rows:
        return None
    return _table(["Seed", "Phase", "Model", "Train s", "Eval s", "Tokens"], rows)


def tables(results: dict) -> str:
    """The main tables, as printed at the end of `moc-lab run`."""
    parts = ["### Validation loss (pretraining distribution)", val_loss_table(results)]
    parts += _section("### Knowledge probes (Table 2 layout: pretrain %, Δ pp, IFT %)", probe_table(results))
    parts += ["### Compute", compute_table(results)]
    parts += _section("### Router usage", router_table(results))
    parts += _section("### Leak ablation: sequence vs causal routing", leak_table(results))
    return "\n\n".join(parts)


def _section(heading: str, body: str | None) -> list[str]:
    """``[heading, body]``, or nothing when the table ``body`` is missing or empty (the results hold
    nothing for it): the optional sections of the tables and of the report."""
    return [heading, body] if body else []


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


def _setup(results: dict) -> str:
    d, ph, env = results.get("data", {}), results.get("phases", {}), results.get("environment", {})
    lines = [
        f"- Seeds: {', '.join(str(r['seed']) for r in results.get('runs', []))}",
        f"- Data: {d.get('description', '?')}; tokenizer vocab {d.get('vocab_size', '?')}; "
        f"pretraining tokens {_int(d.get('pretrain_train_tokens'))} train / "
        f"{_int(d.get('pretrain_val_tokens'))} val; IFT tokens {_int(d.get('ift_train_tokens'))}.",
    ]
    for name in ("pretrain", "ift"):
        p = ph.get(name)
        if p:
            lines.append(
                f"- {'Pretraining' if name == 'pretrain' else 'IFT'}: {p['steps']} steps x {p['batch']} "
                f"sequences x {p['seq_len']} tokens = {_int(p['tokens'])} tokens per model; "
                f"LR {p['lr']:.3g} backbone, {p['memory_lr']:.3g} memory layers, {p['bank_lr']:.3g} bank "
                f"({p['schedule']})"
                + (f"; MoC variants: {', '.join(p['variants'])}" if p.get("variants") else "")
            )
    if env:
        lines.append(
            f"- Ran on {env.get('device', '?')} ({env.get('workers', '?')} worker(s) x "
            f"{env.get('threads', '?')} thread(s)), torch {env.get('torch', '?')}; total wall time "
            f"{results.get('timing', {}).get('total_s', 0):.0f} s" + _training_time(results) + "."
        )
    return "\n".join(lines)


def _training_time(results: dict) -> str:
    """The runs' own training time, which a report rebuilt from records did not spend itself."""
    runs = [
        r for seed in results.get("runs", []) for phase in ("pretrain", "ift") for r in seed[phase].values()
    ]
    train_s = [r["train_s"] for r in runs if isinstance(r.get("train_s"), (int, float))]
    if not train_s:
        return ""
    total = sum(train_s)
    return (
        f"; training of the {len(train_s)} run(s), summed: {total:.0f} s ({total / 3600:.2f} h) of one worker"
    )


def render_markdown(results: dict, plots: dict[str, Path]) -> str:
    parts = [f"# Experiment `{results['name']}`", results.get("description", ""), "## Setup", _setup(results)]
    parts += ["## Findings", "\n".join(f"- {f}" for f in findings(results)) or "- (nothing to compare)"]
    parts += ["## Validation loss (pretraining distribution)", val_loss_table(results)]
    parts += _section("## Paired verdicts over seeds (Table 1 at this scale)", table1(results))
    p = probe_table(results)
    if p:
        parts += [
            "## Knowledge probes",
            "Table 2 layout: accuracy after pretraining, change in percentage "
            "points, accuracy after IFT; baselines next to every row: chance (uniform guess), majority "
            "(always pick the task's most frequent answer when offered), shortest (always pick the answer "
            "with the fewest tokens: what an untrained model scores under lm-eval's acc) and unigram "
            "(pick the answer whose tokens are most frequent in the pretraining data: what a model that "
            "learned only token frequencies scores). Knowledge shows only above all four.",
            p,
        ]
        parts += _section("### Per task", probe_task_table(results))
    if "probe_accuracy" in plots:
        parts.append(f"![probe accuracy]({plots['probe_accuracy'].name})")
    parts += ["## Loss curves", f"![loss curves]({plots['loss_curves'].name})"]
    parts += ["## Compute", compute_table(results)]
    parts += _section("## Router usage", router_table(results))
    if "chapter_usage" in plots:
        parts.append(f"![chapter usage]({plots['chapter_usage'].name})")
    parts += _section("## Leak ablation: the paper's sequence routing vs causal routing", leak_table(results))
    parts += _section("## Timing", timing_table(results))
    notes = results.get("notes") or []
    if notes:
        parts += ["## Notes", "\n".join(f"- {n}" for n in notes)]
    return "\n\n".join(x for x in parts if x) + "\n"


def write_report(results: dict | str | Path, out_dir: str | Path | None = None) -> Path:
    """Write report.md and its PNGs into ``out_dir`` (default: the results file's folder)."""
    if not isinstance(results, dict):
        src = Path(results)
        out_dir = out_dir or (src if src.is_dir() else src.parent)
        results = load_results(src)
    if out_dir is None:
        raise ValueError("write_report needs out_dir when given a results dict")
    out = Path(out_dir)
    plots = make_plots(results, out)
    path = out / REPORT_FILE
    path.write_text(render_markdown(results, plots))
    return path
