// Specification of HF config.json → unified checkpoint config: TensorRT-LLM's keys for the llama and qwen2
// families (trtllm-checkpoint.md 1.2), read from transformers-4 and transformers-5 key sets alike.

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { unifiedConfigFromHf } from "../src/checkpoint/convert-hf.js";
import { type ModelDtype, type PretrainedConfig, parsePretrainedConfig } from "../src/checkpoint/pretrained-config.js";
import { ConfigError } from "../src/errors.js";
import { FAMILIES, familyOf } from "../src/models/families.js";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-hf-config-"));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let counter = 0;

/** A model dir holding only config.json with `hf` as its content. */
function hfDir(hf: object): string {
  const dir = path.join(root, String(counter++));
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(hf, null, 2));
  return dir;
}

const convert = (hf: object, dtype: ModelDtype | "auto" = "auto"): PretrainedConfig =>
  unifiedConfigFromHf(hfDir(hf), dtype);

function pick(cfg: PretrainedConfig, keys: string[]): Record<string, unknown> {
  return Object.fromEntries(keys.map((k) => [k, cfg[k]]));
}

/** Qwen/Qwen2.5-0.5B-Instruct's config.json as published (transformers 4 keys). */
const QWEN25_05B = {
  architectures: ["Qwen2ForCausalLM"],
  attention_dropout: 0.0,
  bos_token_id: 151643,
  eos_token_id: 151645,
  hidden_act: "silu",
  hidden_size: 896,
  initializer_range: 0.02,
  intermediate_size: 4864,
  max_position_embeddings: 32768,
  max_window_layers: 21,
  model_type: "qwen2",
  num_attention_heads: 14,
  num_hidden_layers: 24,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  tie_word_embeddings: true,
  torch_dtype: "bfloat16",
  transformers_version: "4.43.1",
  use_cache: true,
  use_sliding_window: false,
  vocab_size: 151936,
};

/** meta-llama/Llama-3.1-8B-Instruct's config.json (transformers 4 keys). */
const LLAMA31_8B = {
  architectures: ["LlamaForCausalLM"],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
  hidden_act: "silu",
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: {
    factor: 8.0,
    low_freq_factor: 1.0,
    high_freq_factor: 4.0,
    original_max_position_embeddings: 8192,
    rope_type: "llama3",
  },
  rope_theta: 500000.0,
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
  transformers_version: "4.43.0.dev0",
  use_cache: true,
  vocab_size: 128256,
};

/** The same config rewritten with transformers-5 keys: `dtype` and `rope_parameters` (holding rope_theta). */
function toTransformers5(hf: Record<string, unknown>): Record<string, unknown> {
  const { torch_dtype, rope_theta, rope_scaling, ...rest } = hf;
  const scaling = (rope_scaling ?? { rope_type: "default" }) as Record<string, unknown>;
  const { type, ...params } = scaling;
  return {
    ...rest,
    dtype: torch_dtype,
    rope_parameters: { ...params, rope_type: params.rope_type ?? type, rope_theta },
  };
}

