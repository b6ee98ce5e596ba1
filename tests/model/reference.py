"""A naive, independent reference of the Mixture-of-Chapters memory read and of the whole model.

Written from the paper's equations (its method section, and ``moc.model.memory``'s
docstring), NOT from the production code: it calls nothing of ``moc.model`` or ``moc.kernels``
(MemoryLayer, ChapterRouter, router_losses, routing_plan, routed_read, rms_normalize, RMSNorm,
SelfAttention, ...; ``tests/model/test_reference.py`` checks that it imports none of ``moc``). It
reads only the modules' parameters and the config, and loops in Python over examples, documents and
routing decisions, in float64. Slow on purpose: every step is written out so that it can be checked by eye.

Per routing decision:

    summary  = mean of the router input over the positions the decision may see
    scores   = W_r summary + b_r                           (all C chapters)
    p        = softmax(scores[routed])                     (routed = chapters after the n_shared ones)
    top-k of p, renormalised, x routed_scaling_factor; shared chapters weight 1; renormalised again
    M_S      = for each selected chapter c: RMS-normalise each of its T bank vectors (no scale)
    kv:     K = (w_c M_c) W_K,  V = (w_c M_c) W_V          (the paper)
    v:      K = M_c W_K,        V = (w_c M_c) W_V
    logit:  K = M_c W_K,        V = M_c W_V,  log(w_c) added to the logits of chapter c's tokens
    out      = W_O concat_heads(softmax(Q K^T / sqrt(d_h)) V),   Q = RMSNorm(h) W_Q

Decisions: "sequence" one per document (mean of its positions, non-causal); "causal" chunk g =
positions [g*S, (g+1)*S) of a document, decided from the mean of the document's positions < g*S
(chunk 0: zero summary, so the router bias alone decides); "token" one per position from its own state.
A row may hold several packed documents: a new one starts at a valid token whose position id is 0 or is
not greater than the previous valid token's.

aux = load_balance_coef * LB + z_loss_coef * Z over the decisions, LB = C_routed * sum_i f_i P_i
(f_i = share of all top-k picks that went to chapter i, P_i = mean routed probability), Z = mean over
decisions of logsumexp(all C scores)^2.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

DT = torch.float64


def _rms(x: Tensor, eps: float, weight: Tensor | None = None) -> Tensor:
    """x: (..., d) -> x / sqrt(mean(x^2) + eps), times ``weight`` (d,) if given."""
    y = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight.to(DT)


def documents(position_ids: Tensor, valid: Tensor) -> list[list[list[int]]]:
    """position_ids, valid: (B, L) -> per row, the list of documents, each a list of row indices.

    A document starts at a valid token whose position id is 0 or not greater than the previous valid
    token's position id. Padding (valid=False) belongs to no document.
    """
    rows: list[list[list[int]]] = []
    for b in range(position_ids.shape[0]):
        docs: list[list[int]] = []
        prev: int | None = None
        for t in range(position_ids.shape[1]):
            if not bool(valid[b, t]):
                continue
            p = int(position_ids[b, t])
            if prev is None or p == 0 or p <= prev:
                docs.append([])
            docs[-1].append(t)
            prev = p
        rows.append(docs)
    return rows


def _decisions(
    mode: str, chunk: int, pos: list[int], idx: list[int], first_chunk: str = "bias"
) -> list[tuple[list[int], list[int]]]:
    """One document's decisions: (row indices it pools, row indices it serves).

    pos: the document's position ids; idx: their row indices (same order). first_chunk "per_token":
    under causal routing each position p < chunk decides alone from the positions before it.
    """
    if mode == "sequence":
        return [(idx, idx)]
    if mode == "token":
        return [([t], [t]) for t in idx]
    out = []
    if first_chunk == "per_token":
        for t, p in zip(idx, pos, strict=True):
            if p < chunk:
                out.append(([u for u, q in zip(idx, pos, strict=True) if q < p], [t]))
        pos_idx = [(p, t) for p, t in zip(pos, idx, strict=True) if p >= chunk]
        for g in sorted({p // chunk for p, _ in pos_idx}):
            served = [t for p, t in pos_idx if p // chunk == g]
            pooled = [t for t, p in zip(idx, pos, strict=True) if p < g * chunk]
            out.append((pooled, served))
        return out
    for g in sorted({p // chunk for p in pos}):
        served = [t for t, p in zip(idx, pos, strict=True) if p // chunk == g]
        pooled = [t for t, p in zip(idx, pos, strict=True) if p < g * chunk]
        out.append((pooled, served))
    return out


def _route(layer: Any, summary: Tensor) -> tuple[list[int], Tensor, Tensor, Tensor]:
    """summary: (d,) float64 -> (selected chapter ids, their weights (n_sel,), scores (C,), routed probs)."""
    cfg = layer.cfg
    n_shared, k = cfg.n_shared_chapters, cfg.top_k
    scores = layer.router.proj.weight.to(DT) @ summary + layer.router.proj.bias.to(DT)
    routed = scores[n_shared:]
    disabled = getattr(layer.router, "disabled", None)  # chapters removed for ablation
    shared_ids = list(range(n_shared))
    if disabled is not None and bool(disabled.any()):
        routed = routed.masked_fill(disabled[n_shared:], float("-inf"))
        shared_ids = [c for c in shared_ids if not bool(disabled[c])]
    probs = torch.exp(routed - routed.max())
    probs = probs / probs.sum()
    ranked = probs.detach().tolist()
    order = sorted(range(len(ranked)), key=lambda i: -ranked[i])[:k]
    top = torch.stack([probs[i] for i in order])
    routed_w = cfg.routed_scaling_factor * top / top.sum()
    w = torch.cat([torch.ones(len(shared_ids), dtype=DT), routed_w])
    w = w / w.sum()
    return shared_ids + [n_shared + i for i in order], w, scores, probs


def _chapter(bank: Any, c: int, chapter_size: int) -> Tensor:
    """Bank rows of chapter c: (T, dim) float64, for a full/reduced (weight) or factorized (A B^T) bank."""
    rows = slice(c * chapter_size, (c + 1) * chapter_size)
    if hasattr(bank, "A"):
        return bank.A[rows].to(DT) @ bank.B.to(DT).t()
    return bank.weight[rows].to(DT)


def reference_memory_layer(
    layer: Any,
    bank: Any,
    h: Tensor,
    position_ids: Tensor,
    valid: Tensor,
    route_input: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """h: (B, L, d) the memory layer's input residual stream; position_ids, valid: (B, L).

    Returns (update (B, L, d) -- what MemoryLayer adds to h, after o_proj --, aux loss scalar).
    route_input: (B, L, d) tensor the router pools instead of RMSNorm(h); None = RMSNorm(h).
    Padding positions get a zero update (the model's are unconstrained there).
    """
    cfg = layer.cfg
    mode, chunk = cfg.routing, cfg.causal_chunk_size
    weighting = getattr(cfg, "chapter_weighting", "kv")
    eps = layer.norm.eps
    chapter_size = cfg.n_tokens // cfg.n_chapters
    H, Hkv = cfg.n_heads, cfg.n_kv_heads
    Wq, Wk = layer.q_proj.weight.to(DT), layer.k_proj.weight.to(DT)
    Wv, Wo = layer.v_proj.weight.to(DT), layer.o_proj.weight.to(DT)
    hd = Wq.shape[0] // H
    x = _rms(h.to(DT), eps, layer.norm.weight)  # (B, L, d)
    r = x if route_input is None else route_input.to(DT)
    B, L, _ = h.shape
    rows_out = []
    all_scores, all_probs, all_picks = [], [], []
    for b in range(B):
        row = [torch.zeros(Wo.shape[0], dtype=DT) for _ in range(L)]
        for doc in documents(position_ids, valid)[b]:
            pos = [int(position_ids[b, t]) for t in doc]
            first_chunk = getattr(cfg, "causal_first_chunk", "bias")
            for pooled, served in _decisions(mode, chunk, pos, doc, first_chunk):
                if pooled:
                    summary = torch.stack([r[b, t] for t in pooled]).mean(0)
                else:  # causal chunk 0: nothing seen yet
                    summary = torch.zeros(r.shape[-1], dtype=DT)
                ids, w, scores, probs = _route(layer, summary)
                all_scores.append(scores)
                all_probs.append(probs)
                all_picks.append([c - cfg.n_shared_chapters for c in ids[len(ids) - cfg.top_k :]])
                keys, values, bias = [], [], []
                for c, wc in zip(ids, w, strict=True):
                    m = _rms(_chapter(bank, c, chapter_size), eps)  # (T, dim), no learned scale
                    km = m * wc if weighting == "kv" else m
                    vm = m * wc if weighting in ("kv", "v") else m
                    keys.append(km @ Wk.t())
                    values.append(vm @ Wv.t())
                    lb = torch.log(wc) if weighting == "logit" else torch.zeros((), dtype=DT)
                    bias.append(lb.expand(m.shape[0]))
                K = torch.cat(keys).view(-1, Hkv, hd)  # (N_sel, Hkv, hd)
                V = torch.cat(values).view(-1, Hkv, hd)
                logit_bias = torch.cat(bias)  # (N_sel,)
                for t in served:
                    q = (x[b, t] @ Wq.t()).view(H, hd)
                    heads = []
                    for j in range(H):
                        kv = j // (H // Hkv)  # grouped-query: consecutive query heads share a KV head
                        a = K[:, kv] @ q[j] / math.sqrt(hd) + logit_bias
                        p = torch.exp(a - a.max())
                        heads.append((p / p.sum()) @ V[:, kv])
                    row[t] = torch.cat(heads) @ Wo.t()
        rows_out.append(torch.stack(row))
    update = torch.stack(rows_out).to(h.dtype)
    if not all_scores:
        return update, torch.zeros((), dtype=torch.float32)
    scores, probs = torch.stack(all_scores), torch.stack(all_probs)  # (D, C), (D, C_routed)
    n_dec, n_routed = probs.shape
    f = torch.zeros(n_routed, dtype=DT)
    for picks in all_picks:
        for i in picks:
            f[i] += 1.0
    f = f / (n_dec * cfg.top_k)
    load_balance = n_routed * (f * probs.mean(0)).sum()
    top_score = scores.max(-1).values  # subtracted for a stable log-sum-exp
    z = (torch.log(torch.exp(scores - top_score[:, None]).sum(-1)) + top_score).pow(2).mean()
    aux = cfg.load_balance_coef * load_balance + cfg.z_loss_coef * z
    return update, aux.float()


# -- the whole model ------------------------------------------------------------------------------------


def _rope(x: Tensor, pos: Tensor, theta: float) -> Tensor:
    """x: (L, heads, hd), pos: (L,) -> rotated: pairs (i, i + hd/2) rotated by pos * theta^(-2i/hd)."""
    hd = x.shape[-1]
    freq = theta ** (-torch.arange(0, hd, 2, dtype=DT) / hd)  # (hd/2,)
    ang = pos.to(DT)[:, None, None] * freq  # (L, 1, hd/2)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return torch.cat([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()], -1)


def _self_attention(
    attn: Any, x: Tensor, pos: Tensor, doc_of: list[int], n_heads: int, n_kv: int, theta: float
) -> Tensor:
    """One row: x (L, d) float64 -> (L, d). Query i sees key j if j <= i in the same document;
    padding (doc -1) sees only itself."""
    L = x.shape[0]
    hd = attn.q_proj.weight.shape[0] // n_heads
    q = _rope((x @ attn.q_proj.weight.to(DT).t()).view(L, n_heads, hd), pos, theta)
    k = _rope((x @ attn.k_proj.weight.to(DT).t()).view(L, n_kv, hd), pos, theta)
    v = (x @ attn.v_proj.weight.to(DT).t()).view(L, n_kv, hd)
    same_doc = [[doc_of[i] >= 0 and doc_of[j] == doc_of[i] for j in range(L)] for i in range(L)]
    allowed = torch.tensor([[j == i or (j < i and same_doc[i][j]) for j in range(L)] for i in range(L)])
    heads = []
    for h in range(n_heads):
        kv = h // (n_heads // n_kv)
        a = (q[:, h] @ k[:, kv].t()) / math.sqrt(hd)
        a = a.masked_fill(~allowed, float("-inf"))
        heads.append(torch.softmax(a, -1) @ v[:, kv])
    return torch.cat(heads, -1) @ attn.o_proj.weight.to(DT).t()


def _mlp(mlp: Any, x: Tensor) -> Tensor:
    """SwiGLU: down(silu(gate x) * up x), silu(a) = a * sigmoid(a)."""
    g = x @ mlp.gate_proj.weight.to(DT).t()
    return (g * torch.sigmoid(g) * (x @ mlp.up_proj.weight.to(DT).t())) @ mlp.down_proj.weight.to(DT).t()


def bank_index(mem_cfg: Any, ordinal: int) -> int:
    """Which bank the ``ordinal``-th memory layer reads, from the config alone."""
    if mem_cfg.bank_sharing == "per_layer":
        return ordinal
    if mem_cfg.bank_sharing == "grouped":
        return ordinal // mem_cfg.bank_group_size
    return 0


def reference_forward(
    model: Any, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The whole MoCModel forward, naive: input_ids (B, L) -> (logits (B, L, V), aux loss scalar).

    Self-attention is written out with an explicit causal, per-document mask. Memory blocks use
    ``reference_memory_layer`` on the bank chosen from the config (not from the model's own mapping).
    Aux losses are summed over memory layers, or averaged if ``memory.aux_loss_reduction == "mean"``.
    """
    cfg, mem = model.config.model, model.config.memory
    B, L = input_ids.shape
    valid = torch.ones(B, L, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if position_ids is None:
        position_ids = (valid.long().cumsum(-1) - 1).clamp(min=0)
    doc_of = []
    for docs in documents(position_ids, valid):
        d = [-1] * L
        for n, doc in enumerate(docs):
            for t in doc:
                d[t] = n
        doc_of.append(d)
    eps = cfg.norm_eps
    h = model.embed_tokens.weight.to(DT)[input_ids]  # (B, L, d)
    aux_terms = []
    ordinal = 0
    for block in model.layers:
        block_input = h
        sa = torch.stack(
            [
                _self_attention(
                    block.self_attn,
                    _rms(h[b], eps, block.input_layernorm.weight),
                    position_ids[b],
                    doc_of[b],
                    cfg.n_heads,
                    cfg.n_kv_heads,
                    cfg.rope_theta,
                )
                for b in range(B)
            ]
        )
        h = h + sa
        if block.memory is None:
            h = h + _mlp(block.mlp, _rms(h, eps, block.post_attention_layernorm.weight))
            continue
        bank = model.banks[bank_index(mem, ordinal)]
        ordinal += 1
        route_input = None
        if getattr(mem, "router_input", "memory_norm") == "block_input":
            route_input = block_input
        variant = mem.block_variant
        if variant == "B":
            h = h + _mlp(block.mlp, _rms(h, eps, block.post_attention_layernorm.weight))
        update, aux = reference_memory_layer(block.memory, bank, h, position_ids, valid, route_input)
        aux_terms.append(aux)
        h = h + update.to(DT)
        if variant == "B":
            h = h + _mlp(block.mem_mlp, _rms(h, eps, block.mem_mlp_norm.weight))
        else:
            h = h + _mlp(block.mlp, _rms(h, eps, block.post_attention_layernorm.weight))
    out_w = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    logits = _rms(h, eps, model.norm.weight) @ out_w.to(DT).t()
    aux = torch.stack(aux_terms).sum() if aux_terms else torch.zeros(())
    if aux_terms and getattr(mem, "aux_loss_reduction", "sum") == "mean":
        aux = aux / len(aux_terms)
    return logits.float(), aux.float()
