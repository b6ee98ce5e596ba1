"""The findings of the capacity report: sentences computed from the numbers (no judgement is hard-coded),
every comparison by the one rule (:func:`moc_experiments.experiment.stats.verdict`): a difference is
claimed only when the 95% confidence interval of the mean of its per-seed paired differences excludes
zero; otherwise it is within seed noise, and with one seed no claim is made."""

from __future__ import annotations

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
    done,
    ift_has_bits,
    ift_variants,
    inference_flops,
    is_moc,
    label,
    measure_of,
    saturation,
    seed_values,
    values,
    world_bits,
)
from moc_experiments.experiment.capacity.formatting import flops
from moc_experiments.experiment.stats import Verdict, mean


def _claim(meas: Measure, v: Verdict, up: str, down: str) -> str:
    """A difference with its verdict: "+1.20 kbit (95% CI [...], 5 seeds), ``up``" (or ``down``, or
    "within seed noise"); without an interval only "+1.20 kbit (one seed: no claim)"."""
    return meas.diff(v) if v.ci is None else f"{meas.diff(v)}, {v.word(up, down)}"


def _ahead(meas: Measure, v: Verdict, who: str = "MoC") -> str:
    """The difference, then "MoC stores more bits" / "MoC stores fewer bits" / "within seed noise"."""
    return _claim(meas, v, f"{who} {meas.more}", f"{who} {meas.less}")


def leader_findings(results: dict, meas: Measure) -> list[str]:
    """Which model holds the most (a level, not a comparison)."""
    vals = {k: meas.of(results, k) for k in done(results)}
    vals = {k: v for k, v in vals.items() if v}
    if not vals:
        return []
    best = max(vals, key=lambda k: mean(values(vals[k])))
    if meas is RECALL:
        return [f"Highest bio recall: {label(results, best)} ({meas.pm(vals[best])})."]
    w = world_bits(results)
    share = f", {100 * mean(values(vals[best])) / w:.1f}% of the world's {w / 1e3:.2f} kbit" if w else ""
    return [f"Most bits: {label(results, best)} ({meas.pm(vals[best])}{share})."]


def _versus(results: dict, meas: Measure, key: str, dense: str) -> tuple[Verdict, str]:
    """The rule on MoC ``key`` − ``dense``, and the clause that states it."""
    v = compare(meas.of(results, key), meas.of(results, dense))
    ratio = inference_flops(results["models"][dense]) / inference_flops(results["models"][key])
    return v, f"{label(results, dense)} ({ratio:.2f}x its FLOPs): {_ahead(meas, v)}"


def frontier_findings(results: dict, meas: Measure) -> list[str]:
    """(a) Per MoC model: does it hold more than every dense model with at most 1.1x its inference
    FLOPs/token, and how does it compare with the cheapest dense model above that?"""
    out = []
    for key, m in done(results).items():
        if not is_moc(m) or not meas.of(results, key):
            continue
        near, nxt = dense_around(results, key)
        fl = flops(inference_flops(m))
        claim = f"MoC {meas.more} than every dense model at <= {NEAR_FLOPS:g}x its FLOPs"
        if not near:
            text = (
                f"{m['label']}: no dense model has <= {NEAR_FLOPS:g}x its inference FLOPs/token ({fl}), so "
                "there is no comparison at about equal compute."
            )
        else:
            vs = [_versus(results, meas, key, d) for d in near]
            if all(v.sign > 0 for v, _ in vs):
                head = f"**{m['label']}: {claim}.**"
            elif any(v.ci is None for v, _ in vs):
                head = f"{m['label']} vs the dense models at <= {NEAR_FLOPS:g}x its FLOPs: {vs[0][0].noise}."
            else:
                head = f"{m['label']}: not shown that {claim}."
            text = (
                f"{head} Paired over seeds, at {fl} inference FLOPs/token: "
                + "; ".join(t for _, t in vs)
                + "."
            )
        if nxt is not None:
            text += (
                f" Against the cheapest dense model with more FLOPs, {_versus(results, meas, key, nxt)[1]}."
            )
        out.append(text)
    return out


