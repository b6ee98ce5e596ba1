"""The plots of the capacity report (matplotlib, Agg): with bits, knowledge vs inference FLOPs and vs
non-embedding parameters; always recall vs FLOPs, memory on / off / shuffled and the loss curves.

Each model keeps one colour in every plot (``model_colors``: the order of ``models`` in the experiment),
so a point in the FLOPs frontier and a bar in the memory-off panel of the same colour are the same model."""

from __future__ import annotations

from pathlib import Path

from moc_experiments.experiment.capacity.analysis import (
    BITS,
    done,
    has_bits,
    inference_flops,
    is_moc,
    non_embedding,
    recall_values,
    shuffled_values,
    values,
    world_bits,
)
from moc_experiments.experiment.stats import mean, sd, t_interval

# matplotlib's tab10 then tab20's light shades: distinct for up to 20 models.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
    "#dbdb8d", "#9edae5",
)  # fmt: skip


def model_colors(keys: list[str]) -> dict[str, str]:
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bits_panel(ax, results: dict, colors: dict[str, str], x_of, saturation_marks: bool = False) -> None:
    """Bits per model at ``x_of(model)``: mean with its 95% CI (error bar), each seed a faint dot, the
    half-length runs of the saturation check as hollow markers, the world's bits as a dashed line."""
    for key, m in done(results).items():
        ys = [y / 1e3 for y in values(BITS.of(results, key))]
        x = x_of(m)
        if not ys or x is None:
            continue
        marker = "o" if is_moc(m) else "s"
        ax.scatter([x] * len(ys), ys, color=colors[key], alpha=0.3, s=12, lw=0)
        ci = t_interval(ys)
        err = 0.0 if ci is None else (ci[1] - ci[0]) / 2
        ax.errorbar(x, mean(ys), yerr=err, fmt=marker, color=colors[key], capsize=3, label=m["label"])
        half = values(BITS.of(results, key, section="saturation"))
        if saturation_marks and half:
            ax.scatter(
                [x], [mean(half) / 1e3], marker=marker, facecolors="none", edgecolors=colors[key], s=40
            )
    w = world_bits(results)
    if w:
        ax.axhline(w / 1e3, color="k", ls="--", lw=1, label="the world's bits")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("knowledge (kbit)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def bits_plots(results: dict, out: Path, colors: dict[str, str]) -> dict[str, Path]:
    """bits_vs_flops.png (the frontier: bits vs inference FLOPs/token) and bits_vs_params.png (bits vs
    non-embedding parameters); nothing for results without bits."""
    if not has_bits(results):
        return {}
    plt = _pyplot()
    paths = {}
    axes = (
        ("bits_vs_flops", inference_flops, "inference FLOPs per token (bank K/V cached)", True),
        (
            "bits_vs_params",
            lambda m: (non_embedding(m) or {}).get("total"),
            "non-embedding parameters",
            False,
        ),
    )
    for name, x_of, xlabel, sat in axes:
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        _bits_panel(ax, results, colors, x_of, saturation_marks=sat)
        ax.set_xlabel(xlabel)
        hollow = "; hollow: half run length" if sat and results.get("saturation") else ""
        ax.set_title(
            f"Knowledge vs {xlabel.split(' (')[0]}\n(circles: MoC, squares: dense; bars: 95% CI over seeds; "
            f"dots: seeds{hollow})",
            fontsize=9,
        )
        paths[name] = _save(plt, fig, out / f"{name}.png")
    return paths


def _recall_vs_flops(plt, results: dict, out: Path, colors: dict[str, str]) -> Path:
    """Bio recall vs training and vs inference FLOPs per token, mean ± sd over seeds."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, axis in zip(axes, ("train", "inference")):
        for k, m in done(results).items():
            ys = [100 * v for v in recall_values(results, k, "bio")]
            x = m["flops_per_token"][axis]
            ax.errorbar(
                x, mean(ys), yerr=sd(ys) or 0, fmt="o" if is_moc(m) else "s", color=colors[k],
                capsize=3, label=m["label"],
            )  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(f"{axis} FLOPs per token" + (" (bank K/V cached)" if axis == "inference" else ""))
        ax.set_ylabel("exact recall, bio form (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle("Recall vs FLOPs (circles: MoC, squares: dense; bars: sd over seeds)")
    return _save(plt, fig, out / "recall_vs_flops.png")


def _memory_off(plt, results: dict, out: Path, colors: dict[str, str]) -> Path | None:
    """Bio recall of each MoC model with its memory on, off and its routed chapters shuffled."""
    mem = [k for k, m in done(results).items() if is_moc(m)]
    if not mem:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(mem) + 2), 4.2))
    for i, k in enumerate(mem):
        on, off = recall_values(results, k, "bio"), recall_values(results, k, "bio", True)
        sh = shuffled_values(results, k)[0]
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
    return _save(plt, fig, out / "memory_off.png")


def _loss_curves(plt, results: dict, out: Path, colors: dict[str, str]) -> Path:
    """The training loss of each model's first run."""
    keys = list(done(results))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k in keys:
        run = results["runs"][k][0]
        every = results["config"]["train"]["log_every"]
        xs = [min((i + 1) * every, results["steps"]) for i in range(len(run["loss_curve"]))]
        ax.plot(xs, run["loss_curve"], color=colors[k], label=results["models"][k]["label"], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (seed {results['runs'][keys[0]][0]['seed']})")
    # Real text has a higher loss than the world's templates: keep its curves in view.
    ax.set_ylim(top=min(ax.get_ylim()[1], 8.0 if results.get("text") else 4.0))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(plt, fig, out / "loss_curves.png")


def plots(results: dict, out: Path) -> dict[str, Path]:
    """With bits: bits_vs_flops.png and bits_vs_params.png; always recall_vs_flops.png (training and
    inference FLOPs axes), memory_off.png (MoC models) and loss_curves.png."""
    plt = _pyplot()
    colors = model_colors(list(results["models"]))
    paths = bits_plots(results, out, colors)
    paths["recall_vs_flops"] = _recall_vs_flops(plt, results, out, colors)
    memory_off = _memory_off(plt, results, out, colors)
    if memory_off is not None:
        paths["memory_off"] = memory_off
    paths["loss_curves"] = _loss_curves(plt, results, out, colors)
    return paths
