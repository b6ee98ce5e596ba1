"""Run logging: a tqdm progress bar, ``metrics.jsonl``, TensorBoard and (optionally) Weights & Biases.

Only the main process logs. Rows in ``OUT_DIR/metrics.jsonl`` are JSON objects with a ``kind`` of
``train`` (step, loss, aux_loss, lr_<group>, grad_norm, tokens_per_s, distinct_chapters for MoC, mfu and
mfu_measured on GPU) or ``eval``
(step, val_loss, val_ppl, val_tokens). On resume, rows after the resumed step are dropped so the
file never shows two histories.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from moc.config import RunConfig


class RunLogger:
    def __init__(self, cfg: RunConfig, out_dir: Path, enabled: bool, start_step: int) -> None:
        self.enabled = enabled
        self.bar = None
        self.tb = None
        self.wandb = None
        self._jsonl = None
        if not enabled:
            return
        t = cfg.train
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "metrics.jsonl"
        _truncate_after(path, start_step)
        self._jsonl = open(path, "a")  # noqa: SIM115 - kept open for the whole run
        self.bar = tqdm(
            total=t.max_steps, initial=start_step, desc="train", disable=not t.progress, dynamic_ncols=True
        )
        if t.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.message("train.tensorboard is on but tensorboard is not installed; skipping it")
            else:
                self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_step + 1)
        if t.wandb:
            try:
                import wandb
            except ImportError:
                self.message("train.wandb is on but wandb is not installed (pip install wandb); skipping it")
            else:
                self.wandb = wandb.init(
                    project=t.wandb_project,
                    name=cfg.name,
                    config=cfg.to_dict(),
                    dir=str(out_dir),
                    resume="allow",
                )

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)

    def log(self, row: dict[str, Any]) -> None:
        """Write one metrics row (``kind`` and ``step`` required) to every sink."""
        if not self.enabled:
            return
        row = {k: _clean(v) for k, v in row.items()}
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        step, prefix = row["step"], row["kind"]
        scalars = {k: v for k, v in row.items() if k not in ("kind", "step") and isinstance(v, int | float)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"{prefix}/{k}": v for k, v in scalars.items()}, step=step)

    def progress(self, step: int, postfix: dict[str, str]) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _clean(v: Any) -> Any:
    """JSON has no NaN/Inf: write them as strings so a diverged row is still readable."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue  # a torn last line from a killed run
    path.write_text("".join(f"{line}\n" for line in kept))
