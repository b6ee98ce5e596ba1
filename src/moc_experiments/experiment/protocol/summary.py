"""Read measurements out of ``results.json`` and aggregate them over seeds.

``results["runs"]`` holds one entry per seed:
``{"seed", "pretrain": {model_key: RUN}, "ift": {run_key: RUN}}``.
A RUN has ``val`` (loss on the pretraining validation windows, with ``window_losses``), ``probes``
(``{"tasks": {task: {"acc", "n"}}}``), ``router``, curves and costs; see
:mod:`moc_experiments.experiment.protocol.runner`.
"""

from __future__ import annotations

from typing import Any

from moc_experiments.experiment.stats import Estimate, binomial_se, combine, mean, paired_se, sd, window_se

POOLED = "all"  # pseudo-task: every probe question pooled
# Knowledge-free probe baselines (see moc_experiments.experiment.protocol.data.knowledge_free_baselines)
# and their names.
BASELINES = {
    "chance": "chance",
    "majority": "majority answer",
    "shortest_answer": "shortest answer",
    "unigram": "unigram",
}


def phase_runs(results: dict, phase: str, key: str) -> list[dict]:
    """This run in every seed (empty when missing in any seed)."""
    out = []
    for seed_run in results.get("runs", []):
        run = seed_run.get(phase, {}).get(key)
        if run is None:
            return []
        out.append(run)
    return out


def model_keys(results: dict, role: str | None = None) -> list[str]:
    return [k for k, m in results.get("models", {}).items() if role is None or m.get("role") == role]


def ift_keys(results: dict) -> list[str]:
    return list(results.get("ift_runs", {}))


def val_loss(results: dict, phase: str, key: str, field: str = "val") -> Estimate | None:
    runs = [r for r in phase_runs(results, phase, key) if r.get(field)]
    if not runs:
        return None
    values = [r[field]["loss"] for r in runs]
    se = window_se(runs[0][field].get("window_losses") or []) if len(runs) == 1 else None
    return combine(values, se)


def val_loss_diffs(results: dict, a: tuple[str, str], b: tuple[str, str]) -> list[float] | None:
    """``loss(a) - loss(b)`` per seed for (phase, key) pairs (None when either lacks a validation loss)."""
    ra, rb = phase_runs(results, *a), phase_runs(results, *b)
    if not ra or not rb or not all(r.get("val") for r in ra + rb):
        return None
    return [x["val"]["loss"] - y["val"]["loss"] for x, y in zip(ra, rb)]


def val_loss_diff(results: dict, a: tuple[str, str], b: tuple[str, str]) -> Estimate | None:
    """``loss(a) - loss(b)`` for (phase, key) pairs, paired over windows (one seed) or seeds."""
    diffs = val_loss_diffs(results, a, b)
    if diffs is None:
        return None
    ra, rb = phase_runs(results, *a), phase_runs(results, *b)
    if len(diffs) == 1:
        wa, wb = ra[0]["val"].get("window_losses") or [], rb[0]["val"].get("window_losses") or []
        se = paired_se(wa, wb) if wa and len(wa) == len(wb) else None
        return Estimate(diffs[0], se, "se" if se is not None else "", 1)
    s = sd(diffs)
    return Estimate(mean(diffs), None if s is None else s / len(diffs) ** 0.5, "sem", len(diffs))


def probe_tasks(results: dict) -> list[str]:
    return list(results.get("probe_tasks", {}))


def _task_counts(run: dict, task: str) -> tuple[float, int] | None:
    """(correct, n) of one task, or of all tasks pooled."""
    tasks = (run.get("probes") or {}).get("tasks") or {}
    if task == POOLED:
        if not tasks:
            return None
        return sum(t["acc"] * t["n"] for t in tasks.values()), sum(t["n"] for t in tasks.values())
    t = tasks.get(task)
    return None if t is None else (t["acc"] * t["n"], t["n"])


def probe_accs(results: dict, phase: str, key: str, task: str = POOLED) -> list[float] | None:
    """Probe accuracy per seed (None when a seed lacks the task)."""
    counts = [_task_counts(r, task) for r in phase_runs(results, phase, key)]
    if not counts or any(c is None for c in counts):
        return None
    return [c / n for c, n in counts]


def probe_acc(results: dict, phase: str, key: str, task: str = POOLED) -> Estimate | None:
    accs = probe_accs(results, phase, key, task)
    if accs is None:
        return None
    n = _task_counts(phase_runs(results, phase, key)[0], task)[1]
    return combine(accs, binomial_se(accs[0], n))


