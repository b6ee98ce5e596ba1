"""The paper's Table 1 at our scale: paired per-seed verdicts of every MoC model against every dense one.

Every row is a difference paired by seed (same data, same seed, same tokens) and judged by the one rule
of :mod:`moc_experiments.experiment.stats`: claimed only when the Student-t 95% interval of the mean
paired difference excludes zero. Rows:

- validation loss, MoC minus each dense model: on the validation windows, on the held-out fact
  documents and on the held-out prose (``eval.split_val``);
- each MoC's ablations minus the intact model (``eval.ablations``): memory off (does it use what it
  reads?) and shuffled chapters (does the gain live in the bank?);
- knowledge probes (pooled): each model's accuracy minus the best knowledge-free baseline, and MoC
  minus each dense model.
"""

from __future__ import annotations

from moc_experiments.experiment.protocol import summary
from moc_experiments.experiment.stats import Verdict, paired_verdict, verdict

SPLITS = (("val", "validation windows"), ("facts", "held-out facts"), ("prose", "held-out prose"))
ABLATIONS = (("memory_off", "memory off"), ("shuffled", "shuffled chapters"))


def _loss(run: dict, split: str) -> float | None:
    if split == "val":
        return (run.get("val") or {}).get("loss")
    return ((run.get("val_split") or {}).get(split) or {}).get("loss")


def _paired(results: dict, key: str) -> list[dict]:
    """The pretraining runs of ``key`` by seed, in the order of results["runs"] (None where missing)."""
    return [seed_run.get("pretrain", {}).get(key) for seed_run in results.get("runs", [])]


def _values(a: list, b: list, fa, fb) -> tuple[list[float], list[float]]:
    """Values of two models on the seeds where both have one (a seed missing either is left out)."""
    xs, ys = [], []
    for ra, rb in zip(a, b):
        x = fa(ra) if ra else None
        y = fb(rb) if rb else None
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def loss_verdicts(results: dict) -> list[tuple[str, str, str, Verdict]]:
    """(MoC label, what it is compared with, where, verdict of MoC - other) for every row with values."""
    rows = []
    labels = {k: m["label"] for k, m in results.get("models", {}).items()}
    dense = summary.model_keys(results, "baseline")
    for m in summary.model_keys(results, "moc"):
        runs = _paired(results, m)
        for d in dense:
            for split, where in SPLITS:
                xs, ys = _values(
                    runs, _paired(results, d), lambda r, s=split: _loss(r, s), lambda r, s=split: _loss(r, s)
                )
                if xs:
                    rows.append((labels[m], labels[d], where, paired_verdict(xs, ys)))
        for name, what in ABLATIONS:
            for split, where in SPLITS:

                def ablated(r: dict, name: str = name, split: str = split) -> float | None:
                    a = (r.get("ablations") or {}).get(name)
                    if not a:
                        return None
                    return (
                        a["val"]
                        if split == "val"
                        else ((a.get("val_split") or {}).get(split) or {}).get("loss")
                    )

                xs, ys = _values(runs, runs, ablated, lambda r, s=split: _loss(r, s))
                if xs:
                    rows.append((labels[m], f"itself with {what}", where, paired_verdict(xs, ys)))
    return rows


def probe_verdicts(results: dict) -> list[tuple[str, str, Verdict]]:
    """(model label, what it is compared with, verdict) on pooled probe accuracy."""
    base = summary.baseline(results)
    if not base:
        return []
    labels = {k: m["label"] for k, m in results.get("models", {}).items()}
    floor = summary.floor(base)
    rows = []
    accs = {}
    for k in summary.model_keys(results):
        if results["models"][k].get("role") == "leak_ablation":
            continue  # it sees the future: no valid probe score
        acc = summary.probe_accs(results, "pretrain", k)
        if acc:
            accs[k] = acc
            rows.append(
                (
                    labels[k],
                    f"best knowledge-free baseline ({100 * floor:.1f}%)",
                    verdict([a - floor for a in acc]),
                )
            )
    for m in summary.model_keys(results, "moc"):
        for d in summary.model_keys(results, "baseline"):
            if m in accs and d in accs:
                rows.append((labels[m], labels[d], paired_verdict(accs[m], accs[d])))
    return rows


def table1(results: dict) -> str | None:
    """The verdict tables as markdown (None when there is nothing paired to judge)."""
    loss, probes = loss_verdicts(results), probe_verdicts(results)
    if not loss and not probes:
        return None
    lines = []
    if loss:
        lines += [
            "| Model | vs | on | Δ loss (nats) | verdict |",
            "|---|---|---|---|---|",
            *(
                f"| {m} | {o} | {w} | {v.describe(digits=3)} | {v.word('higher', 'lower')} |"
                for m, o, w, v in loss
            ),
        ]
    if probes:
        lines += [
            "",
            "| Model | vs | Δ probe accuracy (pooled) | verdict |",
            "|---|---|---|---|",
            *(f"| {m} | {o} | {v.describe(scale=100, unit=' pt')} | {v.word()} |" for m, o, v in probes),
        ]
    lines += [
        "",
        "Each Δ is the first model minus the second, paired by seed; a verdict is claimed only when the "
        "95% Student-t interval of the mean paired difference excludes zero.",
    ]
    return "\n".join(lines)
