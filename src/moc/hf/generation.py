"""Text in, text out: prompts and chat turns through ``model.generate()``.

Greedy when ``temperature == 0``, else sampling with ``temperature`` and nucleus ``top_p``. Batched
prompts are left-padded (the model derives positions and routing chunks from the attention mask, so
padding changes nothing). Generation uses the KV + memory-state cache of :class:`MoCDynamicCache`.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from transformers import GenerationConfig, TextStreamer

from moc.errors import utf8_text
from moc.hf.convert import check_tokenizer_fits
from moc.hf.errors import HFError


def _generation_config(
    tokenizer: Any,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop_ids: list[int] | None,
) -> GenerationConfig:
    if max_new_tokens < 1:
        raise HFError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not temperature >= 0 or math.isinf(temperature):  # NaN fails every comparison
        raise HFError(f"--temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise HFError(f"--top-p must be in (0, 1], got {top_p}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = stop_ids if stop_ids else tokenizer.eos_token_id
    gen = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    if temperature > 0:
        gen.temperature, gen.top_p, gen.top_k = temperature, top_p, 0
    return gen


def encode_prompts(tokenizer: Any, prompts: list[str], add_bos: bool = True) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids`` / ``attention_mask`` (B, L). With ``add_bos``, each prompt starts with the
    bos token (for moc tokenizers that is ``<|endoftext|>``, which precedes every document in training)."""
    rows = []
    for text in prompts:
        ids = tokenizer(utf8_text(text, "the prompt"), add_special_tokens=True)["input_ids"]
        bos = tokenizer.bos_token_id
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        if not ids:
            raise HFError(
                "the prompt is empty and the tokenizer has no bos token to start from; give some text"
            )
        rows.append(ids)
    return pad_left(rows, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


def pad_left(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def generate_ids(
    model: Any,
    tokenizer: Any,
    batch: dict[str, torch.Tensor],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_ids: list[int] | None = None,
    streamer: Any = None,
) -> torch.Tensor:
    """(B, L_prompt) -> (B, L_new) new token ids (padded with the pad id after a stop token)."""
    check_tokenizer_fits(tokenizer, model.config.vocab_size)
    gen = _generation_config(tokenizer, max_new_tokens, temperature, top_p, stop_ids)
    room = model.config.max_position_embeddings - int(batch["attention_mask"].sum(-1).max())
    if room < 1:
        raise HFError(
            f"the prompt fills the model's context of {model.config.max_position_embeddings} tokens; "
            "shorten it"
        )
    if room < max_new_tokens:  # stopping early without a word looks like the model chose to stop
        print(
            f"moc generate: only {room} new tokens fit the model's context of "
            f"{model.config.max_position_embeddings} after the prompt; generating {room}, "
            f"not {max_new_tokens}",
            file=sys.stderr,
            flush=True,
        )
    gen.max_new_tokens = min(max_new_tokens, room)
    if seed is not None:
        torch.manual_seed(seed)
    device = model.device
    out = model.generate(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        generation_config=gen,
        streamer=streamer,
    )
    return out[:, batch["input_ids"].shape[1] :].cpu()


def generate_text(
    model: Any,
    tokenizer: Any,
    prompts: str | list[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    add_bos: bool = True,
) -> list[str]:
    """Continue each prompt; returns the generated text only (without the prompt)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    batch = encode_prompts(tokenizer, prompts, add_bos=add_bos)
    new = generate_ids(
        model,
        tokenizer,
        batch,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    return tokenizer.batch_decode(new, skip_special_tokens=True)


def chat_stop_ids(tokenizer: Any) -> list[int]:
    from moc.data.tokenizer import chat_stop_token_ids

    return [i for i in chat_stop_token_ids(tokenizer) if i is not None]


def chat_reply(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, str]],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stream: bool = False,
) -> str:
    """The assistant's next reply to ``messages`` ([{"role", "content"}, ...]), rendered with the
    tokenizer's chat template; generation stops at the end-of-turn (or eos) token."""
    if not isinstance(getattr(tokenizer, "chat_template", None), str):
        raise HFError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')} has no chat template, so `moc chat` cannot "
            "render a conversation; use `moc generate`, or a tokenizer with a chat template"
        )
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    batch = pad_left([list(ids["input_ids"])], tokenizer.pad_token_id or 0)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    new = generate_ids(
        model,
        tokenizer,
        batch,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop_ids=chat_stop_ids(tokenizer),
        streamer=streamer,
    )
    return tokenizer.decode(new[0], skip_special_tokens=True).strip()
