"""Parameter and FLOP accounting: the paper's figures exactly, and how each term scales.

Expected differences are written out from the paper's Appendix A.2 here, not taken from the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

import moc
from moc.accounting import (
    count_flops,
    count_params,
    expected_distinct_chapters,
    isoflop,
    isoflop_config,
    mfu,
    primitives,
    training_flops_per_token,
)
from moc.accounting.flops import forward_flops
from moc.accounting.params import bank_params, n_banks
from moc.accounting.primitives import ceil_log2

PAPER = moc.load_config("paper-moc")
D, V, FF, L = 768, 49152, 2304, 1024  # paper width, vocab, MLP width, sequence length
C, T, K = 4097, 64, 64  # chapters, chapter size, top-k
LAYER, MEM_EXTRA, HEAD = 17_424_982_016, 25_702_029_150, 77_563_973_632


def cfg(preset: str = "paper-moc", **overrides: object) -> moc.RunConfig:
    return moc.load_config(preset, overrides={k.replace("__", "."): v for k, v in overrides.items()})


def mem_parts(c: moc.RunConfig, seq_len: int | None = None) -> dict[str, int]:
    return count_flops(c, seq_len)["breakdown"]["memory_layer"]["parts"]


def mem_terms(c: moc.RunConfig, seq_len: int | None = None) -> dict[str, int]:
    return count_flops(c, seq_len)["breakdown"]["memory_layer"]["terms"]


# ------------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------------


def test_paper_param_counts() -> None:
    assert count_params("paper-moc") == {
        "total": 371_292_932,
        "backbone": 147_874_560,
        "bank": 201_375_744,
        "memory_layers": 22_042_628,
    }
    assert count_params("paper-dense-iso") == {
        "total": 202_937_088,
        "backbone": 202_937_088,
        "bank": 0,
        "memory_layers": 0,
    }
    assert count_params("paper-dense-backbone")["total"] == 147_874_560


def test_params_accept_config_objects_and_overrides() -> None:
    assert count_params(PAPER) == count_params("paper-moc")
    # Two memory layers instead of four: half the memory-layer parameters, same bank.
    p = count_params(cfg(memory__layers=[2, 6]))
    assert p["memory_layers"] == 22_042_628 // 2
    assert p["bank"] == 201_375_744


def test_untied_embeddings_add_an_lm_head() -> None:
    p = count_params(cfg(model__tie_embeddings=False))
    assert p["backbone"] == 147_874_560 + V * D


@pytest.mark.parametrize(
    ("sharing", "group", "banks"),
    [("shared", 2, 1), ("per_layer", 2, 4), ("grouped", 2, 2), ("grouped", 3, 2), ("grouped", 4, 1)],
)
def test_bank_sharing_multiplies_the_bank(sharing: str, group: int, banks: int) -> None:
    p = count_params(cfg(memory__bank_sharing=sharing, memory__bank_group_size=group))
    assert p["bank"] == banks * 262_208 * D
    assert p["memory_layers"] == 22_042_628


def test_factorized_bank_params() -> None:
    p = count_params(cfg(memory__bank_type="factorized", memory__bank_rank=128))
    assert p["bank"] == 262_208 * 128 + D * 128
    assert p["memory_layers"] == 22_042_628  # the bank is reconstructed to d, attention unchanged


def test_reduced_bank_params() -> None:
    r = 384
    p = count_params(cfg(memory__bank_type="reduced", memory__bank_dim=r, memory__n_kv_heads=4))
    kv = 4 * (r // 12)
    per_layer = D + D * r + 2 * r * kv + r * D + (D * C + C)
    assert p["bank"] == 262_208 * r
    assert p["memory_layers"] == 4 * per_layer


def test_block_variant_b_counts_second_mlp_as_memory() -> None:
    p = count_params(cfg(memory__block_variant="B"))
    assert p["memory_layers"] == 22_042_628 + 4 * (3 * D * FF + D)
    assert p["backbone"] == 147_874_560


def test_tiny_params_by_hand() -> None:
    # tiny-moc: V=256, d=64, 4 layers, 4 heads / 2 KV heads, d_ff=160, tied; bank 512 tokens,
    # 32 chapters, memory layers [1, 3] with 4 heads / 4 KV heads.
    layer = 64 * 64 * 2 + 2 * 64 * 32 + 2 * 64 + 3 * 64 * 160
    mem_layer = 64 + 4 * 64 * 64 + 64 * 32 + 32
    assert count_params("tiny-moc") == {
        "total": 256 * 64 + 4 * layer + 64 + 512 * 64 + 2 * mem_layer,
        "backbone": 256 * 64 + 4 * layer + 64,
        "bank": 512 * 64,
        "memory_layers": 2 * mem_layer,
    }


def test_params_match_the_built_model() -> None:
    """The analytic count equals the real model's parameters, split by ``param_category``."""
    pytest.importorskip("moc.model")
    try:
        from moc.model import MoCModel  # noqa: F401
    except ImportError:
        pytest.skip("moc.model.MoCModel is not available yet")
    from moc.model.param_groups import param_category

    variants = [
        {},
        {"memory.bank_type": "factorized", "memory.bank_rank": 8},
        {"memory.bank_type": "reduced", "memory.bank_dim": 32, "memory.n_kv_heads": 2},
        {"memory.bank_sharing": "per_layer"},
        {"memory.bank_sharing": "grouped", "memory.layers": [0, 1, 3], "memory.bank_group_size": 2},
        {"memory.block_variant": "B", "model.tie_embeddings": False},
        {"memory.enabled": False, "memory.layers": []},
    ]
    for overrides in variants:
        c = moc.load_config("tiny-moc", overrides=overrides)
        model = moc.build_model(c)
        got = {"backbone": 0, "memory": 0, "bank": 0}
        for name, p in model.named_parameters():
            got[param_category(name)] += p.numel()
        want = count_params(c)
        assert (got["backbone"], got["memory"], got["bank"]) == (
            want["backbone"],
            want["memory_layers"],
            want["bank"],
        ), overrides


