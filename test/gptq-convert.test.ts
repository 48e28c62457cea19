// GPTQ through convert → build → run: calibrated on kiln's own cpu backend, stored in TensorRT-LLM's
// W4A16_GPTQ layout (checked here by dequantizing the rank file by the layout's own rule), and run.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { convertHfCheckpoint } from "../src/checkpoint/convert-hf.js";
import { SafetensorsFile } from "../src/checkpoint/safetensors.js";
import { contextLogitError, convertBuildLoad, FIXTURES, loadReference, tempDir } from "./helpers.js";

const work = tempDir("kiln-gptq-");
after(() => fs.rmSync(work, { recursive: true, force: true }));
const model = path.join(FIXTURES, "qwen2_tied_gqa", "hf");
const calib = path.join(work, "calib.txt");
fs.writeFileSync(
  calib,
  [
    "The jury said it did find that many of the laws were outmoded.",
    "It was a cold morning in the city.",
    "He said the committee had met on Tuesday.",
  ].join("\n"),
);

async function logitError(opts: Parameters<typeof convertHfCheckpoint>[0], name: string): Promise<number> {
  const ref = loadReference("qwen2_tied_gqa");
  const { llm } = await convertBuildLoad(opts);
  const { worst } = contextLogitError(llm, ref);
  llm.dispose();
  console.log(`# ${name}: max |Δlogit| vs transformers ${worst.toFixed(4)}`);
  return worst;
}

describe("W4A16_GPTQ", () => {
  test("the rank file holds TensorRT-LLM's layout: w ≈ (nibble − 8 signed) · scale + zero, near the original weights", async () => {
    const out = path.join(work, "gptq");
    const cfg = await convertHfCheckpoint({
      modelDir: model,
      outputDir: out,
      dtype: "float32",
      gptq: { groupSize: 16, calibDataset: calib, calibSize: 3 },
    });
    assert.equal(cfg.quantization.quant_algo, "W4A16_GPTQ");
    assert.equal(cfg.quantization.group_size, 16);
    assert.equal(cfg.quantization.has_zero_point, true);
    const f = SafetensorsFile.open(path.join(out, "rank0.safetensors"));
    const name = "transformer.layers.1.mlp.fc";
    const [inDim, words] = f.info(`${name}.weight`).shape;
    const outDim = words * 8; // float32 words carrying 8 int4 values each
    assert.deepEqual(f.info(`${name}.weights_scaling_factor`).shape, [inDim / 16, outDim]);
    const bytes = f.readBytes(`${name}.weight`);
    const scales = f.readFloat32(`${name}.weights_scaling_factor`);
    const zeros = f.readFloat32(`${name}.zero`);
    f.close();
    const hf = SafetensorsFile.open(path.join(model, "model.safetensors"));
    const w = hf.readFloat32("model.layers.1.mlp.gate_proj.weight"); // fc is HF's gate_proj, [out, in]
    hf.close();
    let err = 0;
    let step = 0;
    for (let i = 0; i < inDim; i++) {
      for (let o = 0; o < outDim; o++) {
        const byte = bytes[(i * outDim + o) >> 1];
        const nibble = o % 2 === 0 ? byte & 0xf : byte >> 4;
        const q = nibble >= 8 ? nibble - 16 : nibble;
        const g = Math.floor(i / 16) * outDim + o;
        err += Math.abs(q * scales[g] + zeros[g] - w[o * inDim + i]);
        step += scales[g];
      }
    }
    // Error compensation moves weights by some quantization steps; a wrong layout would be off by far more.
    assert.ok(err / step < 1, `mean |w − ŵ| is ${(err / step).toFixed(3)} quantization steps`);
  });

  test("its engine runs, closer to transformers than per-channel int4", async () => {
    const gptq = await logitError(
      {
        modelDir: model,
        outputDir: path.join(work, "g-run"),
        dtype: "float32",
        gptq: { groupSize: 16, calibDataset: calib, calibSize: 3 },
      },
      "W4A16_GPTQ g16",
    );
    const rtn = await logitError(
      { modelDir: model, outputDir: path.join(work, "w4-run"), dtype: "float32", weightOnlyBits: 4 },
      "W4A16 per channel",
    );
    assert.ok(gptq < rtn, `${gptq} vs ${rtn}`);
  });

  test("bad input: a group size that does not divide in_features, a missing or empty calibration file", async () => {
    const out = path.join(work, "bad");
    await assert.rejects(
      convertHfCheckpoint({
        modelDir: model,
        outputDir: out,
        dtype: "float32",
        gptq: { groupSize: 128, calibDataset: calib, calibSize: 3 },
      }),
      /--group_size 128 does not divide in_features 64/,
    );
    await assert.rejects(
      convertHfCheckpoint({
        modelDir: model,
        outputDir: out,
        dtype: "float32",
        gptq: { groupSize: 16, calibDataset: path.join(work, "nope.txt"), calibSize: 3 },
      }),
      /--calib_dataset .*nope\.txt: cannot read/,
    );
    const empty = path.join(work, "empty.txt");
    fs.writeFileSync(empty, "\n\n");
    await assert.rejects(
      convertHfCheckpoint({
        modelDir: model,
        outputDir: out,
        dtype: "float32",
        gptq: { groupSize: 16, calibDataset: empty, calibSize: 3 },
      }),
      /holds no text to calibrate with/,
    );
    assert.equal(fs.existsSync(out), false);
  });
});
