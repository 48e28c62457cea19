// Specification of an engine's limits: TensorRT-LLM's trtllm-build derivation (_init_max_seq_len,
// check_max_num_tokens; trtllm-checkpoint.md 5.1–5.2) as worked examples, then sweeps over small grids.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  type BuildConfig,
  type BuildRequest,
  modelMaxSeqLen,
  resolveBuildConfig,
} from "../src/builder/build-config.js";
import { type PretrainedConfig, parsePretrainedConfig } from "../src/checkpoint/pretrained-config.js";
import { LimitError } from "../src/errors.js";

/** A Llama-2-7B-shaped checkpoint config; `over` replaces or adds keys before validation. */
function model(over: Record<string, unknown> = {}): PretrainedConfig {
  return parsePretrainedConfig(
    {
      architecture: "LlamaForCausalLM",
      dtype: "float16",
      vocab_size: 32000,
      hidden_size: 4096,
      num_hidden_layers: 32,
      num_attention_heads: 32,
      max_position_embeddings: 4096,
      position_embedding_type: "rope_gpt_neox",
      ...over,
    },
    "test/config.json",
  );
}

const resolve = (over: Record<string, unknown>, req: BuildRequest): BuildConfig =>
  resolveBuildConfig(model(over), req).config;

function throwsLimit(fn: () => unknown, ...mustName: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof LimitError, `expected a LimitError, got ${String(e)}`);
    for (const s of mustName) assert.ok(e.message.includes(s), `"${e.message}" should name ${s}`);
    return true;
  });
}

describe("max_seq_len from the model (_init_max_seq_len)", () => {
  it("is max_position_embeddings without rope scaling", () => {
    assert.equal(modelMaxSeqLen(model({ max_position_embeddings: 32768 })), 32768);
    assert.equal(modelMaxSeqLen(model({ max_position_embeddings: 4096 })), 4096);
  });

  it("is 2048 when max_position_embeddings is null", () => {
    assert.equal(modelMaxSeqLen(model({ max_position_embeddings: null })), 2048);
    assert.equal(modelMaxSeqLen(model({ max_position_embeddings: undefined })), 2048);
  });

  it("is multiplied by the factor of linear rope scaling, rounded up", () => {
    assert.equal(modelMaxSeqLen(model({ rotary_scaling: { type: "linear", factor: 2 } })), 8192);
    assert.equal(
      modelMaxSeqLen(model({ rotary_scaling: { type: "linear", factor: 4 }, max_position_embeddings: null })),
      8192,
    );
    // 1001 × 1.5 = 1501.5 → 1502
    assert.equal(
      modelMaxSeqLen(model({ rotary_scaling: { type: "linear", factor: 1.5 }, max_position_embeddings: 1001 })),
      1502,
    );
  });

  it("is not lengthened by llama3 scaling (factor counts as 1)", () => {
    const llama31 = model({
      max_position_embeddings: 131072,
      rotary_base: 500000,
      rotary_scaling: {
        type: "llama3",
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 8192,
      },
    });
    assert.equal(modelMaxSeqLen(llama31), 131072);
  });

  it("is what resolveBuildConfig uses when --max_seq_len is not given", () => {
    assert.equal(resolve({ rotary_scaling: { type: "linear", factor: 2 } }, {}).max_seq_len, 8192);
    assert.equal(resolve({ max_position_embeddings: 32768 }, {}).max_seq_len, 32768);
  });

  it("is only a warning when an explicit --max_seq_len goes beyond it", () => {
    const { config, warnings } = resolveBuildConfig(model({ max_position_embeddings: 4096 }), { max_seq_len: 6000 });
    assert.equal(config.max_seq_len, 6000);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /--max_seq_len/);
    assert.match(warnings[0], /6000/);
    assert.match(warnings[0], /4096/);
    assert.deepEqual(resolveBuildConfig(model(), { max_seq_len: 4096 }).warnings, []);
  });
});

