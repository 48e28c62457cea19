// kiln eval: perplexity of an engine over a text file, with sliding windows. An engine of several ranks runs
// one process per rank (started here, or by mpirun); each scores the same windows, rank 0 reports.

import fs from "node:fs";
import { Command } from "commander";
import { UsageError } from "../errors.js";
import { perplexity } from "../eval/perplexity.js";
import { LLM } from "../runtime/llm.js";
import { TextTokenizer } from "../tokenizer/tokenizer.js";
import { positiveInt } from "./flags.js";
import { rankOrLaunch } from "./ranks.js";

export function evalCommand(): Command {
  return new Command("eval")
    .description("perplexity over a text file with sliding windows (engine built with --gather_context_logits)")
    .option("--engine_dir <dir>", "engine dir (from kiln build --gather_context_logits)", "engine_outputs")
    .option("--tokenizer_dir <dir>", "dir with tokenizer.json (default: the engine dir)")
    .requiredOption("--dataset <file>", "a text file; its whole content is scored")
    .option("--max_input_len <n>", "tokens a window holds (default: the engine's max_input_len)", positiveInt)
    .option("--stride <n>", "tokens between window starts (default: half the window)", positiveInt)
    .option("--max_tokens <n>", "score only the first n tokens of the dataset", positiveInt)
    .option("--output_json <file>", "write the result as JSON")
    .action(async (o) => {
      const rank = await rankOrLaunch(o.engine_dir);
      if (rank === null) return;
      const leader = rank === 0;
      let text: string;
      try {
        text = fs.readFileSync(o.dataset, "utf8");
      } catch (e) {
        throw new UsageError(`--dataset ${o.dataset}: cannot read (${(e as NodeJS.ErrnoException).code ?? e})`);
      }
      const llm = await LLM.load(o.engine_dir);
      const tok = TextTokenizer.load(o.tokenizer_dir ?? o.engine_dir);
      let ids = tok.encode(text);
      if (o.max_tokens) ids = ids.slice(0, o.max_tokens);
      const window = o.max_input_len ?? llm.buildConfig.max_input_len;
      const r = perplexity(llm, ids, window, o.stride ?? Math.max(1, Math.floor(window / 2)));
      if (!leader) return llm.dispose();
      console.log(
        `tokens scored ${r.tokensScored}, perplexity ${r.perplexity.toFixed(3)}, ${r.windows} windows in ${r.seconds.toFixed(1)} s`,
      );
      if (o.output_json)
        fs.writeFileSync(o.output_json, `${JSON.stringify({ dataset: o.dataset, window, ...r }, null, 2)}\n`);
      llm.dispose();
    });
}
