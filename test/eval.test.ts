// Perplexity: one window against the value transformers' recorded logits give (computed here from them),
// sliding windows scoring every token once, and the CLI's refusal without gathered logits.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { perplexity } from "../src/eval/perplexity.js";
import { LLM } from "../src/runtime/llm.js";
import { fixtureEngine, loadReference, ROOT, tempDir } from "./helpers.js";

const work = tempDir("kiln-eval-");
after(() => fs.rmSync(work, { recursive: true, force: true }));

describe("perplexity", () => {
  test("one window equals exp(mean −log p) under transformers' recorded logits", async () => {
    const ref = loadReference("qwen2_tied_gqa");
    const p = ref.prompts[3];
    const V = ref.vocab;
    let nll = 0;
    for (let k = 1; k < p.inputIds.length; k++) {
      const row = p.contextLogits.subarray((k - 1) * V, k * V);
      const max = Math.max(...row);
      const lse = max + Math.log(row.reduce((s, x) => s + Math.exp(x - max), 0));
      nll += lse - row[p.inputIds[k]];
    }
    const expected = Math.exp(nll / (p.inputIds.length - 1));
    const llm = await LLM.load(await fixtureEngine(work, "qwen2_tied_gqa", { gather_context_logits: true }));
    const r = perplexity(llm, p.inputIds, 64, 64);
    assert.equal(r.tokensScored, p.inputIds.length - 1);
    assert.equal(r.windows, 1);
    assert.ok(Math.abs(r.perplexity - expected) / expected < 1e-5, `${r.perplexity} vs ${expected}`);
  });

  test("sliding windows score every token but the first exactly once", async () => {
    const llm = await LLM.load(await fixtureEngine(work, "qwen2_tied_gqa", { gather_context_logits: true }));
    const ids = Array.from({ length: 45 }, (_, i) => (i * 13) % 384);
    const r = perplexity(llm, ids, 16, 8);
    assert.equal(r.tokensScored, 44);
    assert.equal(r.windows, 5); // windows start at 0, 8, 16, 24, 32 (the last reaches the end)
    const whole = perplexity(llm, ids, 64, 32);
    assert.ok(r.perplexity > 0 && Number.isFinite(r.perplexity));
    assert.notEqual(r.perplexity, whole.perplexity, "less context, other numbers");
    assert.throws(() => perplexity(llm, ids, 16, 17), /--stride must be in \[1, 16\]/);
  });

  test("kiln eval prints the figures, and refuses an engine without gathered logits", async () => {
    const text = path.join(work, "text.txt");
    fs.writeFileSync(text, "The jury said it did find that many of the laws were outmoded. ".repeat(4));
    const withLogits = await fixtureEngine(work, "qwen2_tied_gqa", { gather_context_logits: true });
    const kiln = (...args: string[]) =>
      spawnSync(process.execPath, [path.join(ROOT, "bin", "kiln"), ...args], { encoding: "utf8" });
    const ok = kiln("eval", "--engine_dir", withLogits, "--dataset", text, "--max_input_len", "32", "--stride", "16");
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /^tokens scored \d+, perplexity \d+\.\d+, \d+ windows in/);
    const without = await fixtureEngine(work, "qwen2_tied_gqa", {});
    const bad = kiln("eval", "--engine_dir", without, "--dataset", text);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr.trim(), /^kiln: .*--gather_context_logits$/);
  });
});
