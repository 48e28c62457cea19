// Specification of rotary inverse frequencies: the closed form 1/base^(2i/d), linear scaling, and Llama 3's
// wavelength-banded scaling, each restated here in float64 and compared within float32 rounding.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  type PretrainedConfig,
  parsePretrainedConfig,
  type RotaryScaling,
} from "../src/checkpoint/pretrained-config.js";
import { ropeSpec } from "../src/models/rope.js";

/** Half a float32 ulp, relative: one rounding to float32 moves a value by at most this fraction. */
const HALF_ULP = 2 ** -24;

function ropeModel(dim: number, base: number, scaling: RotaryScaling | null = null): PretrainedConfig {
  const heads = 4;
  return parsePretrainedConfig(
    {
      architecture: "LlamaForCausalLM",
      dtype: "float32",
      vocab_size: 32,
      hidden_size: heads * dim,
      num_hidden_layers: 1,
      num_attention_heads: heads,
      position_embedding_type: "rope_gpt_neox",
      rotary_base: base,
      rotary_scaling: scaling,
    },
    "test/config.json",
  );
}

/** 1/base^(2i/d) in float64. */
const closedForm = (base: number, dim: number, i: number): number => 1 / base ** ((2 * i) / dim);

/**
 * How far float32 arithmetic may land from the float64 value: the exponent 2i/d rounded to float32 (which
 * moves base^x by ln(base)·x relative per unit of its own error), the power and the reciprocal each rounded,
 * plus `extra` further roundings.
 */
const tolerance = (base: number, extra = 0): number => (Math.log(base) + 2 + extra) * HALF_ULP;

function assertClose(got: number, want: number, relTol: number, what: string): void {
  const rel = Math.abs(got - want) / Math.abs(want);
  assert.ok(
    rel <= relTol,
    `${what}: got ${got}, want ${want} (relative error ${rel.toExponential(2)} > ${relTol.toExponential(2)})`,
  );
}

describe("default rope", () => {
  it("worked example: d 8, base 10000 → 1, 0.1, 0.01, 0.001", () => {
    const { invFreq, rotaryDim } = ropeSpec(ropeModel(8, 10000));
    assert.equal(rotaryDim, 8);
    assert.equal(invFreq.length, 4);
    assert.equal(invFreq[0], 1);
    for (const [i, want] of [0.1, 0.01, 0.001].entries())
      assertClose(invFreq[i + 1], want, tolerance(10000), `i=${i + 1}`);
  });

  it("equals 1/base^(2i/d) for every i, over bases and head sizes", () => {
    for (const base of [10000, 100000, 500000, 1e6]) {
      for (const dim of [16, 32, 64, 80, 96, 128, 256]) {
        const { invFreq, rotaryDim } = ropeSpec(ropeModel(dim, base));
        assert.equal(rotaryDim, dim);
        assert.equal(invFreq.length, dim / 2);
        for (let i = 0; i < dim / 2; i++) {
          assertClose(invFreq[i], closedForm(base, dim, i), tolerance(base), `base ${base}, d ${dim}, i ${i}`);
        }
        for (let i = 1; i < dim / 2; i++) assert.ok(invFreq[i] < invFreq[i - 1], "frequencies fall with i");
      }
    }
  });

  it("follows rotary_embedding_dim when it is smaller than head_size", () => {
    const cfg = { ...ropeModel(128, 10000), rotary_embedding_dim: 64 };
    const { invFreq, rotaryDim } = ropeSpec(cfg);
    assert.equal(rotaryDim, 64);
    assert.equal(invFreq.length, 32);
    for (let i = 0; i < 32; i++) assertClose(invFreq[i], closedForm(10000, 64, i), tolerance(10000), `i ${i}`);
  });
});

