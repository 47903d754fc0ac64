#!/usr/bin/env bash
# The CUDA path for real, on a GPU machine: bf16 DDP and FSDP2 steps of GPT-2 small, with
# tokens/s and MFU against the H100's dense bf16 peak (989 TFLOP/s), plus a checkpoint
# stop/resume parity check on the GPU. Usage: bash bench/gpu_check.sh OUTDIR
set -euo pipefail
out=${1:-/tmp/gpu-check}
mkdir -p "$out"
peak=${PEAK_TFLOPS:-989}
run() {  # name, nproc, overrides...
  local name=$1 nproc=$2; shift 2
  local sets=(); for s in "$@"; do sets+=(--set "$s"); done
  [ -n "${KEEP:-}" ] || rm -rf "$out/$name"
  python3 -m hpcorch.cli.main train jobs/gpt2-124m.yaml --nproc "$nproc" --run-dir "$out/$name" \
    --peak-tflops "$peak" "${sets[@]}" 2>&1 | tee -a "$out/$name.log" | grep -E "step|done|resumed|error|Error" | tail -n 4 || true
}
common=(trainer.steps=40 trainer.global_batch=32 trainer.micro_batch=16 trainer.log_interval=10
        trainer.checkpoint.interval=20 trainer.eval_interval=0 trainer.optimizer.warmup_steps=10)
echo "== DDP bf16 compiled"; run ddp 1 "${common[@]}"
echo "== DDP bf16 eager";    run eager 1 "${common[@]}" trainer.compile=false
echo "== FSDP2 bf16 + activation checkpointing"; run fsdp 1 "${common[@]}" trainer.compile=false trainer.sharding=fsdp trainer.activation_checkpointing=true
echo "== DDP + bf16 grad compression";  run bf16c 1 "${common[@]}" trainer.compile=false trainer.grad_compression=bf16
echo "== DDP + PowerSGD"; run psgd 1 "${common[@]}" trainer.compile=false trainer.grad_compression=powersgd
echo "== async checkpoint"; run async 1 "${common[@]}" trainer.compile=false trainer.checkpoint.async_save=true
echo "== SIGKILL in the middle of the step-20 checkpoint, then resume (compare with eager)"
HPCORCH_CRASH_IN_SAVE=20 run crash 1 "${common[@]}" trainer.compile=false
KEEP=1 run crash 1 "${common[@]}" trainer.compile=false
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def summary(n): return json.load(open(f"{out}/{n}/summary.json"))
for n in ["ddp", "eager", "fsdp", "bf16c", "psgd", "async"]:
    try:
        recs = [json.loads(l) for l in open(f"{out}/{n}/metrics.jsonl")][5:]
        tps = sorted(r["tokens_per_s"] for r in recs)[len(recs) // 2]
        mfu = sorted(r["mfu"] for r in recs)[len(recs) // 2]
        s = summary(n)
        print(f"{n:6s} median tokens/s {tps:10.0f}  MFU {mfu * 100:5.1f}%  final loss {s['final_loss']:.4f}  max mem {recs[-1]['max_mem_mb']:.0f} MB")
    except Exception as exc:
        print(f"{n:6s} FAILED: {exc}")
a, b = summary("eager"), summary("crash")
print("crash+resume vs uninterrupted: weights equal:", a["weights_sha256"] == b["weights_sha256"],
      "| final loss", a["final_loss"], b["final_loss"], "| restarts", b["restarts"], "recomputed", b["steps_recomputed"])
PY
