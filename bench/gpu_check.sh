#!/usr/bin/env bash
# Everything that needs a GPU, in one prepared run (about 5 minutes on one H100). From the repository root
# on a CUDA machine with PyTorch and Triton installed:
#
#     bash bench/gpu_check.sh [OUT_DIR]        # default: $OUT, else bench/gpu_check_out
#
# 1. the CUDA tests: the Triton kernels against the independent float64 read in fp32, bf16 and fp16
#    (tests/kernels/test_triton_read.py), and the model tests on the GPU where they have a CUDA case;
# 2. the read at the paper's shapes (bench/train_step.py --check-kernel: grouped and per-tile forward,
#    the deterministic backward, max errors against an fp32 reference, times, bit-identical backward),
#    then training-step throughput of the paper's MoC per routing mode against its dense baselines, with
#    position ids as packed training passes them, and the read path each row used (OUT_DIR/RESULTS.md);
# 3. two identical training runs of a token-routed model on the GPU give bit-identical parameters.
#
# Each part writes its log to OUT_DIR and the script goes on after a failure; it exits 1 if any failed.
set -u
out="${1:-${OUT:-bench/gpu_check_out}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: needs a CUDA GPU visible to PyTorch ($py); nothing was run" >&2
  exit 2
fi
"$py" -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 \
  || { echo "gpu_check: pip install -e . failed (see $out/install.log)" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/device.txt" 2>&1
"$py" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' >>"$out/device.txt"
cat "$out/device.txt"
failed=()

part() {  # part NAME TIMEOUT_S COMMAND...: run, log to $out/NAME.log, remember a failure
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*"
  local t0=$SECONDS
  if timeout "$limit" "$@" >"$out/$name.log" 2>&1; then
    echo "   ok ($((SECONDS - t0)) s)"
  else
    echo "   FAILED ($((SECONDS - t0)) s); the end of $out/$name.log:"
    tail -25 "$out/$name.log"
    failed+=("$name")
  fi
}

part tests 150 "$py" -m pytest -q -x tests/kernels tests/model -p no:cacheprovider
part kernel_and_throughput 360 "$py" bench/train_step.py --preset paper-moc --device cuda --dtype bfloat16 \
  --batch 16 --seq-len 1024 --packed 1024 --steps 5 --warmup 2 --check-kernel --out "$out/RESULTS.md"
part determinism 120 "$py" - <<'EOF'
import torch
import moc

def train(seed: int = 0) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    cfg = moc.load_config("tiny-moc", ["memory.routing=token", "memory.kernel=triton"])
    model = moc.build_model(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator(device="cuda").manual_seed(seed)
    for _ in range(3):
        ids = torch.randint(0, cfg.model.vocab_size, (4, 65), device="cuda", generator=g)
        out = model(ids[:, :-1], labels=ids[:, 1:], shift_labels=False)
        (out.loss + out.aux_loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in model.parameters()]

a, b = train(), train()
same = all(torch.equal(x, y) for x, y in zip(a, b))
print("two runs bit-identical:", same)
raise SystemExit(0 if same else 1)
EOF

if ((${#failed[@]})); then
  echo "gpu_check: FAILED: ${failed[*]} (logs in $out)"
  exit 1
fi
echo "gpu_check: all parts passed (logs in $out)"
