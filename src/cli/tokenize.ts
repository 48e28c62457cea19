// kiln tokenize: print a text's token ids as a JSON array (like llama.cpp's llama-tokenize).

import fs from "node:fs";
import { Command } from "commander";
import { UsageError } from "../errors.js";
import { TextTokenizer } from "../tokenizer/tokenizer.js";

export function tokenizeCommand(): Command {
  return new Command("tokenize")
    .description("print the token ids of a text as a JSON array")
    .requiredOption("--tokenizer_dir <dir>", "dir with tokenizer.json (a HF model dir, checkpoint or engine dir)")
    .option("--text <text>", "the text to encode")
    .option("--input_file <file>", "encode the whole content of this file")
    .option("--add_special_tokens", "add the tokenizer's special tokens (bos/eos) as the model would", false)
    .action((o) => {
      if ((o.text === undefined) === (o.input_file === undefined))
        throw new UsageError("give exactly one of --text and --input_file");
      let text: string = o.text;
      if (o.input_file !== undefined) {
        try {
          text = fs.readFileSync(o.input_file, "utf8");
        } catch (e) {
          throw new UsageError(`--input_file ${o.input_file}: cannot read (${(e as NodeJS.ErrnoException).code ?? e})`);
        }
      }
      const ids = TextTokenizer.load(o.tokenizer_dir).encode(text, { addSpecialTokens: o.add_special_tokens });
      console.log(JSON.stringify(ids));
    });
}
