// `kiln serve` started as a user starts it (the launcher starting one process per rank for a split engine),
// and asked through the official openai client: shared by the multi-rank serve suites of the cpu (test/) and
// cuda (test-gpu/) backends.

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import OpenAI from "openai";
import { KILN } from "./rank-runs.js";

export interface Served {
  proc: ChildProcess;
  client: OpenAI;
  exited: Promise<number | null>;
  log: () => string;
}

const started: ChildProcess[] = [];

/**
 * `kiln serve` on `engine` at a free port, once it says where it listens; in a process group of its own, as a
 * terminal would start it, so that a test can signal the group and `stopServers` can end every rank. `env`
 * adds to (or, with undefined, removes from) this process's environment.
 */
export async function serve(engine: string, env: NodeJS.ProcessEnv = {}): Promise<Served> {
  return listening(start(engine, env));
}

/**
 * `kiln serve` on `engine` as `mpirun -n world` starts it: one process per rank with OpenMPI's rank
 * variables, each its own; rank 0's once it listens, and every rank's process.
 */
export async function serveUnderMpirun(
  engine: string,
  world: number,
): Promise<{ rank0: Served; ranks: ChildProcess[] }> {
  const job = {
    OMPI_COMM_WORLD_SIZE: String(world),
    OMPI_MCA_ess_base_jobid: `kiln-serve-${process.pid}-${Date.now()}`,
  };
  const ranks = Array.from({ length: world }, (_, r) => start(engine, { ...job, OMPI_COMM_WORLD_RANK: String(r) }));
  return { rank0: await listening(ranks[0]), ranks };
}

function start(engine: string, env: NodeJS.ProcessEnv): ChildProcess {
  const proc = spawn(
    process.execPath,
    [KILN, "serve", "--engine_dir", engine, "--port", "0", "--served_model_name", "m"],
    {
      stdio: ["ignore", "ignore", "pipe"],
      detached: true,
      env: { ...process.env, KILN_RANK: undefined, OMPI_COMM_WORLD_RANK: undefined, ...env },
    },
  );
  started.push(proc);
  return proc;
}

async function listening(proc: ChildProcess): Promise<Served> {
  let log = "";
  const exited = new Promise<number | null>((resolve) => proc.on("exit", (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    proc.stderr?.on("data", (d) => {
      log += d;
      const m = /on (http:\/\/\S+)/.exec(log);
      if (m) resolve(m[1]);
    });
    exited.then(() => reject(new Error(`kiln serve exited early: ${log}`)));
  });
  return { proc, exited, log: () => log, client: new OpenAI({ baseURL: `${url}/v1`, apiKey: "none", maxRetries: 0 }) };
}

/** Ends every server `serve` started that is still running, ranks included. */
export function stopServers(): void {
  for (const p of started) {
    if (p.exitCode !== null || p.signalCode !== null) continue;
    try {
      process.kill(-(p.pid as number), "SIGKILL");
    } catch (e) {
      // A group that ended before its exit event reached this process is already what this wants.
      if ((e as NodeJS.ErrnoException).code !== "ESRCH") throw e;
    }
  }
}

/** The pids of the processes running `kiln serve` on `engine` (the launcher and its ranks). */
export function servingPids(engine: string): number[] {
  const ps = spawnSync("ps", ["-eo", "pid=,args="], { encoding: "utf8" }).stdout;
  return ps
    .split("\n")
    .filter((line) => line.includes(" serve ") && line.includes(engine))
    .map((line) => Number(line.trim().split(/\s+/)[0]));
}

export type Completion = Parameters<OpenAI["completions"]["create"]>[0];

/** The texts a request gets (each choice's, streamed) or the texts and finish reasons (whole). */
export async function answer(client: OpenAI, body: Completion): Promise<string[]> {
  if (body.stream) {
    const texts: string[] = [];
    const stream = await client.completions.create({ ...body, stream: true });
    for await (const chunk of stream) for (const c of chunk.choices) texts[c.index] = (texts[c.index] ?? "") + c.text;
    return texts;
  }
  const r = await client.completions.create({ ...body, stream: false });
  return r.choices.map((c) => `${c.text} [${c.finish_reason}]`);
}