describe("resolveBuildConfig: worked examples", () => {
  it("fills trtllm-build's defaults for an empty request", () => {
    const { config, warnings } = resolveBuildConfig(model(), {});
    assert.deepEqual(config, {
      max_input_len: 1024,
      max_seq_len: 4096,
      max_batch_size: 2048,
      max_beam_width: 1,
      max_num_tokens: 8192, // min(8192, 4096 × 2048)
      opt_num_tokens: 2048, // min(2048 × 1, 8192)
      kv_cache_type: "PAGED",
      tokens_per_block: 32,
      remove_input_padding: true,
      use_paged_context_fmha: true,
      gather_context_logits: false,
      gather_generation_logits: false,
    });
    assert.deepEqual(warnings, []);
  });

  it("clips the default max_input_len (1024) to max_seq_len", () => {
    assert.equal(resolve({ max_position_embeddings: 512 }, {}).max_input_len, 512);
    assert.equal(resolve({}, { max_seq_len: 256 }).max_input_len, 256);
    assert.equal(resolve({}, { max_seq_len: 1024 }).max_input_len, 1024);
    assert.equal(resolve({}, { max_seq_len: 1025 }).max_input_len, 1024);
  });

  it("keeps an explicit max_input_len up to max_seq_len", () => {
    assert.equal(resolve({}, { max_input_len: 3000 }).max_input_len, 3000);
    assert.equal(resolve({}, { max_input_len: 4096 }).max_input_len, 4096);
    assert.equal(resolve({}, { max_input_len: 1, max_seq_len: 1 }).max_input_len, 1);
  });

  it("rejects an explicit max_input_len above max_seq_len, naming both flags", () => {
    throwsLimit(() => resolve({}, { max_input_len: 2048, max_seq_len: 1024 }), "--max_input_len", "--max_seq_len");
    // max_seq_len derived from the model (4096) counts too.
    throwsLimit(() => resolve({}, { max_input_len: 4097 }), "--max_input_len", "--max_seq_len", "4097", "4096");
  });

  const numTokens: { name: string; over?: Record<string, unknown>; req: BuildRequest; want: number }[] = [
    { name: "default: 8192 when max_seq_len × max_batch_size is larger", req: {}, want: 8192 },
    {
      name: "default: max_seq_len × max_batch_size when below 8192 (64 × 4)",
      req: { max_seq_len: 64, max_batch_size: 4 },
      want: 256,
    },
    {
      name: "explicit, kept below the ceiling",
      req: { max_seq_len: 1024, max_batch_size: 8, max_num_tokens: 5000 },
      want: 5000,
    },
    {
      name: "explicit, clamped to max_seq_len × max_batch_size (1024 × 8)",
      req: { max_seq_len: 1024, max_batch_size: 8, max_num_tokens: 100000 },
      want: 8192,
    },
    { name: "explicit 16, raised to tokens_per_block 32", req: { max_num_tokens: 16 }, want: 32 },
    {
      name: "explicit 16 with tokens_per_block 8 stays 16",
      req: { max_num_tokens: 16, tokens_per_block: 8 },
      want: 16,
    },
    { name: "explicit 3 raised to tokens_per_block 64", req: { max_num_tokens: 3, tokens_per_block: 64 }, want: 64 },
    // min(8192, 8 × 2) = 16, clamped to 16, then raised to tokens_per_block: after the clamp, as TensorRT-LLM does.
    {
      name: "ceiling 8 × 2 below tokens_per_block: raised to 32",
      req: { max_seq_len: 8, max_batch_size: 2 },
      want: 32,
    },
    {
      name: "without remove_input_padding: max_seq_len × max_batch_size, request ignored",
      req: { remove_input_padding: false, max_seq_len: 128, max_batch_size: 4, max_num_tokens: 100 },
      want: 512,
    },
  ];
  for (const c of numTokens) {
    it(`max_num_tokens — ${c.name}: ${c.want}`, () => {
      assert.equal(resolve(c.over ?? {}, c.req).max_num_tokens, c.want);
    });
  }

  it("derives opt_num_tokens as min(max_batch_size × max_beam_width, max_num_tokens)", () => {
    assert.equal(resolve({}, {}).opt_num_tokens, 2048);
    assert.equal(resolve({}, { max_batch_size: 8, max_beam_width: 4 }).opt_num_tokens, 32);
    assert.equal(resolve({}, { max_batch_size: 64, max_num_tokens: 40 }).opt_num_tokens, 40);
    assert.equal(resolve({}, { max_batch_size: 8192, max_num_tokens: 5000 }).opt_num_tokens, 5000);
  });
});

