// kiln quantize: HF model dir → a quantized unified checkpoint (TensorRT-LLM quantize.py's flags and qformats),
// calibrated on kiln's own cpu backend.

import { Command } from "commander";
import { convertHfCheckpoint } from "../checkpoint/convert-hf.js";
import { Mapping } from "../mapping.js";
import { KV_CACHE_DTYPES, QFORMATS } from "../quantization/quantize-plan.js";
import { oneOf, positiveInt } from "./flags.js";

export function quantizeCommand(): Command {
  const cmd = new Command("quantize");
  return cmd
    .description("quantize a Hugging Face model dir into a unified checkpoint (TensorRT-LLM quantize.py's qformats)")
    .requiredOption("--model_dir <dir>", "Hugging Face model dir (config.json, *.safetensors, tokenizer.json)")
    .option("--output_dir <dir>", "checkpoint dir to write", "exported_model")
    .addOption(
      cmd
        .createOption("--dtype <dtype>", "dtype of what stays unquantized; auto as in kiln convert")
        .default("auto")
        .argParser(oneOf(["auto", "float32", "float16", "bfloat16"] as const)),
    )
    .addOption(
      cmd
        .createOption(
          "--qformat <q>",
          "fp8 (FP8), int8_sq (W8A8_SQ_PER_CHANNEL), int4_awq (W4A16_AWQ), w4a8_awq (W4A8_AWQ), int8_wo (W8A16), int4_wo (W4A16), nvfp4 (NVFP4) or full_prec",
        )
        .default("full_prec")
        .argParser(oneOf(QFORMATS)),
    )
    .addOption(
      cmd
        .createOption("--kv_cache_dtype <d>", "quantize the KV cache too, with one calibrated scale a layer")
        .argParser(oneOf(KV_CACHE_DTYPES)),
    )
    .option("--awq_block_size <n>", "input channels an AWQ scale covers: 64 or 128", positiveInt, 128)
    .option("--quant_cfg <file>", "quant_cfg.json: an algorithm per layer (MIXED_PRECISION); instead of --qformat")
    .option("--quantize_lm_head", "quantize lm_head too (excluded by default, as in TensorRT-LLM)", false)
    .option(
      "--calib_dataset <file>",
      "calibration texts: a .txt (one a line) or .jsonl ({text}); default the Brown corpus",
    )
    .option("--calib_size <n>", "calibration texts to use", positiveInt, 64)
    .option("--tp_size <n>", "tensor-parallel ranks", positiveInt, 1)
    .option("--pp_size <n>", "pipeline stages", positiveInt, 1)
    .option("--cp_size <n>", "context-parallel ranks", positiveInt, 1)
    .option("--overwrite", "replace an output dir that already holds files", false)
    .action(async (o) => {
      const t0 = performance.now();
      const cfg = await convertHfCheckpoint({
        modelDir: o.model_dir,
        outputDir: o.output_dir,
        dtype: o.dtype,
        overwrite: o.overwrite,
        mapping: new Mapping({ tpSize: o.tp_size, ppSize: o.pp_size, cpSize: o.cp_size }),
        quantize: {
          qformat: o.qformat,
          kvCacheDtype: o.kv_cache_dtype,
          awqBlockSize: o.awq_block_size,
          quantCfg: o.quant_cfg,
          quantizeLmHead: o.quantize_lm_head,
          calibDataset: o.calib_dataset,
          calibSize: o.calib_size,
        },
      });
      const q = cfg.quantization;
      const secs = ((performance.now() - t0) / 1000).toFixed(1);
      console.error(
        `kiln: wrote ${o.output_dir} (${cfg.architecture}, ${cfg.dtype}, quant_algo ${q.quant_algo}, kv_cache_quant_algo ${q.kv_cache_quant_algo}) in ${secs} s`,
      );
    });
}
