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
      // Every rank computes the same tokens; rank 0 prints them. The others' errors are kept for a failure.
      stdio: rank === 0 ? "inherit" : ["ignore", "ignore", "pipe"],
    }),
  );
  const stderr = children.map(() => [] as Buffer[]);
  children.forEach((c, rank) => {
    c.stderr?.on("data", (d: Buffer) => stderr[rank].push(d));
  });
  return new Promise((resolve) => {
    let running = worldSize;
    let failure: { rank: number; code: number } | null = null;
    children.forEach((c, rank) => {
      c.on("exit", (code, signal) => {
        running--;
        if (code !== 0 && !failure) {
          failure = { rank, code: code ?? (signal === "SIGKILL" ? 137 : 1) };
          // The others would wait forever on a dead peer.
          for (const other of children) if (other !== c && other.exitCode === null) other.kill("SIGTERM");
        }
        if (running > 0) return;
        fs.rmSync(commDir, { recursive: true, force: true });
        // Rank 0 has said why on its own stderr; another rank that failed first says it here.
        if (failure && failure.rank !== 0) process.stderr.write(Buffer.concat(stderr[failure.rank]));
        resolve(failure ? failure.code : 0);
      });
    });
  });
}
