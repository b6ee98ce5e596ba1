"""report.md and plots of `moc experiment capacity`, written from results.json alone.

Each model keeps one colour in every plot (``model_colors``: the order of ``models`` in the experiment),
so a point in the FLOPs frontier and a bar in the memory-off panel of the same colour are the same model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from moc_experiments.experiment.stats import binomial_se, mean, sd, t_interval

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


def _typed(results: dict, key: str, off: bool | str = False) -> list[float]:
    """Answer-type accuracy on the bio prompts of the runs that recorded it: memory on, off (True) or
    with the chapters shuffled ("shuffled")."""
    field = {False: "type_accuracy", True: "type_accuracy_memory_off", "shuffled": "type_accuracy_shuffled"}[
        off
    ]
    return [r[field]["bio"] for r in results["runs"][key] if field in r]


def _shuffled(results: dict, key: str) -> tuple[list[float], list[float]]:
    """(recall with the routed chapters shuffled, paired drop) over the runs that recorded it."""
    runs = [r for r in results["runs"][key] if "recall_shuffled" in r]
    return [r["recall_shuffled"]["bio"] for r in runs], [
        r["recall"]["bio"] - r["recall_shuffled"]["bio"] for r in runs
    ]


def _ci(xs: list[float], scale: float = 100.0) -> str:
    """The 95% confidence interval of the mean over seeds, as text ("–" for fewer than two seeds)."""
    ci = t_interval(xs)
    return "–" if ci is None else f"[{ci[0] * scale:.1f}, {ci[1] * scale:.1f}]"


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
        f"{100 * w['chance']:.1f}%, most-common-value baseline {100 * w['majority']:.1f}%. "
        "Drop: recall minus recall with every memory output zeroed (paired by seed), with the 95% "
        "confidence interval of its mean over seeds (Student t): an interval above zero is a drop beyond "
        "seed noise. Shuffled: recall when the routed chapters swap contents (the router picks the same "
        "ids, the bank keeps its vectors, but what a chapter stored is elsewhere). Answer type: the "
        "share of bio prompts answered with *some* value of the asked attribute (any person's city for a "
        "city prompt) with the memory on / off / shuffled — the control of the ablations: a model that "
        "still answers with the right type lost facts, not the format.",
        "",
        "| model | seeds | params (bank) | train FLOPs/token | inference FLOPs/token | recall bio |"
        " memory off | drop (paired) | drop, 95% CI | chapters shuffled | answer type, on / off / shuffled |"
        " held-out question | trained question | final loss | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
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
            f"{_ci(_drops(results, key)) if has_mem else '–'} | "
            f"{_pm(_shuffled(results, key)[0]) if has_mem else '–'} | "
            f"{_pm(_typed(results, key))} / {_pm(_typed(results, key, True)) if has_mem else '–'}"
            f" / {_pm(_typed(results, key, 'shuffled')) if has_mem else '–'} | "
            f"{_pm(_vals(results, key, 'question_heldout'))} | "
            f"{_pm(_vals(results, key, 'question_trained'))} | "
            f"{_pm([r['final_loss'] for r in runs], 1.0, 3)} | {_pm([r['train_s'] for r in runs], 1.0, 0)} |"
        )
    comps = results["config"].get("compare") or []
    if comps:
        lines += [
            "",
            "| comparison (bio recall, paired over seeds) | difference, pt | 95% CI | seeds |",
            "|---|---|---|---|",
        ]
        for a, b in comps:
            xa, xb = _vals(results, a, "bio"), _vals(results, b, "bio")
            n = min(len(xa), len(xb))
            if n:
                d = [x - y for x, y in zip(xa[:n], xb[:n])]
                lines.append(
                    f"| {results['models'][a]['label']} − {results['models'][b]['label']} | {_pm(d)} | "
                    f"{_ci(d)} | {n} |"
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


def _pretraining_mix(results: dict) -> str:
    """How pretraining mixed real text into the world ('' for the world alone)."""
    text = (results["config"].get("text") or {}).get("fraction", 0.0)
    if not text:
        return ""
    info = results.get("text") or {}
    return (
        f"pretraining mixed real text into the world ({100 * text:.0f}% of the documents were windows of "
        f"real text, vocabulary {info.get('vocab', '?')} words); "
    )


def retention_caption(results: dict) -> str:
    """What the IFT data was (the world's chat form or real chat data) and whether pretraining mixed real
    text; the original wording for the world alone with its chat form."""
    ift = results["config"]["ift"]
    lrs = (
        f"LR {ift['lr']}; bank LR x{ift['bank_lr_scale']:g} or frozen, memory layers "
        f"x{ift['memory_lr_scale']:g}"
    )
    mix = _pretraining_mix(results)
    if ift.get("data", "world_chat") == "real_chat":
        n = (results.get("text") or {}).get("chat_examples_usable")
        examples = f"{n} " if n is not None else ""
        return (
            f"Retention: {mix}instruction fine-tuning on real chat data ({ift['steps']} steps x "
            f"{ift['batch_size']} documents drawn from the corpus's {examples}chat examples, loss on the "
            f"assistant's answer only, {lrs}); recall % before and after. No world chat form was trained: "
            "the chat-form column is the untrained chat form."
        )
    head = "Retention: " + (mix[0].upper() + mix[1:] if mix else "")
    return (
        f"{head}instruction fine-tuning on the chat form ({ift['steps']} steps x {ift['batch_size']} "
        f"documents about the question-trained people, {lrs}); recall % before and after."
    )


def retention_table(results: dict) -> list[str]:
    """Recall before and after instruction fine-tuning (retention), if it ran; the caption says which IFT
    data was used and whether pretraining mixed real text."""
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
    real_chat = results["config"]["ift"].get("data", "world_chat") == "real_chat"
    chat_col = "chat form (not trained), held-out people" if real_chat else "chat form, held-out people"
    return [
        "",
        retention_caption(results),
        "",
        "| model | IFT | bio before | bio after | change (paired) | bio after, memory off |"
        f" {chat_col} | question form, held-out people |",
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
        ci = t_interval(d)
        if ci is not None:
            verdict = "beyond seed noise" if ci[0] > 0 else "within seed noise"
            out.append(
                f"{m['label']}: switching the memory off costs {_pm(d)} pt of recall (95% CI of the mean "
                f"{_ci(d)}: {verdict}; per seed {', '.join(f'{100 * x:.1f}' for x in d)})."
            )
        else:
            out.append(f"{m['label']}: switching the memory off costs {_pm(d)} pt of recall.")
        sh, sd_drop = _shuffled(results, k)
        if sh:
            out[-1] += f" Shuffling its routed chapters costs {_pm(sd_drop)} pt ({_ci(sd_drop)})."
        on_t, off_t = _typed(results, k), _typed(results, k, off=True)
        if on_t and off_t:
            # The control: a memory-off model that no longer answers with a value of the asked attribute
            # lost the format, so its recall drop does not say the bank held the facts.
            kept = mean(off_t) >= mean(on_t) - 0.1
            out[-1] += (
                f" Answer type with the memory off: {_pm(off_t)}% (on: {_pm(on_t)}%) — "
                + ("the model still answers in format, so the drop is lost facts."
                   if kept else "the model also loses the answer format, so the drop is not only facts.")
            )  # fmt: skip
        sh_t = _typed(results, k, "shuffled")
        if on_t and sh_t:
            out[-1] += f" Answer type with the chapters shuffled: {_pm(sh_t)}%."
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
            sh = _shuffled(results, k)[0]
            ax.bar(i - 0.27, 100 * mean(on), 0.27, yerr=100 * (sd(on) or 0), color=colors[k], capsize=3)
            ax.bar(i, 100 * mean(off), 0.27, yerr=100 * (sd(off) or 0), color=colors[k], alpha=0.35,
                   hatch="//", capsize=3)  # fmt: skip
            if sh:
                ax.bar(i + 0.27, 100 * mean(sh), 0.27, yerr=100 * (sd(sh) or 0), color=colors[k], alpha=0.35,
                       hatch="..", capsize=3)  # fmt: skip
        ax.set_xticks(range(len(mem)), [results["models"][k]["label"] for k in mem], rotation=25, ha="right",
                      fontsize=7)  # fmt: skip
        ax.set_ylabel("exact recall, bio form (%)")
        ax.set_title("Memory on (solid), off (//) and routed chapters shuffled (..)")
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
    # Real text has a higher loss than the world's templates: keep its curves in view.
    ax.set_ylim(top=min(ax.get_ylim()[1], 8.0 if results.get("text") else 4.0))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths["loss_curves"] = out / "loss_curves.png"
    fig.savefig(paths["loss_curves"], dpi=110)
    plt.close(fig)
    return paths


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
        *_text_note(results),
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