def bank_size_findings(results: dict, meas: Measure) -> list[str]:
    """(b) At constant read, does a larger bank hold more? Consecutive bank sizes, paired by seed."""
    out = []
    for group in bank_groups(results):
        size = {k: results["models"][k]["memory"]["n_tokens"] for k in group}
        steps = [(a, b) for a, b in zip(group, group[1:]) if size[b] > size[a]]
        vs = [(a, b, compare(meas.of(results, b), meas.of(results, a))) for a, b in steps]
        mem = results["models"][group[0]]["memory"]
        read = (
            f"{mem.get('tokens_read')} tokens read per token, top-{mem.get('top_k')}, "
            f"{mem.get('routing')} routing"
        )
        grown = sum(v.sign > 0 for *_, v in vs)
        if grown == len(vs):
            head = f"{meas.grow} with bank size at every step"
        elif any(v.ci is None for *_, v in vs):
            head = f"{meas.name} vs bank size: {vs[0][2].noise}"
        elif grown:
            head = f"{meas.grow} beyond seed noise at {grown} of the {len(vs)} steps"
        else:
            head = f"{meas.not_grow} beyond seed noise at any step"
        parts = [
            f"{label(results, a)} → {label(results, b)} ({size[a]:,} → {size[b]:,} bank tokens): "
            f"{_ahead(meas, v, 'the larger bank')}"
            for a, b, v in vs
        ]
        out.append(f"Bank size at constant read ({read}): {head}. " + "; ".join(parts) + ".")
    return out


def _format_control(results: dict, key: str, ablation: str, loss: Verdict) -> str:
    """The answer-type control of an ablation: its answer type, the drop paired by seed, and what that
    says about the loss (a model that still answers in format lost facts, not the format)."""
    on, ab = seed_values(results, key, "type_accuracy"), seed_values(results, key, "type_accuracy" + ablation)
    if not on or not ab:
        return ""
    drop = compare(on, ab)
    text = f"answer type {RECALL.pm(ab)}, drop {RECALL.diff(drop)}"
    if drop.sign > 0:
        return text + ": it also loses the answer format, so not all of the loss is facts"
    if loss.sign > 0 and drop.ci is not None:
        return text + ": it still answers in format, so what it lost is facts"
    return text


ABLATIONS = (  # (what, field suffix, what a loss beyond seed noise means)
    ("shuffling its routed chapters", "_shuffled", "held in the bank beyond seed noise"),
    ("switching the memory off", "_memory_off", "a loss beyond seed noise"),
)


def ablation_findings(results: dict, meas: Measure) -> list[str]:
    """(c) Per MoC model: what its bank holds (the loss when its routed chapters are shuffled) and what
    switching the memory off costs, each with the answer-type control."""
    out = []
    for key, m in done(results).items():
        on = meas.of(results, key)
        if not is_moc(m) or not on:
            continue
        parts = []
        for what, ablation, lost in ABLATIONS:
            ab = meas.of(results, key, ablation)
            if not ab:
                continue
            loss = compare(on, ab)
            control = _format_control(results, key, ablation, loss)
            parts.append(
                f"{what} costs {_claim(meas, loss, lost, 'a gain beyond seed noise')}"
                + (f"; {control}" if control else "")
            )
        if parts:
            out.append(
                f"{m['label']}: "
                + ". ".join(p[0].upper() + p[1:] if i else p for i, p in enumerate(parts))
                + "."
            )
    return out


def saturation_findings(results: dict) -> list[str]:
    """(d) Which models are capacity-bound (doubling the run length raised bits < 10%)."""
    sat = {k: s for k in done(results) if (s := saturation(results, k)) is not None}
    if not sat:
        return []
    statuses = ("capacity-bound", "still learning", "fell", NO_BITS)
    by = {st: [k for k, s in sat.items() if s["status"] == st] for st in statuses}

    def names(keys: list[str]) -> str:
        return ", ".join(f"{label(results, k)} ({100 * sat[k]['gain']:+.1f}%)" for k in keys) or "none"

    text = (
        f"Saturation (bits at full vs half run length; capacity-bound when the gain is under "
        f"{100 * SATURATION_GAIN:.0f}%): capacity-bound: {names(by['capacity-bound'])}; still learning: "
        f"{names(by['still learning'])}"
        + (
            f"; fell (bits lower at full length: no capacity reading): {names(by['fell'])}"
            if by["fell"]
            else ""
        )
        + (f"; {NO_BITS}: " + ", ".join(label(results, k) for k in by[NO_BITS]) if by[NO_BITS] else "")
        + "."
    )
    if len(by["still learning"]) == len(sat):
        text += (
            " Every model is still learning: the bits comparisons above rank learning speed, not capacity."
        )
    elif len(by["capacity-bound"]) == len(sat):
        text += " Every model is capacity-bound: the bits comparisons above compare capacity."
    if min(s["n"] for s in sat.values()) < 2:
        text += " One saturation seed: each status rests on one run; no claim beyond it."
    return [text]


