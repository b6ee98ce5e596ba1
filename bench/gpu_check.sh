#!/usr/bin/env bash
# Every check that needs a GPU, in one prepared run (`make gpu-check`; planned to take under 8 minutes
# on one H100 or H200). From the repository root on a CUDA machine with PyTorch and Triton installed
# (no network needed: the package is installed with `pip install --no-deps --no-build-isolation -e .`):
#
#     bash bench/gpu_check.sh [OUT_DIR]        # OUT_DIR default: $OUT, else bench/gpu_check_out
#
# 1. install: the package, offline (a dry run of the same pip command with DRY_RUN=1);
# 2. tests: the CUDA-marked tests (`pytest -m cuda`: the Triton kernels against the independent float64
#    read in fp32, bf16 and fp16, FlexAttention gradients on packed documents);
# 3. kernel: the read at the paper's shapes for token, causal and sequence tiles, with pass/fail
#    tolerances, bit-identical backward and the K/V bytes each forward layout loads, then the
#    training-step benchmark through the training path (packed position ids) for MoC causal / token /
#    sequence, the dense backbone and the iso-FLOP dense model, naming the read path each row used; the
#    table goes to bench/RESULTS.md (date, card, versions, command);
# 4. decode: the generation benchmark, MoC against its iso-FLOP dense model;
# 5. determinism: two token-routed training runs through the Triton kernels give bit-identical weights.
#
# Each part logs to OUT_DIR/NAME.log; the script goes on after a failure and exits 1 naming every part
# that failed (2 if it could not start). DRY_RUN=1 runs the same script end to end on a CPU at tiny
# shapes under Triton's interpreter (tests/test_gpu_check.py runs it in `make test`).
set -u
out="${1:-${OUT:-bench/gpu_check_out}}"
mkdir -p "$out"
rm -f "$out/device.txt"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
dry="${DRY_RUN:-0}"
results="${RESULTS:-bench/RESULTS.md}"

if [ "$dry" = 1 ]; then
  export TRITON_INTERPRET=1 OMP_NUM_THREADS=1
  device=cpu dtype=float32
  tiny=(memory.n_tokens=256 memory.n_chapters=16 memory.causal_chunk_size=4 model.n_layers=2 "memory.layers=[1]")
  model=(--preset tiny-moc)
  for o in "${tiny[@]}"; do model+=(--set "$o"); done
  shape=(--batch 1 --seq-len 8 --packed 4 --steps 1 --warmup 0 --timing-repeats 0)
  decode=(--preset tiny-moc --batch 1 --prompt-len 4 --new-tokens 2 --warmup 0 --repeats 1)
  install=(--dry-run)
  results="${RESULTS:-$out/RESULTS.md}"
else
  device=cuda dtype=bfloat16
  model=(--preset paper-moc)
  shape=(--batch 16 --seq-len 1024 --packed 1024 --steps 5 --warmup 2)
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

part() {  # part NAME TIMEOUT_S COMMAND...: run it, log to OUT_DIR/NAME.log, remember a failure
  local name=$1 limit_s=$2
  shift 2
  echo "== $name: $*"
  local t0=$SECONDS
  if timeout "$limit_s" "$@" >"$out/$name.log" 2>&1; then
    echo "   ok ($((SECONDS - t0)) s)"
  else
    echo "   FAILED ($((SECONDS - t0)) s); the end of $out/$name.log:"
    tail -20 "$out/$name.log"
    failed+=("$name")
  fi
}

part install 120 "$py" -m pip install -q --no-deps --no-build-isolation --no-index "${install[@]}" -e .
part tests 150 "$py" -m pytest -m cuda -p no:cacheprovider tests
part kernel 330 "$py" bench/train_step.py "${model[@]}" --device "$device" --dtype "$dtype" "${shape[@]}" \
  --check-kernel --out "$results"
part decode 120 "$py" bench/decode.py "${decode[@]}" --device "$device" --dtype "$dtype"
part determinism 120 "$py" - "$device" "${tiny[@]}" <<'EOF'
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

[ -f "$results" ] && [ "$results" != "$out/RESULTS.md" ] && cp "$results" "$out/RESULTS.md"
if ((${#failed[@]})); then
  echo "gpu_check: FAILED: ${failed[*]} (logs in $out)"
  exit 1
fi
echo "gpu_check: all parts passed (logs in $out; results in $results)"
