"""The decoder: shapes, parameter counts, inputs, incremental decoding, a few training steps."""

from __future__ import annotations

import pytest
import torch

import moc
from moc.model import MoCCache


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        (
            "paper-moc",
            {"total": 371292932, "backbone": 147874560, "bank": 201375744, "memory_layers": 22042628},
        ),
        ("paper-dense-iso", {"total": 202937088, "backbone": 202937088, "bank": 0, "memory_layers": 0}),
        ("paper-dense-backbone", {"total": 147874560, "backbone": 147874560, "bank": 0, "memory_layers": 0}),
    ],
)
def test_paper_parameter_counts_of_the_built_model(preset: str, expected: dict) -> None:
    with torch.device("meta"):
        model = moc.build_model(preset)
    assert model.num_parameters() == expected


def test_dense_model_is_the_same_code_without_memory() -> None:
    dense = moc.build_model("tiny-dense")
    assert dense.banks is not None and len(dense.banks) == 0
    assert all(b.memory is None for b in dense.layers)
    out = dense(torch.randint(0, 256, (2, 8)))
    assert out.aux_loss.item() == 0 and out.routing == []


def test_untied_embeddings_and_init_overrides() -> None:
    cfg = moc.load_config(
        "tiny-dense",
        ["model.tie_embeddings=false", "model.attn_out_init_std=0.0", "model.mlp_down_init_std=0.0"],
    )
    model = moc.build_model(cfg)
    assert model.lm_head is not None and model.lm_head.weight is not model.embed_tokens.weight
    assert model.layers[0].self_attn.o_proj.weight.abs().sum() == 0
    assert model.layers[0].mlp.down_proj.weight.abs().sum() == 0


def test_memory_output_projection_starts_at_zero() -> None:
    moc_model = moc.build_model("tiny-moc")
    assert moc_model.layers[1].memory.o_proj.weight.abs().sum() == 0


def test_bad_inputs_give_clear_errors(make_model) -> None:
    model = make_model()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[1, 2, 256]]))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, seq_len\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.zeros(1, 5))


@pytest.mark.parametrize(
    ("mode", "first_chunk"), [("causal", "bias"), ("causal", "per_token"), ("token", "bias")]
)
def test_incremental_decoding_matches_the_full_forward(make_model, mode: str, first_chunk: str) -> None:
    model = make_model(
        f"memory.routing={mode}", "memory.causal_chunk_size=4", f"memory.causal_first_chunk={first_chunk}"
    ).eval()
    ids = torch.randint(0, 256, (2, 23))
    mask = torch.ones(2, 23, dtype=torch.long)
    mask[0, :5] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        cache = MoCCache()
        steps = [model(ids[:, :9], attention_mask=mask[:, :9], past_key_values=cache).logits]
        for t in range(9, 23):
            steps.append(
                model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=cache).logits
            )
        # several tokens at once on top of a cache take the same path
        cache2 = MoCCache()
        model(ids[:, :9], attention_mask=mask[:, :9], past_key_values=cache2)
        chunk = model(ids[:, 9:], attention_mask=mask, past_key_values=cache2).logits
    inc = torch.cat(steps, 1)
    valid = mask.bool()
    assert torch.allclose(full[valid], inc[valid], atol=1e-5)
    assert torch.allclose(full[:, 9:][valid[:, 9:]], chunk[valid[:, 9:]], atol=1e-5)


@pytest.mark.parametrize("mode", ["causal", "token"])
def test_decoding_from_a_one_token_prompt_with_grouped_memory_heads(make_model, mode: str) -> None:
    """Chunks of one position: a new decision at every step, the first from one token's state; memory
    attention with 2 KV heads for 4 query heads."""
    model = make_model(f"memory.routing={mode}", "memory.causal_chunk_size=1", "memory.n_kv_heads=2").eval()
    ids = torch.randint(0, 256, (2, 7))
    with torch.no_grad():
        full = model(ids).logits
        cache = MoCCache()
        steps = [model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(7)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_decoding_inside_a_per_token_first_chunk(make_model) -> None:
    """causal_first_chunk=per_token: a prompt that ends inside the first chunk, then one decision per
    generated position until the chunk ends, then one per chunk."""
    model = make_model(
        "memory.routing=causal", "memory.causal_chunk_size=4", "memory.causal_first_chunk=per_token"
    ).eval()
    ids = torch.randint(0, 256, (2, 11))
    with torch.no_grad():
        full = model(ids).logits
        cache = MoCCache()
        steps = [model(ids[:, :2], past_key_values=cache).logits]
        steps += [model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(2, 11)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_sequence_routing_decodes_with_the_prompt_decision(make_model) -> None:
    model = make_model("memory.routing=sequence").eval()
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        cache = MoCCache()
        first = model(ids[:, :8], past_key_values=cache)
        kept = cache.memory[1].k.clone()
        model(ids[:, 8:9], past_key_values=cache)
        assert torch.equal(cache.memory[1].k, kept)  # computed once per routing decision
        assert first.routing[0].indices.shape == (1, 1, 5)


@pytest.mark.parametrize("preset", ["tiny-moc", "tiny-dense"])
def test_loss_decreases_over_a_few_steps(preset: str) -> None:
    model = moc.build_model(preset)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 64, (4, 64))
    losses = []
    for _ in range(15):
        out = model(ids, labels=ids)
        loss = out.loss + out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_gradient_checkpointing_gives_the_same_gradients(make_model) -> None:
    ids = torch.randint(0, 256, (2, 32))
    grads, calls = [], []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = make_model()
        model.gradient_checkpointing = ckpt
        n = [0]
        for block in model.layers:
            block.register_forward_pre_hook(lambda *_, n=n: n.__setitem__(0, n[0] + 1))
        out = model(ids, labels=ids)
        (out.loss + out.aux_loss).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
        calls.append(n[0])
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], msg=lambda m, k=k: f"{k}: {m}")
    # Checkpointing really happened: every block started again during backward (recomputation; a
    # pre-hook, because recomputation stops early once the saved tensors are rebuilt).
    assert calls == [4, 8]


@pytest.mark.parametrize("mode", ["causal", "sequence", "token"])
def test_bf16_autocast_runs_forward_and_backward(make_model, mode: str) -> None:
    # The CUDA recipe is bf16 autocast; the CPU autocast exercises the same dtype handling.
    model = make_model(f"memory.routing={mode}")
    ids = torch.randint(0, 256, (2, 40))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, attention_mask=mask, labels=ids)
    (out.loss + out.aux_loss).backward()
    reference = model(ids, attention_mask=mask, labels=ids).loss
    assert out.logits.dtype == torch.bfloat16
    assert abs(out.loss.item() - reference.item()) < 0.05
    assert model.banks[0].weight.grad.abs().sum() > 0
