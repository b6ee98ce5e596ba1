"""report.md and plots of `moc experiment capacity`, written from results.json alone.

Each model keeps one colour in every plot (``model_colors``: the order of ``models`` in the experiment),
so a point in the FLOPs frontier and a bar in the memory-off panel of the same colour are the same model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from moc_experiments.experiment.stats import binomial_se, mean, sd

# matplotlib's tab10 then tab20's light shades: distinct for up to 20 models.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
    "#dbdb8d", "#9edae5",
)  # fmt: skip


def model_colors(keys: list[str]) -> dict[str, str]:
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def _vals(results: dict, key: str, form: str, off: bool = False) -> list[float]:
    field = "recall_memory_off" if off else "recall"
    return [r[field][form] for r in results["runs"][key] if field in r]


def _pm(xs: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """mean ± sd over seeds (one seed: the value alone)."""
    if not xs or any(not math.isfinite(x) for x in xs):
        return "–"
    s = sd(xs)
    return f"{mean(xs) * scale:.{digits}f}" + ("" if s is None else f" ± {s * scale:.{digits}f}")


def _drops(results: dict, key: str, form: str = "bio") -> list[float]:
    on, off = _vals(results, key, form), _vals(results, key, form, off=True)
    return [a - b for a, b in zip(on, off)]


def _fmt_flops(x: float) -> str:
    return f"{x / 1e3:.1f}k" if x < 1e6 else f"{x / 1e6:.2f}M"


def tables(results: dict) -> str:
    """The main table and the paired comparisons, as markdown."""
    w = results["world"]
    n_facts = w["facts"]
    lines = [
        "Recall % (mean ± sd over seeds); one seed's binomial se on "
        f"{n_facts} facts at 30% recall is ±{100 * binomial_se(0.3, n_facts):.1f} pt. Chance "
        f"{100 * w['chance']:.1f}%, most-common-value baseline {100 * w['majority']:.1f}%.",
        "",
        "| model | seeds | params (bank) | train FLOPs/token | inference FLOPs/token | recall bio |"
        " memory off | drop (paired) | held-out question | trained question | final loss | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, m in results["models"].items():
        runs = results["runs"].get(key) or []
        if not runs:
            continue
        p = m["params"]
        bank = p.get("bank", 0) if isinstance(p, dict) else 0
        total = p.get("total", 0) if isinstance(p, dict) else p
        fl = m["flops_per_token"]
        has_mem = "memory" in m
        lines.append(
            f"| {m['label']} | {len(runs)} | {total / 1e3:.1f}k ({bank / 1e3:.1f}k) | "
            f"{_fmt_flops(fl['train'])} | "
            f"{_fmt_flops(fl['inference'])} | {_pm(_vals(results, key, 'bio'))} | "
            f"{_pm(_vals(results, key, 'bio', True)) if has_mem else '–'} | "
            f"{_pm(_drops(results, key)) if has_mem else '–'} | "
            f"{_pm(_vals(results, key, 'question_heldout'))} | "
            f"{_pm(_vals(results, key, 'question_trained'))} | "
            f"{_pm([r['final_loss'] for r in runs], 1.0, 3)} | {_pm([r['train_s'] for r in runs], 1.0, 0)} |"
        )
    comps = results["config"].get("compare") or []
    if comps:
        lines += [
            "",
            "| comparison (bio recall, paired over seeds) | difference, pt | seeds |",
            "|---|---|---|",
        ]
        for a, b in comps:
            xa, xb = _vals(results, a, "bio"), _vals(results, b, "bio")
            n = min(len(xa), len(xb))
            if n:
                d = [x - y for x, y in zip(xa[:n], xb[:n])]
                lines.append(
                    f"| {results['models'][a]['label']} − {results['models'][b]['label']} | {_pm(d)} | {n} |"
                )
    lines += retention_table(results)
    return "\n".join(lines)


IFT_LABELS = {"frozen": "bank frozen", "low_lr": "bank at low LR", "full": "full fine-tune"}


def _ift_vals(results: dict, key: str, variant: str, form: str, off: bool = False) -> list[float]:
    field = "recall_memory_off" if off else "recall"
    out = []
    for r in results["runs"][key]:
        v = (r.get("ift") or {}).get(variant)
        if v is not None and field in v:
            out.append(v[field][form])
    return out


def retention_table(results: dict) -> list[str]:
    """Recall before and after instruction fine-tuning on the chat form (retention), if it ran."""
    rows = []
    for key, m in results["models"].items():
        runs = results["runs"].get(key) or []
        variants = [v for v in ("frozen", "low_lr", "full") if runs and v in (runs[0].get("ift") or {})]
        for v in variants:
            before, after = _vals(results, key, "bio"), _ift_vals(results, key, v, "bio")
            n = min(len(before), len(after))
            change = [a - b for a, b in zip(after[:n], before[:n])]
            has_mem = "memory" in m
            rows.append(
                f"| {m['label']} | {IFT_LABELS[v]} | {_pm(before)} | {_pm(after)} | {_pm(change)} | "
                f"{_pm(_ift_vals(results, key, v, 'bio', True)) if has_mem else '–'} | "
                f"{_pm(_ift_vals(results, key, v, 'chat_heldout'))} | "
                f"{_pm(_ift_vals(results, key, v, 'question_heldout'))} |"
            )
    if not rows:
        return []
    ift = results["config"]["ift"]
    return [
        "",
        f"Retention: instruction fine-tuning on the chat form ({ift['steps']} steps x {ift['batch_size']} "
        f"documents about the question-trained people, LR {ift['lr']}; bank LR x{ift['bank_lr_scale']:g} or "
        "frozen, memory layers x{:g}); recall % before and after.".format(ift["memory_lr_scale"]),
        "",
        "| model | IFT | bio before | bio after | change (paired) | bio after, memory off |"
        " chat form, held-out people | question form, held-out people |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def findings(results: dict) -> list[str]:
    """Sentences written from the numbers (no judgement is hard-coded)."""
    out = []
    done = {k: m for k, m in results["models"].items() if results["runs"].get(k)}
    if not done:
        return out
    mu = {k: mean(_vals(results, k, "bio")) for k in done}
    best = max(mu, key=lambda k: mu[k])
    out.append(f"Highest bio recall: {done[best]['label']} ({_pm(_vals(results, best, 'bio'))}%).")
    for k, m in done.items():
        if "memory" not in m:
            continue
        d = _drops(results, k)
        s = sd(d)
        if s is not None and s > 0:
            verdict = "beyond" if mean(d) > 2 * s else "within"
            out.append(
                f"{m['label']}: switching the memory off costs {_pm(d)} pt of recall ({verdict} twice its "
                "seed sd)."
            )
        else:
            out.append(f"{m['label']}: switching the memory off costs {_pm(d)} pt of recall.")
    dense = [k for k, m in done.items() if "memory" not in m]
    for k, m in done.items():
        if "memory" not in m or not dense:
            continue
        fl = m["flops_per_token"]["inference"]
        # "about equal" = within 10% more inference FLOPs per token (integer widths rarely match exactly)
        near = [d for d in dense if done[d]["flops_per_token"]["inference"] <= 1.1 * fl]
        if near:
            best = max(near, key=lambda d: mu[d])
            ratio = done[best]["flops_per_token"]["inference"] / fl
            verb = "beats" if mu[k] > mu[best] else "does not beat"
            sds = [
                x for x in (sd(_vals(results, k, "bio")), sd(_vals(results, best, "bio"))) if x is not None
            ]
            if not sds:
                noise = "one seed: no noise estimate"
            elif abs(mu[k] - mu[best]) <= 2 * max(sds):
                noise = "within twice the seed sd"
            else:
                noise = "beyond twice the seed sd"
            out.append(
                f"{m['label']} ({100 * mu[k]:.1f}%) {verb} the best dense model with at most 1.1x its "
                f"inference FLOPs per token: {done[best]['label']} ({100 * mu[best]:.1f}%, {ratio:.2f}x the "
                f"FLOPs; {noise})."
            )
    return out


def plots(results: dict, out: Path) -> dict[str, Path]:
    """recall_vs_flops.png (training and inference FLOPs axes), memory_off.png, loss_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = model_colors(list(results["models"]))
    done = [k for k in results["models"] if results["runs"].get(k)]
    paths = {}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, axis in zip(axes, ("train", "inference")):
        for k in done:
            m = results["models"][k]
            ys = [100 * v for v in _vals(results, k, "bio")]
            x = m["flops_per_token"][axis]
            ax.errorbar(
                x, mean(ys), yerr=sd(ys) or 0, fmt="o" if "memory" in m else "s", color=colors[k],
                capsize=3, label=m["label"],
            )  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(f"{axis} FLOPs per token" + (" (bank K/V cached)" if axis == "inference" else ""))
        ax.set_ylabel("exact recall, bio form (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle("Recall vs FLOPs (circles: MoC, squares: dense; bars: sd over seeds)")
    fig.tight_layout()
    paths["recall_vs_flops"] = out / "recall_vs_flops.png"
    fig.savefig(paths["recall_vs_flops"], dpi=110)
    plt.close(fig)

    mem = [k for k in done if "memory" in results["models"][k]]
    if mem:
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(mem) + 2), 4.2))
        for i, k in enumerate(mem):
            on, off = _vals(results, k, "bio"), _vals(results, k, "bio", True)
            ax.bar(i - 0.2, 100 * mean(on), 0.4, yerr=100 * (sd(on) or 0), color=colors[k], capsize=3)
            ax.bar(i + 0.2, 100 * mean(off), 0.4, yerr=100 * (sd(off) or 0), color=colors[k], alpha=0.35,
                   hatch="//", capsize=3)  # fmt: skip
        ax.set_xticks(range(len(mem)), [results["models"][k]["label"] for k in mem], rotation=25, ha="right",
                      fontsize=7)  # fmt: skip
        ax.set_ylabel("exact recall, bio form (%)")
        ax.set_title("Memory on (solid) vs memory off (hatched)")
        fig.tight_layout()
        paths["memory_off"] = out / "memory_off.png"
        fig.savefig(paths["memory_off"], dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k in done:
        run = results["runs"][k][0]
        every = results["config"]["train"]["log_every"]
        xs = [min((i + 1) * every, results["steps"]) for i in range(len(run["loss_curve"]))]
        ax.plot(xs, run["loss_curve"], color=colors[k], label=results["models"][k]["label"], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (seed {results['runs'][done[0]][0]['seed']})")
    ax.set_ylim(top=min(ax.get_ylim()[1], 4.0))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths["loss_curves"] = out / "loss_curves.png"
    fig.savefig(paths["loss_curves"], dpi=110)
    plt.close(fig)
    return paths


def write_report(results: dict | str | Path, out: Path | None = None) -> Path:
    """Write report.md and the plots next to results.json (or into ``out``)."""
    if not isinstance(results, dict):
        path = Path(results)
        path = path / "results.json" if path.is_dir() else path
        out = out or path.parent
        results = json.loads(path.read_text())
    assert out is not None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = plots(results, out)
    w = results["world"]
    t = results["config"]["train"]
    lines = [
        f"# Knowledge capacity: {results['name']}",
        "",
        results.get("description") or "",
        "",
        f"World: {w['n_people']} people x {w['n_attributes']} attributes ({w['facts']} facts, "
        f"{w['n_values']} values per attribute, vocabulary {w['vocab']} words); question documents for "
        f"{w['qa_people']} people, the question form about the other {w['heldout_people']} is held out. "
        f"Every model: {results['steps']} steps x {t['batch_size']} documents (~"
        f"{results['steps'] * t['batch_size'] * results['mean_doc_tokens'] / 1e6:.2f}M tokens), "
        f"LR {t['lr']}, "
        f"seeds {results['config']['seed']}..{results['config']['seed'] + results['config']['seeds'] - 1}. "
        "Recall is exact (argmax next token = the value); 'memory off' re-scores the trained model with "
        "its memory output projections zeroed; 'drop' is recall minus memory-off recall, paired by seed.",
        "",
        "## Results",
        "",
        tables(results),
        "",
        "## Findings (written from the numbers above)",
        "",
        *[f"- {s}" for s in findings(results)],
        "",
        "## Plots (one colour per model in every plot)",
        "",
        *[f"![{name}]({p.name})" for name, p in paths.items()],
        "",
        (
            f"Run time: {results['timing']['total_s']:.0f} s on "
            if "timing" in results
            else "Run time: not recorded (the run was stopped early; partial results) on "
        )
        + f"{results['environment'].get('workers')} worker(s) x "
        f"{results['environment'].get('threads')} thread(s).",
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