describe("resolveBuildConfig: refusals", () => {
  it("rejects a tokens_per_block that is not a power of two, naming the flag", () => {
    for (const t of [3, 6, 12, 48, 100, 1000])
      throwsLimit(() => resolve({}, { tokens_per_block: t }), "--tokens_per_block");
  });

  it("rejects a non-power-of-two tokens_per_block beyond 32 bits (3 × 2^32)", () => {
    throwsLimit(() => resolve({}, { tokens_per_block: 3 * 2 ** 32 }), "--tokens_per_block");
  });

  const limits = [
    "max_input_len",
    "max_seq_len",
    "max_batch_size",
    "max_beam_width",
    "max_num_tokens",
    "tokens_per_block",
  ] as const;
  for (const flag of limits) {
    it(`rejects a non-positive or non-integer --${flag}`, () => {
      for (const v of [0, -1, -64, 1.5, 0.5, Number.NaN, Number.POSITIVE_INFINITY]) {
        throwsLimit(() => resolve({}, { [flag]: v }), `--${flag}`);
      }
    });
  }
});

describe("resolveBuildConfig: sweep", () => {
  const isPow2 = (n: number) => Number.isInteger(Math.log2(n));

  it("accepts exactly the powers of two as tokens_per_block (1..1024)", () => {
    for (let t = 1; t <= 1024; t++) {
      if (isPow2(t)) assert.equal(resolve({}, { tokens_per_block: t }).tokens_per_block, t);
      else throwsLimit(() => resolve({}, { tokens_per_block: t }), "--tokens_per_block");
    }
  });

  it("matches the closed form over a grid of requests", () => {
    for (const mpe of [null, 16, 1000, 4096]) {
      for (const factor of [1, 2.5]) {
        for (const seq of [undefined, 8, 300]) {
          for (const bs of [undefined, 1, 3, 64]) {
            for (const beam of [undefined, 1, 4]) {
              for (const mnt of [undefined, 1, 100, 20000]) {
                for (const tpb of [undefined, 1, 16, 128]) {
                  const over = {
                    max_position_embeddings: mpe,
                    rotary_scaling: factor === 1 ? null : { type: "linear", factor },
                  };
                  const req: BuildRequest = {
                    max_seq_len: seq,
                    max_batch_size: bs,
                    max_beam_width: beam,
                    max_num_tokens: mnt,
                    tokens_per_block: tpb,
                  };
                  const c = resolve(over, req);
                  const label = JSON.stringify({ mpe, factor, ...req });
                  const wantSeq = seq ?? Math.ceil((mpe ?? 2048) * factor);
                  const wantBs = bs ?? 2048;
                  const wantTpb = tpb ?? 32;
                  const ceiling = wantSeq * wantBs;
                  const wantMnt = Math.max(Math.min(mnt ?? 8192, ceiling), wantTpb);
                  assert.equal(c.max_seq_len, wantSeq, label);
                  assert.equal(c.max_input_len, Math.min(1024, wantSeq), label);
                  assert.equal(c.max_batch_size, wantBs, label);
                  assert.equal(c.max_num_tokens, wantMnt, label);
                  assert.equal(c.opt_num_tokens, Math.min(wantBs * (beam ?? 1), wantMnt), label);
                }
              }
            }
          }
        }
      }
    }
  });

  it("never leaves a prompt of max_input_len unrunnable when context is not chunked", () => {
    // Without paged context FMHA a whole prompt runs in one step, so max_num_tokens must hold max_input_len.
    // A CONTINUOUS KV cache turns paged context FMHA off even when the request left it at its default.
    for (const kv_cache_type of ["PAGED", "CONTINUOUS"] as const) {
      for (const use_paged_context_fmha of [undefined, false]) {
        for (const max_num_tokens of [undefined, 64, 4096]) {
          const req: BuildRequest = { kv_cache_type, use_paged_context_fmha, max_num_tokens };
          let c: BuildConfig;
          try {
            c = resolve({}, req);
          } catch (e) {
            assert.ok(e instanceof LimitError, String(e));
            assert.ok(max_num_tokens !== undefined, `derived limits must not be refused: ${JSON.stringify(req)}`);
            continue;
          }
          if (!c.use_paged_context_fmha) {
            assert.ok(
              c.max_num_tokens >= c.max_input_len,
              `${JSON.stringify(req)}: max_num_tokens ${c.max_num_tokens} < max_input_len ${c.max_input_len}`,
            );
          }
        }
      }
    }
  });
});
