"""The Triton kernels of the routed read (moc.kernels.triton_read) against the independent float64 read
(naive_read.py), on the CPU in Triton's interpreter (TRITON_INTERPRET=1, in a subprocess so the setting
stays there), and in bf16 on CUDA when a GPU is present."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

HERE = Path(__file__).parent

# The checks run in the interpreter and on CUDA: shapes, weightings and the zero-weight edge.
CHECK = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {here!r})
    from naive_read import naive_grads
    from moc.kernels import triton_read as tr

    def problem(D, Qt, H, hd, U, T, kvh, n, dtype, device, zero, seed=0):
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(D, Qt, H, hd, generator=g)
        k, v = torch.randn(U, T, kvh, hd, generator=g), torch.randn(U, T, kvh, hd, generator=g)
        used = max(n, U - 3)  # the last chapters are never read (rows of the distinct-chapter padding)
        # chapter 0 is shared: read by every tile, so it is split over several work items
        picks = torch.stack([torch.randperm(used - 1, generator=g)[: n - 1] + 1 for _ in range(D)])
        idx = torch.cat([torch.zeros(D, 1, dtype=picks.dtype), picks], 1)
        w = torch.rand(D, n, generator=g).softmax(-1)
        if zero:
            w[0, 1] = 0.0  # e.g. a removed chapter
        do = torch.randn(D, Qt, H, hd, generator=g)
        on = lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        return [on(t) for t in (q, k, v, idx, w, do)]

    def check(shape, dtype, device, layout, weighting, zero, empty_tile=False):
        q, k, v, idx, w, do = problem(*shape, dtype=dtype, device=device, zero=zero)
        if empty_tile:  # tile 0 reads nothing: every chapter weight zero (all its chapters removed)
            w[0] = 0.0
        scale = q.shape[-1] ** -0.5
        out, lse = tr.forward(q, k, v, idx, w, weighting, scale, layout)
        rest = slice(1, None) if empty_tile else slice(None)
        want = naive_grads(*(t.cpu()[rest] for t in (do, q)), k.cpu(), v.cpu(), idx.cpu()[rest],
                           w.cpu()[rest], weighting)
        tol = {{torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 6e-2}}[dtype]
        assert torch.isfinite(out).all() and out.dtype == dtype, (shape, weighting, "non-finite output")
        torch.testing.assert_close(out[rest].cpu().double(), want[0], atol=tol, rtol=tol)
        grads = tr.backward(do, q, out, lse, k, v, idx, w, weighting, scale)
        again = tr.backward(do, q, out, lse, k, v, idx, w, weighting, scale)
        assert all(torch.equal(a, b) for a, b in zip(grads, again)), "backward is not deterministic"
        if empty_tile:
            assert torch.all(out[0] == 0) and torch.all(lse[0] == float("-inf")), "a tile that read nothing"
            assert torch.all(grads[0][0] == 0) and torch.all(grads[3][0] == 0), "its dq, dw: zero"
        for name, got, ref in zip(("dq", "dk", "dv", "dw"), grads, want[1:]):
            got = got.cpu().double()
            got, ref = (got, ref.clone()) if name in ("dk", "dv") else (got[rest], ref.clone())
            if name == "dw" and zero and weighting == "logit" and not empty_tile:
                assert torch.isfinite(got).all()  # d/dw of log w at w = 0: the limit, not 0/0
                got[0, 1] = ref[0, 1] = 0.0
            torch.testing.assert_close(got, ref, atol=tol, rtol=tol, msg=lambda m: f"{{name}}: {{m}}")

    # (D, Qt, H, hd, U, T, kvh, n): one-query tiles with grouped KV heads (the shared chapter's 36 rows
    # span two work items of 32 rows in the interpreter); tiles of 5 queries whose chapters are longer
    # than a 64-token block
    shapes = [(36, 1, 4, 16, 8, 20, 2, 3), (3, 5, 2, 8, 6, 70, 1, 2)]
    dtypes = [getattr(torch, name) for name in {dtypes!r}]
    for shape in shapes:
        for dtype in dtypes:
            for layout in ("grouped", "tiles"):
                for weighting in ("kv", "v", "logit"):
                    check(shape, dtype, {device!r}, layout, weighting, zero=shape[1] == 1)
    # per-pair buffers in head groups (a budget of one KV head at a time), and tiles that read nothing
    tr.TEMP_BUDGET = 1
    for layout in ("grouped", "tiles"):
        check(shapes[0], dtypes[0], {device!r}, layout, "kv", zero=False)
        check(shapes[0], dtypes[0], {device!r}, layout, "logit", zero=False, empty_tile=True)
    print("ok")
    """
)


def _run(device: str, dtypes: list[str], env: dict[str, str]) -> None:
    script = CHECK.format(here=str(HERE), dtypes=dtypes, device=device)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, **env}, timeout=600
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_kernels_match_the_naive_read_in_the_interpreter() -> None:
    """Grouped and per-tile forward, the grouped backward, fp32 and fp16, every weighting, zero weights,
    a chapter split over work items, heads in groups, a tile that reads nothing (output 0, lse -inf,
    zero dq and dw: the merge's and the backward's guards), bit-identical repeated backward."""
    _run("cpu", ["float32", "float16"], {"TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"})


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 is not checkable in the interpreter)"
)
def test_kernels_match_the_naive_read_on_cuda() -> None:
    _run("cuda", ["float32", "bfloat16", "float16"], {})


