// kiln's command line: one subcommand a file. Known errors print one line and exit 1; anything else is a bug
// and keeps its stack trace.

import { Command, CommanderError } from "commander";
import { KilnError } from "../errors.js";
import { KILN_VERSION } from "../version.js";
import { benchCommand } from "./bench.js";
import { buildCommand } from "./build.js";
import { convertCommand } from "./convert.js";
import { evalCommand } from "./eval.js";
import { quantizeCommand } from "./quantize.js";
import { runCommand } from "./run.js";
import { serveCommand } from "./serve.js";
import { tokenizeCommand } from "./tokenize.js";

/** A usage error as every other error prints: one `kiln:` line (commander's own says `error: …` on two). */
const oneLine = {
  outputError: (message: string, write: (s: string) => void) =>
    write(`kiln: ${message.trim().replace(/^error: /, "")} (run with --help for usage)\n`),
};

export async function main(argv: string[]): Promise<number> {
  const program = new Command("kiln")
    .description("Hugging Face checkpoint → unified checkpoint → engine → text")
    .version(KILN_VERSION)
    .exitOverride()
    .configureOutput(oneLine);
  for (const cmd of [
    convertCommand(),
    quantizeCommand(),
    buildCommand(),
    runCommand(),
    serveCommand(),
    evalCommand(),
    tokenizeCommand(),
    benchCommand(),
  ]) {
    program.addCommand(cmd.exitOverride().configureOutput(oneLine));
  }
  try {
    await program.parseAsync(argv, { from: "user" });
    // A command may have set the code itself (kiln run as the launcher: the code its ranks ended with).
    return Number(process.exitCode ?? 0);
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (e instanceof KilnError) {
      console.error(`kiln: ${e.message}`);
      return 1;
    }
    throw e;
  }
}
