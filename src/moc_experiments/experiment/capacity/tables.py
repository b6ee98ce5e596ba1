"""The markdown tables of the capacity report: with bits, the bits table, saturation check, marginal bits,
ablations (with the routing spread) and bits comparisons; always the recall table and its comparisons; and
retention through instruction fine-tuning (in bits when the IFT runs measured them)."""

from __future__ import annotations

import statistics

from moc_experiments.experiment.capacity.analysis import (
    BITS,
    IFT_LABELS,
    RECALL,
    SATURATION_GAIN,
    bank_params,
    compare,
    consistency_values,
    done,
    drops,
    efficiency,
    has_bits,
    ift_has_bits,
    ift_variants,
    inference_flops,
    is_moc,
    marginal,
    max_usage_entropy,
    non_embedding,
    paired,
    recall_values,
    saturation,
    seed_values,
    shuffled_values,
    spread_values,
    type_values,
    values,
    world_bits,
)
from moc_experiments.experiment.capacity.formatting import ci, ci_g3, flops, g3, kbit, pm
from moc_experiments.experiment.stats import binomial_se, mean, paired_verdict

# --------------------------------------------------------------------------------------------------
# Knowledge in bits
# --------------------------------------------------------------------------------------------------


def _split(model: dict) -> str:
    ne = non_embedding(model)
    if ne is None:
        return "–"
    return " / ".join(f"{ne[k] / 1e3:.1f}k" for k in ("backbone_layers", "memory_layers", "bank"))


def _lr(results: dict, model: dict) -> str:
    """The peak pretraining LR a model got (and its bank's, for MoC)."""
    lr = results["config"]["train"]["lr"] * model.get("lr_scale", 1.0)
    mem = model.get("memory") or {}
    bank = f", bank x{mem['bank_lr_scale']:g}" if "bank_lr_scale" in mem else ""
    return f"{lr:.3g}{bank}"


