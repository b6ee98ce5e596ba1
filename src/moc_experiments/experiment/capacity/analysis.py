"""The numbers of the capacity report, read out of results.json: measures paired by seed, knowledge in bits
per parameter and per FLOP, the saturation check, marginal bits over the baseline, the routing spread, and
which models to compare (dense models around a MoC model's FLOP budget, MoC models that differ in bank
size alone). No text beyond a measure's units; the tables, findings and figures build on this."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from moc_experiments.experiment.capacity.formatting import pm
from moc_experiments.experiment.stats import Verdict, mean, paired_verdict

# --------------------------------------------------------------------------------------------------
# Reading measures out of the run records
# --------------------------------------------------------------------------------------------------


def done(results: dict) -> dict[str, dict]:
    """The models with at least one finished run, in the experiment's order."""
    return {k: m for k, m in results["models"].items() if results["runs"].get(k)}


def label(results: dict, key: str) -> str:
    return results["models"][key]["label"]


def recall_values(
    results: dict, key: str, form: str, off: bool = False, ift: str | None = None
) -> list[float]:
    """Recall in ``form`` with the memory on or ``off``, after IFT variant ``ift`` when given, over the runs
    that recorded it (in run order)."""
    field = "recall_memory_off" if off else "recall"
    out = []
    for r in results["runs"][key]:
        src = (r.get("ift") or {}).get(ift) if ift else r
        if src is not None and field in src:
            out.append(src[field][form])
    return out


def type_values(results: dict, key: str, off: bool | str = False) -> list[float]:
    """Answer-type accuracy on the bio prompts of the runs that recorded it: memory on, off (True) or
    with the chapters shuffled ("shuffled")."""
    field = {False: "type_accuracy", True: "type_accuracy_memory_off", "shuffled": "type_accuracy_shuffled"}[
        off
    ]
    return [r[field]["bio"] for r in results["runs"][key] if field in r]


def shuffled_values(results: dict, key: str) -> tuple[list[float], list[float]]:
    """(recall with the routed chapters shuffled, paired drop) over the runs that recorded it."""
    runs = [r for r in results["runs"][key] if "recall_shuffled" in r]
    return [r["recall_shuffled"]["bio"] for r in runs], [
        r["recall"]["bio"] - r["recall_shuffled"]["bio"] for r in runs
    ]


def drops(results: dict, key: str, form: str = "bio") -> list[float]:
    """Recall minus memory-off recall, run by run."""
    on, off = recall_values(results, key, form), recall_values(results, key, form, off=True)
    return [a - b for a, b in zip(on, off)]


def _number(rec: dict, field: str, form: str) -> float:
    """One number of a measurement: ``bits*`` fields give their total, the others their ``form``."""
    v = rec[field]
    return v["total"] if field.startswith("bits") else v[form]


def seed_values(
    results: dict, key: str, field: str, form: str = "bio", section: str = "runs", ift: str | None = None
) -> dict[int, float]:
    """seed -> measure ``field`` ("bits", "recall_shuffled", "type_accuracy", ...) of model ``key``'s runs in
    ``section`` ("runs", or "saturation" for the half-length runs), after IFT variant ``ift`` when given.
    Runs that did not record it are left out, so a partial results file still pairs by seed."""
    out = {}
    for r in (results.get(section) or {}).get(key) or []:
        src = (r.get("ift") or {}).get(ift) if ift else r
        if src and field in src:
            out[r["seed"]] = _number(src, field, form)
    return out


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[list[float], list[float]]:
    """The values of the seeds both have, in seed order."""
    seeds = sorted(set(a) & set(b))
    return [a[s] for s in seeds], [b[s] for s in seeds]


def compare(a: dict[int, float], b: dict[int, float]) -> Verdict:
    """The one rule on ``a - b``, paired by seed."""
    return paired_verdict(*paired(a, b))


def values(xs: dict[int, float]) -> list[float]:
    """The values in seed order."""
    return [xs[s] for s in sorted(xs)]


@dataclass(frozen=True)
class Measure:
    """What the findings compare: knowledge in bits (shown in kbit) or, for results without bits, bio
    recall (shown in %). ``more`` / ``less`` say which model is ahead in a sentence."""

    field: str  # "bits" or "recall"; ablations add "_memory_off" / "_shuffled"
    name: str  # in a sentence: "bits" / "recall"
    grow: str  # "bits grow" / "recall grows"
    not_grow: str
    scale: float
    digits: int
    unit: str  # of a difference
    level: str  # of a level
    more: str
    less: str

    def of(self, results: dict, key: str, ablation: str = "", section: str = "runs", ift: str | None = None):
        return seed_values(results, key, self.field + ablation, section=section, ift=ift)

    def diff(self, v: Verdict) -> str:
        return v.describe(self.scale, self.digits, self.unit)

    def pm(self, xs: dict[int, float]) -> str:
        return pm(values(xs), self.scale, self.digits) + self.level


