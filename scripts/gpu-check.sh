#!/usr/bin/env bash
# The GPU session on a CUDA machine, from binaries packed by
#   ../shared/tools/pack-for-device.sh --release --features cuda --bin lrnnx --test device_parity --test mamba_scan_gpu
# (device tool: carry [".device"], command `bash scripts/gpu-check.sh`). Writes its
# reports under $OUT (default ./gpu-out): parity, conformance, bench, training
# CPU vs GPU (f32, bf16), greedy generation CPU vs GPU from the GPU-trained model.
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
R=.device/run.sh
nvidia-smi -L | tee "$OUT/gpu.txt"
par=$(cd .device && ls device_parity-* | sed 's/\.xz$//' | head -1)
step() { local name=$1 limit=$2; shift 2; echo "== $name: $*"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; echo "   exit $? in $((SECONDS - t0)) s"; tail -4 "$OUT/$name.txt"; }
# PART=1: parity, conformance, bench; PART=2: training and generation (the default job);
# PART=3: training with --mixers Mamba,attn,RGLRU,mLSTM on GPU and CPU, f32 and bf16; default 1 and 2.
PART=${PART:-all}
if [ "$PART" = 1 ] || [ "$PART" = all ]; then
step parity 240 $R "$par" --test-threads 1 --nocapture
scan=$(cd .device && ls mamba_scan_gpu-* | sed 's/\.xz$//' | head -1)
step mamba-scan 120 $R "$scan" --nocapture
step conformance 120 $R lrnnx conformance --device cuda tests/data/lrnnx
step bench 300 $R lrnnx bench --device cuda --dtype f32,bf16 --reps 5 --json "$OUT/bench.json"
fi
[ "$PART" = 1 ] && exit 0
if [ "$PART" = 3 ]; then
  for dev in cuda cpu; do for dt in f32 bf16; do
    step "train-mabr-$dev-$dt" 200 $R lrnnx train --device $dev --dtype $dt --steps 60 --mixers Mamba,attn,RGLRU,mLSTM --out "/tmp/mabr-$dev-$dt" --quiet
  done; done
  exit 0
fi
mix=LRU,S4,S4D,S5,Centaurus,Mamba,RGLRU,S7,attn,mLSTM
kw='{"attn": {"num_heads": 4, "causal": true, "rotary_emb_dim": 16}, "S5": {"discretization": "zoh"}, "Centaurus": {"sub_state_dim": 2}}' 
for dev in cuda cpu; do for dt in f32 bf16; do
  step "train-$dev-$dt" 90 $R lrnnx train --device $dev --dtype $dt --steps 100 --mixers LRU,attn,LRU,attn --out "/tmp/run-$dev-$dt" --quiet
done; done
step train-every-mixer-cuda 150 $R lrnnx train --device cuda --steps 60 --mixers $mix --mixer-kwargs "$kw" --out /tmp/run-all --quiet
for dev in cuda cpu; do
  step "greedy-$dev" 60 $R lrnnx generate --model /tmp/run-cuda-f32 --device $dev --temperature 0 --max-tokens 120 --prompt "The "
done
cmp -s <(head -1 "$OUT/greedy-cuda.txt") <(head -1 "$OUT/greedy-cpu.txt") && echo "greedy CPU == GPU" || { echo "greedy CPU != GPU"; diff "$OUT/greedy-cuda.txt" "$OUT/greedy-cpu.txt" | head; }
