"""MoCConfig / MoCForCausalLM: Auto registration, save/load round trips, checkpoint conversion."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, StaticCache

import moc
from moc.hf import (
    HFError,
    MoCConfig,
    MoCDynamicCache,
    MoCForCausalLM,
    from_moc_checkpoint,
    from_moc_model,
    hf_config,
    load_model,
)


def _logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


def test_config_round_trip_and_auto_registration(tmp_path: Path) -> None:
    cfg = moc.load_config("tiny-moc", ["memory.routing=token", "memory.layers=every:2"])
    hf = hf_config(cfg)
    assert hf.memory_layers == [0, 2] and hf.routing == "token"
    assert (hf.hidden_size, hf.num_hidden_layers, hf.max_position_embeddings) == (64, 4, 128)
    hf.save_pretrained(tmp_path)
    back = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(back, MoCConfig)
    assert back.model == hf.model and back.memory == hf.memory and back.memory_layers == [0, 2]
    arch = back.to_moc_arch()
    assert arch.model.head_dim == 16 and arch.memory.routing == "token" and arch.memory_layers == [0, 2]
    dense = hf_config(moc.load_config("tiny-dense"))
    assert dense.memory_layers == [] and dense.routing == "none"


def test_config_rejects_inconsistent_memory_layers() -> None:
    with pytest.raises(ValueError, match="memory_layers is empty"):
        MoCConfig(model={"n_layers": 2}, memory={"enabled": True}, memory_layers=[])
    with pytest.raises(ValueError, match="out of range"):
        MoCConfig(model={"n_layers": 2}, memory={"enabled": True}, memory_layers=[5])
    with pytest.raises(ValueError, match="unknown config keys"):
        MoCConfig(model={"n_layerz": 2})


@pytest.mark.parametrize(
    "overrides",
    [
        (),  # tied embeddings, one bank shared by both memory layers
        ("model.tie_embeddings=false", "memory.bank_sharing=per_layer", "memory.block_variant=B"),
        ("memory.bank_type=factorized", "memory.bank_rank=8", "memory.routing=sequence"),
        ("memory.enabled=false", "memory.layers=[]"),  # the dense baseline
    ],
    ids=["tied-shared", "untied-per-layer-B", "factorized-sequence", "dense"],
)
def test_save_pretrained_round_trip_gives_identical_logits(make_core, tmp_path: Path, overrides) -> None:
    core = make_core(*overrides)
    model = from_moc_model(core).eval()
    ids = torch.randint(0, 320, (2, 21))
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    expected = _logits(core, ids, mask)
    assert torch.equal(_logits(model, ids, mask), expected)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MoCForCausalLM)
    assert torch.equal(_logits(loaded, ids, mask), expected)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert ("model.lm_head.weight" in keys) == ("model.tie_embeddings=false" in overrides)
    n_banks = len(core.banks)
    assert {k for k in keys if ".banks." in k} == {
        f"model.banks.{j}.{p}"
        for j in range(n_banks)
        for p in [n for n, _ in core.banks[j].named_parameters()]
    }
    if not overrides:  # the bank both memory layers read is one tensor in the file and one after loading
        assert n_banks == 1 and loaded.model.bank_of_layer == {1: 0, 3: 0}
    # Non-persistent buffers are rebuilt, not left as the loader's uninitialised placeholders.
    fresh_buffers = dict(core.named_buffers())
    for name, buf in loaded.model.named_buffers():
        assert torch.equal(buf, fresh_buffers[name]), name


def test_from_moc_checkpoint_is_lossless(make_checkpoint) -> None:
    ckpt, core = make_checkpoint("memory.routing=causal", "memory.causal_chunk_size=4")
    model = from_moc_checkpoint(ckpt)
    ids = torch.randint(0, 320, (3, 30))
    assert torch.equal(_logits(model, ids), _logits(core, ids))
    assert model.config.moc_name == core.config.name
    # a run dir resolves to its newest checkpoint; load_model also reads exported folders
    loaded, source = load_model(ckpt)
    assert source.kind == "checkpoint" and torch.equal(_logits(loaded, ids), _logits(core, ids))


def test_from_moc_checkpoint_errors_name_the_problem(make_checkpoint, tmp_path: Path) -> None:
    with pytest.raises(HFError, match="does not exist"):
        from_moc_checkpoint(tmp_path / "nowhere")
    ckpt, _ = make_checkpoint()
    (ckpt / "config.yaml").write_text((ckpt / "config.yaml").read_text().replace("d_ff: 160", "d_ff: 96"))
    with pytest.raises(HFError, match="shape mismatch"):
        from_moc_checkpoint(ckpt)


def test_loss_is_the_lm_loss_in_both_modes_as_in_the_core_model(make_core) -> None:
    """One rule: ``loss`` is the LM cross-entropy (no aux loss) for MoCForCausalLM and MoCModel, in
    training and eval mode; the aux loss is reported apart and trains the router when added."""
    core = make_core("memory.routing=token")
    model = from_moc_model(core)
    ids = torch.randint(0, 320, (2, 16))
    model.train()
    out = model(ids, labels=ids)
    assert out.aux_loss > 0
    core.train()
    torch.testing.assert_close(out.loss, core(ids, labels=ids).loss)
    (out.loss + out.aux_loss).backward()  # the objective: the router learns from the aux loss too
    assert model.model.layers[1].memory.router.proj.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        eval_out = model(ids, labels=ids)
    torch.testing.assert_close(out.loss, eval_out.loss)


def test_cache_promotion_and_unsupported_caches(make_core) -> None:
    model = from_moc_model(make_core()).eval()
    ids = torch.randint(0, 320, (2, 8))
    cache = DynamicCache()
    with torch.no_grad():
        out = model(ids, cache=cache, use_cache=True)
        step = model(ids[:, :1], cache=cache, attention_mask=torch.ones(2, 9, dtype=torch.long))
    assert out.cache is cache and isinstance(cache, MoCDynamicCache) and set(cache.memory) == {1, 3}
    assert step.logits.shape == (2, 1, 320) and cache.get_seq_length() == 9
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        cache.crop(4)
    assert not cache.is_croppable
    cache.batch_select_indices(torch.tensor([1]))
    assert cache.memory[1].k.shape[0] == 1 and cache.memory[1].prefix_sum.shape[0] == 1
    static = StaticCache(config=model.config, max_cache_len=16)
    with pytest.raises(TypeError, match="DynamicCache"):
        model(ids, cache=static)
    with pytest.raises(ValueError, match="input_ids, not inputs_embeds"):
        model(inputs_embeds=torch.zeros(1, 2, 64))


def test_weights_missing_from_the_file_get_moc_initialisation(make_core, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model = from_moc_model(make_core())
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    for key in ("model.banks.0.weight", "model.layers.1.memory.o_proj.weight", "model.norm.weight"):
        del state[key]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = MoCForCausalLM.from_pretrained(tmp_path)
    bank = loaded.model.banks[0].weight
    assert torch.isfinite(bank).all() and abs(bank.std().item() - 0.02) < 0.002
    assert loaded.model.layers[1].memory.o_proj.weight.abs().sum() == 0  # new memory layers start as identity
    assert torch.equal(loaded.model.norm.weight, torch.ones(64))
    kept = loaded.model.layers[3].memory.o_proj.weight
    assert torch.equal(kept, model.model.layers[3].memory.o_proj.weight)  # loaded weights untouched
