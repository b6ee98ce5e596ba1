"""Plain-language findings generated from the numbers (never hard-coded conclusions).

A difference counts as real only when it is larger than ``Z`` times its uncertainty (a paired standard
error over validation windows or seeds, binomial standard errors for accuracies); otherwise the text
says the models are indistinguishable at this scale.
"""

from __future__ import annotations

from moc_experiments.experiment import summary
from moc_experiments.experiment.stats import Estimate

Z = 2.0


def _label(results: dict, key: str) -> str:
    return results["models"][key]["label"]


def _clear(est: Estimate) -> int:
    """-1 / +1 when ``est`` is clearly below / above zero, 0 when within Z uncertainties (or unknown)."""
    if est.err is None:  # no way to tell a real difference from noise
        return 0
    if est.value < -Z * est.err:
        return -1
    if est.value > Z * est.err:
        return 1
    return 0


def _unc(est: Estimate) -> str:
    if est.err is None:
        return "no uncertainty estimate"
    what = {"se": "SE", "sem": "SE over seeds", "sd": "sd over seeds"}.get(est.kind, "±")
    return f"± {est.err:.3f} {what}"


def val_loss_findings(results: dict) -> list[str]:
    out: list[str] = []
    moc = summary.val_loss(results, "pretrain", "moc")
    if moc is None:
        return out
    beaten, not_beaten = [], []
    for key in summary.model_keys(results, "baseline"):
        other = summary.val_loss(results, "pretrain", key)
        diff = summary.val_loss_diff(results, ("pretrain", "moc"), ("pretrain", key))
        if other is None or diff is None:
            continue
        c = _clear(diff)
        nums = f"{moc.value:.3f} vs {other.value:.3f}, difference {diff.value:+.3f} ({_unc(diff)})"
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
                f"(within {Z:.0f} uncertainties): {nums}."
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
            if _clear(Estimate(acc.value - summary.floor(base), acc.err, acc.kind)) > 0:
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
        c = _clear(d)
        if c:
            what = f"{'lost' if c < 0 else 'gained'} {100 * abs(d.value):.1f} pp"
        else:
            what = f"changed by {100 * d.value:+.1f} pp (within noise)"
        out.append(f"{info['label']}: {what} on the probes after IFT.")
    return out


def forgetting_findings(results: dict) -> list[str]:
    """How much each model's pretraining validation loss rose during IFT, and who forgot least."""
    rises: dict[str, Estimate] = {}
    for ift_key, info in results.get("ift_runs", {}).items():
        d = summary.val_loss_diff(results, ("ift", ift_key), ("pretrain", info["base"]))
        if d is not None:
            rises[ift_key] = d
    if not rises:
        return []
    labels = {k: results["ift_runs"][k]["label"] for k in rises}
    parts = [f"{labels[k]} {v.value:+.3f}" for k, v in rises.items()]
    out = [
        "Change of the pretraining validation loss through IFT (forgetting; lower is better): "
        + "; ".join(parts)
        + "."
    ]
    moc_keys = [k for k in rises if results["ift_runs"][k]["variant"] is not None]
    dense_keys = [k for k in rises if results["ift_runs"][k]["variant"] is None]
    if moc_keys and dense_keys:
        m = min(moc_keys, key=lambda k: rises[k].value)
        d = min(dense_keys, key=lambda k: rises[k].value)
        e1, e2 = rises[m].err, rises[d].err
        err = None if e1 is None or e2 is None else (e1**2 + e2**2) ** 0.5
        gap = Estimate(rises[m].value - rises[d].value, err, rises[m].kind)
        nums = f"{rises[m].value:+.3f} vs {rises[d].value:+.3f}, {_unc(gap)}"
        c = _clear(gap)
        if c < 0:
            out.append(f"MoC forgets less: {labels[m]} vs {labels[d]} ({nums}).")
        elif c > 0:
            out.append(
                f"MoC does NOT forget less than the dense models: {labels[m]} vs {labels[d]} ({nums})."
            )
        else:
            out.append(
                f"MoC and the dense models forget about equally (within noise): {labels[m]} vs {labels[d]} "
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
    diff = summary.val_loss_diff(results, ("pretrain", seq_key), ("pretrain", causal_key))
    c = _clear(diff) if diff is not None else 0
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
