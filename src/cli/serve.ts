// kiln serve: an OpenAI-compatible HTTP server over one engine. SIGTERM and SIGINT drain: new requests get
// 503, running ones finish, then the process exits 0. An engine of several ranks runs one process per rank
// (started here, or by mpirun): rank 0 serves and leads, the others step in lockstep with it
// (runtime/lockstep.ts).

import path from "node:path";
import { Command } from "commander";
import { LLM } from "../runtime/llm.js";
import { createServer } from "../server/app.js";
import { TextTokenizer } from "../tokenizer/tokenizer.js";
import { nonNegativeInt, positiveInt } from "./flags.js";
import { rankOrLaunch } from "./ranks.js";

export function serveCommand(): Command {
  return new Command("serve")
    .description("serve an engine over an OpenAI-compatible HTTP API (completions, chat, streaming)")
    .option("--engine_dir <dir>", "engine dir (from kiln build)", "engine_outputs")
    .option("--tokenizer_dir <dir>", "dir with tokenizer.json (default: the engine dir)")
    .option("--host <host>", "address to listen on", "127.0.0.1")
    .option("--port <port>", "port to listen on (0: any free port)", nonNegativeInt, 8000)
    .option("--api_key <key>", "require `Authorization: Bearer <key>` on /v1/ routes")
    .option("--served_model_name <name>", "the model name clients send (default: the engine dir's name)")
    .option("--max_queue_size <n>", "requests waiting for the engine before new ones get 429", positiveInt, 1024)
    .action(async (o) => {
      const rank = await rankOrLaunch(o.engine_dir, { drainOnSignal: true });
      if (rank === null) return;
      if (rank !== 0) {
        // Ctrl-C reaches every rank; rank 0 drains, then stops this one.
        process.on("SIGINT", () => {});
        const follower = await LLM.load(o.engine_dir);
        follower.followLeader();
        follower.dispose();
        return;
      }
      const llm = await LLM.load(o.engine_dir);
      llm.lead();
      const tok = TextTokenizer.load(o.tokenizer_dir ?? o.engine_dir);
      const modelName = o.served_model_name ?? path.basename(path.resolve(o.engine_dir));
      const server = createServer(llm, tok, { modelName, apiKey: o.api_key, maxQueue: o.max_queue_size });
      const address = await server.app.listen({ host: o.host, port: o.port });
      console.error(`kiln: serving ${modelName} on ${address} (OpenAI API under /v1)`);
      await new Promise<void>((resolve) => {
        let stopping = false;
        const stop = async () => {
          if (stopping) return;
          stopping = true;
          console.error("kiln: draining: finishing running requests, refusing new ones");
          await server.drain();
          resolve();
        };
        process.once("SIGTERM", stop);
        process.once("SIGINT", stop);
      });
      llm.dispose();
      console.error("kiln: stopped");
    });
}
