#!/usr/bin/env bash
# Every check that needs a GPU, in one prepared run (`make gpu-check`): at most 540 s on one H100 or
# H200, by budgets this script enforces. From the repository root on a CUDA machine with PyTorch and
# Triton installed (no network needed: the package is installed with `pip install --no-deps
# --no-build-isolation -e .`):
#
#     bash bench/gpu_check.sh [OUT_DIR]        # OUT_DIR default: $OUT, else bench/gpu_check_out (ignored by git)
#
# The parts, most important first (each with its own limit, and none past the overall deadline):
# 1. counted: the read's temporaries and bytes moved at the paper's shapes against a lower bound, and
#    the roofline PREDICTION of the training step's MFU (moc.kernels.traffic, bench/roofline.py; CPU);
# 2. negative: the kernel check's negative control: zeroed outputs and gradients must fail it (and the
#    kernel check below reports, for each output and gradient, that zeroing it alone would fail);
# 3. kernel: the read at the paper's shapes for token, causal and sequence tiles against the PyTorch
#    path in fp32: errors relative to the reference's own scale, router-like weights, every output and
#    gradient, bit-identical backward, the K/V bytes each forward layout loads;
# 4. tests: the CUDA-marked tests (`pytest -m cuda`: the Triton kernels against the independent float64
#    read in fp32, bf16 and fp16, FlexAttention gradients on packed documents);
# 5. determinism: two token-routed training runs through the Triton kernels give bit-identical weights;
# 6. bench: the training-step benchmark through the training path (packed position ids) for MoC causal /
#    token / sequence, the dense backbone and the iso-FLOP dense model (table to OUT_DIR/RESULTS.md);
# 7. decode: the generation benchmark, MoC against its iso-FLOP dense model;
# and install (the package, offline) before them all.
#
# Each part logs to OUT_DIR/NAME.log; the script goes on after a failure, always prints the summary
# (also on an interrupt) and exits 1 naming every part that failed or was skipped for lack of time
# (2 if it could not start). DRY_RUN=1 runs the same script end to end on a CPU at tiny shapes under
# Triton's interpreter (tests/test_gpu_check.py runs it in `make test`).
set -u
out="${1:-${OUT:-bench/gpu_check_out}}"
deadline=$((SECONDS + ${BUDGET_S:-540}))
mkdir -p "$out"
rm -f "$out/device.txt"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
dry="${DRY_RUN:-0}"
results="${RESULTS:-$out/RESULTS.md}"

if [ "$dry" = 1 ]; then
  export TRITON_INTERPRET=1 OMP_NUM_THREADS=1
  device=cpu dtype=float32
  tiny=(memory.n_tokens=256 memory.n_chapters=16 memory.causal_chunk_size=4 model.n_layers=2 "memory.layers=[1]")
  model=(--preset tiny-moc)
  for o in "${tiny[@]}"; do model+=(--set "$o"); done
  shape=(--batch 1 --seq-len 8 --packed 4 --steps 1 --warmup 0 --timing-repeats 0)
  decode=(--preset tiny-moc --batch 1 --prompt-len 4 --new-tokens 2 --warmup 0 --repeats 1)
  install=(--dry-run)
else
  device=cuda dtype=bfloat16
  model=(--preset paper-moc)
  shape=(--batch 16 --seq-len 1024 --packed 1024 --steps 3 --warmup 1)
  decode=(--preset paper-moc --batch 16 --prompt-len 512 --new-tokens 128)
  install=()
  tiny=()
  if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: needs a CUDA GPU visible to PyTorch ($py); DRY_RUN=1 checks the script on a CPU" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/device.txt" 2>&1
fi
"$py" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' >>"$out/device.txt" \
  || { echo "gpu_check: PyTorch and Triton must both import in $py" >&2; exit 2; }
cat "$out/device.txt"
failed=()
passed=()

summary() {
  echo "== summary (${SECONDS} s): passed: ${passed[*]:-none}"
  if ((${#failed[@]})); then
    echo "gpu_check: FAILED: ${failed[*]} (logs in $out)"
  else
    echo "gpu_check: all parts passed (logs in $out; results in $results)"
  fi
}
trap 'summary; trap - EXIT' EXIT
trap 'failed+=("interrupted"); exit 1' INT TERM

part() {  # part NAME LIMIT_S COMMAND...: run it within its limit and the deadline, log to OUT_DIR/NAME.log
  local name=$1 limit_s=$2
  shift 2
  local left=$((deadline - SECONDS))
  ((left < limit_s)) && limit_s=$left
  if ((limit_s < 10)); then
    echo "== $name: SKIPPED (the ${BUDGET_S:-540} s budget is spent)"
    failed+=("$name(no time)")
    return
  fi
  echo "== $name (limit ${limit_s} s): $*"
  local t0=$SECONDS
  if timeout "$limit_s" "$@" >"$out/$name.log" 2>&1; then
    echo "   ok ($((SECONDS - t0)) s)"
    passed+=("$name")
  else
    echo "   FAILED ($((SECONDS - t0)) s); the end of $out/$name.log:"
    tail -20 "$out/$name.log"
    failed+=("$name")
  fi
}

part install 60 "$py" -m pip install -q --no-deps --no-build-isolation --no-index "${install[@]}" -e .
# the counted targets must hold; the roofline prints its prediction against the MFU targets
part counted 90 "$py" bench/roofline.py --counted
# it must fail, and for the zeroed tensors (not for a crash): each is named in the failure
part negative 60 bash -c 'log=$("$@" --corrupt out --corrupt dq --corrupt dk --corrupt dv --corrupt dw 2>&1) \
  && { echo "the kernel check PASSED with zeroed outputs and gradients"; exit 1; }
  echo "$log" | tail -1
  for x in grouped_out tiles_out dq dk dv dw; do echo "$log" | grep -q "kernel check FAILED.*token $x error" || exit 1; done
  echo "negative control: zeroed out, dq, dk, dv, dw each fail the kernel check, as they must"' _ \
  "$py" bench/train_step.py "${model[@]}" --device "$device" --dtype "$dtype" "${shape[@]}" \
  --check-kernel --check-only --timing-repeats 0
part kernel 120 "$py" bench/train_step.py "${model[@]}" --device "$device" --dtype "$dtype" "${shape[@]}" \
  --check-kernel --check-only
part tests 90 "$py" -m pytest -m cuda -p no:cacheprovider tests
part determinism 60 "$py" - "$device" "${tiny[@]}" <<'EOF'
import sys

import torch

import moc

device, overrides = sys.argv[1], sys.argv[2:]


def train(seed: int = 0) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    cfg = moc.load_config("tiny-moc", ["memory.routing=token", "memory.kernel=triton", *overrides])
    model = moc.build_model(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator(device=device).manual_seed(seed)
    for _ in range(2):
        ids = torch.randint(0, cfg.model.vocab_size, (2, 17), device=device, generator=g)
        out = model(ids[:, :-1], labels=ids[:, 1:], shift_labels=False)
        (out.loss + out.aux_loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in model.parameters()]


same = all(torch.equal(a, b) for a, b in zip(train(), train(), strict=True))
print("two training runs bit-identical:", same)
raise SystemExit(0 if same else 1)
EOF
part bench 120 "$py" bench/train_step.py "${model[@]}" --device "$device" --dtype "$dtype" "${shape[@]}" \
  --out "$results"
part decode 60 "$py" bench/decode.py "${decode[@]}" --device "$device" --dtype "$dtype"

((${#failed[@]})) && exit 1
exit 0
