"""Memory adapters on a tiny, randomly initialised Hugging Face Llama (no downloads)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from memory_helpers import make_memory_matter  # noqa: E402
from moc.adapters import MemoryAdapter, add_memory  # noqa: E402
from moc.config import ConfigError  # noqa: E402

MEMORY = {
    "n_tokens": 256,
    "n_chapters": 16,
    "top_k": 2,
    "n_heads": 4,
    "n_kv_heads": 4,
    "causal_chunk_size": 4,
}


def _llama() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def test_a_new_adapter_leaves_the_model_unchanged_and_trains_only_itself() -> None:
    model = _llama()
    ids = torch.randint(1, 128, (2, 12))
    before = model(ids).logits
    adapter = add_memory(model, [0, 2], **MEMORY)
    torch.testing.assert_close(model(ids).logits, before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("moc_memory_adapter.") for n in trainable)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(12):
        out = model(ids, labels=ids)
        loss = out.loss + adapter.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]
    assert len(adapter.routing) == 2


def test_adapter_is_causal_and_generation_with_cache_matches() -> None:
    model = _llama()
    adapter = add_memory(model, "all", **MEMORY)
    make_memory_matter(adapter, std=0.3)
    adapter.eval()
    ids = torch.randint(1, 128, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = torch.randint(1, 128, (2, 4))
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    cached = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, use_cache=True)
    plain = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain)


def test_adapter_with_lora() -> None:
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_llama(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapter = add_memory(model, [1], **MEMORY)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable)
    assert any("moc_memory_adapter" in n for n in trainable)
    assert not any("embed_tokens" in n for n in trainable)
    ids = torch.randint(1, 128, (2, 8))
    out = model(input_ids=ids, labels=ids)
    (out.loss + adapter.aux_loss).backward()
    assert adapter.memory["1"].o_proj.weight.grad is not None


def test_save_and_load_round_trip(tmp_path) -> None:
    model = _llama()
    adapter = add_memory(model, [1, 2], **MEMORY)
    make_memory_matter(adapter, std=0.3)
    adapter.eval()
    ids = torch.randint(1, 128, (1, 9))
    expected = model(ids).logits
    adapter.save(tmp_path)
    fresh = _llama()
    loaded = MemoryAdapter.load(fresh, tmp_path)
    loaded.eval()
    torch.testing.assert_close(fresh(ids).logits, expected)


def test_bad_adapter_settings_are_clear() -> None:
    with pytest.raises(ConfigError, match="top_k"):
        add_memory(_llama(), [0], **{**MEMORY, "top_k": 40})
    with pytest.raises(ConfigError, match="out of range"):
        add_memory(_llama(), [5], **MEMORY)
    with pytest.raises(ConfigError, match="unknown key"):
        add_memory(_llama(), [0], **MEMORY, n_chapter=3)
    with pytest.raises(FileNotFoundError, match="not a saved memory adapter"):
        MemoryAdapter.load(_llama(), "/nonexistent")