def test_chapter_groups_cover_every_query_row_once() -> None:
    from moc.kernels.triton_read import chapter_groups

    g = torch.Generator().manual_seed(0)
    D, n, U, Qt, rows_per_work = 11, 3, 9, 2, 4
    # chapter 0 in every tile: 22 rows, six items of 4 rows, six consecutive dK/dV slots; 2 chapters unread
    picks = torch.stack([torch.randperm(U - 3, generator=g)[: n - 1] + 1 for _ in range(D)])
    idx = torch.cat([torch.zeros(D, 1, dtype=picks.dtype), picks], 1)
    lay = chapter_groups(idx, U, Qt, rows_per_work)
    flat = idx.reshape(-1)
    assert torch.equal(
        lay.pairs.long(), torch.sort(flat, stable=True).indices
    )  # stable: same order every run
    seen = []
    for w in range(lay.work_chapter.numel()):
        u = int(lay.work_chapter[w])
        if u < 0:
            continue
        pairs = lay.pairs[lay.seg_start[u] : lay.seg_start[u + 1]].long()
        assert lay.work_start[u] <= w < lay.work_start[u + 1]
        for row in range(int(lay.work_row[w]), int(lay.work_row[w]) + rows_per_work):
            if row < pairs.numel() * Qt:
                pair = int(pairs[row // Qt])
                assert int(flat[pair]) == u
                seen.append((pair, row % Qt))
    assert sorted(seen) == [(p, i) for p in range(D * n) for i in range(Qt)]  # each row exactly once
    assert int(lay.work_start[-1]) <= lay.work_chapter.numel()  # the bound from shapes holds
    items = lay.work_start[1:] - lay.work_start[:-1]
    live = lay.work_chapter >= 0
    split = items[lay.work_chapter.clamp(min=0).long()] > 1
    assert torch.all(lay.work_slot[live & ~split] == -1)  # a chapter's only item writes dK/dV itself
    slots = lay.work_slot[live & split].long()
    assert int(items[0]) == 6 and torch.equal(slots, torch.arange(slots.numel()))  # consecutive, in order
    assert slots.numel() <= lay.n_slots  # the slot bound from shapes holds
    for u in torch.nonzero(items > 1).flatten().tolist():
        first = int(lay.work_start[u])
        assert int(lay.slot_start[u]) == int(lay.work_slot[first])


MODEL_CHECK = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from conftest import tiny_model
    from moc.kernels.dispatch import paths_used
    for routing in ("token", "causal", "sequence"):
        runs = {{}}
        for kernel in ("torch", "triton"):
            torch.manual_seed(0)
            model = tiny_model(f"memory.routing={{routing}}", f"memory.kernel={{kernel}}")
            ids = torch.randint(0, 256, (2, 24))
            out = model(ids, labels=ids)
            (out.loss + out.aux_loss).backward()
            runs[kernel] = [out.loss.detach()] + [p.grad for p in model.parameters() if p.grad is not None]
        for a, b in zip(runs["torch"], runs["triton"], strict=True):
            torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)
        used = paths_used(reset=True)
        assert "triton grouped backward" in used and "torch forward" not in used, used
    print("ok")
    """
)


def test_a_model_reads_through_the_kernels_in_every_routing_mode() -> None:
    """memory.kernel=triton in the interpreter: loss and every gradient equal the PyTorch loops'."""
    script = MODEL_CHECK.format(tests=str(HERE.parent))
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_grouped_token_read_loads_at_least_200x_fewer_chapter_bytes_at_paper_shapes() -> None:
    """16 x 1,024 tokens, each reading the shared chapter and a top-64 of 4,096 routed chapters."""
    from moc.kernels.triton_read import chapter_loads

    g = torch.Generator().manual_seed(0)
    tokens, n, chapters = 16 * 1024, 65, 4097
    picks = torch.rand(tokens, chapters - 1, generator=g).topk(n - 1).indices + 1
    idx = torch.cat([torch.zeros(tokens, 1, dtype=picks.dtype), picks], 1)
    per_tile, grouped = chapter_loads(idx, chapters, 1, "tiles"), chapter_loads(idx, chapters, 1, "grouped")
    assert per_tile == tokens * n  # every token loads each of its chapters
    assert per_tile / grouped >= 200, (per_tile, grouped)  # a chapter once per work item of 4,096 rows
    chunks = idx[: tokens // 64]  # causal chunks of 64 queries: once per (chunk, chapter) per tile
    assert chapter_loads(chunks, chapters, 64, "tiles") == chunks.numel()
    assert chapter_loads(chunks, chapters, 64, "grouped") < chunks.numel()


def test_head_sizes_no_config_fits_are_refused_in_one_line() -> None:
    from moc.kernels import triton_read as tr

    q, k = torch.empty(1, 1, 2, 256), torch.empty(1, 4, 2, 256)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        reason = tr.unsupported(q, k)
        assert reason is not None and "head size 256 > 128" in reason and "\n" not in reason
        assert tr.unsupported(q[..., :128], k[..., :128]) is None


def test_head_groups_keep_per_pair_buffers_within_the_budget() -> None:
    from moc.kernels import triton_read as tr

    per_head = tr.forward_group_bytes(16 * 1024 * 65, 1, 1, 64, torch.bfloat16)
    assert per_head == 16 * 1024 * 65 * (64 * 2 + 4)  # bf16 partials, fp32 log-sum-exp
    n = tr.heads_per_group(per_head, 12)
    assert n * per_head <= tr.TEMP_BUDGET < (n + 1) * per_head
    assert tr.heads_per_group(10**12, 12) == 1 and tr.heads_per_group(1, 12) == 12
