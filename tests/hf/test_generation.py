"""generate(): the cached decode equals full recomputation, for every routing mode, with left padding."""

from __future__ import annotations

import pytest
import torch

from moc.hf import HFError, chat_reply, from_moc_model, generate_text
from moc.hf.generation import encode_prompts

N_NEW = 10


def _left_padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of 11, 7 and 4 tokens, left-padded to 11 (pad id 0)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 320, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :7] = 0
    return ids.masked_fill(mask == 0, 0), mask


def _reference_greedy(model, ids: torch.Tensor, mask: torch.Tensor, routing: str):
    """Step-by-step argmax of a full forward (no cache) on each row's growing, unpadded sequence.
    Sequence routing is computed as generation does it: routed on the prompt only.
    Returns the new tokens (B, N_NEW) and each step's next-token logits (B, N_NEW, V)."""
    rows, logits = [], []
    with torch.no_grad():
        for b in range(ids.shape[0]):
            seq = ids[b][mask[b].bool()][None]
            prompt_len, steps = seq.shape[1], []
            for _ in range(N_NEW):
                kw = {"sequence_route_len": prompt_len} if routing == "sequence" else {}
                steps.append(model(seq, **kw).logits[:, -1])
                seq = torch.cat([seq, steps[-1].argmax(-1, keepdim=True)], dim=1)
            rows.append(seq[0, prompt_len:])
            logits.append(torch.cat(steps))
    return torch.stack(rows), torch.stack(logits)


def _generate(model, ids, mask, with_logits: bool = False, **kw):
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=N_NEW,
            pad_token_id=0,
            eos_token_id=None,
            return_dict_in_generate=True,
            output_logits=with_logits,
            **kw,
        )
    new = out.sequences[:, ids.shape[1] :]
    return (new, torch.stack(out.logits, dim=1)) if with_logits else new


@pytest.mark.parametrize("routing", ["causal", "causal/per_token", "token", "sequence"])
def test_cached_greedy_generation_equals_full_recomputation(make_core, routing: str) -> None:
    # chunk size 4: causal routing makes new decisions during the prompt and during generation
    routing, _, first = routing.partition("/")
    model = from_moc_model(
        make_core(
            f"memory.routing={routing}",
            "memory.causal_chunk_size=4",
            f"memory.causal_first_chunk={first or 'bias'}",
        )
    ).eval()
    ids, mask = _left_padded_batch()
    expected, expected_logits = _reference_greedy(model, ids, mask, routing)
    tokens, logits = _generate(model, ids, mask, with_logits=True, do_sample=False)
    assert torch.equal(tokens, expected)
    torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)
    # a single unpadded prompt gives the same tokens as its row of the padded batch
    single = _generate(model, ids[2:, 7:], mask[2:, 7:], do_sample=False)
    assert torch.equal(single, expected[2:])
    if routing == "sequence":  # without a cache, generate keeps routing on the prompt too
        tokens, logits = _generate(model, ids, mask, with_logits=True, do_sample=False, use_cache=False)
        assert torch.equal(tokens, expected)
        torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)


def test_generate_passes_positions_that_agree_with_the_attention_mask(make_core) -> None:
    model = from_moc_model(make_core("memory.causal_chunk_size=4")).eval()
    ids, mask = _left_padded_batch()
    seen = []
    hook = model.model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((kwargs["position_ids"], kwargs["attention_mask"])),
        with_kwargs=True,
    )
    try:
        _generate(model, ids, mask, do_sample=False)
    finally:
        hook.remove()
    for position_ids, full_mask in seen:
        derived = (full_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -position_ids.shape[1] :]
        real = full_mask[:, -position_ids.shape[1] :].bool()
        assert torch.equal(position_ids[real], derived[real])


def test_beam_search_reorders_the_memory_state(make_core) -> None:
    # chunk size 2: routing decisions during generation depend on each beam's own tokens, so beams
    # that kept another beam's memory state would score differently from a run without a cache
    model = from_moc_model(make_core("memory.causal_chunk_size=2")).eval()
    ids, mask = _left_padded_batch()
    runs = []
    for use_cache in (True, False):
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=N_NEW,
                num_beams=3,
                do_sample=False,
                use_cache=use_cache,
                pad_token_id=0,
                eos_token_id=None,
                return_dict_in_generate=True,
                output_scores=True,
            )
        runs.append(out)
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    torch.testing.assert_close(runs[0].sequences_scores, runs[1].sequences_scores, atol=2e-5, rtol=0)


def test_sampling_is_seeded_and_top_p_near_zero_is_greedy(make_core) -> None:
    model = from_moc_model(make_core("memory.routing=token")).eval()
    ids, mask = _left_padded_batch()
    greedy = _generate(model, ids, mask, do_sample=False)
    torch.manual_seed(3)
    a = _generate(model, ids, mask, do_sample=True, temperature=1.5, top_k=0)
    torch.manual_seed(3)
    b = _generate(model, ids, mask, do_sample=True, temperature=1.5, top_k=0)
    assert torch.equal(a, b) and not torch.equal(a, greedy)
    nucleus = _generate(model, ids, mask, do_sample=True, temperature=1.5, top_k=0, top_p=1e-6)
    assert torch.equal(nucleus, greedy)


def test_text_generation_and_chat_with_a_tokenizer(make_core, tok_dir) -> None:
    from moc.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    model = from_moc_model(make_core()).eval()
    batch = encode_prompts(tok, ["The capital of France is", "Paris"])
    assert batch["input_ids"][0, 0] == tok.bos_token_id and batch["attention_mask"][1, 0] == 0
    texts = generate_text(model, tok, ["The capital of France is", "Paris"], max_new_tokens=6)
    again = generate_text(model, tok, ["Paris"], max_new_tokens=6)
    assert len(texts) == 2 and texts[1] == again[0]  # batching with left padding changes nothing
    sampled = generate_text(
        model, tok, "The capital of", max_new_tokens=6, temperature=0.8, top_p=0.9, seed=5
    )
    assert sampled == generate_text(
        model, tok, "The capital of", max_new_tokens=6, temperature=0.8, seed=5, top_p=0.9
    )
    reply = chat_reply(model, tok, [{"role": "user", "content": "Hi"}], max_new_tokens=5)
    assert isinstance(reply, str)
    with pytest.raises(HFError, match="temperature"):
        generate_text(model, tok, "x", temperature=-1)
    with pytest.raises(HFError, match="max-new-tokens"):
        generate_text(model, tok, "x", max_new_tokens=0)
