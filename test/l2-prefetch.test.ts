// What each layer's decode attention asks the L2 for (backends/cuda/l2-prefetch.ts), on a hand-made list
// of sections: the layer's weights read after attention in their order, then the next layer's norm and qkv,
// the final norm after the last layer, within the budget and the table's size.

import assert from "node:assert/strict";
import { test } from "node:test";
import { type DeviceSection, MAX_PREFETCH_RANGES, prefetchPlan } from "../src/backends/cuda/l2-prefetch.js";

/** A layer's sections as an engine names them, at made-up addresses, `bytes` each unless said. */
function layer(l: number, bytes: number, extra: Record<string, number> = {}): DeviceSection[] {
  const modules = {
    "attention.qkv.weight": bytes,
    "attention.qkv.bias": 64,
    "attention.dense.weight": bytes,
    "attention.kv_cache_scaling_factor": 4,
    "input_layernorm.weight": 32,
    "post_layernorm.weight": 32,
    "mlp.fc.weight": bytes,
    "mlp.proj.weight": bytes,
    ...extra,
  };
  return Object.entries(modules).map(([m, b], i) => ({
    name: `transformer.layers.${l}.${m}`,
    ptr: (l + 1) * 0x100000 + i * 0x1000,
    bytes: b,
  }));
}

const names = (xs: DeviceSection[]) => xs.map((x) => x.name.replace(/^transformer\./, ""));

test("each layer's attention prefetches its later weights in order, then the next layer's norm and qkv", () => {
  const sections = [...layer(0, 1000), ...layer(1, 1000), { name: "transformer.ln_f.weight", ptr: 7, bytes: 48 }];
  sections.push({ name: "lm_head.weight", ptr: 9, bytes: 4096 });
  const plan = prefetchPlan(sections, 2, 1 << 20);
  assert.deepEqual(names(plan[0]), [
    "layers.0.attention.dense.weight",
    "layers.0.post_layernorm.weight",
    "layers.0.mlp.fc.weight",
    "layers.0.mlp.proj.weight",
    "layers.1.input_layernorm.weight",
    "layers.1.attention.qkv.bias",
    "layers.1.attention.qkv.weight",
  ]);
  // The last layer: the final norm, not lm_head (read by a kernel of its own).
  assert.deepEqual(names(plan[1]).slice(-1), ["ln_f.weight"]);
  assert.ok(!names(plan[1]).includes("lm_head.weight"));
  // Whole 16-byte units: 1000 → 992; the KV scale (4 bytes) is never asked for.
  assert.equal(plan[0][0].bytes, 992);
  assert.equal(plan[0][0].ptr, sections.find((s) => s.name === "transformer.layers.0.attention.dense.weight")!.ptr);
  assert.ok(plan.flat().every((r) => r.bytes % 16 === 0 && r.bytes > 0 && !r.name.includes("kv_cache")));
});

test("a section past the budget is left out (a MoE layer's experts) and the ones after it still come", () => {
  const sections = [...layer(0, 1024, { "mlp.fc.weight": 1 << 20 }), ...layer(1, 1024)];
  const plan = prefetchPlan(sections, 2, 8192);
  const got = names(plan[0]);
  assert.ok(!got.includes("layers.0.mlp.fc.weight"));
  assert.ok(got.includes("layers.0.mlp.proj.weight") && got.includes("layers.1.attention.qkv.weight"));
  assert.ok(plan[0].reduce((n, r) => n + r.bytes, 0) <= 8192);
});

test("a layer asks for at most the table's ranges", () => {
  const many: Record<string, number> = {};
  for (let i = 0; i < 2 * MAX_PREFETCH_RANGES; i++) many[`mlp.fc.extra${String(i).padStart(2, "0")}`] = 256;
  const plan = prefetchPlan(layer(0, 512, many), 1, 1 << 30);
  assert.equal(plan[0].length, MAX_PREFETCH_RANGES);
  assert.equal(plan[0][0].name, "transformer.layers.0.attention.dense.weight");
});
