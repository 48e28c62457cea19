// kiln run: generate from an engine with TensorRT-LLM run.py's flags, printing text and optionally writing
// ids, log probs and logits as JSON and .npy files.

import fs from "node:fs";
import { Command } from "commander";
import { UsageError } from "../errors.js";
import { type GenerateOptions, type GenerationOutput, isFailure, LLM } from "../runtime/llm.js";
import { StreamDecoder, TextTokenizer } from "../tokenizer/tokenizer.js";
import { finiteNumber, nonNegativeInt, nonNegativeNumber, positiveInt, positiveNumber, unitInterval } from "./flags.js";
import { type Prompt, readInputFile } from "./inputs.js";
import { rankOrLaunch } from "./ranks.js";
import { writeRunOutputs } from "./run-outputs.js";

function tokenizerFor(dir: string, needed: boolean): TextTokenizer | null {
  if (!needed && !fs.existsSync(`${dir}/tokenizer.json`)) return null;
  return TextTokenizer.load(dir);
}

/** run.py's --stop_words/--bad_words: each word is encoded to a token sequence. */
function wordSequences(words: string[] | undefined, tok: TextTokenizer | null, flag: string): number[][] {
  if (!words?.length) return [];
  if (!tok) throw new UsageError(`${flag} needs a tokenizer (--tokenizer_dir)`);
  return words.map((w) => tok.encode(w, { addSpecialTokens: false }));
}