def bits_table(results: dict) -> list[str]:
    """The main table: per model its cost, its bits and what each parameter and FLOP holds."""
    w = world_bits(results)
    lines = [
        "Knowledge in bits (Allen-Zhu & Li's bit complexity: for each attribute with V values over N people, "
        "N x max(0, log2 V − mean cross-entropy of the value in bits), summed over attributes): mean ± sd "
        "over seeds and the 95% confidence interval of the mean (Student t)"
        + (f"; the world holds {w / 1e3:.2f} kbit" if w else "")
        + ". Non-embedding parameters: backbone layers (the backbone without its token embedding) / memory "
        "layers / bank; for a dense model bits per non-embedding and per backbone-layer parameter coincide. "
        "Bits per inference FLOP: mean bits / inference FLOPs per token. LR: the model's peak pretraining "
        "learning rate.",
        "",
        "| model | seeds | LR | inference FLOPs/token | non-embedding params: backbone layers / memory "
        "layers / bank | kbit | kbit, 95% CI | % of the world's bits | recall bio % | answer type % | bits / "
        "non-embedding param | bits / backbone-layer param | bits / inference FLOP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, m in done(results).items():
        b = values(BITS.of(results, key))
        if not b:
            continue
        eff = efficiency(results, key)
        share = f"{100 * mean(b) / w:.1f}" if w else "–"
        lines.append(
            f"| {m['label']} | {len(b)} | {_lr(results, m)} | {flops(inference_flops(m))} | {_split(m)} | "
            f"{kbit(b)} | "
            f"{ci(b, 1e-3, 2)} | {share} | {pm(recall_values(results, key, 'bio'))} | "
            f"{pm(type_values(results, key))} | "
            f"{g3(eff['per_param'])} | {g3(eff['per_backbone_param'])} | {g3(eff['per_flop'])} |"
        )
    return lines


def saturation_table(results: dict) -> list[str]:
    """Bits at half vs full run length per model, with the capacity-bound / still-learning status."""
    rows = []
    for key, m in done(results).items():
        s = saturation(results, key)
        if s is None:
            continue
        rows.append(
            f"| {m['label']} | {s['n']} | {kbit(s['half'])} | {kbit(s['full'])} | {100 * s['gain']:+.1f} | "
            f"{BITS.diff(s['diff'])} | {s['status']} |"
        )
    if not rows:
        return []
    return [
        "",
        "Saturation check: every model also trained at half the run length on the first seeds; gain = mean "
        "bits at full length / at half length − 1 over the same seeds. Rule: capacity-bound when doubling "
        f"the run length changed bits by less than {100 * SATURATION_GAIN:.0f}% either way, still learning "
        "when it raised them more (where models are still learning, comparing their bits ranks learning "
        "speed, not capacity), fell when it lowered them more.",
        "",
        "| model | seeds (paired) | kbit at half length | kbit at full length | gain % | full − half "
        "(paired) | status |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def marginal_table(results: dict) -> list[str]:
    """Extra bits per extra inference FLOP over the baseline model, and per bank parameter."""
    base = results["config"].get("baseline")
    rows = []
    for key, m in done(results).items():
        mg = marginal(results, key)
        if mg is None:
            continue
        per = mg["per_flop"]
        rows.append(
            f"| {m['label']} | {mg['flops']:+,.0f} | {BITS.diff(mg['bits'])} | "
            f"{'–' if per is None else f'{per.mean:.3g}'} | {'–' if per is None else ci_g3(per)} | "
            f"{g3(mg['per_bank_param'])} |"
        )
    if not rows:
        return []
    return [
        "",
        f"Marginal bits over the baseline, {results['models'][base]['label']} (paired by seed): extra bits / "
        "extra inference FLOPs per token, with the 95% CI of the mean; bits per bank parameter: extra bits / "
        "bank parameters (MoC).",
        "",
        "| model | extra inference FLOPs/token | extra bits | bits per extra FLOP | 95% CI |"
        " extra bits per bank param |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def _spread_cells(results: dict, key: str) -> str:
    """The routing spread in the first memory layer: distinct chapter sets %, routed-chapter use entropy
    (bits) and its maximum, busiest chapter's share %, routing consistency % ("–" where the runs did not
    record it)."""
    s = spread_values(results, key)
    top = max_usage_entropy(results["models"][key])
    return (
        f"{pm(s['distinct_sets'])} | {pm(s['usage_entropy_bits'], 1.0, 2)} | "
        f"{'–' if top is None else f'{top:.2f}'} | {pm(s['busiest_share'])} | "
        f"{pm(consistency_values(results, key))}"
    )


def ablation_table(results: dict) -> list[str]:
    """Per MoC model: bits, recall and answer type with the memory on / off / routed chapters shuffled,
    the bits held in the bank (on − shuffled, paired), and how the router spreads the bio prompts."""
    rows = []
    for key, m in done(results).items():
        if not is_moc(m) or not BITS.of(results, key, "_shuffled"):
            continue
        on, off, sh = (BITS.of(results, key, a) for a in ("", "_memory_off", "_shuffled"))
        held, cost = compare(on, sh), compare(on, off)
        bank = bank_params(m)
        per_bank = held.mean / bank if bank and held.mean is not None else None
        rows.append(
            f"| {m['label']} | {' / '.join(kbit(values(x)) for x in (on, off, sh))} | "
            f"{pm(recall_values(results, key, 'bio'))} / {pm(recall_values(results, key, 'bio', True))} / "
            f"{pm(shuffled_values(results, key)[0])} | {pm(type_values(results, key))} / "
            f"{pm(type_values(results, key, True))} / {pm(type_values(results, key, 'shuffled'))} | "
            f"{BITS.diff(held)} | {g3(per_bank)} | {BITS.diff(cost)} | {_spread_cells(results, key)} |"
        )
    if not rows:
        return []
    return [
        "",
        "Ablations: the memory's output zeroed (off) and the routed chapters' contents shuffled (the router "
        "picks the same ids, but what a chapter stored is elsewhere). Bits held in the bank = bits − bits "
        "with the chapters shuffled, paired by seed. Answer type (share of prompts answered with some value "
        "of the asked attribute) is the control: a model that keeps answering in format lost facts, not "
        "the format.",
        "",
        "Routing spread (bio prompts, first memory layer, mean ± sd over seeds; maximum entropy = log2 of "
        "the routed chapters): a memory can only hold person-specific facts where different people are "
        "routed to different chapters. Routing consistency: the share of facts whose reading position "
        "inside a biography (the attribute token, attributes after the first) is routed to the chapters its "
        "bio prompt is routed to: a fact stored where it was written can be read only if this is high.",
        "",
        "| model | kbit: on / off / shuffled | recall %: on / off / shuffled | answer type %: on / off / "
        "shuffled | bits held in the bank | per bank param | memory-off cost | distinct chapter sets % | "
        "chapter-use entropy, bits | maximum entropy, bits | busiest chapter, % of prompts | routing "
        "consistency % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def chapter_use_table(results: dict) -> list[str]:
    """Per MoC model: how often the router picked each chapter during pretraining (so how often its rows
    of the bank got a gradient), next to the bits the bank holds: a larger bank at the same read spreads
    the same picks over more chapters."""
    rows = []
    for key, m in done(results).items():
        runs = [r for r in results["runs"].get(key) or [] if r.get("chapter_use")]
        if not is_moc(m) or not runs:
            continue
        layer = lambda r: next(iter(r["chapter_use"].values()))  # noqa: E731 - the first memory layer
        picks = [layer(r)["picks_per_step_mean"] for r in runs]
        share = [layer(r)["steps_updated_mean"] for r in runs]
        low, mid, high = (100 * statistics.median(layer(r)["steps_updated_p10_p50_p90"][i] for r in runs)
                          for i in range(3))  # fmt: skip
        never = [layer(r)["never_picked"] for r in runs]
        held = compare(BITS.of(results, key), BITS.of(results, key, "_shuffled"))
        rows.append(
            f"| {m['label']} | {layer(runs[0])['chapters']} | {pm(picks, 1, 2)} | {pm(share)} | "
            f"{low:.1f} / {mid:.1f} / {high:.1f} | {pm(never)} | {BITS.diff(held)} |"
        )
    if not rows:
        return []
    return [
        "",
        "Chapter use during pretraining (first memory layer, mean ± sd over seeds): routed picks per "
        "chapter per step, and the share of steps in which a chapter was picked at least once, i.e. in "
        "which its rows of the bank got a gradient (10th / 50th / 90th percentile over chapters, median "
        "over seeds).",
        "",
        "| model | routed chapters | picks per chapter per step | steps a chapter is updated % | "
        "p10 / p50 / p90 % | never picked % | bits held in the bank |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def bits_compare_table(results: dict) -> list[str]:
    """The configured comparisons (``compare``) on bits, paired by seed."""
    rows = []
    for a, b in results["config"].get("compare") or []:
        v = compare(BITS.of(results, a), BITS.of(results, b))
        if v.mean is not None:
            label = f"{results['models'][a]['label']} − {results['models'][b]['label']}"
            rows.append(f"| {label} | {BITS.diff(v)} | {v.word('higher', 'lower')} |")
    if not rows:
        return []
    return ["", "| comparison (bits, paired over seeds) | difference | verdict |", "|---|---|---|", *rows]


# --------------------------------------------------------------------------------------------------
# Recall
# --------------------------------------------------------------------------------------------------


def recall_tables(results: dict) -> list[str]:
    """The recall table (every model, its ablations and costs) and the configured comparisons on recall."""
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
    for key, m in done(results).items():
        runs = results["runs"][key]
        p = m["params"]
        bank = p.get("bank", 0) if isinstance(p, dict) else 0
        total = p.get("total", 0) if isinstance(p, dict) else p
        fl = m["flops_per_token"]
        mem = is_moc(m)
        lines.append(
            f"| {m['label']} | {len(runs)} | {total / 1e3:.1f}k ({bank / 1e3:.1f}k) | "
            f"{flops(fl['train'])} | "
            f"{flops(fl['inference'])} | {pm(recall_values(results, key, 'bio'))} | "
            f"{pm(recall_values(results, key, 'bio', True)) if mem else '–'} | "
            f"{pm(drops(results, key)) if mem else '–'} | "
            f"{ci(drops(results, key)) if mem else '–'} | "
            f"{pm(shuffled_values(results, key)[0]) if mem else '–'} | "
            f"{pm(type_values(results, key))} / {pm(type_values(results, key, True)) if mem else '–'}"
            f" / {pm(type_values(results, key, 'shuffled')) if mem else '–'} | "
            f"{pm(recall_values(results, key, 'question_heldout'))} | "
            f"{pm(recall_values(results, key, 'question_trained'))} | "
            f"{pm([r['final_loss'] for r in runs], 1.0, 3)} | {pm([r['train_s'] for r in runs], 1.0, 0)} |"
        )
    comps = results["config"].get("compare") or []
    if comps:
        lines += [
            "",
            "| comparison (bio recall, paired over seeds) | difference, pt | 95% CI | seeds |",
            "|---|---|---|---|",
        ]
        for a, b in comps:
            xa, xb = recall_values(results, a, "bio"), recall_values(results, b, "bio")
            n = min(len(xa), len(xb))
            if n:
                d = [x - y for x, y in zip(xa[:n], xb[:n])]
                lines.append(
                    f"| {results['models'][a]['label']} − {results['models'][b]['label']} | {pm(d)} | "
                    f"{ci(d)} | {n} |"
                )
    return lines


# --------------------------------------------------------------------------------------------------
# Retention through instruction fine-tuning
# --------------------------------------------------------------------------------------------------


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


def _real_chat(results: dict) -> bool:
    return results["config"]["ift"].get("data", "world_chat") == "real_chat"


def _chat_column(results: dict) -> str:
    """The header of the chat-form column: not trained when the IFT used real chat data."""
    return "chat form (not trained), held-out people" if _real_chat(results) else "chat form, held-out people"


def _recall_after(results: dict, key: str, variant: str) -> str:
    """The recall cells after IFT ``variant``: bio with the memory off (MoC), chat form and question form
    about the held-out people."""
    off = pm(recall_values(results, key, "bio", True, ift=variant)) if is_moc(results["models"][key]) else "–"
    return (
        f"{off} | {pm(recall_values(results, key, 'chat_heldout', ift=variant))} | "
        f"{pm(recall_values(results, key, 'question_heldout', ift=variant))}"
    )


def retention_caption(results: dict) -> str:
    """What the IFT data was (the world's chat form or real chat data) and whether pretraining mixed real
    text; the original wording for the world alone with its chat form."""
    ift = results["config"]["ift"]
    lr = (
        f"LR {ift['lr_ratio']:g}x each model's own pretraining LR"
        if ift.get("lr_ratio") is not None
        else f"LR {ift['lr']}"
    )
    variants = set(ift.get("variants") or ["frozen", "low_lr"])
    if variants & {"frozen", "low_lr"} and not variants & {"full", "memory_frozen"}:
        lrs = f"{lr}; bank LR x{ift['bank_lr_scale']:g} or frozen, memory layers x{ift['memory_lr_scale']:g}"
    else:  # the variants say what each MoC run froze; the table names them
        lrs = f"{lr}; MoC fine-tuned with each variant in the table"
    mix = _pretraining_mix(results)
    if _real_chat(results):
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
    for key, m in done(results).items():
        ift = results["runs"][key][0].get("ift") or {}
        for v in (v for v in ("frozen", "low_lr", "full") if v in ift):
            before, after = recall_values(results, key, "bio"), recall_values(results, key, "bio", ift=v)
            n = min(len(before), len(after))
            change = [a - b for a, b in zip(after[:n], before[:n])]
            rows.append(
                f"| {m['label']} | {IFT_LABELS[v]} | {pm(before)} | {pm(after)} | {pm(change)} | "
                f"{_recall_after(results, key, v)} |"
            )
    if not rows:
        return []
    return [
        "",
        retention_caption(results),
        "",
        "| model | IFT | bio before | bio after | change (paired) | bio after, memory off |"
        f" {_chat_column(results)} | question form, held-out people |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _gentle_note(results: dict) -> str:
    ift = results["config"]["ift"]
    if not ift.get("gentle"):
        return ""
    return (
        f" Gentle IFT: LR x{ift['gentle_lr_scale']:g} and {100 * ift['gentle_replay']:.0f}% of each batch "
        "replayed pretraining documents."
    )


def bits_retention_table(results: dict) -> list[str]:
    """Bits and recall before and after each IFT variant (gentle ones included), the change paired by
    seed with its 95% CI, and the answer type after."""
    rows = []
    for key, m in done(results).items():
        for v in ift_variants(results, key):
            b0, b1 = paired(BITS.of(results, key), BITS.of(results, key, ift=v))
            r0, r1 = paired(RECALL.of(results, key), RECALL.of(results, key, ift=v))
            rows.append(
                f"| {m['label']} | {IFT_LABELS[v]} | {kbit(b0)} → {kbit(b1)} | "
                f"{BITS.diff(paired_verdict(b1, b0))} | {pm(r0)} → {pm(r1)} | "
                f"{RECALL.diff(paired_verdict(r1, r0))} | "
                f"{pm(values(seed_values(results, key, 'type_accuracy', ift=v)))} | "
                f"{_recall_after(results, key, v)} |"
            )
    if not rows:
        return []
    return [
        "",
        retention_caption(results)
        + " Bits and recall before → after; change = after − before, paired by seed, with the 95% CI of "
        "its mean." + _gentle_note(results),
        "",
        "| model | IFT | kbit before → after | change | recall % before → after | change | answer type "
        f"after % | bio after, memory off % | {_chat_column(results)} % | question form, held-out people % |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def tables(results: dict) -> str:
    """Every table of the report as markdown: with bits, the bits table, saturation check, marginal bits,
    ablations and bits comparisons first; then the recall table, the comparisons and retention."""
    lines: list[str] = []
    if has_bits(results):
        lines += ["### Knowledge in bits", "", *bits_table(results), *saturation_table(results)]
        lines += [*marginal_table(results), *ablation_table(results), *chapter_use_table(results)]
        lines += bits_compare_table(results)
        lines += ["", "### Recall", ""]
    lines += recall_tables(results)
    lines += bits_retention_table(results) if ift_has_bits(results) else retention_table(results)
    return "\n".join(lines)
