// kiln convert: HF model dir → unified checkpoint (TensorRT-LLM's convert_checkpoint.py flags).

import { Command } from "commander";
import { convertHfCheckpoint } from "../checkpoint/convert-hf.js";
import { Mapping } from "../mapping.js";
import { finiteNumber, oneOf, positiveInt } from "./flags.js";

export function convertCommand(): Command {
  const cmd = new Command("convert");
  return cmd
    .description(
      "convert a Hugging Face model dir into a unified checkpoint (config.json + one rank{N}.safetensors a tp × pp rank)",
    )
    .requiredOption("--model_dir <dir>", "Hugging Face model dir (config.json, *.safetensors)")
    .option("--output_dir <dir>", "checkpoint dir to write", "tllm_checkpoint")
    .addOption(
      cmd
        .createOption(
          "--dtype <dtype>",
          "weights dtype; auto takes the model's, with float32 made float16 as TensorRT-LLM does",
        )
        .default("auto")
        .argParser(oneOf(["auto", "float32", "float16", "bfloat16"] as const)),
    )
    .option("--tp_size <n>", "tensor-parallel ranks: heads, MLP and vocab split across them", positiveInt, 1)
    .option(
      "--pp_size <n>",
      "pipeline stages: layers split across them (the first stages take any extra)",
      positiveInt,
      1,
    )
    .option("--cp_size <n>", "context-parallel ranks (they share their (tp, pp) rank file)", positiveInt, 1)
    .option("--moe_tp_size <n>", "tensor parallelism inside each expert (default: tp_size / moe_ep_size)", positiveInt)
    .option("--moe_ep_size <n>", "expert parallelism (default: tp_size / moe_tp_size, or 1)", positiveInt)
    .option(
      "--use_weight_only",
      "quantize the linear layers' weights (per output channel); activations stay in dtype",
      false,
    )
    .addOption(
      cmd
        .createOption(
          "--weight_only_precision <p>",
          "int8 (W8A16), int4 (W4A16), or int4_gptq (W4A16_GPTQ: calibrated, group scales and zeros)",
        )
        .default("int8")
        .argParser(oneOf(["int8", "int4", "int4_gptq"] as const)),
    )
    .option(
      "--smoothquant <alpha>",
      "SmoothQuant W8A8 with migration strength alpha in [0, 1] (calibrated; TensorRT-LLM's W8A8_SQ_*_PLUGIN)",
      finiteNumber,
    )
    .option("--per_token", "SmoothQuant: quantize activations per token at run time (else one calibrated scale)", false)
    .option("--per_channel", "SmoothQuant: one weight scale per output channel (else per tensor)", false)
    .option(
      "--int8_kv_cache",
      "store the KV cache as int8 with one calibrated scale a layer (kv_cache_quant_algo INT8; cpu backend)",
      false,
    )
    .option("--group_size <n>", "input channels a GPTQ scale and zero cover", positiveInt, 128)
    .option(
      "--calib_dataset <file>",
      "calibration texts: a .txt (one a line) or .jsonl ({text}); default the Brown corpus",
    )
    .option("--calib_size <n>", "calibration texts to use", positiveInt, 64)
    .option("--overwrite", "replace an output dir that already holds files", false)
    .action(async (o) => {
      const t0 = performance.now();
      const mapping = new Mapping({
        tpSize: o.tp_size,
        ppSize: o.pp_size,
        cpSize: o.cp_size,
        moeTpSize: o.moe_tp_size,
        moeEpSize: o.moe_ep_size,
      });
      const cfg = await convertHfCheckpoint({
        modelDir: o.model_dir,
        outputDir: o.output_dir,
        dtype: o.dtype,
        overwrite: o.overwrite,
        mapping,
        weightOnlyBits:
          o.use_weight_only && o.weight_only_precision !== "int4_gptq"
            ? o.weight_only_precision === "int4"
              ? 4
              : 8
            : undefined,
        // As TensorRT-LLM's converter, int4_gptq applies with or without --use_weight_only.
        gptq:
          o.weight_only_precision === "int4_gptq"
            ? { groupSize: o.group_size, calibDataset: o.calib_dataset, calibSize: o.calib_size }
            : undefined,
        smoothquant:
          o.smoothquant !== undefined
            ? {
                alpha: o.smoothquant,
                perToken: o.per_token,
                perChannel: o.per_channel,
                calibDataset: o.calib_dataset,
                calibSize: o.calib_size,
              }
            : undefined,
        int8KvCache: o.int8_kv_cache ? { calibDataset: o.calib_dataset, calibSize: o.calib_size } : undefined,
      });
      const secs = ((performance.now() - t0) / 1000).toFixed(1);
      console.error(
        `kiln: wrote ${o.output_dir} (${cfg.architecture}, ${cfg.dtype}, ${cfg.num_hidden_layers} layers) in ${secs} s`,
      );
    });
}
