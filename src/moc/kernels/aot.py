"""The read's Triton kernels compiled ahead of time for named GPUs, without a GPU.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` runs Triton's whole pipeline down
to a cubin with the ptxas bundled in Triton's wheel; ``ptxas -v`` on the same PTX then reports
registers and spilled bytes, and Triton's metadata the shared memory a launch asks for. So every
kernel x autotune config x dtype x target can be checked on a CPU machine: it must compile, spill 0
bytes, and fit the target's shared memory per block (A100 163 KiB, H100 227 KiB).

Each variant is specialised as Triton's JIT would specialise it at the paper's shapes (hd 64 or 128,
chapters of 64, 12 heads, 1 shared + top-64 of 4,097 chapters, 16 x 1,024 tokens; causal chunks of
64): integer arguments equal to 1 become constants and pointers and integers divisible by 16 carry
that hint, so the code compiled here is the code the GPU would run.

    python -m moc.kernels.aot               # the full matrix as a markdown table
    python -m moc.kernels.aot --fast        # the subset tests/kernels/test_aot.py runs
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass

TARGETS = {"sm_80": 80, "sm_90a": 90}
SHARED_LIMIT = {"sm_80": 163 * 1024, "sm_90a": 227 * 1024}  # max shared memory per block (opt-in)
CARD = {"sm_80": "A100", "sm_90a": "H100"}
DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


@dataclass(frozen=True)
class Variant:
    """One compilation: a kernel, its constants and argument values, a config, a dtype, a target."""

    kernel: str
    target: str
    dtype: str
    head_dim: int
    num_warps: int
    num_stages: int
    detail: str = ""  # e.g. the weighting of the backward


@dataclass(frozen=True)
class Compiled:
    variant: Variant
    registers: int
    spill_bytes: int  # spill stores + spill loads
    shared_bytes: int
    seconds: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return (
            not self.error
            and self.spill_bytes == 0
            and self.shared_bytes <= SHARED_LIMIT[self.variant.target]
        )


def missing() -> str | None:
    """Why the check cannot run here (None: it can): Triton or its bundled ptxas missing."""
    try:
        import triton
    except ImportError as e:
        return f"Triton is not installed ({e})"
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = max((get_ptxas(arch).path for arch in TARGETS.values()), key=lambda p: not os.path.exists(p))
    except Exception as e:  # noqa: BLE001 - any failure to locate the tool means: no ptxas
        return f"Triton's ptxas is not available ({type(e).__name__}: {e})"
    if not path or not os.path.exists(path):
        return f"Triton's ptxas is not available (looked for {path!r}; Triton {triton.__version__})"
    return None


def _paper_args(kernel: str, dtype: str, hd: int, detail: str) -> tuple[dict[str, object], dict[str, str]]:
    """The kernel's arguments at the paper's shapes: (values, pointer element types).

    Values: ints and floats as the launcher passes them, constexprs as themselves. Pointers are given
    by their element type and left out of the values."""
    from moc.kernels import triton_read as tr

    H = Hkv = 12
    Qt_tok, Qt_causal, T, n, D = 1, 64, 64, 65, 16 * 1024
    dt = DTYPES[dtype]
    part = {"bfloat16": "bf16"}.get(dtype, "fp32")
    q_strides = {"stride_qd": Qt_tok * H * hd, "stride_qt": H * hd, "stride_qh": hd}
    k_strides = {"stride_ku": T * Hkv * hd, "stride_kt": Hkv * hd, "stride_kh": hd}
    blocks = {
        "T": T,
        "HEAD_DIM": hd,
        "BLOCK_T": 64,
        "BLOCK_D": hd,
        "PRECISION": "tf32" if dt != "fp32" else "ieee",
    }
    if kernel == "_grouped_fwd":
        ptrs = dict(Q=dt, K=dt, V=dt, PAIRS="i32", SEG="i32", WORK_CH="i32", WORK_ROW="i32",
                    A="fp32", BIAS="fp32", C="fp32", OP=part, LSEP="fp32")  # fmt: skip
        hg = tr.heads_per_group(tr.forward_group_bytes(D * n, Qt_tok, 1, hd, _torch_dtype(dtype)), Hkv)
        vals = {**q_strides, **k_strides, "n_queries": Qt_tok, "n_sel": n, "group": 1, "head0": 0,
                "n_group_heads": hg, "scale": hd**-0.5, **blocks, "BLOCK_M": tr.BLOCK_M_FWD,
                "ITEM_BLOCKS": tr.ITEM_BLOCKS}  # fmt: skip
    elif kernel == "_merge":
        ptrs = dict(OP=part, LSEP="fp32", O=dt, LSE="fp32")
        vals = {"stride_od": H * hd, "stride_ot": H * hd, "stride_oh": hd, "n_queries": Qt_tok, "n_sel": n,
                "head0": 0, "n_group_heads": 5, "n_heads": H,
                "HEAD_DIM": hd, "BLOCK_R": 16, "BLOCK_D": hd}  # fmt: skip
    elif kernel == "_tiles_fwd":
        ptrs = dict(Q=dt, K=dt, V=dt, IDX="i32", A="fp32", BIAS="fp32", C="fp32", O=dt, LSE="fp32")
        vals = {"stride_qd": Qt_causal * H * hd, "stride_qt": H * hd, "stride_qh": hd, **k_strides,
                "n_queries": Qt_causal, "n_sel": n, "group": 1, "n_heads": H, "scale": hd**-0.5,
                **blocks, "BLOCK_Q": 64}  # fmt: skip
    elif kernel == "_grouped_bwd":
        ptrs = dict(Q=dt, K=dt, V=dt, DO=dt, LSE="fp32", DELTA="fp32", PAIRS="i32", SEG="i32",
                    WORK_CH="i32", WORK_ROW="i32", WORK_SLOT="i32", A="fp32", BIAS="fp32", C="fp32",
                    DK=dt, DV=dt, DKS="fp32", DVS="fp32", DQP=part, DWP="fp32")  # fmt: skip
        vals = {**q_strides, **k_strides, "n_queries": Qt_tok, "n_sel": n, "group": 1, "n_heads": H,
                "n_kv_heads": Hkv, "kv0": 0, "n_group_kv": 4, "scale": hd**-0.5, **blocks,
                "BLOCK_M": tr.BLOCK_M_BWD, "ITEM_BLOCKS": tr.BLOCK_M_FWD * tr.ITEM_BLOCKS // tr.BLOCK_M_BWD,
                "WEIGHTING": detail or "kv"}  # fmt: skip
    elif kernel == "_finish_kv":
        ptrs = dict(DK=dt, DV=dt, DKS="fp32", DVS="fp32", WORK_START="i32", SLOT_START="i32")
        vals = {"kv0": 0, "n_group_kv": 4, "n_kv_heads": Hkv, "T": T, "HEAD_DIM": hd, "BLOCK": 1024}
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    return vals, ptrs


def _torch_dtype(name: str) -> object:
    import torch

    return getattr(torch, name)


def _specialise(fn: object, vals: dict[str, object], ptrs: dict[str, str]) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) as Triton's JIT specialises these arguments."""
    import triton.language as tl

    names = fn.arg_names  # type: ignore[attr-defined]
    constexpr_params = {p.name for p in fn.params if p.is_constexpr}  # type: ignore[attr-defined]
    sig: dict[str, str] = {}
    const: dict[str, object] = {}
    attrs: dict[tuple[int, ...], list[list[object]]] = {}
    for i, name in enumerate(names):
        if name in ptrs:
            sig[name] = "*" + ptrs[name]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch's allocations are 16-byte aligned
            continue
        if name not in vals:
            raise ValueError(f"{fn.__name__}: no value for argument {name!r}")  # type: ignore[attr-defined]
        value = vals[name]
        if name in constexpr_params:
            sig[name] = "constexpr"
            const[name] = value
        elif isinstance(value, float):
            sig[name] = "fp32"
        elif value == 1:  # the JIT turns an integer 1 into a constant
            sig[name] = "constexpr"
            const[name] = 1
        else:
            sig[name] = "i32"
            if isinstance(value, int) and value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    del tl
    return sig, const, attrs


