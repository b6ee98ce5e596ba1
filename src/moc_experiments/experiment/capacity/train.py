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
) -> tuple[list[float], int, float]:
    """AdamW over ``steps`` batches from ``next_batch()`` -> (loss curve, real tokens, seconds)."""
    from moc.train.optim import apply_freezing, build_optimizer
    from moc.train.schedule import lr_multiplier

    apply_freezing(model, tcfg)
    opt = build_optimizer(model, tcfg)
    mult = lr_multiplier(tcfg)
    curve: list[float] = []
    tokens, acc, n_acc = 0, 0.0, 0
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * mult(step)
        x, m, y, pos = next_batch()
        out = model(x, attention_mask=m, labels=y, position_ids=pos)
        loss = out.loss + (out.aux_loss if out.aux_loss is not None else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
        opt.step()
        tokens += int(m.sum())
        acc, n_acc = acc + float(out.loss.detach()), n_acc + 1
        if (step + 1) % log_every == 0 or step == steps - 1:
            curve.append(acc / n_acc)
            acc, n_acc = 0.0, 0
    return curve, tokens, time.perf_counter() - t0


def _ift_config(cfg: Any, variant: str, lr_scale: float) -> Any:
    from moc.config import TrainConfig

    ift, t = cfg.ift, cfg.train
    lr = ift.lr * lr_scale
    return TrainConfig(
        lr=lr,
        memory_lr=lr * ift.memory_lr_scale,
        bank_lr=lr * ift.bank_lr_scale,
        freeze_bank=variant == "frozen",
        weight_decay=t.weight_decay,
        max_steps=ift.steps,
        warmup_steps=min(ift.warmup_steps, ift.steps - 1),
        schedule="cosine",
        min_lr_ratio=t.min_lr_ratio,
    )


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
    )
    rng = np.random.default_rng(seed)  # the same documents in the same order for every model
    counts: dict[str, int] = {}
    pack_len = t.pack_len if t.pack else 0

    def pretrain_batch(r: np.random.Generator = rng, pack: int = pack_len) -> Batch:
        return batch(world, r, t.batch_size, t.qa_doc_fraction, L, text, cfg.text.fraction, counts, pack)

    curve, tokens, train_s = fit(model, tcfg, steps, pretrain_batch, t.grad_clip, t.log_every)
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

    runs: list[tuple[str, str, float, float]] = [  # (record name, bank treatment, LR scale, replay share)
        (v, v, 1.0, 0.0) for v in (ift.variants if has_memory else ["full"])
    ]
    if ift.gentle:
        runs += [
            (f"gentle_{v}", v, ift.gentle_lr_scale, ift.gentle_replay)
            for v in (ift.variants if has_memory else ["full"])
        ]
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

        icurve, _, ift_s = fit(
            tuned, _ift_config(cfg, variant, lr_scale), ift.steps, next_batch, t.grad_clip, 5
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
