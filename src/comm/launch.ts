// kiln's own launcher: starts one process per rank (this same command, with KILN_RANK set), lets rank 0
// speak on stdout, and ends every rank as soon as one fails, so that no rank waits forever on a dead peer.
// With `drainOnSignal` (kiln serve), SIGINT and SIGTERM reach rank 0 alone, as SIGTERM: it drains, then
// stops the other ranks itself (they ignore a terminal's Ctrl-C, which reaches every process of the group).

import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

/** How long ranks told to stop after another failed may take before they are killed. */
const KILL_AFTER_MS = 5000;

/** Runs `worldSize` copies of this process as ranks; resolves with the exit code the run should end with. */
export function launchRanks(worldSize: number, opts: { drainOnSignal?: boolean } = {}): Promise<number> {
  const commDir = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-comm-"));
  const children = Array.from({ length: worldSize }, (_, rank) =>
    spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
      env: {
        ...process.env,
        KILN_RANK: String(rank),
        KILN_WORLD_SIZE: String(worldSize),
        KILN_COMM_DIR: commDir,
        // NVLink multicast (NVLS) can take a shared host's GPUs out of service: never on in a rank kiln starts.
        NCCL_NVLS_ENABLE: "0",
      },
      // Every rank computes the same tokens; rank 0 prints them and its stderr passes through. The others'
      // errors are kept for a failure.
      stdio: rank === 0 ? ["inherit", "inherit", "pipe"] : ["ignore", "ignore", "pipe"],
    }),
  );
  const stderr = children.map(() => [] as Buffer[]);
  const forward = () => {
    if (children[0].exitCode === null) children[0].kill("SIGTERM");
  };
  if (opts.drainOnSignal) {
    process.on("SIGINT", forward);
    process.on("SIGTERM", forward);
  }
  children.forEach((c, rank) => {
    c.stderr?.on("data", (d: Buffer) => {
      stderr[rank].push(d);
      if (rank === 0) process.stderr.write(d);
    });
  });
  return new Promise((resolve) => {
    let running = worldSize;
    let failure: { rank: number; code: number } | null = null;
    children.forEach((c, rank) => {
      // "close": the rank has exited and its stderr has all been read.
      c.on("close", (code, signal) => {
        running--;
        if (code !== 0 && !failure) {
          failure = { rank, code: code ?? (signal === "SIGKILL" ? 137 : 1) };
          // The others would wait forever on a dead peer. A rank that drains on SIGTERM (kiln serve's rank 0)
          // may be waiting on it already: SIGKILL a little later.
          const others = children.filter((other) => other !== c && other.exitCode === null);
          for (const other of others) other.kill("SIGTERM");
          setTimeout(() => {
            for (const other of others) if (other.exitCode === null && other.signalCode === null) other.kill("SIGKILL");
          }, KILL_AFTER_MS).unref();
        }
        if (running > 0) return;
        process.off("SIGINT", forward);
        process.off("SIGTERM", forward);
        fs.rmSync(commDir, { recursive: true, force: true });
        // Another rank that failed first says why here, but not what rank 0 has said already (every rank
        // refuses bad input alike).
        if (failure && failure.rank !== 0) {
          const said = new Set(Buffer.concat(stderr[0]).toString().split("\n"));
          const why = Buffer.concat(stderr[failure.rank]).toString().split("\n");
          const news = why.filter((line) => line !== "" && !said.has(line));
          if (news.length > 0) process.stderr.write(`${news.join("\n")}\n`);
        }
        resolve(failure ? failure.code : 0);
      });
    });
  });
}