describe("Qwen2.5-0.5B-Instruct → TensorRT-LLM's Qwen config", () => {
  const cfg = convert(QWEN25_05B);

  it("has the generic keys", () => {
    assert.deepEqual(
      pick(cfg, [
        "architecture",
        "dtype",
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "hidden_act",
        "logits_dtype",
        "norm_epsilon",
        "position_embedding_type",
        "max_position_embeddings",
        "head_size",
        "rotary_embedding_dim",
        "tie_word_embeddings",
      ]),
      {
        architecture: "Qwen2ForCausalLM",
        dtype: "bfloat16",
        vocab_size: 151936, // unpadded
        hidden_size: 896,
        num_hidden_layers: 24,
        num_attention_heads: 14,
        num_key_value_heads: 2,
        intermediate_size: 4864,
        hidden_act: "silu",
        logits_dtype: "float32",
        norm_epsilon: 1e-6,
        position_embedding_type: "rope_gpt_neox",
        max_position_embeddings: 32768,
        head_size: 64, // 896 / 14
        rotary_embedding_dim: 64,
        tie_word_embeddings: true,
      },
    );
  });

  it("has the Qwen keys: qwen_type, rotary_base from rope_theta, q/k/v bias, no MoE", () => {
    assert.deepEqual(
      pick(cfg, ["qwen_type", "rotary_base", "rotary_scaling", "attn_bias", "mlp_bias", "seq_length", "num_labels"]),
      {
        qwen_type: "qwen2",
        rotary_base: 1e6,
        rotary_scaling: null,
        attn_bias: true,
        mlp_bias: false,
        seq_length: 8192, // HF has no seq_length: TensorRT-LLM's fallback
        num_labels: 1,
      },
    );
    const moe = cfg.moe as Record<string, unknown>;
    assert.deepEqual(pick(moe as PretrainedConfig, ["num_experts", "top_k", "normalization_mode"]), {
      num_experts: 0,
      top_k: 0,
      normalization_mode: 0,
    });
  });

  it("is one rank with no quantization", () => {
    assert.deepEqual(cfg.mapping, {
      world_size: 1,
      gpus_per_node: 8,
      cp_size: 1,
      tp_size: 1,
      pp_size: 1,
      moe_tp_size: 1,
      moe_cluster_size: 1,
      moe_ep_size: 1,
      attn_tp_size: 1,
      attn_cp_size: 1,
      auto_parallel: false,
    });
    assert.equal(cfg.quantization.quant_algo, null);
    assert.equal(cfg.quantization.kv_cache_quant_algo, null);
    assert.equal(cfg.quantization.group_size, 128);
  });

  it("reads back unchanged through the checkpoint config reader", () => {
    assert.deepEqual(parsePretrainedConfig(JSON.parse(JSON.stringify(cfg)), "config.json"), cfg);
  });

  it("normalises the same from transformers-5 keys", () => {
    const t5 = toTransformers5(QWEN25_05B);
    assert.equal(t5.torch_dtype, undefined);
    assert.equal(t5.rope_theta, undefined);
    assert.deepEqual(convert(t5), cfg);
  });
});

describe("dtype: explicit, or auto as TensorRT-LLM's converter does", () => {
  // auto: the HF dtype, except float32 becomes float16.
  const auto: Record<ModelDtype, ModelDtype> = { float32: "float16", float16: "float16", bfloat16: "bfloat16" };
  const dtypes: ModelDtype[] = ["float32", "float16", "bfloat16"];
  for (const hfDtype of dtypes) {
    it(`from a ${hfDtype} model`, () => {
      for (const key of ["torch_dtype", "dtype"]) {
        const { torch_dtype: _, ...base } = QWEN25_05B;
        const hf = { ...base, [key]: hfDtype };
        assert.equal(convert(hf, "auto").dtype, auto[hfDtype], `${key}=${hfDtype}, auto`);
        for (const want of dtypes) assert.equal(convert(hf, want).dtype, want, `${key}=${hfDtype}, ${want}`);
      }
    });
  }

  it("takes a float32 model without any dtype key as float32 (auto → float16)", () => {
    const { torch_dtype: _, ...base } = QWEN25_05B;
    assert.equal(convert(base, "auto").dtype, "float16");
    assert.equal(convert(base, "float32").dtype, "float32");
  });
});