def probe_deltas(results: dict, ift_key: str, task: str = POOLED) -> list[float] | None:
    """Accuracy after IFT minus before (same model and seed), per seed."""
    base = results["ift_runs"][ift_key]["base"]
    before, after = probe_accs(results, "pretrain", base, task), probe_accs(results, "ift", ift_key, task)
    if before is None or after is None:
        return None
    return [a - b for b, a in zip(before, after)]


def probe_delta(results: dict, ift_key: str, task: str = POOLED) -> Estimate | None:
    """Accuracy after IFT minus before (same model), in fractions; SE combines both binomial SEs."""
    base = results["ift_runs"][ift_key]["base"]
    before, after = phase_runs(results, "pretrain", base), phase_runs(results, "ift", ift_key)
    pairs = [(_task_counts(b, task), _task_counts(a, task)) for b, a in zip(before, after)]
    if not pairs or any(b is None or a is None for b, a in pairs):
        return None
    deltas = [a[0] / a[1] - b[0] / b[1] for b, a in pairs]
    if len(deltas) == 1:
        ((b, a),) = pairs
        pb, pa = b[0] / b[1], a[0] / a[1]
        se = (binomial_se(pb, b[1]) ** 2 + binomial_se(pa, a[1]) ** 2) ** 0.5
        return Estimate(deltas[0], se, "se", 1)
    return combine(deltas, None)


def baseline(results: dict, task: str = POOLED) -> dict[str, float] | None:
    """Chance, majority-answer and shortest-answer accuracy of a task (pooled: weighted by question
    count), for the questions actually evaluated."""
    info = results.get("probe_tasks", {})
    tasks = list(info.values()) if task == POOLED else [info[task]] if task in info else []
    if not tasks:
        return None
    n = sum(t["n"] for t in tasks)
    out = {"n": n}
    for field in BASELINES:
        if all(t.get(field) is not None for t in tasks):
            out[field] = sum(t[field] * t["n"] for t in tasks) / n
    return out


def floor(base: dict[str, float]) -> float:
    """The best knowledge-free score: the max of the baselines."""
    return max(base.get(k, 0.0) for k in BASELINES)


def router_summary(run: dict) -> dict[str, float] | None:
    """Entropy and usage of the chapter picks of one run, over its memory layers."""
    layers = _router_layers(run)
    if not layers:
        return None
    import math

    total = _summed_counts(layers)
    picks = sum(total)
    n_chap = len(total)
    probs = [c / picks for c in total if c] if picks else []
    usage_entropy = -sum(p * math.log(p) for p in probs)
    return {
        "router_entropy": mean([layer["mean_entropy"] for layer in layers]),
        "max_entropy": math.log(n_chap) if n_chap else 0.0,
        "usage_entropy": usage_entropy,
        "used_fraction": mean([layer["coverage"] for layer in layers]),
        "top_share": max(total) / picks if picks else 0.0,
        "n_chapters": n_chap,
        "decisions": sum(layer["decisions"] for layer in layers),
    }


def router_usage(results: dict, phase: str, key: str) -> dict[str, Estimate] | None:
    runs = phase_runs(results, phase, key)
    summaries = [router_summary(r) for r in runs]
    if not summaries or any(s is None for s in summaries):
        return None
    out: dict[str, Any] = {}
    for field in ("router_entropy", "usage_entropy", "used_fraction", "top_share"):
        out[field] = combine([s[field] for s in summaries], None)
    out["max_entropy"] = summaries[0]["max_entropy"]
    out["n_chapters"] = summaries[0]["n_chapters"]
    return out


def chapter_histogram(run: dict) -> list[int] | None:
    """Picks per routed chapter summed over memory layers."""
    layers = _router_layers(run)
    return _summed_counts(layers) if layers else None


def _router_layers(run: dict) -> list[dict[str, Any]]:
    """The router statistics of one run, one record per memory layer (``[]`` for a dense model or a run
    without them)."""
    return (run.get("router") or {}).get("layers") or []


def _summed_counts(layers: list[dict[str, Any]]) -> list[int]:
    """Picks per routed chapter, the layers' ``counts`` (one list of equal length per layer) added up
    element-wise: what the router chose over all memory layers of a run."""
    total = [0] * len(layers[0]["counts"])
    for layer in layers:
        total = [a + b for a, b in zip(total, layer["counts"])]
    return total
