"""The docs' Hugging Face Trainer recipe (docs/hf.md): `.loss` is the LM loss alone, so a Trainer that
should keep the routers balanced adds `aux_loss` in `compute_loss` -- and then the router gets the
router-loss gradient it would otherwise miss."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import transformers

from moc.hf import from_moc_model

DOCS = Path(__file__).resolve().parents[2] / "docs" / "hf.md"


def _trainer_class() -> type:
    """The MoCTrainer exactly as docs/hf.md writes it."""
    pattern = r"```python\n(class MoCTrainer\(transformers\.Trainer\):.*?)```"
    block = re.search(pattern, DOCS.read_text(), re.S)
    assert block, "docs/hf.md lost its MoCTrainer recipe"
    scope: dict = {"transformers": transformers}
    exec(block.group(1), scope)  # the documented snippet itself is what is tested
    return scope["MoCTrainer"]


def test_documented_trainer_adds_the_router_loss(make_core, tmp_path: Path) -> None:
    model = from_moc_model(make_core()).train()
    ids = torch.randint(0, 320, (4, 24), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "labels": ids}
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = _trainer_class()(model=model, args=args)
    out = model(**inputs)
    loss = trainer.compute_loss(model, inputs)
    torch.testing.assert_close(loss, out.loss + out.aux_loss)
    assert float(out.aux_loss) > 0
    # The aux loss is what gives the router gradient beyond the LM loss: the two gradients differ.
    router = next(p for n, p in model.named_parameters() if n.endswith("router.proj.bias"))
    g_lm = torch.autograd.grad(out.loss, router, retain_graph=True)[0]
    g_all = torch.autograd.grad(loss, router)[0]
    assert (g_all - g_lm).abs().max() > 1e-6
