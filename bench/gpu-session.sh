#!/usr/bin/env bash
# What a GPU session measures, in device calls of under ten minutes each (run from the project root on the
# GPU machine, with .device/ carried as ../shared/device/README.md says; results under $OUT):
#   bash bench/gpu-session.sh refs        transformers' bf16 outputs of every fixture (scripts/record_bf16.py) → $OUT/reference_bf16.tgz
#   bash bench/gpu-session.sh tests       the GPU suite (npm run test:gpu's files)        → $OUT/test-gpu.txt
#   bash bench/gpu-session.sh ops         each batch-1 decode op timed alone (bench/decode-ops.ts) → $OUT/decode-ops.json
#   bash bench/gpu-session.sh ops-wide    the same for a 256-row step at contexts of 1000 (the nano-vllm workload's), and with decode attention on CUDA cores → $OUT/decode-ops-wide{,-cuda-cores}.json
#   bash bench/gpu-session.sh ab          decode-ops A/B: as built, no PDL, GEMVs unsplit, GEMV loads after the wait → $OUT/ops-*.json
#   bash bench/gpu-session.sh ncu         Nsight Compute's kernel times of a short batch-1 decode, graphs off → $OUT/ncu.csv
#   bash bench/gpu-session.sh full        transformers' baseline, then the full kiln bench beside it → $OUT/cuda-bf16.json, hf.json
#   bash bench/gpu-session.sh ncu-wide    the same for a 256-row decode step at contexts of 1000 (the nano-vllm workload's) → $OUT/ncu-wide.csv
#   bash bench/gpu-session.sh decode      bf16 as built, without the fused decode ops, with decode attention on CUDA cores, on tensor cores at every width → $OUT/bf16{,-unfused,-decode-cuda-cores,-decode-tc-always}.json
#   bash bench/gpu-session.sh formats     kiln bench --quick for each qformat and KV cache, and fp8 and int8_sq with KILN_CUDA_LT_GEMM=0 → $OUT/<format>.json
#   bash bench/gpu-session.sh perplexity  the demo model's quantization table on cuda     → $OUT/quantization-demo-cuda.*
#   bash bench/gpu-session.sh perplexity-fast  the same, every case at once, perplexity only (no decode timing)
#   bash bench/gpu-session.sh ops-test    the GPU op-parity tests alone                   → $OUT/test-gpu-ops.txt
#   bash bench/gpu-session.sh moe         kiln bench --quick --moe (Qwen2-MoE-shaped)      → $OUT/moe.json
#   bash bench/gpu-session.sh nccl        NCCL on one GPU and the multi-rank cuda runs (test-gpu/nccl, multi-rank) → $OUT/test-gpu-nccl.txt
#   MULTI_SHAPE=0.5b|7b bash bench/gpu-session.sh multi-gpu   kiln bench at tp 1, 2, 4 and pp 2 (those the GPUs allow), scaling → $OUT/multi-gpu-<shape>.{json,md}
# Several stages run in one call in the order given: bash bench/gpu-session.sh refs tests decode
# Before the call, `git rev-parse --short HEAD > .device/commit` here: the results then name the commit measured.
set -euo pipefail
[ $# -gt 0 ] || { echo "which stage: refs, tests, decode, formats, perplexity, moe or nccl" >&2; exit 2; }
OUT=${OUT:?"set OUT to the folder that comes back"}
xz -dc .device/node.xz > /tmp/node && chmod +x /tmp/node && mkdir -p /tmp/bin && ln -sf /tmp/node /tmp/bin/node
export PATH=/tmp/bin:$PATH
[ -f .device/commit ] && KILN_COMMIT=$(cat .device/commit) && export KILN_COMMIT
[ -d node_modules ] || xz -dc .device/node_modules.tar.xz | tar -xf -
[ -f dist/bench/bench.js ] || node node_modules/typescript/bin/tsc -p tsconfig.json
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1 || true
work=/tmp/kiln-bench
# NCCL (test-gpu/nccl.test.ts, multi-rank runs) comes with PyTorch's wheels (nvidia-nccl-*) unless the system
# has it; kiln dlopens libnccl.so.2, so its folder goes on the loader's path. NVLink multicast stays off.
export NCCL_NVLS_ENABLE=0
nccl_lib=system
if ! ldconfig -p 2>/dev/null | grep libnccl.so.2 > /dev/null; then
  nccl_lib=$(python3 -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))" 2>/dev/null || true)
  [ -f "$nccl_lib/libnccl.so.2" ] || nccl_lib=$(find /usr /opt /root /home -name libnccl.so.2 2>/dev/null | head -1 | xargs -r dirname)
  if [ -n "$nccl_lib" ]; then export LD_LIBRARY_PATH="$nccl_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; else nccl_lib="not found"; fi
