// kiln convert: HF model dir → unified checkpoint (TensorRT-LLM's convert_checkpoint.py flags).

import { Command } from "commander";
import { convertHfCheckpoint } from "../checkpoint/convert-hf.js";
import { Mapping } from "../mapping.js";
import { oneOf, positiveInt } from "./flags.js";

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
    .option("--overwrite", "replace an output dir that already holds files", false)
    .action(async (o) => {
      const t0 = performance.now();
      const cfg = await convertHfCheckpoint({
        modelDir: o.model_dir,
        outputDir: o.output_dir,
        dtype: o.dtype,
        overwrite: o.overwrite,
      });
      const secs = ((performance.now() - t0) / 1000).toFixed(1);
      console.error(
        `kiln: wrote ${o.output_dir} (${cfg.architecture}, ${cfg.dtype}, ${cfg.num_hidden_layers} layers) in ${secs} s`,
      );
    });
}
