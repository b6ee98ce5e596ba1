"""A fingerprint of what the library computes, to show a refactor changed no number.

    PYTHONPATH=OLD_TREE/src python bench/behaviour_fingerprint.py > before.json
    PYTHONPATH=NEW_TREE/src python bench/behaviour_fingerprint.py > after.json
    diff before.json after.json          # nothing: every preset, count and model output is the same

It prints, as JSON: a hash of every run preset resolved, its parameter count and its FLOP counts at
micro-batch 1 and 4; a hash of every experiment and capacity preset resolved; and for a tiny MoC model
in each routing mode x two chapter weightings (seeded, memory made to matter): the loss with a padded
row, the logits' sum, the sum of all gradients' magnitudes, and the loss with packed position ids.
Run both sides on the same machine and thread count (OMP_NUM_THREADS=1): CPU results are exact
per machine, not across machines.
"""

from __future__ import annotations

import hashlib
import json
import sys

import torch

import moc
from moc.accounting import count_flops, count_params
from moc.config import load_config, preset_names


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def presets() -> dict[str, object]:
    out: dict[str, object] = {}
    for name in preset_names():
        cfg = load_config(name)
        out[f"preset:{name}"] = hashlib.sha256(cfg.to_yaml().encode()).hexdigest()[:16]
        out[f"params:{name}"] = count_params(cfg)
        for b in (1, 4):
            out[f"flops:{name}:b{b}"] = count_flops(cfg, cfg.model.max_seq_len, b)
    from moc_experiments.experiment.capacity import capacity_presets, load_capacity
    from moc_experiments.experiment.protocol.config import experiment_presets, load_experiment

    for name in experiment_presets():
        out[f"exp:{name}"] = _hash(load_experiment(name).to_dict())
    for name in capacity_presets():
        out[f"cap:{name}"] = _hash(load_capacity(name).to_dict())
    return out


def model_outputs() -> dict[str, list[float]]:
    out = {}
    for mode in ("causal", "token", "sequence"):
        for weighting in ("kv", "logit"):
            torch.manual_seed(0)
            overrides = [f"memory.routing={mode}", f"memory.chapter_weighting={weighting}"]
            model = moc.build_model(load_config("tiny-moc", overrides))
            for name, p in model.named_parameters():  # memory output starts at zero: make it matter
                if name.endswith("memory.o_proj.weight"):
                    torch.nn.init.normal_(p, std=0.3)
                elif "router.proj" in name:
                    torch.nn.init.normal_(p, std=0.5)
            ids = torch.randint(0, 256, (2, 40))
            mask = torch.ones(2, 40, dtype=torch.long)
            mask[1, :7] = 0
            o = model(ids, attention_mask=mask, labels=ids)
            o.loss.backward()
            grads = sum(p.grad.double().abs().sum().item() for p in model.parameters() if p.grad is not None)
            packed = torch.tensor([list(range(15)) + list(range(25)), list(range(40))])
            o2 = model(ids, position_ids=packed, labels=ids)
            out[f"model:{mode}:{weighting}"] = [
                round(o.loss.item(), 6),
                round(o.logits.double().sum().item(), 4),
                round(grads, 4),
                round(o2.loss.item(), 6),
            ]
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    json.dump({**presets(), **model_outputs()}, sys.stdout, indent=0, sort_keys=True, default=str)
    print()
