// kiln build: unified checkpoint → engine dir (trtllm-build's flags).

import { Command } from "commander";
import { BACKENDS, type BuildRequest } from "../builder/build-config.js";
import { buildEngine } from "../builder/build-engine.js";
import { enableDisable, oneOf, positiveInt } from "./flags.js";

export function buildCommand(): Command {
  const cmd = new Command("build");
  return cmd
    .description("build an engine for fixed limits from a unified checkpoint")
    .requiredOption("--checkpoint_dir <dir>", "unified checkpoint dir (from kiln convert)")
    .option("--output_dir <dir>", "engine dir to write", "engine_outputs")
    .addOption(
      cmd.createOption("--backend <name>", "backend the engine runs on").default("cpu").argParser(oneOf(BACKENDS)),
    )
    .option("--max_batch_size <n>", "most requests in one step (default 2048)", positiveInt)
    .option("--max_input_len <n>", "longest prompt in tokens (default 1024, clipped to max_seq_len)", positiveInt)
    .option(
      "--max_seq_len <n>",
      "longest prompt + output (default: the model's max_position_embeddings × rope factor)",
      positiveInt,
    )
    .option(
      "--max_num_tokens <n>",
      "most tokens in one step; longer prompts are processed in chunks (default 8192)",
      positiveInt,
    )
    .option("--tokens_per_block <n>", "tokens per paged KV cache block, a power of two (default 32)", positiveInt)
    .option("--max_beam_width <n>", "widest beam search the engine serves (default 1)", positiveInt)
    .addOption(
      cmd
        .createOption("--kv_cache_type <type>", "paged blocks or one contiguous region per sequence (default paged)")
        .argParser(oneOf(["paged", "continuous"] as const)),
    )
    .addOption(
      cmd
        .createOption("--remove_input_padding <on>", "pack tokens of a batch without padding (default enable)")
        .argParser(enableDisable),
    )
    .addOption(
      cmd
        .createOption(
          "--use_paged_context_fmha <on>",
          "chunked context and KV reuse over paged blocks (default enable)",
        )
        .argParser(enableDisable),
    )
    .option("--gather_context_logits", "keep the logits of every prompt position", false)
    .option("--gather_generation_logits", "keep the logits of every generated token", false)
    .option("--gather_all_token_logits", "both of the above", false)
    .option("--overwrite", "replace an output dir that already holds files", false)
    .action(async (o) => {
      const request: BuildRequest = {
        max_batch_size: o.max_batch_size,
        max_input_len: o.max_input_len,
        max_seq_len: o.max_seq_len,
        max_num_tokens: o.max_num_tokens,
        tokens_per_block: o.tokens_per_block,
        max_beam_width: o.max_beam_width,
        kv_cache_type: o.kv_cache_type === undefined ? undefined : o.kv_cache_type === "paged" ? "PAGED" : "CONTINUOUS",
        remove_input_padding: o.remove_input_padding,
        use_paged_context_fmha: o.use_paged_context_fmha,
        gather_context_logits: o.gather_context_logits || o.gather_all_token_logits,
        gather_generation_logits: o.gather_generation_logits || o.gather_all_token_logits,
      };
      const t0 = performance.now();
      const cfg = await buildEngine({
        checkpointDir: o.checkpoint_dir,
        outputDir: o.output_dir,
        backend: o.backend,
        request,
        overwrite: o.overwrite,
        warn: (m) => console.error(`kiln: warning: ${m}`),
        info: (m) => console.error(`kiln: ${m}`),
      });
      const b = cfg.build_config;
      const secs = ((performance.now() - t0) / 1000).toFixed(1);
      console.error(
        `kiln: wrote ${o.output_dir} (${cfg.backend}; max_batch_size ${b.max_batch_size}, max_input_len ${b.max_input_len}, max_seq_len ${b.max_seq_len}, max_num_tokens ${b.max_num_tokens}) in ${secs} s`,
      );
    });
}