# ------------------------------------------------------------------------------------------------
# FLOPs: the paper's figures
# ------------------------------------------------------------------------------------------------


def test_paper_forward_totals() -> None:
    assert count_flops("paper-dense-backbone")["forward"] == 356_363_685_888
    assert count_flops("paper-dense-iso")["forward"] == 495_763_542_016
    r = count_flops("paper-moc")
    assert r["forward"] == 459_171_802_488
    assert r["backward"] == 2 * 459_171_802_488
    assert r["total"] == 3 * 459_171_802_488
    assert all(type(r[k]) is int for k in ("forward", "backward", "total"))


def test_paper_components() -> None:
    b = count_flops(PAPER)["breakdown"]
    assert (b["layer"]["count"], b["layer"]["each"]) == (16, LAYER)
    assert (b["memory_layer"]["count"], b["memory_layer"]["each"]) == (4, MEM_EXTRA)
    assert (b["head"]["count"], b["head"]["each"]) == (1, HEAD)
    assert b["memory_layer"]["parts"] == {
        "router": 7_124_491,
        "router_loss": 331_859,
        "preprocess": 15_991_040,
        "memory_attention": 25_674_645_504,
        "norm": L * (4 * D + 4),
        "residual": L * D,
    }
    for comp in b.values():
        assert sum(comp["terms"].values()) == comp["each"] == sum(comp["parts"].values())
        assert comp["total"] == comp["count"] * comp["each"]


def test_router_loss_formula_matches_spec() -> None:
    assert primitives.router_loss(1, C, K) == 331_859
    # The paper's expression (Appendix A.2) simplifies to s*c*(k+12) + 5c + 2s.
    for s, c, k in [(1, 7, 1), (3, 32, 4), (16, 4097, 64), (1024, 100, 9)]:
        assert primitives.router_loss(s, c, k) == s * c * (k + 12) + 5 * c + 2 * s


def test_ceil_log2_is_exact() -> None:
    assert [primitives.ceil_log2(k) for k in (1, 2, 3, 4, 5, 63, 64, 65)] == [0, 1, 2, 2, 3, 6, 6, 7]
    assert primitives.ceil_log2(2**60 + 1) == 61
    with pytest.raises(ValueError):
        primitives.ceil_log2(0)


