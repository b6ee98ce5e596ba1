"""PNG plots of an experiment (matplotlib, Agg backend): loss curves, probe accuracy, chapter usage."""

from __future__ import annotations

from pathlib import Path

from moc_experiments.experiment.protocol import summary


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def run_colors(results: dict) -> dict[str, str]:
    """One colour per model and per IFT run, the same in every plot (a dense model's IFT run keeps its
    model's colour; MoC's IFT variants get their own)."""
    from moc_experiments.experiment.capacity.report import model_colors

    models = list(results.get("models", {}))
    return model_colors(models + [k for k in results.get("ift_runs", {}) if k not in models])


def _smooth(xs: list[float | None]) -> list[float]:
    """Exponential moving average with bias correction over about 4% of the run (skipped steps, stored
    as null, are carried over)."""
    alpha = 1.0 - 1.0 / max(1.0, len(xs) / 25)
    out, avg, w = [], 0.0, 0.0
    for x in xs:
        x = float("nan") if x is None else x
        if x == x:  # not NaN
            avg, w = alpha * avg + (1 - alpha) * x, alpha * w + (1 - alpha)
        out.append(avg / w if w else float("nan"))
    return out


def loss_curves(results: dict, path: Path) -> Path:
    """Training loss per step (smoothed) of every run of the first seed, one panel per phase."""
    plt = _pyplot()
    first = results["runs"][0]
    phases = [p for p in ("pretrain", "ift") if first.get(p)]
    fig, axes = plt.subplots(1, len(phases), figsize=(6.5 * len(phases), 4.2), squeeze=False)
    colors = run_colors(results)
    for ax, phase in zip(axes[0], phases):
        for key, run in first[phase].items():
            curve = run.get("loss_curve") or []
            label = (
                results["models"][key]["label"] if phase == "pretrain" else results["ift_runs"][key]["label"]
            )
            steps = range(1, len(curve) + 1)
            (line,) = ax.plot(steps, _smooth(curve), label=label, lw=1.4, color=colors.get(key))
            raw = [float("nan") if x is None else x for x in curve]
            ax.plot(steps, raw, color=line.get_color(), lw=0.6, alpha=0.3)
            val = run.get("val_curve") or []
            if val:
                ax.plot([s for s, _ in val], [v for _, v in val], "o", color=line.get_color(), ms=4)
        what = "pretraining" if phase == "pretrain" else "instruction fine-tuning (assistant tokens)"
        ax.set_title(f"{what}\ntrain loss (faint: per step, line: EMA), dots: val loss", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{results['name']}: loss curves (seed {first['seed']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def probe_accuracy(results: dict, path: Path) -> Path | None:
    """Pooled probe accuracy before and after IFT per IFT run, with error bars and baselines."""
    base = summary.baseline(results)
    rows = []
    for ift_key, info in results.get("ift_runs", {}).items():
        before = summary.probe_acc(results, "pretrain", info["base"])
        after = summary.probe_acc(results, "ift", ift_key)
        if before is not None and after is not None:
            rows.append((info["label"], before, after, ift_key))
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(7.5, 1.6 * len(rows) + 3.5), 4.2))
    xs = range(len(rows))
    w = 0.38
    colors = run_colors(results)
    bar_colors = [colors.get(r[3]) for r in rows]  # each run keeps its colour; after IFT is hatched
    for off, idx, name, hatch in ((-w / 2, 1, "after pretraining", None), (w / 2, 2, "after IFT", "//")):
        vals = [100 * r[idx].value for r in rows]
        errs = [100 * (r[idx].err or 0.0) for r in rows]
        ax.bar(
            [x + off for x in xs], vals, w, yerr=errs, capsize=3, label=name, color=bar_colors,
            hatch=hatch, alpha=0.45 if hatch else 1.0, edgecolor="k", linewidth=0.5,
        )  # fmt: skip
    # Baselines in black and grey line styles: no colour that a model could also have.
    styles = {
        "chance": ("k", "--"),
        "majority": ("gray", ":"),
        "shortest_answer": ("k", "-."),
        "unigram": ("gray", (0, (3, 1, 1, 1, 1, 1))),
    }
    for name, (color, ls) in styles.items():
        if base and base.get(name) is not None:
            ax.axhline(100 * base[name], color=color, ls=ls, lw=1, label=name.replace("_", " "))
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r[0] for r in rows], fontsize=7, rotation=12)
    ax.set_ylabel("accuracy (%), all probe questions pooled")
    ax.set_title("Knowledge probes before and after IFT (error bars: SE / sd over seeds)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def chapter_usage(results: dict, path: Path) -> Path | None:
    """How often each routed chapter was picked on the validation windows, sorted, per MoC run (seed 0)."""
    first = results["runs"][0]
    series = []
    for phase, runs in (("pretrain", first.get("pretrain", {})), ("ift", first.get("ift", {}))):
        for key, run in runs.items():
            hist = summary.chapter_histogram(run)
            if hist is None:
                continue
            label = (
                results["models"][key]["label"] if phase == "pretrain" else results["ift_runs"][key]["label"]
            )
            when = "after pretraining" if phase == "pretrain" else "after IFT"
            series.append((f"{label} ({when})", hist, key))
    if not series:
        return None
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = run_colors(results)
    for label, hist, key in series:
        total = sum(hist) or 1
        shares = sorted((100 * c / total for c in hist), reverse=True)
        ax1.plot(range(1, len(shares) + 1), shares, label=label, lw=1.3, color=colors.get(key))
    n = len(series[0][1])
    ax1.axhline(100 / n, color="k", ls="--", lw=1, label="uniform")
    ax1.set_xlabel("chapter rank (most used first)")
    ax1.set_ylabel("% of routed picks")
    ax1.set_title("Chapter usage, sorted (all memory layers, validation windows)")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    label, hist, key = series[0]
    ax2.bar(range(len(hist)), hist, width=1.0, color=colors.get(key))
    ax2.set_xlabel("routed chapter id")
    ax2.set_ylabel("picks")
    ax2.set_title(f"Histogram by chapter id: {label}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(results: dict, out_dir: Path) -> dict[str, Path]:
    """Write every plot that the results support; returns name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {"loss_curves": loss_curves(results, out_dir / "loss_curves.png")}
    p = probe_accuracy(results, out_dir / "probe_accuracy.png")
    if p is not None:
        made["probe_accuracy"] = p
    p = chapter_usage(results, out_dir / "chapter_usage.png")
    if p is not None:
        made["chapter_usage"] = p
    return made
