"""The chapter router's decisions (moc.model.router.ChapterRouter.decide) against its plain forward and
the readable loss definitions, with either router head."""

from __future__ import annotations

import pytest
import torch

import moc
from moc.kernels import cpu_build, cpu_router
from moc.model.router import ChapterRouter, router_losses, routing_entropy

DT = torch.float64
HEADS = ["auto", "torch"]  # memory.kernel: auto runs the router head's C kernels on the CPU


@pytest.mark.parametrize("kernel", HEADS)
def test_decide_matches_the_router_forward_and_its_losses(kernel: str) -> None:
    cfg = moc.load_config("tiny-moc", ["memory.n_shared_chapters=2", "memory.top_k=3"]).memory
    torch.manual_seed(0)
    router = ChapterRouter(16, cfg).double()
    summary, valid = torch.randn(2, 5, 16, dtype=DT), torch.rand(2, 5) > 0.2
    dec = router.decide(summary, valid, layer=4, kernel=kernel)
    idx, w, logits, probs = router(summary)
    lb, z, counts = router_losses(logits, probs, idx, valid, 2)
    torch.testing.assert_close(dec.indices, idx)
    torch.testing.assert_close(dec.weights, w)
    torch.testing.assert_close(dec.aux, cfg.load_balance_coef * lb + cfg.z_loss_coef * z)
    torch.testing.assert_close(dec.info.chapter_counts, counts)
    assert dec.info.layer == 4
    assert dec.info.entropy == pytest.approx(float(routing_entropy(probs.detach(), valid)), rel=1e-6)  # fp32


def test_decide_with_disabled_chapters_never_picks_them() -> None:
    cfg = moc.load_config("tiny-moc", ["memory.top_k=2"]).memory
    router = ChapterRouter(16, cfg)
    router.disabled[torch.tensor([0, 3, 4, 5])] = True  # the shared chapter and three routed ones
    dec = router.decide(torch.randn(3, 7, 16), torch.ones(3, 7, dtype=torch.bool), layer=1)
    assert not torch.isin(dec.indices, torch.tensor([0, 3, 4, 5])).any()
    torch.testing.assert_close(dec.weights.sum(-1), torch.ones(3, 7))




def test_decide_runs_the_c_kernels_on_the_cpu_unless_told_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    if not cpu_build.has_compiler():
        pytest.skip("no C compiler to build the CPU kernels")
    calls = []
    run = cpu_router.forward_from_linear
    monkeypatch.setattr(cpu_router, "forward_from_linear", lambda *a: calls.append(1) or run(*a))
    router = ChapterRouter(16, moc.load_config("tiny-moc").memory)
    summary, valid = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    auto, torch_head = (router.decide(summary, valid, 1, kernel) for kernel in ("auto", "torch"))
    assert len(calls) == 1
    assert torch.equal(auto.indices, torch_head.indices)
    torch.testing.assert_close(auto.weights, torch_head.weights)


@pytest.mark.parametrize(("chapters", "runs_c"), [(32, False), (256, True)])
def test_compiled_the_c_kernels_run_large_routers_only(
    monkeypatch: pytest.MonkeyPatch, chapters: int, runs_c: bool
) -> None:
    """Under torch.compile the fused PyTorch head is the faster one for small routers (see
    COMPILED_C_HEAD_MIN_CHAPTERS): the choice is made while tracing, and the results agree either way."""
    if not cpu_build.has_compiler():
        pytest.skip("no C compiler to build the CPU kernels")
    calls = []
    run = cpu_router.forward_from_linear
    monkeypatch.setattr(cpu_router, "forward_from_linear", lambda *a: calls.append(1) or run(*a))
    cfg = moc.load_config("tiny-moc", [f"memory.n_chapters={chapters}", f"memory.n_tokens={chapters * 4}"])
    router = ChapterRouter(8, cfg.memory)
    summary, valid = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    compiled = torch.compile(lambda s: router.decide(s, valid, 1).weights, fullgraph=True)(summary)
    assert bool(calls) == runs_c
    torch.testing.assert_close(compiled, router.decide(summary, valid, 1, "torch").weights)
