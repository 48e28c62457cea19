// kiln's own launcher: starts one process per rank (this same command, with KILN_RANK set), lets rank 0
// speak on stdout, and ends every rank as soon as one fails, so that no rank waits forever on a dead peer.

import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

/** Runs `worldSize` copies of this process as ranks; resolves with the exit code the run should end with. */
export function launchRanks(worldSize: number): Promise<number> {
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
          // The others would wait forever on a dead peer.
          for (const other of children) if (other !== c && other.exitCode === null) other.kill("SIGTERM");
        }
        if (running > 0) return;
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
