"""An independent float64 routed read, written from the equations (see ``moc.kernels.routed_read``):
each tile's selected chapters are copied out and weighted, then an explicit softmax. Autograd gives the
gradients. Shares no code with the kernels or the blocked PyTorch loops."""

from __future__ import annotations

import math

import torch


def naive_read(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, weighting: str
) -> torch.Tensor:
    """q (D, Qt, H, hd), k/v (U, T, Hkv, hd), idx/w (D, n) -> out (D, Qt, H, hd)."""
    D, Qt, H, hd = q.shape
    kvh = k.shape[2]
    outs = []
    for d in range(D):
        heads = []
        for h in range(H):
            j = h // (H // kvh)
            logits, values = [], []
            for slot in range(idx.shape[1]):
                c, wt = int(idx[d, slot]), w[d, slot]
                key = k[c, :, j] * (wt if weighting == "kv" else 1.0)  # (T, hd)
                val = v[c, :, j] * (wt if weighting in ("kv", "v") else 1.0)
                s = q[d, :, h] @ key.t() / math.sqrt(hd)  # (Qt, T)
                logits.append(s + torch.log(wt) if weighting == "logit" else s)
                values.append(val)
            p = torch.softmax(torch.cat(logits, dim=1), dim=1)
            heads.append(p @ torch.cat(values, dim=0))
        outs.append(torch.stack(heads, dim=1))
    return torch.stack(outs)


def naive_grads(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    weighting: str,
) -> tuple[torch.Tensor, ...]:
    """(out, dq, dk, dv, dw) in float64 for the upstream gradient ``do``."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v, w)]
    out = naive_read(leaves[0], leaves[1], leaves[2], idx, leaves[3], weighting)
    grads = torch.autograd.grad((out * do.double()).sum(), leaves)
    return (out.detach(), *grads)