BITS = Measure(
    "bits", "bits", "bits grow", "bits do not grow", 1e-3, 2, " kbit", " kbit", "stores more bits",
    "stores fewer bits",
)  # fmt: skip
RECALL = Measure(
    "recall", "recall", "recall grows", "recall does not grow", 100.0, 1, " pt", "%", "recalls more",
    "recalls less",
)  # fmt: skip


def has_bits(results: dict) -> bool:
    """Whether any run measured knowledge in bits (results before bits existed did not)."""
    return any("bits" in r for runs in results.get("runs", {}).values() for r in runs)


def ift_has_bits(results: dict) -> bool:
    """Whether any run measured bits after instruction fine-tuning."""
    return any(
        "bits" in rec
        for runs in results["runs"].values()
        for r in runs
        for rec in (r.get("ift") or {}).values()
    )


def measure_of(results: dict) -> Measure:
    return BITS if has_bits(results) else RECALL


# --------------------------------------------------------------------------------------------------
# Knowledge in bits: sizes, efficiency, saturation, marginal cost
# --------------------------------------------------------------------------------------------------

SATURATION_GAIN = 0.10  # doubling the run length raises bits by less than this: capacity-bound
NO_BITS = "no bits at either length"
NEAR_FLOPS = 1.1  # "at about equal compute": at most this many times MoC's inference FLOPs per token


def is_moc(model: dict) -> bool:
    return "memory" in model


def inference_flops(model: dict) -> float:
    return model["flops_per_token"]["inference"]


def world_bits(results: dict) -> float | None:
    """The world's bits (N x A x log2 V): from the world's stats, else from any run's bits record."""
    if results["world"].get("bits") is not None:
        return results["world"]["bits"]
    for runs in results.get("runs", {}).values():
        for r in runs:
            if "bits" in r:
                return r["bits"].get("of")
    return None


def non_embedding(model: dict) -> dict[str, int] | None:
    """Non-embedding parameters split into backbone layers (the backbone less its token embedding),
    memory layers and bank, with their total; None when the results lack the embedding count."""
    p = model["params"]
    if not isinstance(p, dict) or "embedding" not in p:
        return None
    split = {
        "backbone_layers": p["backbone"] - p["embedding"],
        "memory_layers": p.get("memory_layers", 0),
        "bank": p.get("bank", 0),
    }
    return split | {"total": p.get("non_embedding", sum(split.values()))}


def bank_params(model: dict) -> int:
    """The bank's parameters (0 for a dense model or results without the split)."""
    return (non_embedding(model) or {}).get("bank") or 0


def efficiency(results: dict, key: str) -> dict[str, float | None]:
    """Mean bits per non-embedding parameter, per backbone-layer parameter and per inference FLOP/token:
    how much knowledge each unit of size or of compute holds."""
    m = results["models"][key]
    b = BITS.of(results, key)
    if not b:
        return {"per_param": None, "per_backbone_param": None, "per_flop": None}
    bits = mean(values(b))
    ne = non_embedding(m)
    return {
        "per_param": bits / ne["total"] if ne and ne["total"] else None,
        "per_backbone_param": bits / ne["backbone_layers"] if ne and ne["backbone_layers"] else None,
        "per_flop": bits / inference_flops(m),
    }


def saturation_gain(half: float, full: float) -> float:
    """Relative gain of bits from half to full run length (a model with no bits at half length: infinite
    gain when it gained any, else 0)."""
    if half > 0:
        return (full - half) / half
    return math.inf if full > half else 0.0


def saturation_status(gain: float) -> str:
    """ "capacity-bound" when doubling the run length changed bits by less than 10% either way, "still
    learning" when it raised them more, "fell" when it lowered them more (training went wrong somewhere:
    neither a plateau nor progress, so the run says nothing about capacity)."""
    if gain <= -SATURATION_GAIN:
        return "fell"
    return "capacity-bound" if gain < SATURATION_GAIN else "still learning"


def saturation(results: dict, key: str) -> dict | None:
    """Bits at half and at full run length over the seeds that ran both (paired), the gain of the means,
    the rule on full - half, and the status; None without saturation runs."""
    half, full = paired(BITS.of(results, key, section="saturation"), BITS.of(results, key))
    if not half:
        return None
    gain = saturation_gain(mean(half), mean(full))
    learnt = max(mean(half), mean(full)) > 0  # a model with no bits at either length is not saturated
    return {
        "n": len(half),
        "half": half,
        "full": full,
        "gain": gain,
        "diff": paired_verdict(full, half),
        "status": saturation_status(gain) if learnt else NO_BITS,
    }


