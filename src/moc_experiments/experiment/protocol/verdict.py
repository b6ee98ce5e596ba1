"""Plain-language findings generated from the numbers (never hard-coded conclusions).

Every comparison follows one rule (:mod:`moc_experiments.experiment.stats`): with two or more seeds a
difference is claimed only when the 95% Student-t confidence interval of the mean of its paired per-seed
differences excludes zero; with one seed, when the normal 95% interval of its own standard error
(validation windows or binomial counts: value ± 1.96 se) excludes zero, and the text says it is one seed.
Otherwise the text says the models are indistinguishable at this scale.
"""

from __future__ import annotations

from moc_experiments.experiment.protocol import summary
from moc_experiments.experiment.stats import Estimate, Verdict, normal_verdict, verdict


def _label(results: dict, key: str) -> str:
    return results["models"][key]["label"]


def _rule(per_seed: list[float] | None, one_seed: Estimate | None = None) -> Verdict:
    """The rule over seeds (two or more paired values), else on one seed's standard error (normal 95%
    interval), else no claim."""
    if per_seed is not None and len(per_seed) >= 2:
        return verdict(per_seed)
    if one_seed is not None and one_seed.kind == "se":
        return normal_verdict(one_seed.value, one_seed.err)
    if per_seed:
        return verdict(per_seed)
    return verdict([] if one_seed is None else [one_seed.value])


