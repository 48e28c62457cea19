// bench/scaling.ts: the multi-GPU table's speed-ups and efficiencies, worked out by hand for made-up runs.

import assert from "node:assert/strict";
import { test } from "node:test";
import { scaling, scalingTable } from "../bench/scaling.js";

test("each layout against its model's single-GPU run: speed-up, and efficiency over the GPUs used", () => {
  const m = "Qwen2.5-7B shape, random bf16 weights";
  const rows = scaling([
    { model: m, batch1_decode_tokens_per_s: 100, nanovllm_output_tokens_per_s: 1000 },
    { model: m, tp_size: 2, pp_size: 1, batch1_decode_tokens_per_s: 150, nanovllm_output_tokens_per_s: 1800 },
    { model: m, tp_size: 2, pp_size: 2, batch1_decode_tokens_per_s: 120, nanovllm_output_tokens_per_s: 3000 },
  ]);
  assert.deepEqual(
    rows.map((r) => [r.gpus_used, r.batch1_speedup, r.batch1_efficiency, r.nanovllm_speedup, r.nanovllm_efficiency]),
    [
      [1, 1, 1, 1, 1],
      [2, 1.5, 0.75, 1.8, 0.9],
      [4, 1.2, 0.3, 3, 0.75],
    ],
  );
  assert.match(scalingTable(rows), /\| 2 \| 2 \| 120 \| 1\.20 \| 30% \| 3,000 \| 3\.00 \| 75% \|/);
  assert.throws(() => scaling([{ model: "other", tp_size: 2, batch1_decode_tokens_per_s: 1 }]), /no single-GPU run/);
});