def marginal(results: dict, key: str) -> dict | None:
    """Over the ``baseline`` model, paired by seed: the extra bits (the rule), the extra inference
    FLOPs/token, the extra bits per extra FLOP (the rule scaled by 1 / extra FLOPs; None when the FLOPs are
    equal) and, for a MoC model, the extra bits per bank parameter. None without a baseline or bits."""
    base = results["config"].get("baseline")
    if not base or key == base or base not in results["models"]:
        return None
    extra = compare(BITS.of(results, key), BITS.of(results, base))
    if extra.mean is None:
        return None
    d_flops = inference_flops(results["models"][key]) - inference_flops(results["models"][base])
    bank = bank_params(results["models"][key])
    return {
        "bits": extra,
        "flops": d_flops,
        "per_flop": extra.scaled(1.0 / d_flops) if d_flops else None,
        "per_bank_param": extra.mean / bank if bank else None,
    }


# --------------------------------------------------------------------------------------------------
# Routing spread: do different people reach different chapters?
# --------------------------------------------------------------------------------------------------

SPREAD_FIELDS = ("distinct_sets", "usage_entropy_bits", "busiest_share")


def spread_values(results: dict, key: str) -> dict[str, list[float]]:
    """Per field of ``routing_spread`` (see :func:`.metrics.routing_spread`), its values in the first memory
    layer over the runs that recorded it (in run order; empty lists for records older than it)."""
    first = [r["routing_spread"][0] for r in results["runs"][key] if r.get("routing_spread")]
    return {f: [s[f] for s in first] for f in SPREAD_FIELDS}


def consistency_values(results: dict, key: str) -> list[float]:
    """The first memory layer's routing consistency (see :func:`.metrics.routing_consistency`) over the
    runs that recorded it."""
    return [r["routing_consistency"][0] for r in results["runs"][key] if r.get("routing_consistency")]


def max_usage_entropy(model: dict) -> float | None:
    """log2 of the routed chapters (one shared chapter assumed): the entropy of routed-chapter use if every
    routed chapter were used equally; None when the results lack ``n_chapters``."""
    n = (model.get("memory") or {}).get("n_chapters")
    return math.log2(n - 1) if n and n > 1 else None


# --------------------------------------------------------------------------------------------------
# Which models to compare
# --------------------------------------------------------------------------------------------------

IFT_LABELS = {
    "full": "full fine-tune",
    "frozen": "bank frozen",
    "memory_frozen": "memory path frozen",
    "low_lr": "bank at low LR",
    "gentle_full": "gentle full fine-tune",
    "gentle_frozen": "gentle, bank frozen",
    "gentle_memory_frozen": "gentle, memory path frozen",
    "gentle_low_lr": "gentle, bank at low LR",
}


def ift_variants(results: dict, key: str) -> list[str]:
    """The IFT variants model ``key`` ran (on any seed), in ``IFT_LABELS`` order."""
    seen = {v for r in results["runs"].get(key) or [] for v in (r.get("ift") or {})}
    return [v for v in IFT_LABELS if v in seen]


def dense_around(results: dict, key: str) -> tuple[list[str], str | None]:
    """The dense models with at most 1.1x MoC model ``key``'s inference FLOPs/token (cheapest first), and
    the cheapest dense model above that (None if there is none)."""
    models = done(results)
    fl = inference_flops(models[key])
    dense = sorted((d for d, m in models.items() if not is_moc(m)), key=lambda d: inference_flops(models[d]))
    near = [d for d in dense if inference_flops(models[d]) <= NEAR_FLOPS * fl]
    above = [d for d in dense if inference_flops(models[d]) > NEAR_FLOPS * fl]
    return near, above[0] if above else None


def read_signature(model: dict) -> str:
    """Everything that sets a MoC model's read and backbone except the bank's size (``n_tokens`` and with it
    ``n_chapters``): models with the same signature read the same per token, so they differ in bank size
    alone."""
    mem = {k: v for k, v in model["memory"].items() if k not in ("n_tokens", "n_chapters")}
    same = {"d_model": model["d_model"], "n_layers": model["n_layers"], "lr_scale": model.get("lr_scale")}
    return json.dumps(same | {"memory": mem}, sort_keys=True, default=str)


def bank_groups(results: dict) -> list[list[str]]:
    """MoC models that differ only in bank size, smallest bank first (groups of two or more sizes)."""
    groups: dict[str, list[str]] = {}
    for k, m in done(results).items():
        if is_moc(m):
            groups.setdefault(read_signature(m), []).append(k)
    size = {k: results["models"][k]["memory"]["n_tokens"] for g in groups.values() for k in g}
    return [sorted(g, key=lambda k: size[k]) for g in groups.values() if len({size[k] for k in g}) > 1]