fi
for stage in "$@"; do
case "$stage" in
  refs)
    python3 scripts/record_bf16.py --fixtures test/fixtures
    tar -czf "$OUT/reference_bf16.tgz" test/fixtures/*/reference_bf16.safetensors
    ;;
  tests)
    # TAP streams each test as it ends, so a run cut short by the timeout still shows how far it got.
    timeout "${TESTS_TIMEOUT:-600}" node --test --test-reporter=tap --test-concurrency=1 dist/test-gpu/ > "$OUT/test-gpu.txt" 2>&1 || true
    grep -E '^# (pass|fail)|^ *not ok' "$OUT/test-gpu.txt" || tail -12 "$OUT/test-gpu.txt"
    ;;
  ops)
    node dist/bench/decode-ops.js --out "$OUT/decode-ops.json"
    ;;
  ops-wide)
    node dist/bench/decode-ops.js --rows 256 --context 1000 --replays 10 --out "$OUT/decode-ops-wide.json"
    KILN_CUDA_DECODE_TC=0 node dist/bench/decode-ops.js --rows 256 --context 1000 --replays 10 --out "$OUT/decode-ops-wide-cuda-cores.json" | grep attention
    ;;
  ab)
    node dist/bench/decode-ops.js --out "$OUT/ops-built.json" | tail -9
    KILN_CUDA_PDL=0 node dist/bench/decode-ops.js --out "$OUT/ops-nopdl.json" | tail -9
    KILN_GEMV_KSPLIT=1 node dist/bench/decode-ops.js --out "$OUT/ops-ksplit1.json" | tail -9
    node dist/bench/decode-ops.js --define KILN_GEMV_LOADS_AFTER_WAIT=1 --out "$OUT/ops-loads-after-wait.json" | tail -9
    KILN_GEMV_KSPLIT=1 node dist/bench/decode-ops.js --define KILN_GEMV_LOADS_AFTER_WAIT=1 --out "$OUT/ops-both.json" | tail -9
    ;;
  ncu)
    uname -r
    KILN_CUDA_GRAPHS=0 timeout "${NCU_TIMEOUT:-300}" ncu --clock-control none --cache-control none \
      --metrics gpu__time_duration.sum --csv node dist/bench/profile-decode.js --work "$work" --tokens 3 \
      > "$OUT/ncu.csv" 2> "$OUT/ncu.err" || tail -5 "$OUT/ncu.err"
    python3 scripts/ncu_summary.py "$OUT/ncu.csv"
    ;;
  full)
    node -e "import('./dist/bench/random-model.js').then((m) => m.writeRandomQwen2('$work/hf', m.QWEN25_05B))"
    python3 scripts/bench_hf.py --model "$work/hf" --out "$OUT/hf.json"
    node dist/bench/bench.js --work "$work" --hf "$OUT/hf.json" --out "$OUT/cuda-bf16.json"
    ;;
  ncu-wide)
    KILN_CUDA_GRAPHS=0 timeout "${NCU_TIMEOUT:-400}" ncu --clock-control none --cache-control none \
      --metrics gpu__time_duration.sum --csv node dist/bench/profile-decode.js --work "$work" --tokens 2 \
      --batch 256 --input 1000 > "$OUT/ncu-wide.csv" 2> "$OUT/ncu-wide.err" || tail -5 "$OUT/ncu-wide.err"
    python3 scripts/ncu_summary.py "$OUT/ncu-wide.csv" | head -30
    ;;
  decode)
    node dist/bench/bench.js --work "$work" --quick --out "$OUT/bf16.json" > /dev/null
    KILN_CUDA_FUSED=0 node dist/bench/bench.js --work "$work" --quick --out "$OUT/bf16-unfused.json" > /dev/null
    KILN_CUDA_DECODE_TC=0 node dist/bench/bench.js --work "$work" --quick --out "$OUT/bf16-decode-cuda-cores.json" > /dev/null
    KILN_CUDA_DECODE_TC=always node dist/bench/bench.js --work "$work" --quick --out "$OUT/bf16-decode-tc-always.json" > /dev/null
    grep -h '"batch1\|"nanovllm_output' "$OUT"/bf16*.json
    ;;
  formats)
    for q in int8_wo int4_wo fp8 int8_sq int4_awq w4a8_awq nvfp4; do
      node dist/bench/bench.js --work "$work" --quick --qformat "$q" --out "$OUT/$q.json" > /dev/null
    done
    node dist/bench/bench.js --work "$work" --quick --kv_cache_dtype fp8 --out "$OUT/kv-fp8.json" > /dev/null
    # fp8's and int8_sq's wide steps dequantizing for cuBLAS, as they did before cuBLASLt's GEMMs took them
    for q in fp8 int8_sq; do
      KILN_CUDA_LT_GEMM=0 node dist/bench/bench.js --work "$work" --quick --qformat "$q" --out "$OUT/$q-dequantized.json" > /dev/null
    done
    grep -H '"batch1_gpu_ms\|"nanovllm_output' "$OUT"/*.json
    ;;
  perplexity)
    node dist/bench/quant-table.js --backend cuda --out "$OUT/quantization-demo-cuda"
    ;;
  perplexity-fast)
    # Every case at once (calibration runs on the CPUs): perplexity only, no decode timing.
    node dist/bench/quant-table.js --backend cuda --jobs 10 --out "$OUT/quantization-demo-cuda"
    ;;
  ops-test)
    timeout "${TESTS_TIMEOUT:-600}" node --test --test-reporter=tap --test-concurrency=1 dist/test-gpu/ops.test.js > "$OUT/test-gpu-ops.txt" 2>&1 || true
    grep -E '^# (pass|fail)|^ *not ok' "$OUT/test-gpu-ops.txt" || tail -12 "$OUT/test-gpu-ops.txt"
    ;;
  moe)
    node dist/bench/bench.js --work "$work" --quick --moe --out "$OUT/moe.json"
    ;;
  nccl)
    echo "libnccl: $nccl_lib; GPUs: $(nvidia-smi -L 2>/dev/null | wc -l)" | tee "$OUT/test-gpu-nccl.txt"
    timeout "${TESTS_TIMEOUT:-600}" node --test --test-reporter=tap --test-concurrency=1 dist/test-gpu/nccl.test.js \
      dist/test-gpu/multi-rank.test.js >> "$OUT/test-gpu-nccl.txt" 2>&1 || true
    grep -E '^# (pass|fail|skipped)|^ *not ok|# SKIP|^# \\# cuda' "$OUT/test-gpu-nccl.txt" || tail -12 "$OUT/test-gpu-nccl.txt"
    ;;
  multi-gpu)
    # One shape a call (MULTI_SHAPE: 0.5b, or 7b, whose converts and builds take minutes a layout), the
    # layouts the GPUs allow of MULTI_LAYOUTS (tp x pp); each layout's checkpoint and engine are removed after
    # its run (7B's are 15 GB each). The scaling table covers this call's runs; runs of several calls combine
    # here with node dist/bench/scaling.js --out bench/results/multi-gpu FILE.json…
    gpus=$(nvidia-smi -L | wc -l)
    shape=${MULTI_SHAPE:-0.5b}
    runs=()
    for layout in ${MULTI_LAYOUTS:-1x1 2x1 4x1 1x2}; do
      tp=${layout%x*} pp=${layout#*x}
      [ $((tp * pp)) -le "$gpus" ] || { echo "multi-gpu: tp $tp pp $pp needs $((tp * pp)) GPUs, $gpus here"; continue; }
      f="$OUT/multi-$shape-tp$tp-pp$pp.json"
      if [ "$tp$pp" = 11 ]; then split=""; else split="--tp_size $tp --pp_size $pp"; fi
      timeout "${MULTI_TIMEOUT:-540}" node dist/bench/bench.js --work /tmp/kiln-multi --shape "$shape" $split --out "$f" > /dev/null \
        && runs+=("$f") || echo "multi-gpu: $shape tp $tp pp $pp failed"
      rm -rf /tmp/kiln-multi/ckpt* /tmp/kiln-multi/engine*
    done
    [ ${#runs[@]} -eq 0 ] || node dist/bench/scaling.js --out "$OUT/multi-gpu-$shape" "${runs[@]}"
    ;;
  *)
    echo "unknown stage $stage: refs, tests, decode, formats, perplexity, moe, nccl or multi-gpu" >&2
    exit 2
    ;;
esac
done