describe("linear rope scaling", () => {
  it("divides every frequency by the factor", () => {
    for (const factor of [2, 4, 1.5, 8]) {
      for (const dim of [64, 128]) {
        const base = 10000;
        const { invFreq } = ropeSpec(ropeModel(dim, base, { type: "linear", factor }));
        for (let i = 0; i < dim / 2; i++) {
          assertClose(
            invFreq[i],
            closedForm(base, dim, i) / factor,
            tolerance(base, 1),
            `factor ${factor}, d ${dim}, i ${i}`,
          );
        }
      }
    }
  });

  it("worked example: factor 2 halves the first frequency exactly", () => {
    assert.equal(ropeSpec(ropeModel(64, 10000, { type: "linear", factor: 2 })).invFreq[0], 0.5);
  });
});

describe("llama3 rope scaling (factor 8, low 1, high 4, original 8192, base 500000, d 128)", () => {
  const factor = 8;
  const low = 1;
  const high = 4;
  const original = 8192;
  const base = 500000;
  const dim = 128;
  const scaling: RotaryScaling = {
    type: "llama3",
    factor,
    low_freq_factor: low,
    high_freq_factor: high,
    original_max_position_embeddings: original,
  };
  const { invFreq, rotaryDim } = ropeSpec(ropeModel(dim, base, scaling));

  type Band = "unchanged" | "interpolated" | "divided";
  /** Meta's rule, restated: by wavelength 2π/f against original/high and original/low. */
  function expected(i: number): { band: Band; want: number } {
    const f = closedForm(base, dim, i);
    const wavelength = (2 * Math.PI) / f;
    if (wavelength < original / high) return { band: "unchanged", want: f };
    if (wavelength > original / low) return { band: "divided", want: f / factor };
    const s = (original / wavelength - low) / (high - low);
    return { band: "interpolated", want: (1 - s) * (f / factor) + s * f };
  }

  it("has 64 frequencies", () => {
    assert.equal(rotaryDim, 128);
    assert.equal(invFreq.length, 64);
  });

  it("worked bands: i ≤ 28 unchanged, 29..34 interpolated, i ≥ 35 divided by 8", () => {
    // Wavelength 2π·500000^(i/64): i=28 → 1955 < 2048; i=29 → 2401; i=34 → 6693 < 8192; i=35 → 8216 > 8192.
    for (let i = 0; i < 64; i++) {
      const band: Band = i <= 28 ? "unchanged" : i <= 34 ? "interpolated" : "divided";
      assert.equal(expected(i).band, band, `i ${i}`);
    }
    assert.equal(invFreq[0], 1); // wavelength 2π: unchanged
    assertClose(invFreq[63], closedForm(base, dim, 63) / 8, tolerance(base, 1), "i 63");
    assertClose(invFreq[28], closedForm(base, dim, 28), tolerance(base), "i 28");
    assertClose(invFreq[35], closedForm(base, dim, 35) / 8, tolerance(base, 1), "i 35");
  });

  it("equals the restated rule for all 64 frequencies", () => {
    for (let i = 0; i < 64; i++) {
      const { band, want } = expected(i);
      // Interpolation: out = f·(1/8 + 7s/8) with s linear in f, so a relative error in f grows by at most
      // (1/8 + 7/24 + 7s/4)/(1/8 + 7s/8) ≤ 10/3; a few more roundings follow.
      const tol = band === "interpolated" ? (10 / 3) * tolerance(base) + 4 * HALF_ULP : tolerance(base, 1);
      assertClose(invFreq[i], want, tol, `i ${i} (${band})`);
    }
  });

  it("matches default rope below the band and linear scaling by 8 above it", () => {
    const plain = ropeSpec(ropeModel(dim, base)).invFreq;
    const linear = ropeSpec(ropeModel(dim, base, { type: "linear", factor })).invFreq;
    for (let i = 0; i <= 28; i++) assert.equal(invFreq[i], plain[i], `i ${i}`);
    for (let i = 35; i < 64; i++) assert.equal(invFreq[i], linear[i], `i ${i}`);
    for (let i = 29; i <= 34; i++) {
      assert.ok(invFreq[i] < plain[i] && invFreq[i] > linear[i], `i ${i} lies between the two`);
    }
  });
});