export function runCommand(): Command {
  return new Command("run")
    .description("generate text with an engine: greedy, sampling or beam search")
    .option("--engine_dir <dir>", "engine dir (from kiln build)", "engine_outputs")
    .option("--tokenizer_dir <dir>", "dir with tokenizer.json (default: the engine dir, where build copies it)")
    .option("--input_text <text...>", "prompts as text")
    .option("--input_file <file>", "prompts as token ids (.csv rows or a .json array of arrays) or text lines (.txt)")
    .requiredOption("--max_output_len <n>", "most tokens to generate per prompt", positiveInt)
    .option("--end_id <id>", "token that ends generation (default: the model's eos)", nonNegativeInt)
    .option("--num_beams <n>", "beam width (at most the engine's max_beam_width)", positiveInt, 1)
    .option("--num_return_sequences <n>", "sequences returned per prompt (default: num_beams)", positiveInt)
    .option("--temperature <t>", "sampling temperature (0: greedy)", nonNegativeNumber, 1.0)
    .option("--top_k <k>", "sample from the k most likely tokens (1: greedy, 0: off)", nonNegativeInt, 1)
    .option("--top_p <p>", "sample from the smallest set holding probability p (0 or 1: off)", unitInterval, 0)
    .option("--min_p <p>", "drop tokens less likely than p × the most likely one", unitInterval, 0)
    .option(
      "--repetition_penalty <x>",
      "divide (or multiply, if negative) the logits of seen tokens",
      positiveNumber,
      1.0,
    )
    .option("--presence_penalty <x>", "subtract from the logits of generated tokens", finiteNumber, 0)
    .option("--frequency_penalty <x>", "subtract per occurrence from the logits of generated tokens", finiteNumber, 0)
    .option("--length_penalty <x>", "beam score = log prob / length ** length_penalty", finiteNumber, 1.0)
    .option("--early_stopping <0|1>", "beam search ends once num_beams hypotheses are finished", nonNegativeInt, 1)
    .option("--random_seed <n>", "seed of each request's random stream", nonNegativeInt, 0)
    .option("--stop_words <words...>", "end generation after any of these texts")
    .option("--bad_words <words...>", "never generate these texts")
    .option("--streaming", "print tokens as they are generated (one sequence per prompt)", false)
    .option("--no_prompt_template", "do not wrap text prompts in the tokenizer's chat template")
    .option("--no_add_special_tokens", "encode text prompts without the tokenizer's special tokens")
    .option("--output_json <file>", "write input_ids, output_ids, cum_log_probs and gathered logits as JSON")
    .option(
      "--output_logits_npy <file>",
      "write <stem>_context.npy and <stem>_generation.npy (engines that gather logits)",
    )
    .option("--output_log_probs_npy <file>", "write the generated tokens' log probs [prompt][sequence][step]")
    .option("--output_cum_log_probs_npy <file>", "write cumulative log probs [prompt][sequence]")
    .option("--output_npy <file>", "write output ids [prompt][sequence][step] as int32, padded with --pad_id")
    .option(
      "--pad_id <id>",
      "token that pads --output_npy (default: the tokenizer's pad, else the end id)",
      nonNegativeInt,
    )
    .action(async (o) => {
      if (!!o.input_text === !!o.input_file) throw new UsageError("give exactly one of --input_text and --input_file");
      const rank = await rankOrLaunch(o.engine_dir);
      if (rank === null) return;
      // Every rank computes the same tokens; rank 0 prints them and writes the output files.
      const leader = rank === 0;
      const prompts: Prompt[] = o.input_text
        ? o.input_text.map((text: string) => ({ text }))
        : readInputFile(o.input_file);
      const llm = await LLM.load(o.engine_dir);
      const hasText = prompts.some((p) => "text" in p) || !!o.stop_words || !!o.bad_words || o.streaming;
      const tok = tokenizerFor(o.tokenizer_dir ?? o.engine_dir, hasText);
      const useTemplate = !o.no_prompt_template && tok?.chatTemplate != null;
      const inputIds = prompts.map((p) => {
        if ("ids" in p) return p.ids;
        const text = useTemplate
          ? tok!.applyChatTemplate([{ role: "user", content: p.text }], { addGenerationPrompt: true })
          : p.text;
        return tok!.encode(text, { addSpecialTokens: !o.no_add_special_tokens });
      });
      const opts: GenerateOptions = {
        maxNewTokens: o.max_output_len,
        endId: o.end_id ?? tok?.eosId ?? null,
        numBeams: o.num_beams,
        numReturnSequences: o.num_return_sequences ?? o.num_beams,
        lengthPenalty: o.length_penalty,
        earlyStopping: o.early_stopping !== 0,
        stopWords: wordSequences(o.stop_words, tok, "--stop_words"),
        sampling: {
          temperature: o.temperature,
          topK: o.top_k,
          topP: o.top_p === 0 ? 1 : o.top_p,
          minP: o.min_p,
          repetitionPenalty: o.repetition_penalty,
          presencePenalty: o.presence_penalty,
          frequencyPenalty: o.frequency_penalty,
          seed: o.random_seed,
          badWords: wordSequences(o.bad_words, tok, "--bad_words"),
        },
      };
      // Refuse before any work: a run either fits the engine entirely or does nothing.
      for (const ids of inputIds) llm.validate(ids, opts);
      const show = (ids: number[], skip: boolean) =>
        tok ? JSON.stringify(tok.decode(ids, { skipSpecialTokens: skip })) : `[${ids}]`;
      const print = (text: string) => leader && process.stdout.write(text);
      const t0 = performance.now();
      let outs: GenerationOutput[];
      if (o.streaming) {
        outs = [];
        for (const [i, ids] of inputIds.entries()) {
          print(`Input [Text ${i}]: ${show(ids, false)}\n`);
          print(`Output [Text ${i} Beam 0]: `);
          const decoder = new StreamDecoder(tok!, { skipSpecialTokens: true });
          const request = llm.submit(ids, opts);
          for await (const t of llm.follow(request)) print(decoder.push(t));
          print(`${decoder.flush()}\n`);
          outs.push(llm.result(request));
        }
      } else {
        outs = llm.generate(inputIds, opts).map((r) => {
          if (isFailure(r)) throw r.error;
          return r;
        });
        outs.forEach((out, i) => {
          print(`Input [Text ${i}]: ${show(inputIds[i], false)}\n`);
          out.sequences.forEach((s, b) => {
            print(`Output [Text ${i} Beam ${b}]: ${show(s.outputIds, true)}\n`);
          });
        });
      }
      if (!leader) return;
      const secs = (performance.now() - t0) / 1000;
      const generated = outs.reduce((n, x) => n + x.sequences.reduce((m, s) => m + s.outputIds.length, 0), 0);
      console.error(`kiln: ${generated} tokens in ${secs.toFixed(2)} s (${(generated / secs).toFixed(1)} tokens/s)`);
      const padId = o.pad_id ?? tok?.padId ?? opts.endId ?? 0;
      writeRunOutputs(o, inputIds, outs, llm.vocabSize, padId);
    });
}