describe("Llama 3.1 → TensorRT-LLM's Llama config", () => {
  const cfg = convert(LLAMA31_8B);

  it("keeps llama3 rope scaling: factor, low/high frequency factors, original length", () => {
    assert.equal(cfg.rotary_base, 500000);
    assert.deepEqual(cfg.rotary_scaling, {
      type: "llama3",
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    });
  });

  it("has the generic keys and no biases", () => {
    assert.deepEqual(
      pick(cfg, [
        "architecture",
        "dtype",
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "head_size",
        "norm_epsilon",
        "max_position_embeddings",
        "position_embedding_type",
        "attn_bias",
        "mlp_bias",
        "dense_bias",
        "tie_word_embeddings",
      ]),
      {
        architecture: "LlamaForCausalLM",
        dtype: "bfloat16",
        vocab_size: 128256,
        hidden_size: 4096,
        num_hidden_layers: 32,
        num_attention_heads: 32,
        num_key_value_heads: 8,
        intermediate_size: 14336,
        head_size: 128,
        norm_epsilon: 1e-5,
        max_position_embeddings: 131072,
        position_embedding_type: "rope_gpt_neox",
        attn_bias: false,
        mlp_bias: false,
        dense_bias: false,
        tie_word_embeddings: false,
      },
    );
  });

  it("takes attention_bias as a bias on q, k, v and the output projection", () => {
    const biased = convert({ ...LLAMA31_8B, attention_bias: true, mlp_bias: true });
    assert.deepEqual(pick(biased, ["attn_bias", "dense_bias", "mlp_bias"]), {
      attn_bias: true,
      dense_bias: true,
      mlp_bias: true,
    });
  });

  it("takes head_dim when HF gives one", () => {
    assert.equal(convert({ ...LLAMA31_8B, head_dim: 96 }).head_size, 96);
    assert.equal(convert({ ...LLAMA31_8B, head_dim: 96 }).rotary_embedding_dim, 96);
  });

  it("normalises the same from transformers-5 keys and from the older `type` key", () => {
    const t5 = toTransformers5(LLAMA31_8B);
    assert.deepEqual(convert(t5), cfg);
    const { rope_type: _, ...older } = LLAMA31_8B.rope_scaling;
    assert.deepEqual(convert({ ...LLAMA31_8B, rope_scaling: { ...older, type: "llama3" } }), cfg);
  });
});

describe("transformers 4 and 5 key sets: sweep", () => {
  const ropes: { name: string; theta: number; scaling: Record<string, unknown> | null; want: unknown }[] = [
    { name: "default", theta: 1e6, scaling: null, want: null },
    {
      name: "linear",
      theta: 10000,
      scaling: { rope_type: "linear", factor: 2 },
      want: { type: "linear", factor: 2 },
    },
    {
      name: "llama3",
      theta: 500000,
      scaling: {
        rope_type: "llama3",
        factor: 32,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 8192,
      },
      want: {
        type: "llama3",
        factor: 32,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 8192,
      },
    },
  ];
  for (const base of [QWEN25_05B, LLAMA31_8B]) {
    for (const rope of ropes) {
      for (const dtype of ["float16", "bfloat16", "float32"] as const) {
        it(`${base.architectures[0]}, ${rope.name} rope, ${dtype}`, () => {
          const { rope_scaling: _, ...rest } = base as Record<string, unknown>;
          const t4 = { ...rest, torch_dtype: dtype, rope_theta: rope.theta, rope_scaling: rope.scaling };
          const forms: Record<string, Record<string, unknown>> = { t4, t5: toTransformers5(t4) };
          if (rope.scaling) {
            const { rope_type, ...p } = rope.scaling;
            forms.t4Type = { ...t4, rope_scaling: { ...p, type: rope_type } };
          } else {
            const { rope_scaling: __, ...noScaling } = t4;
            forms.t4NoScaling = noScaling;
            forms.t4DefaultType = { ...t4, rope_scaling: { rope_type: "default" } };
          }
          const configs = Object.entries(forms).map(([k, hf]) => [k, convert(hf, "auto")] as const);
          const [, first] = configs[0];
          assert.equal(first.rotary_base, rope.theta);
          assert.deepEqual(first.rotary_scaling, rope.want);
          assert.equal(first.dtype, dtype === "float32" ? "float16" : dtype);
          for (const [form, c] of configs.slice(1)) assert.deepEqual(c, first, `${form} differs from t4`);
        });
      }
    }
  }
});