def _unc(v: Verdict, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    """The 95% interval as text, with its basis (seeds, or one seed's standard error)."""
    if v.ci is None:
        return v.noise
    lo, hi = (x * scale for x in v.ci)
    where = f"over {v.n} seeds" if v.basis == "t" else "one seed, value ± 1.96 se"
    return f"95% CI [{lo:+.{digits}f}, {hi:+.{digits}f}]{unit}, {where}"


def val_loss_findings(results: dict) -> list[str]:
    out: list[str] = []
    moc = summary.val_loss(results, "pretrain", "moc")
    if moc is None:
        return out
    beaten, not_beaten = [], []
    for key in summary.model_keys(results, "baseline"):
        other = summary.val_loss(results, "pretrain", key)
        pair = (("pretrain", "moc"), ("pretrain", key))
        diff = summary.val_loss_diff(results, *pair)
        if other is None or diff is None:
            continue
        v = _rule(summary.val_loss_diffs(results, *pair), diff)
        c = v.sign
        nums = f"{moc.value:.3f} vs {other.value:.3f}, difference {v.mean:+.3f} ({_unc(v)})"
        if c < 0:
            beaten.append(key)
            out.append(f"MoC reaches a lower validation loss than the {_label(results, key)}: {nums}.")
        elif c > 0:
            not_beaten.append(key)
            out.append(f"MoC does NOT beat the {_label(results, key)} on validation loss: {nums}.")
        else:
            not_beaten.append(key)
            out.append(
                f"MoC and the {_label(results, key)} are indistinguishable on validation loss "
                f"({v.noise}): {nums}."
            )
    if beaten and not not_beaten:
        out.insert(0, "**At this scale MoC beats every dense baseline on validation loss.**")
    elif not_beaten:
        names = ", ".join(_label(results, k) for k in not_beaten)
        out.insert(0, f"**At this scale MoC does not clearly beat: {names}** (validation loss).")
    return out


def probe_findings(results: dict) -> list[str]:
    base = summary.baseline(results)
    out: list[str] = []
    if base is not None and len(base) > 1:
        above, scores = [], []
        for key in summary.model_keys(results):
            acc = summary.probe_acc(results, "pretrain", key)
            if acc is None:
                continue
            scores.append(f"{_label(results, key)} {100 * acc.value:.1f}%")
            fl = summary.floor(base)
            per_seed = [a - fl for a in summary.probe_accs(results, "pretrain", key) or []]
            if _rule(per_seed, Estimate(acc.value - fl, acc.err, acc.kind)).sign > 0:
                above.append(key)
        ref = ", ".join(f"{name} {100 * base[k]:.1f}%" for k, name in summary.BASELINES.items() if k in base)
        if scores and not above:
            out.append(
                "No model scores clearly above the best knowledge-free baseline on the probes after "
                f"pretraining ({ref}; pooled over {base['n']} questions; {'; '.join(scores)}): "
                "at this scale the probes cannot show what the memory buys in stored knowledge."
            )
        elif above:
            out.append(
                f"Clearly above every knowledge-free baseline ({ref}) after pretraining: "
                + ", ".join(_label(results, k) for k in above)
                + f" (pretraining scores: {'; '.join(scores)})."
            )
    for ift_key, info in results.get("ift_runs", {}).items():
        d = summary.probe_delta(results, ift_key)
        if d is None:
            continue
        v = _rule(summary.probe_deltas(results, ift_key), d)
        if v.sign:
            what = f"{'lost' if v.sign < 0 else 'gained'} {100 * abs(d.value):.1f} pp"
        else:
            what = f"changed by {100 * d.value:+.1f} pp ({v.noise})"
        out.append(f"{info['label']}: {what} on the probes after IFT; {_unc(v, 1, 100, ' pp')}.")
    return out


def _rises(results: dict) -> dict[str, tuple[Estimate, list[float] | None]]:
    """Per IFT run: the rise of its pretraining validation loss through IFT (estimate, per-seed values)."""
    out = {}
    for ift_key, info in results.get("ift_runs", {}).items():
        pair = (("ift", ift_key), ("pretrain", info["base"]))
        d = summary.val_loss_diff(results, *pair)
        if d is not None:
            out[ift_key] = (d, summary.val_loss_diffs(results, *pair))
    return out


def _gap(rm: tuple[Estimate, list[float] | None], rd: tuple[Estimate, list[float] | None]) -> Verdict:
    """The rule on the rise of one run minus another's: paired by seed, or (one seed) their standard
    errors combined."""
    (em, sm), (ed, sd_) = rm, rd
    per_seed = [a - b for a, b in zip(sm, sd_)] if sm and sd_ and len(sm) == len(sd_) else None
    err = None if em.err is None or ed.err is None else (em.err**2 + ed.err**2) ** 0.5
    return _rule(per_seed, Estimate(em.value - ed.value, err, "se" if em.kind == ed.kind == "se" else ""))


def forgetting_findings(results: dict) -> list[str]:
    """How much each model's pretraining validation loss rose during IFT, and who forgot least."""
    rises = _rises(results)
    if not rises:
        return []
    labels = {k: results["ift_runs"][k]["label"] for k in rises}
    parts = [f"{labels[k]} {v.value:+.3f}" for k, (v, _) in rises.items()]
    out = [
        "Change of the pretraining validation loss through IFT (forgetting; lower is better): "
        + "; ".join(parts)
        + "."
    ]
    moc_keys = [k for k in rises if results["ift_runs"][k]["variant"] is not None]
    dense_keys = [k for k in rises if results["ift_runs"][k]["variant"] is None]
    if moc_keys and dense_keys:
        m = min(moc_keys, key=lambda k: rises[k][0].value)
        d = min(dense_keys, key=lambda k: rises[k][0].value)
        gap = _gap(rises[m], rises[d])
        nums = (
            f"{rises[m][0].value:+.3f} vs {rises[d][0].value:+.3f}, difference {gap.mean:+.3f}, {_unc(gap)}"
        )
        if gap.sign < 0:
            out.append(f"MoC forgets less: {labels[m]} vs {labels[d]} ({nums}).")
        elif gap.sign > 0:
            out.append(
                f"MoC does NOT forget less than the dense models: {labels[m]} vs {labels[d]} ({nums})."
            )
        else:
            out.append(
                f"MoC and the dense models forget about equally ({gap.noise}): {labels[m]} vs {labels[d]} "
                f"({nums})."
            )
    return out


def leak_findings(results: dict) -> list[str]:
    keys = summary.model_keys(results, "leak_ablation")
    if not keys:
        return []
    leak_key = keys[0]
    routing = results["models"][leak_key].get("routing")
    seq_key, causal_key = (leak_key, "moc") if routing == "sequence" else ("moc", leak_key)
    seq = summary.val_loss(results, "pretrain", seq_key)
    causal = summary.val_loss(results, "pretrain", causal_key)
    if seq is None or causal is None:
        return []
    pair = (("pretrain", seq_key), ("pretrain", causal_key))
    c = _rule(summary.val_loss_diffs(results, *pair), summary.val_loss_diff(results, *pair)).sign
    rel = "lower than" if c < 0 else "higher than" if c > 0 else "indistinguishable from"
    out = [
        f"Leak ablation: the sequence-routed MoC's validation loss ({seq.value:.3f}) is {rel} the causal "
        f"MoC's ({causal.value:.3f}). Sequence routing picks chapters from the mean over the whole sequence, "
        "future tokens included, so its loss is NOT a valid language-model loss and must not be compared "
        "with the others."
    ]
    as_causal = summary.val_loss(results, "pretrain", seq_key, field="val_causal")
    if as_causal is not None:
        out.append(
            "The same sequence-trained weights evaluated with causal routing (a valid loss): "
            f"{as_causal.value:.3f}; reading chapters chosen with the future is worth "
            f"{as_causal.value - seq.value:+.3f} nats/token to them."
        )
    return out


def isoflop_findings(results: dict) -> list[str]:
    iso = results.get("models", {}).get("dense_isoflop")
    if not iso or iso.get("isoflop_mismatch") is None:
        return []
    return [
        f"The iso-FLOP dense model has {iso['n_layers']} layers (integer depth): its forward pass costs "
        f"{100 * iso['isoflop_mismatch']:+.1f}% FLOPs relative to MoC."
    ]


def findings(results: dict) -> list[str]:
    return (
        val_loss_findings(results)
        + forgetting_findings(results)
        + probe_findings(results)
        + leak_findings(results)
        + isoflop_findings(results)
    )
