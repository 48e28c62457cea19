#!/usr/bin/env bash
# The README's main job: convert → build → run on the model bundled in models/, into ./demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${KILN_DEMO_MODEL:-models/demo}
out=${KILN_DEMO_OUT:-demo-out}
prompt=${KILN_DEMO_PROMPT:-The jury said}
./bin/kiln convert --model_dir "$model" --output_dir "$out/checkpoint" --overwrite
./bin/kiln build --checkpoint_dir "$out/checkpoint" --output_dir "$out/engine" --max_batch_size 64 --overwrite
# Sampled (seeded, so the same text each time) and streamed as it is generated.
./bin/kiln run --engine_dir "$out/engine" --input_text "$prompt" --max_output_len 64 --streaming \
  --top_k 40 --temperature 0.8 --repetition_penalty 1.1 --random_seed 7