def retention_findings(results: dict, meas: Measure) -> list[str]:
    """(e) Through IFT: does a frozen bank keep more than one at low LR, and a gentle IFT more than the
    plain one? After-IFT values paired by seed."""
    out = []
    for key, m in done(results).items():
        vs = ift_variants(results, key)
        after = {v: meas.of(results, key, ift=v) for v in vs}
        before = meas.of(results, key)
        if "frozen" in vs and "low_lr" in vs:
            v = compare(after["frozen"], after["low_lr"])
            frozen, low = (meas.diff(compare(after[x], before)) for x in ("frozen", "low_lr"))
            out.append(
                f"{m['label']}, change of {meas.name} through IFT: {frozen} with the bank frozen, {low} at a "
                "low bank LR; frozen − low LR after IFT: "
                f"{_claim(meas, v, 'the frozen bank keeps more', 'the low-LR bank keeps more')}."
            )
        if "full" in vs and is_moc(m):
            for frozen in ("frozen", "memory_frozen"):
                if frozen in vs:
                    v = compare(after[frozen], after["full"])
                    out.append(
                        f"{m['label']}, after IFT, {IFT_LABELS[frozen]} − nothing frozen: "
                        f"{_claim(meas, v, f'the {IFT_LABELS[frozen]} keeps more', 'freezing keeps less')}."
                    )
        for base in ("frozen", "low_lr", "full", "memory_frozen"):
            if base in vs and f"gentle_{base}" in vs:
                v = compare(after[f"gentle_{base}"], after[base])
                out.append(
                    f"{m['label']}, after IFT, gentle − plain ({IFT_LABELS[base]}): "
                    f"{_claim(meas, v, 'the gentle IFT keeps more', 'the gentle IFT keeps less')}."
                )
    return out


def forgetting_findings(results: dict, meas: Measure) -> list[str]:
    """The paper's Table 2 question: does MoC forget less through IFT than the dense model it is compared
    with? For each ``compare`` pair [MoC, dense], the change through IFT (after − before, per seed) of each
    MoC variant against the dense model's full (or gentle full) fine-tune, paired by seed."""
    out = []
    models = done(results)
    for a, b in results["config"].get("compare") or []:
        if a not in models or b not in models or not is_moc(models[a]) or is_moc(models[b]):
            continue
        change = {
            (k, v): {s: x - meas.of(results, k).get(s, x) for s, x in meas.of(results, k, ift=v).items()}
            for k in (a, b)
            for v in ift_variants(results, k)
        }
        for (k, v), moc_change in change.items():
            dense_v = "gentle_full" if v.startswith("gentle_") else "full"
            if k != a or (b, dense_v) not in change:
                continue
            d = compare(moc_change, change[(b, dense_v)])
            out.append(
                f"Forgetting through IFT, {models[a]['label']} ({IFT_LABELS[v]}) − {models[b]['label']} "
                f"({IFT_LABELS[dense_v]}), change of {meas.name}: "
                f"{_claim(meas, d, 'MoC forgets less', 'MoC forgets more')}."
            )
    return out


def findings(results: dict) -> list[str]:
    """Sentences written from the numbers (no judgement is hard-coded): bits when the runs measured them,
    else bio recall."""
    if not done(results):
        return []
    meas = measure_of(results)
    return (
        leader_findings(results, meas)
        + frontier_findings(results, meas)
        + bank_size_findings(results, meas)
        + ablation_findings(results, meas)
        + (saturation_findings(results) if meas is BITS else [])
        + retention_findings(results, BITS if ift_has_bits(results) else RECALL)
        + forgetting_findings(results, BITS if ift_has_bits(results) else RECALL)
    )