def test_dense_has_no_memory_terms() -> None:
    r = count_flops("paper-dense-backbone")
    assert set(r["breakdown"]) == {"layer", "head"}
    assert "routing" not in r
    assert r["forward"] == 16 * LAYER + HEAD


def test_seq_len_defaults_to_max_seq_len_and_is_validated() -> None:
    assert count_flops(PAPER)["seq_len"] == 1024
    assert count_flops(PAPER, 1024) == count_flops(PAPER)
    for bad in (0, -5, 1.5, "1024", True):
        with pytest.raises(ValueError, match="seq_len"):
            count_flops(PAPER, bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# FLOPs: scaling, from the formulas
# ------------------------------------------------------------------------------------------------


def test_dense_seq_len_scaling() -> None:
    l1, l2 = 512, 2048
    a, b = count_flops("paper-dense-backbone", l1), count_flops("paper-dense-backbone", l2)
    dl = l2 - l1
    # head: final norm, LM head and cross-entropy are all linear in L.
    assert b["breakdown"]["head"]["each"] - a["breakdown"]["head"]["each"] == dl * (
        (4 * D + 4) + 2 * D * V + 5 * V
    )
    assert b["breakdown"]["head"]["terms"]["lm_head"] == 4 * a["breakdown"]["head"]["terms"]["lm_head"]
    # layer: projections, RoPE, norms, MLP and residuals are linear; attention scores quadratic.
    kv = 4 * 64
    linear_per_token = 2 * (2 * D * D + 2 * D * kv) + 3 * (D + kv) + 2 * (4 * D + 4)
    linear_per_token += 3 * 2 * D * FF + 5 * FF + 2 * D
    quad = (4 * D + 12 * 7) * (l2 * l2 - l1 * l1)
    assert b["breakdown"]["layer"]["each"] - a["breakdown"]["layer"]["each"] == dl * linear_per_token + quad


def test_moc_seq_len_scaling_sequence_routing() -> None:
    l1, l2 = 1024, 1536
    n_sel = (K + 1) * T
    a, b = mem_parts(PAPER, l1), mem_parts(PAPER, l2)
    dl = l2 - l1
    assert b["router"] - a["router"] == D * dl  # only the mean pooling grows
    assert b["router_loss"] == a["router_loss"]
    assert b["preprocess"] == a["preprocess"]  # the same N_sel memory vectors per sequence
    # Q and O projections, matmuls and softmax grow with L; K and V projections do not.
    assert b["memory_attention"] - a["memory_attention"] == dl * (
        2 * 2 * D * D + 4 * n_sel * D + 12 * n_sel * 7
    )


@pytest.mark.parametrize(
    ("overrides", "d_sel"),
    [
        ({"memory.top_k": 32}, (32 - 64) * 64),
        ({"memory.n_shared_chapters": 3}, 2 * 64),
        ({"memory.n_tokens": 4097 * 32}, (64 + 1) * (32 - 64)),  # chapter size 64 -> 32
    ],
)
def test_chapter_geometry_scales_memory_terms(overrides: dict, d_sel: int) -> None:
    c = PAPER.replace(overrides)
    assert c.memory.n_selected_tokens - PAPER.memory.n_selected_tokens == d_sel
    a, b = mem_parts(PAPER), mem_parts(c)
    # Preprocessing (weighting + RMSNorm) and memory attention are linear in N_sel.
    assert b["preprocess"] - a["preprocess"] == d_sel * (D + 4 * D + 4)
    kv_proj = 2 * 2 * D * D  # K and V, each 2 * d * kv_dim per memory vector (kv_dim = d here)
    assert b["memory_attention"] - a["memory_attention"] == d_sel * (kv_proj + 4 * L * D + 12 * L * 7)
    # The router scores all C chapters: only top_k changes its cost (top-k sort and the loss's k term).
    dk = c.memory.top_k - K
    assert b["router"] - a["router"] == C * (math.ceil(math.log2(c.memory.top_k)) - 6)
    assert b["router_loss"] - a["router_loss"] == C * dk
    # Nothing outside the memory layers moves.
    ra, rb = count_flops(PAPER)["breakdown"], count_flops(c)["breakdown"]
    assert (ra["layer"], ra["head"]) == (rb["layer"], rb["head"])


def test_more_chapters_widen_the_router() -> None:
    c = PAPER.replace({"memory.n_chapters": 4097 * 2, "memory.n_tokens": 4097 * 2 * 32})
    a, b = mem_parts(PAPER), mem_parts(c)
    assert b["router"] - a["router"] == 4097 * (2 * D + 5 + 6)
    assert b["router_loss"] - a["router_loss"] == 4097 * (1 * (K + 12) + 5)
    assert b["memory_attention"] < a["memory_attention"]  # 65 chapters of 32 tokens instead of 64


# ------------------------------------------------------------------------------------------------
# FLOPs: routing modes and bank variants
# ------------------------------------------------------------------------------------------------


def test_causal_routing_counts() -> None:
    c = PAPER.replace({"memory.routing": "causal", "memory.causal_chunk_size": 64})
    seq, n_sel = 1000, (K + 1) * T
    g = 16  # ceil(1000 / 64)
    t, ref = mem_terms(c, seq), mem_terms(PAPER, seq)
    assert t["router.pooling"] == D * seq + D * g  # running sum + one division per chunk
    assert t["router.linear"] == g * 2 * D * C
    assert t["router.softmax"] == g * 5 * C
    assert t["router.topk"] == g * C * 6
    assert t["router_loss"] == g * C * (K + 12) + 5 * C + 2 * g
    # Batch 1: the expected distinct chapters of 16 uniform decisions (module docstring of the code).
    chapters = 1 + (C - 1) * (1 - (1 - K / (C - 1)) ** g)  # about 912.9, fewer than 16 * 65
    n_proj = round(chapters * T)
    assert 58_000 < n_proj < g * n_sel
    assert t["preprocess.weighting"] == n_proj * D
    assert t["preprocess.rmsnorm"] == n_proj * (4 * D + 4)
    assert t["memory_attention.k_proj"] == t["memory_attention.v_proj"] == 2 * n_proj * D * D
    # Every query still sees N_sel keys: matmuls, softmax, Q and O are the same as sequence routing.
    for key in ("matmul", "softmax", "q_proj", "o_proj"):
        assert t[f"memory_attention.{key}"] == ref[f"memory_attention.{key}"]
    r = count_flops(c, seq)["routing"]
    assert (r["mode"], r["decisions"], r["selected_tokens"], r["projected_tokens"]) == (
        "causal",
        g,
        n_sel,
        n_proj,
    )
    assert (r["batch_size"], r["batch_decisions"], r["chapters_source"]) == (1, g, "expected")
    assert r["projected_chapters"] == pytest.approx(chapters, rel=1e-12)


@pytest.mark.parametrize(("seq", "chunk", "g"), [(1000, 64, 64 + 15), (5, 8, 5), (17, 4, 4 + 4)])
def test_per_token_first_chunk_counts(seq: int, chunk: int, g: int) -> None:
    """causal_first_chunk=per_token: the first chunk's positions decide alone (g written out by hand:
    e.g. 64 one-position decisions + ceil(936 / 64) = 15 chunks)."""
    c = PAPER.replace(
        {
            "memory.routing": "causal",
            "memory.causal_chunk_size": chunk,
            "memory.causal_first_chunk": "per_token",
        }
    )
    t = mem_terms(c, seq)
    assert count_flops(c, seq)["routing"]["decisions"] == g
    assert t["router.linear"] == g * 2 * D * C
    assert t["router.pooling"] == D * seq + D * g


@pytest.mark.parametrize("L", [3, 9, 13])
def test_per_token_first_chunk_decisions_match_the_model(L: int) -> None:
    """The decisions counted are the ones the model makes (its routing record, one document per row)."""
    c = cfg(
        "tiny-moc",
        memory__routing="causal",
        memory__causal_chunk_size=4,
        memory__causal_first_chunk="per_token",
    )
    model = moc.build_model(c).eval()
    with torch.no_grad():
        out = model(torch.randint(0, c.model.vocab_size, (2, L)))
    made = int(out.routing[0].valid.sum()) // 2
    assert made == count_flops(c, L)["routing"]["decisions"]


def test_causal_projection_never_exceeds_the_bank() -> None:
    # 8-token chunks at L=1024: 128 decisions * 4160 = 532,480 selections > 262,208 bank tokens.
    c = PAPER.replace({"memory.routing": "causal", "memory.causal_chunk_size": 8})
    n_proj = count_flops(c)["routing"]["projected_tokens"]
    assert n_proj == round((1 + (C - 1) * (1 - (1 - K / (C - 1)) ** 128)) * T) < 262_208
    assert mem_terms(c)["memory_attention.k_proj"] == 2 * n_proj * D * D
    # With many sequences per micro-batch every chapter is selected: the bank, shared by 64 sequences.
    assert count_flops(c, batch_size=64)["routing"]["projected_tokens"] == round(262_208 / 64)


def test_token_routing_counts() -> None:
    c = PAPER.replace({"memory.routing": "token"})
    t = mem_terms(c, 8)
    assert t["router.pooling"] == 0  # each token routes from its own hidden state
    assert t["router.linear"] == 8 * 2 * D * C
    assert t["router_loss"] == 8 * C * (K + 12) + 5 * C + 2 * 8
    assert count_flops(c, 8)["routing"]["projected_tokens"] == round(
        (1 + (C - 1) * (1 - (1 - K / (C - 1)) ** 8)) * T
    )
    # 1024 decisions of 64 out of 4096: every chapter is all but certain to be picked.
    assert count_flops(c)["routing"]["projected_tokens"] == 262_208
    assert count_flops(c)["routing"]["decisions"] == 1024


# ------------------------------------------------------------------------------------------------
# FLOPs: batch-aware projection counts
# ------------------------------------------------------------------------------------------------


def test_expected_distinct_chapters_edges() -> None:
    assert expected_distinct_chapters(1, 4096, 64, 1) == 65.0  # one decision: exactly shared + k
    assert expected_distinct_chapters(0, 10, 10, 3) == 10.0  # k = all routed chapters
    assert expected_distinct_chapters(2, 4096, 64, 10**9) == pytest.approx(4098)  # saturates at C
    assert expected_distinct_chapters(0, 8, 1, 2) == pytest.approx(8 * (1 - (7 / 8) ** 2))  # top-1 is valid
    with pytest.raises(ValueError, match="top_k"):
        expected_distinct_chapters(1, 8, 0, 1)
    # 16 sequences x 16 causal chunks of the paper model.
    assert expected_distinct_chapters(1, 4096, 64, 256) == pytest.approx(4024.3, abs=0.1)
    with pytest.raises(ValueError, match="top_k"):
        expected_distinct_chapters(1, 8, 9, 1)


def test_expected_distinct_chapters_matches_uniform_simulation() -> None:
    # Uniform, independent top-k picks (the documented assumption), simulated: the mean distinct count.
    gen = torch.Generator().manual_seed(0)
    n_routed, k, d, trials = 50, 4, 12, 4000
    picks = torch.rand(trials, d, n_routed, generator=gen).topk(k, dim=-1).indices  # uniform k-subsets
    hit = torch.zeros(trials, n_routed, dtype=torch.bool).scatter_(1, picks.flatten(1), True)
    measured = hit.sum(1).double().mean().item()
    assert measured == pytest.approx(expected_distinct_chapters(0, n_routed, k, d), rel=0.01)


def test_batch_one_keeps_the_paper_figures() -> None:
    assert count_flops(PAPER, batch_size=1) == count_flops(PAPER)
    assert count_flops(PAPER)["forward"] == 459_171_802_488
    # Sequence routing at batch 16: chapters shared between sequences are projected once.
    f16 = count_flops(PAPER, batch_size=16)
    chapters = 1 + (C - 1) * (1 - (1 - K / (C - 1)) ** 16)
    assert f16["routing"]["projected_tokens"] == round(chapters * T / 16)
    assert f16["forward"] < count_flops(PAPER)["forward"]


def test_causal_batch16_isoflop_target() -> None:
    """The issue's target: 27-29 dense layers, forward within 3% of 572 GFLOP per sequence."""
    c = PAPER.replace({"memory.routing": "causal"})
    iso = isoflop(c, batch_size=16)
    assert 27 <= iso["dense_layers"] <= 29
    assert iso["moc_forward"] == pytest.approx(572e9, rel=0.03)
    assert iso["batch_size"] == 16
    assert isoflop(c)["dense_layers"] > iso["dense_layers"]  # batch 1 projects more per sequence


def test_measured_chapters_replace_the_expectation() -> None:
    c = PAPER.replace({"memory.routing": "causal"})
    f = count_flops(c, batch_size=16, projected_chapters=2000.0)
    assert f["routing"]["chapters_source"] == "measured"
    assert f["routing"]["projected_tokens"] == 2000 * T // 16
    assert (
        mem_terms(c)["memory_attention.q_proj"]
        == f["breakdown"]["memory_layer"]["terms"]["memory_attention.q_proj"]
    )
    assert f["breakdown"]["memory_layer"]["terms"]["memory_attention.k_proj"] == 2 * (2000 * T // 16) * D * D
    assert mfu(1.0, c, batch_size=16, projected_chapters=2000.0) < mfu(1.0, c, batch_size=16)
    with pytest.raises(ValueError, match="projected_chapters"):
        count_flops(c, projected_chapters=C + 1)
    with pytest.raises(ValueError, match="batch_size"):
        count_flops(c, batch_size=0)


def test_model_projects_the_union_of_a_batch() -> None:
    """What the counts assume about moc.model: distinct chapters of the whole micro-batch, all layers."""
    torch.manual_seed(0)
    c = cfg("tiny-moc", memory__routing="causal")
    model = moc.build_model(c).eval()
    ids = torch.randint(0, c.model.vocab_size, (3, 32))
    with torch.no_grad():
        out = model(ids)
    distinct = [int(torch.unique(info.indices).numel()) for info in out.routing]
    assert all(c.memory.n_selected_chapters <= n <= c.memory.n_chapters for n in distinct)
    f = count_flops(c, 32, batch_size=3, projected_chapters=sum(distinct) / len(distinct))
    assert f["routing"]["projected_tokens"] == round(
        sum(distinct) / len(distinct) * c.memory.chapter_size / 3
    )


def test_sequence_routing_order_of_modes() -> None:
    f = {
        mode: count_flops(PAPER.replace({"memory.routing": mode}))["forward"]
        for mode in ("sequence", "causal", "token")
    }
    assert f["sequence"] < f["causal"] < f["token"]


def test_factorized_bank_flops() -> None:
    c = PAPER.replace({"memory.bank_type": "factorized", "memory.bank_rank": 128})
    t, ref = mem_terms(c), mem_terms(PAPER)
    assert t["reconstruct"] == 2 * (K + 1) * T * 128 * D
    assert "reconstruct" not in ref
    assert sum(t.values()) - sum(ref.values()) == t["reconstruct"]


def test_reduced_bank_flops() -> None:
    r, n_sel = 384, (K + 1) * T
    c = PAPER.replace({"memory.bank_type": "reduced", "memory.bank_dim": r})
    t = mem_terms(c)
    kv = 12 * (r // 12)
    assert t["memory_attention.q_proj"] == 2 * L * D * r
    assert t["memory_attention.o_proj"] == 2 * L * r * D
    assert t["memory_attention.k_proj"] == 2 * n_sel * r * kv
    assert t["memory_attention.matmul"] == 4 * L * n_sel * r
    assert t["memory_attention.softmax"] == 12 * L * n_sel * 7
    assert t["preprocess.weighting"] == n_sel * r
    assert t["preprocess.rmsnorm"] == n_sel * (4 * r + 4)
    assert t["norm"] == L * (4 * D + 4)  # the hidden-state norm stays d wide


def test_block_variant_b_flops() -> None:
    c = PAPER.replace({"memory.block_variant": "B"})
    a, b = mem_parts(PAPER), mem_parts(c)
    assert b["mlp"] == 3 * 2 * L * D * FF + 5 * L * FF + L * (4 * D + 4) + L * D
    assert {k: v for k, v in b.items() if k != "mlp"} == a


# ------------------------------------------------------------------------------------------------
# Iso-FLOP and MFU
# ------------------------------------------------------------------------------------------------


def test_isoflop_paper() -> None:
    iso = isoflop("paper-moc")
    assert iso["dense_layers"] == 22
    assert iso["moc_forward"] == 459_171_802_488
    assert iso["dense_forward"] == 22 * LAYER + HEAD
    assert iso["mismatch"] == pytest.approx(0.0038, abs=5e-5)
    # Neither neighbour depth is closer.
    for n in (21, 23):
        assert abs(n * LAYER + HEAD - iso["moc_forward"]) > abs(iso["dense_forward"] - iso["moc_forward"])
    # The paper's 24-layer baseline costs about 8% more than MoC.
    assert pytest.approx(0.0797, abs=5e-4) == (495_763_542_016 - 459_171_802_488) / 459_171_802_488


def test_isoflop_config_is_a_dense_model_of_that_depth() -> None:
    d = isoflop_config(PAPER)
    assert not d.memory.enabled and d.memory_layers == []
    assert d.model.n_layers == 22
    assert d.model.d_model == PAPER.model.d_model and d.model.d_ff == PAPER.model.d_ff
    assert count_flops(d)["forward"] == isoflop(PAPER)["dense_forward"]
    assert isoflop("paper-dense-iso") == {
        "seq_len": 1024,
        "batch_size": 1,
        "moc_forward": 495_763_542_016,
        "dense_layers": 24,
        "dense_forward": 495_763_542_016,
        "mismatch": 0.0,
        "layer_forward": LAYER,
    }


def test_mfu_reproduces_spec_anchors() -> None:
    # The authors' published measurements: their code on one H100, sequences of 1024 tokens.
    assert round(100 * mfu(41_000, "paper-moc", 1024), 1) == 5.6
    assert round(100 * mfu(52_100, "paper-dense-iso", 1024), 1) == 7.7
    assert round(100 * mfu(38_900, "paper-moc", 1024), 1) == 5.3
    assert training_flops_per_token(PAPER, 1024) == 3 * 459_171_802_488 / 1024
    assert mfu(1000, PAPER, 1024, peak_flops=1e12) == pytest.approx(1000 * 3 * 459_171_802_488 / 1024 / 1e12)
    with pytest.raises(ValueError, match="peak_flops"):
        mfu(1000, PAPER, 1024, peak_flops=0)


def test_every_count_uses_the_sequence_length_it_is_given() -> None:
    """Counts at seq_len 256 differ from the preset's 1024: each entry point must pass it on."""
    moc_256 = count_flops(PAPER, 256)["forward"]
    assert moc_256 != count_flops(PAPER)["forward"]
    assert forward_flops(PAPER, 256) == moc_256
    assert training_flops_per_token(PAPER, 256) == 3 * moc_256 / 256
    assert mfu(1000, PAPER, 256, peak_flops=1e12) == pytest.approx(1000 * 3 * moc_256 / 256 / 1e12)
    iso = isoflop(PAPER, 256)
    assert iso["seq_len"] == 256 and iso["moc_forward"] == moc_256
    assert iso["dense_forward"] == count_flops(isoflop_config(PAPER, 256), 256)["forward"]
    # at batch 4 the MoC model projects fewer distinct chapters per sequence: a cheaper forward
    assert isoflop(PAPER, 256, 4)["moc_forward"] == count_flops(PAPER, 256, 4)["forward"] < moc_256
    assert isoflop_config(PAPER, 256, 4).model.n_layers == isoflop(PAPER, 256, 4)["dense_layers"]


@pytest.mark.parametrize("preset", ["paper-moc", "tiny-moc"])
@pytest.mark.parametrize("seq_len", [64, 256, 1000])
def test_isoflop_depth_is_the_nearest(preset: str, seq_len: int) -> None:
    """No other depth is nearer the MoC model's forward FLOPs (ties to the shallower one)."""
    iso = isoflop(preset, seq_len)
    n, target = iso["dense_layers"], iso["moc_forward"]
    gap = abs(iso["dense_forward"] - target)
    dense = isoflop_config(preset, seq_len)
    for other in (d for d in range(1, 3 * n + 3) if d != n):
        gap_other = abs(count_flops(dense.replace({"model.n_layers": other}), seq_len)["forward"] - target)
        assert gap_other > gap or (gap_other == gap and other > n), (other, n)


def test_isoflop_rounds_half_a_layer_down_and_never_to_zero_layers() -> None:
    tiny = moc.load_config("tiny-moc", ["memory.enabled=false"])
    # a dense model is its own iso-FLOP model, even with a single layer
    one = tiny.replace({"model.n_layers": 1})
    assert isoflop(one)["dense_layers"] == 1 and isoflop(one)["mismatch"] == 0.0
    assert isoflop(tiny)["dense_layers"] == tiny.model.n_layers


def test_report_names_its_terms() -> None:
    """The breakdown's names are part of the output (``moc flops --json``, the docs' tables)."""
    r = count_flops(PAPER, 1024, 2)
    assert (r["config"], r["seq_len"], r["batch_size"]) == ("paper-moc", 1024, 2)
    assert set(r["breakdown"]) == {"layer", "memory_layer", "head"}
    assert list(r["breakdown"]["layer"]["terms"]) == [
        "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "attention.matmul",
        "attention.softmax", "rope", "norm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
        "mlp.activation", "residual",
    ]  # fmt: skip
    assert list(r["breakdown"]["layer"]["parts"]) == ["attention", "rope", "norm", "mlp", "residual"]
    assert list(r["breakdown"]["head"]["terms"]) == ["norm", "lm_head", "cross_entropy"]
    assert set(count_flops("tiny-dense")["breakdown"]) == {"layer", "head"}


def test_argument_checks() -> None:
    assert count_flops("tiny-moc", 1)["seq_len"] == 1  # one token is a valid sequence
    for bad in (True, 0, 1.5):
        with pytest.raises(ValueError, match="batch_size"):
            count_flops("tiny-moc", 16, bad)
    assert mfu(0, PAPER, 1024) == 0.0  # an idle step is 0% MFU, not an error
    with pytest.raises(ValueError, match="tokens_per_second >= 0"):
        mfu(-1, PAPER, 1024)
    per_token = training_flops_per_token(PAPER, 1024)
    assert mfu(1000, PAPER, 1024, peak_flops=0.5) == pytest.approx(2000 * per_token)
    n_chapters = PAPER.memory.n_chapters
    whole = count_flops(PAPER, 1024, 1, projected_chapters=n_chapters)  # every chapter projected: allowed
    one = count_flops(PAPER, 1024, 1, projected_chapters=1.0)  # a single (shared) chapter: allowed
    assert one["forward"] < whole["forward"]
    assert count_flops(PAPER, 1024, 1, projected_chapters=0.5)["forward"] < one["forward"]
    for bad in (0, -1, n_chapters + 1):
        with pytest.raises(ValueError, match="projected_chapters"):
            count_flops(PAPER, 1024, 1, projected_chapters=bad)
    with pytest.raises(ValueError, match="k >= 1, got 0"):
        ceil_log2(0)


def test_defaults_count_one_sequence_per_micro_batch() -> None:
    """Called without a batch size, every count is the paper's (batch 1)."""
    from moc.accounting.flops import memory_layer_terms, routing_geometry

    c = moc.load_config("paper-moc", ["memory.routing=causal"])
    assert memory_layer_terms(c, 1024) == memory_layer_terms(c, 1024, 1) != memory_layer_terms(c, 1024, 4)
    assert routing_geometry(c, 1024) == routing_geometry(c, 1024, 1) != routing_geometry(c, 1024, 4)
    assert isoflop_config(c, 1024) == isoflop_config(c, 1024, 1)
    assert isoflop_config(c, 1024).model.n_layers != isoflop_config(c, 1024, 16).model.n_layers


def test_parameter_counts_of_a_model_with_one_memory_layer_and_without_memory() -> None:
    dense = count_params("tiny-dense")
    assert dense["bank"] == 0 and dense["memory_layers"] == 0 and dense["total"] == dense["backbone"]
    assert n_banks(moc.load_config("tiny-dense")) == 0
    one = moc.load_config("tiny-moc", ["memory.layers=[1]", "memory.bank_sharing=per_layer"])
    assert n_banks(one) == 1
    assert count_params(one)["bank"] == bank_params(one) > 0
