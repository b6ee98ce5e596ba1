"""One run of the capacity experiment: train one model on one seed, measure it, fine-tune it, measure again.

A :class:`CapacityJob` is plain data, so :func:`moc_experiments.experiment.pool.execute` can hand it to a
worker process. Every model of a seed sees the same documents in the same order (the data stream is
seeded by the seed alone).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from moc_experiments.experiment.capacity.config import load_capacity, model_config
from moc_experiments.experiment.capacity.data import (
    Batch,
    batch,
    chat_batch,
    make_world,
    mixed,
    seq_len,
    world_text,
)
from moc_experiments.experiment.capacity.metrics import measure


@dataclass
class CapacityJob:
    """Train model ``key`` on ``seed`` for ``steps`` steps (a fraction ``scale`` of the configured run
    length: 1, or 0.5 for the saturation check), measure, fine-tune."""

    key: str
    seed: int
    steps: int
    experiment: dict[str, Any]  # the CapacityConfig as a dict
    threads: int = 1
    scale: float = 1.0
    corpus: dict[str, str] | None = None  # the built corpus's files when real text or chat is used
    cost: float = 1.0  # relative cost, for scheduling only
    depends_on: str | None = None
    log_path: str | None = None
    ift: bool = True  # fine-tune after pretraining (the saturation runs do not)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.key}/seed{self.seed}" + ("" if self.scale == 1.0 else f"/x{self.scale:g}")


def fit(
    model: torch.nn.Module,
    tcfg: Any,
    steps: int,
    next_batch: Callable[[], Batch],
    grad_clip: float,
    log_every: int,
    compile_model: bool = False,
    freeze_memory: bool = False,
) -> tuple[list[float], int, float, dict[str, Any]]:
    """AdamW over ``steps`` batches from ``next_batch()`` -> (loss curve, real tokens, seconds, chapter use).

    ``compile_model``: the forward runs through ``torch.compile`` (the model itself stays eager for the
    measurements after). ``freeze_memory``: the whole memory path (bank, router, memory attention) gets no
    gradient and no optimizer state. Chapter use: per memory layer, how many routing decisions picked each
    routed chapter over the whole run (:func:`chapter_use`).
    """
    from moc.model.param_groups import param_category
    from moc.train.allocator import retain_freed_memory_once
    from moc.train.optim import apply_freezing, build_optimizer
    from moc.train.schedule import lr_multiplier

    if tcfg.retain_freed_memory:
        retain_freed_memory_once()
    apply_freezing(model, tcfg)
    if freeze_memory:
        for name, p in model.named_parameters():
            if param_category(name) in ("bank", "memory"):
                p.requires_grad_(False)
    opt = build_optimizer(model, tcfg)
    mult = lr_multiplier(tcfg)
    forward = torch.compile(model) if compile_model else model
    curve: list[float] = []
    picks: dict[int, torch.Tensor] = {}  # layer -> picks per routed chapter, summed over steps
    updated: dict[int, torch.Tensor] = {}  # layer -> steps in which each routed chapter was picked
    tokens, acc, n_acc = 0, 0.0, 0
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * mult(step)
        x, m, y, pos = next_batch()
        out = forward(x, attention_mask=m, labels=y, position_ids=pos)
        loss = out.loss + (out.aux_loss if out.aux_loss is not None else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
        opt.step()
        for info in out.routing or ():
            counts = info.chapter_counts.detach()
            if info.layer not in picks:
                picks[info.layer], updated[info.layer] = torch.zeros_like(counts), torch.zeros_like(counts)
            picks[info.layer] += counts
            updated[info.layer] += counts > 0
        tokens += int(m.sum())
        acc, n_acc = acc + float(out.loss.detach()), n_acc + 1
        if (step + 1) % log_every == 0 or step == steps - 1:
            curve.append(acc / n_acc)
            acc, n_acc = 0.0, 0
    return curve, tokens, time.perf_counter() - t0, chapter_use(picks, updated, steps)


def chapter_use(
    picks: dict[int, torch.Tensor], updated: dict[int, torch.Tensor], steps: int
) -> dict[str, Any]:
    """Per memory layer, from the routed picks per chapter summed over a run and the steps in which each
    chapter was picked: how often a chapter's rows of the bank get a gradient. Picks per chapter per step
    (mean; 10th / 50th / 90th percentile over chapters), the share of steps in which a chapter is picked
    (mean and the same percentiles), the share of chapters never picked, and the raw counts."""
    out: dict[str, Any] = {}
    probs = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    for layer, counts in sorted(picks.items()):
        per_step = counts.double() / max(steps, 1)
        share = updated[layer].double() / max(steps, 1)
        out[str(layer)] = {
            "chapters": counts.numel(),
            "picks_per_step_mean": float(per_step.mean()),
            "picks_per_step_p10_p50_p90": [float(v) for v in torch.quantile(per_step, probs)],
            "steps_updated_mean": float(share.mean()),
            "steps_updated_p10_p50_p90": [float(v) for v in torch.quantile(share, probs)],
            "never_picked": float((counts == 0).double().mean()),
            "counts": [int(c) for c in counts.round().long()],
        }
    return out


def _ift_config(cfg: Any, variant: str, lr: float) -> Any:
    """The IFT recipe at LR ``lr`` for one variant: ``full`` (every part at ``lr``), ``low_lr`` (memory
    layers and bank at their ``ift`` scales), ``frozen`` (bank frozen, memory layers at their scale) or
    ``memory_frozen`` (bank, router and memory attention frozen: set by :func:`fit`)."""
    from moc.config import TrainConfig

    ift, t = cfg.ift, cfg.train
    scaled = variant in ("low_lr", "frozen")
    return TrainConfig(
        lr=lr,
        memory_lr=lr * (ift.memory_lr_scale if scaled else 1.0),
        bank_lr=lr * (ift.bank_lr_scale if scaled else 1.0),
        freeze_bank=variant == "frozen",
        weight_decay=t.weight_decay,
        max_steps=ift.steps,
        warmup_steps=min(ift.warmup_steps, ift.steps - 1),
        schedule="cosine",
        min_lr_ratio=t.min_lr_ratio,
        fused_optimizer=t.fused_optimizer,
    )


def step_seconds(experiment: dict[str, Any], key: str, threads: int = 1, steps: int = 20) -> float:
    """Seconds per pretraining step of model ``key`` on this machine: ``steps`` steps of :func:`fit`
    timed after 3 untimed ones (which compile, with ``train.compile``), on one of the experiment's own
    batches."""
    from moc.config import TrainConfig
    from moc.model import MoCModel

    torch.set_num_threads(threads)
    cfg = load_capacity(experiment)
    world = make_world(cfg)
    t = cfg.train
    mcfg = model_config(cfg, key, len(world.vocab), seq_len(cfg, world))
    torch.manual_seed(0)
    model = MoCModel(mcfg)
    rng = np.random.default_rng(0)
    pack = t.pack_len if t.pack else 0
    data = [batch(world, rng, t.batch_size, t.qa_doc_fraction, world.max_doc_len, None, 0.0, None, pack)]
    tcfg = TrainConfig(lr=1e-4, max_steps=steps + 3, warmup_steps=1, fused_optimizer=t.fused_optimizer)

    def next_batch() -> Batch:
        return data[0]

    if t.compile:
        # each model is timed as its own run compiles it: the compilations of models timed before it in
        # this process would otherwise count against dynamo's recompile limit and leave this one eager
        torch._dynamo.reset()
    fit(model, tcfg, 3, next_batch, t.grad_clip, 3, compile_model=t.compile)  # warm up (and compile)
    _, _, seconds, _ = fit(model, tcfg, steps, next_batch, t.grad_clip, steps, compile_model=t.compile)
    return seconds / steps


def train_run(job: CapacityJob) -> dict[str, Any]:
    """Train one model on one seed and measure it, then fine-tune it (each IFT variant) and measure again."""
    from moc.config import TrainConfig
    from moc.model import MoCModel

    torch.set_num_threads(job.threads)
    cfg = load_capacity(job.experiment)
    world = make_world(cfg)
    text = world_text(cfg, world, job.corpus)
    t, spec, seed = cfg.train, cfg.models[job.key] or {}, job.seed
    L = world.max_doc_len
    mcfg = model_config(cfg, job.key, len(text.vocab) if text else len(world.vocab), seq_len(cfg, world))
    has_memory = bool(mcfg.memory_layers)
    torch.manual_seed(seed)
    model = MoCModel(mcfg)
    lr = t.lr * spec.get("lr_scale", 1.0)
    steps = job.steps
    tcfg = TrainConfig(
        lr=lr,
        memory_lr=lr * spec.get("memory_lr_scale", t.memory_lr_scale),
        bank_lr=lr * spec.get("bank_lr_scale", t.bank_lr_scale),
        weight_decay=t.weight_decay,
        max_steps=steps,
        warmup_steps=min(t.warmup_steps, steps - 1),
        schedule="cosine",
        min_lr_ratio=t.min_lr_ratio,
        fused_optimizer=t.fused_optimizer,
    )
    rng = np.random.default_rng(seed)  # the same documents in the same order for every model
    counts: dict[str, int] = {}
    pack_len = t.pack_len if t.pack else 0

    def pretrain_batch(r: np.random.Generator = rng, pack: int = pack_len) -> Batch:
        return batch(world, r, t.batch_size, t.qa_doc_fraction, L, text, cfg.text.fraction, counts, pack)

    curve, tokens, train_s, use = fit(
        model, tcfg, steps, pretrain_batch, t.grad_clip, t.log_every, compile_model=t.compile
    )
    rec: dict[str, Any] = {
        "seed": seed,
        "steps": steps,
        "exposures": steps * t.batch_size / world.n_people,
        "tokens": tokens,
        "train_s": train_s,
        "tokens_per_s": tokens / train_s,
        "loss_curve": curve,
        "final_loss": curve[-1],
        **measure(model, world, has_memory, bits=True),
    }
    if use:
        rec["chapter_use"] = use
    if cfg.text.fraction > 0:  # tokens per kind
        rec["world_tokens"], rec["text_tokens"] = counts.get("world", 0), counts.get("text", 0)
    ift = cfg.ift
    if ift.steps <= 0 or not job.ift:
        return rec
    usable = text.usable_chats(L) if ift.data == "real_chat" else None

    def ift_batch(r: np.random.Generator) -> Batch:
        if usable is not None:  # real chat: labels on the assistant's answer only
            x, m, y = text.chat_batch(r, ift.batch_size, L, usable)
            return x, m, y, None
        return chat_batch(world, r, ift.batch_size, L)

    variants = ift.variants if has_memory else ["full"]  # a dense model has nothing else to freeze
    runs: list[tuple[str, str, float, float]] = [(v, v, 1.0, 0.0) for v in variants]
    if ift.gentle:  # (record name, what is frozen / scaled, LR scale, replay share)
        runs += [(f"gentle_{v}", v, ift.gentle_lr_scale, ift.gentle_replay) for v in variants]
    rec["ift"] = {}
    for name, variant, lr_scale, replay in runs:
        tuned = copy.deepcopy(model)
        irng = np.random.default_rng(10_000 + seed)  # the same chat documents for every model
        prng = np.random.default_rng(20_000 + seed)  # and the same replayed pretraining documents

        def next_batch(
            r: np.random.Generator = irng, p: np.random.Generator = prng, share: float = replay
        ) -> Batch:
            if share <= 0:
                return ift_batch(r)
            return mixed(
                lambda: ift_batch(r), lambda: batch(world, p, ift.batch_size, t.qa_doc_fraction, L), share, p
            )

        # The IFT LR: ift.lr for every model, or (ift.lr_ratio) the same fraction of each model's own
        # pretraining LR, so that no family is fine-tuned relatively harder than another.
        base_lr = ift.lr if ift.lr_ratio is None else ift.lr_ratio * lr
        icurve, _, ift_s, _ = fit(
            tuned,
            _ift_config(cfg, variant, base_lr * lr_scale),
            ift.steps,
            next_batch,
            t.grad_clip,
            5,
            freeze_memory=variant == "memory_frozen",
        )
        rec["ift"][name] = {
            "loss_curve": icurve,
            "train_s": ift_s,
            **measure(tuned, world, has_memory, bits=True),
        }
        if has_memory:  # how far IFT moved the bank (0 when frozen)
            rec["ift"][name]["bank_max_change"] = max(
                float((a - b).detach().abs().max())
                for a, b in zip(tuned.banks.parameters(), model.banks.parameters())
            )
    return rec
