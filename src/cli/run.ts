// kiln run: generate from an engine (TensorRT-LLM's run.py flags), printing text and optionally writing
// the ids and logits as JSON.

import fs from "node:fs";
import { Command } from "commander";
import { UsageError } from "../errors.js";
import { LLM } from "../runtime/llm.js";
import { TextTokenizer } from "../tokenizer/tokenizer.js";
import { nonNegativeInt, positiveInt } from "./flags.js";
import { type Prompt, readInputFile } from "./inputs.js";

function tokenizerFor(dir: string, needed: boolean): TextTokenizer | null {
  if (!needed && !fs.existsSync(`${dir}/tokenizer.json`)) return null;
  return TextTokenizer.load(dir);
}

export function runCommand(): Command {
  return new Command("run")
    .description("generate text with an engine (greedy)")
    .option("--engine_dir <dir>", "engine dir (from kiln build)", "engine_outputs")
    .option("--tokenizer_dir <dir>", "dir with tokenizer.json (default: the engine dir, where build copies it)")
    .option("--input_text <text...>", "prompts as text")
    .option("--input_file <file>", "prompts as token ids (.csv rows or a .json array of arrays) or text lines (.txt)")
    .requiredOption("--max_output_len <n>", "most tokens to generate per prompt", positiveInt)
    .option("--end_id <id>", "token that ends generation (default: the model's eos)", nonNegativeInt)
    .option("--no_prompt_template", "do not wrap text prompts in the tokenizer's chat template")
    .option("--no_add_special_tokens", "encode text prompts without the tokenizer's special tokens")
    .option("--output_json <file>", "write input_ids, output_ids and gathered logits as JSON")
    .action((o) => {
      if (!!o.input_text === !!o.input_file) throw new UsageError("give exactly one of --input_text and --input_file");
      const prompts: Prompt[] = o.input_text
        ? o.input_text.map((text: string) => ({ text }))
        : readInputFile(o.input_file);
      const llm = LLM.load(o.engine_dir);
      const hasText = prompts.some((p) => "text" in p);
      const tok = tokenizerFor(o.tokenizer_dir ?? o.engine_dir, hasText);
      const useTemplate = !o.no_prompt_template && tok?.chatTemplate != null;
      const inputIds = prompts.map((p) => {
        if ("ids" in p) return p.ids;
        const text = useTemplate
          ? tok!.applyChatTemplate([{ role: "user", content: p.text }], { addGenerationPrompt: true })
          : p.text;
        return tok!.encode(text, { addSpecialTokens: !o.no_add_special_tokens });
      });
      const endId = o.end_id ?? tok?.eosId ?? null;
      const params = { maxNewTokens: o.max_output_len, endId };
      for (const ids of inputIds) llm.validate(ids, params);
      const t0 = performance.now();
      const outs = llm.generate(inputIds, params);
      const secs = (performance.now() - t0) / 1000;
      outs.forEach((out, i) => {
        const shown = tok ? JSON.stringify(tok.decode(inputIds[i], { skipSpecialTokens: false })) : `[${inputIds[i]}]`;
        console.log(`Input [Text ${i}]: ${shown}`);
        const text = tok
          ? JSON.stringify(tok.decode(out.outputIds, { skipSpecialTokens: true }))
          : `[${out.outputIds}]`;
        console.log(`Output [Text ${i} Beam 0]: ${text}`);
      });
      const generated = outs.reduce((n, o2) => n + o2.outputIds.length, 0);
      console.error(`kiln: ${generated} tokens in ${secs.toFixed(2)} s (${(generated / secs).toFixed(1)} tokens/s)`);
      if (o.output_json) {
        const json: Record<string, unknown> = { input_ids: inputIds, output_ids: outs.map((x) => x.outputIds) };
        if (outs[0].contextLogits) json.context_logits = outs.map((x) => x.contextLogits!.map((r) => Array.from(r)));
        if (outs[0].generationLogits)
          json.generation_logits = outs.map((x) => x.generationLogits!.map((r) => Array.from(r)));
        fs.writeFileSync(o.output_json, JSON.stringify(json));
      }
    });
}