describe("families", () => {
  it("map each HF architecture to its family", () => {
    assert.equal(familyOf("LlamaForCausalLM", "config.json").name, "llama");
    assert.equal(familyOf("MistralForCausalLM", "config.json").name, "llama");
    assert.equal(familyOf("Qwen2ForCausalLM", "config.json").name, "qwen2");
    const archs = FAMILIES.flatMap((f) => f.architectures);
    assert.equal(new Set(archs).size, archs.length, "an architecture belongs to one family");
  });
});

describe("refusals: a ConfigError naming config.json and the key", () => {
  function refuses(hf: object, ...mustName: (string | RegExp)[]): void {
    const dir = hfDir(hf);
    const where = path.join(dir, "config.json");
    assert.throws(
      () => unifiedConfigFromHf(dir, "auto"),
      (e: unknown) => {
        assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${String(e)}`);
        assert.ok(e.message.includes(where), `"${e.message}" should name ${where}`);
        for (const s of mustName) {
          if (typeof s === "string") assert.ok(e.message.includes(s), `"${e.message}" should name ${s}`);
          else assert.match(e.message, s);
        }
        return true;
      },
    );
  }

  it("unknown architecture", () => {
    refuses({ ...QWEN25_05B, architectures: ["GPT2LMHeadModel"] }, "architecture", "GPT2LMHeadModel");
    refuses({ ...QWEN25_05B, architectures: undefined }, "architecture");
  });

  it("unsupported rope type (yarn), in either key set", () => {
    const yarn = { rope_type: "yarn", factor: 4, original_max_position_embeddings: 32768 };
    refuses({ ...QWEN25_05B, rope_scaling: yarn }, "yarn", /rope[ _]type|rope_scaling/);
    refuses({ ...QWEN25_05B, rope_scaling: { ...yarn, rope_type: undefined, type: "yarn" } }, "yarn");
    refuses(toTransformers5({ ...QWEN25_05B, rope_scaling: yarn }), "yarn", /rope[ _]type|rope_parameters/);
  });

  it("llama3 rope scaling without its frequency factors", () => {
    const { low_freq_factor: _, ...partial } = LLAMA31_8B.rope_scaling;
    refuses({ ...LLAMA31_8B, rope_scaling: partial }, "low_freq_factor");
  });

  it("use_sliding_window true", () => {
    refuses({ ...QWEN25_05B, use_sliding_window: true }, "use_sliding_window");
  });

  it("hidden_act gelu", () => {
    refuses({ ...LLAMA31_8B, hidden_act: "gelu" }, "hidden_act", "gelu");
    refuses({ ...QWEN25_05B, hidden_act: "gelu" }, "hidden_act", "gelu");
  });

  it("attention heads not a multiple of kv heads", () => {
    refuses({ ...QWEN25_05B, num_key_value_heads: 3 }, "num_attention_heads", "num_key_value_heads", "14", "3");
  });

  it("a missing or malformed count", () => {
    refuses({ ...QWEN25_05B, hidden_size: undefined }, "hidden_size");
    refuses({ ...QWEN25_05B, num_hidden_layers: 0 }, "num_hidden_layers");
    refuses({ ...QWEN25_05B, vocab_size: "151936" }, "vocab_size");
  });

  it("an unsupported dtype", () => {
    refuses({ ...QWEN25_05B, torch_dtype: "float64" }, "dtype", "float64");
  });

  it("a config.json that is missing or not JSON", () => {
    const dir = path.join(root, String(counter++));
    fs.mkdirSync(dir);
    assert.throws(() => unifiedConfigFromHf(dir, "auto"), ConfigError);
    fs.writeFileSync(path.join(dir, "config.json"), "{ not json");
    assert.throws(
      () => unifiedConfigFromHf(dir, "auto"),
      (e: unknown) => e instanceof ConfigError && e.message.includes(path.join(dir, "config.json")),
    );
  });
});
