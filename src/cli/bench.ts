// kiln bench: the GPU benchmark of bench/bench.ts (a random Qwen2.5-0.5B-shaped model through convert → build
// --backend cuda → the runtime), from the command line.

import { Command, Option } from "commander";
import { UsageError } from "../errors.js";
import { KV_CACHE_DTYPES, QFORMATS } from "../quantization/quantize-plan.js";
import { positiveInt } from "./flags.js";

export function benchCommand(): Command {
  return new Command("bench")
    .description("benchmark the cuda backend on a random model of Qwen2.5-0.5B's (or 7B's) shape (GPU machine)")
    .option("--work <dir>", "where the random model, checkpoint and engine go", "/tmp/kiln-bench")
    .option("--out <file>", "write the results as JSON")
    .option("--hf <file>", "merge the transformers baseline that scripts/bench_hf.py wrote in the same run")
    .option("--quick", "32 sequences instead of 256 in the nano-vllm workload", false)
    .addOption(
      new Option(
        "--qformat <q>",
        "quantize the bench model as kiln quantize does (stand-in statistics); default bf16",
      ).choices(QFORMATS),
    )
    .addOption(new Option("--kv_cache_dtype <d>", "a quantized KV cache; default bf16").choices(KV_CACHE_DTYPES))
    .addOption(
      new Option("--shape <s>", "the random model's shape: Qwen2.5-0.5B's or Qwen2.5-7B's")
        .choices(["0.5b", "7b"])
        .default("0.5b"),
    )
    .option("--tp_size <n>", "split the engine for tensor parallelism: one process and GPU per rank", positiveInt, 1)
    .option("--pp_size <n>", "split the engine into pipeline stages: one process and GPU per rank", positiveInt, 1)
    .option(
      "--moe",
      "a random Qwen2-MoE-shaped model instead (60 experts, top 4, shared expert; ~2.7 B parameters)",
      false,
    )
    .action(async (o) => {
      let bench: typeof import("../../bench/bench.js");
      try {
        bench = await import("../../bench/bench.js");
      } catch (e) {
        throw new UsageError(
          `kiln bench needs the bench/ folder of a kiln checkout (${(e as Error).message.split("\n")[0]})`,
        );
      }
      await bench.runBench({
        work: o.work,
        out: o.out,
        hf: o.hf,
        quick: o.quick,
        qformat: o.qformat,
        kvCacheDtype: o.kv_cache_dtype,
        moe: o.moe,
        shape: o.shape,
        tpSize: o.tp_size,
        ppSize: o.pp_size,
      });
    });
}