_PTXAS_LINE = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_SMEM = re.compile(r"(\d+) bytes smem")


def compile_variant(v: Variant) -> Compiled:
    """Compile one variant and measure it (registers, spilled bytes, shared memory)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    from moc.kernels.triton_read import launches

    fn = launches()[v.kernel]
    vals, ptrs = _paper_args(v.kernel, v.dtype, v.head_dim, v.detail)
    sig, const, attrs = _specialise(fn, vals, ptrs)
    t0 = time.perf_counter()
    try:
        k = triton.compile(
            ASTSource(fn, sig, const, attrs),
            target=GPUTarget("cuda", TARGETS[v.target], 32),
            options={"num_warps": v.num_warps, "num_stages": v.num_stages},
        )
        ptx = k.asm["ptx"]
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "k.ptx")
            with open(src, "w") as f:
                f.write(ptx)
            # the ptxas and flags of Triton's own call (backends/nvidia/compiler.py make_cubin), plus -v
            cmd = [get_ptxas(TARGETS[v.target]).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                   f"--gpu-name={v.target}", src, "-o", os.path.join(d, "k.o")]  # fmt: skip
            log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    except Exception as e:  # noqa: BLE001 - a variant that does not compile is a result, not a crash
        msg = " ".join(str(e).split())[:300]
        return Compiled(v, 0, 0, 0, time.perf_counter() - t0, f"{type(e).__name__}: {msg}")
    regs = max(int(m) for m in _PTXAS_LINE.findall(log))
    spills = sum(int(a) + int(b) for a, b in _SPILL.findall(log))
    static_smem = sum(int(m) for m in _SMEM.findall(log))
    return Compiled(v, regs, spills, int(k.metadata.shared) + static_smem, time.perf_counter() - t0)


def variants(fast: bool = False) -> list[Variant]:
    """Every kernel x its autotune configs x dtype x target x head size (64, 128) x weighting.

    ``fast``: the subset for the test suite: the backward (the kernel that once spilled) and the
    grouped forward in bf16 at head size 64, weighting kv, every config, both targets."""
    from moc.kernels.triton_read import CONFIGS

    out = []
    dtypes = ["bfloat16"] if fast else ["float16", "bfloat16"]
    kernels = ["_grouped_bwd", "_grouped_fwd"] if fast else list(CONFIGS)
    for kernel in kernels:
        details = ["kv", "v", "logit"] if kernel == "_grouped_bwd" and not fast else [""]
        for target in TARGETS:
            for dtype in dtypes:
                for hd in [64] if fast else [64, 128]:
                    for warps, stages in CONFIGS[kernel]:
                        for detail in details:
                            out.append(Variant(kernel, target, dtype, hd, warps, stages, detail))
    return out


def table(results: Iterable[Compiled]) -> str:
    """A markdown table of compiled variants."""
    lines = [
        "| kernel | target | dtype | hd | warps | stages | weighting | registers | spilled bytes "
        "| shared memory | fits | ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        v = r.variant
        if r.error:
            lines.append(
                f"| {v.kernel} | {v.target} | {v.dtype} | {v.head_dim} | {v.num_warps} | {v.num_stages} | "
                f"{v.detail or '-'} | - | - | - | - | **no: {r.error[:80]}** |"
            )
            continue
        limit = SHARED_LIMIT[v.target]
        lines.append(
            f"| {v.kernel} | {v.target} | {v.dtype} | {v.head_dim} | {v.num_warps} | {v.num_stages} | "
            f"{v.detail or '-'} | {r.registers} | {r.spill_bytes} | {r.shared_bytes / 1024:.1f} KiB | "
            f"{'yes' if r.shared_bytes <= limit else f'no (> {limit // 1024} KiB)'} | "
            f"{'yes' if r.ok else '**no**'} |"
        )
    return "\n".join(lines)


def summary(results: list[Compiled]) -> str:
    """One paragraph: how many compiled, the worst registers, spills and shared memory per target."""
    parts = [f"{len(results)} variants, {sum(r.ok for r in results)} ok"]
    for target in TARGETS:
        rs = [r for r in results if r.variant.target == target and not r.error]
        if rs:
            smem = max(r.shared_bytes for r in rs) / 1024
            parts.append(
                f"{target} ({CARD[target]}): registers <= {max(r.registers for r in rs)}, spilled bytes "
                f"{max(r.spill_bytes for r in rs)}, shared memory <= {smem:.1f} KiB "
                f"of {SHARED_LIMIT[target] // 1024}"
            )
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fast", action="store_true", help="the test suite's subset")
    p.add_argument("--markdown", help="write the table into this markdown file between the AOT markers")
    args = p.parse_args(argv)
    why = missing()
    if why:
        print(f"AOT compile check skipped: {why}")
        return 2
    import triton

    results = []
    for v in variants(args.fast):
        r = compile_variant(v)
        results.append(r)
        print(
            f"{v.kernel:13s} {v.target:6s} {v.dtype:8s} hd {v.head_dim:3d} w{v.num_warps} s{v.num_stages} "
            f"{v.detail or '-':5s} regs {r.registers:3d} spill {r.spill_bytes:5d} smem {r.shared_bytes:6d} "
            f"{'ok' if r.ok else 'FAIL ' + r.error[:100]} ({r.seconds:.1f} s)",
            flush=True,
        )
    text = (
        f"Triton {triton.__version__}, its bundled ptxas; measured by `make aot-table` "
        f"(`python -m moc.kernels.aot --markdown docs/benchmarks.md`).\n\n{summary(results)}.\n\n"
        f"{table(results)}"
    )
    if args.markdown:
        _write_between_markers(args.markdown, text)
    print(summary(results))
    return 0 if all(r.ok for r in results) else 1


BEGIN, END = "<!-- aot-table: begin -->", "<!-- aot-table: end -->"


def _write_between_markers(path: str, text: str) -> None:
    with open(path) as f:
        doc = f.read()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} markers")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as f:
        f.write(f"{head}{BEGIN}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    sys.exit(main())
