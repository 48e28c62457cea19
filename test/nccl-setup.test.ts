// What decides and prepares NCCL for GPU ranks, on a machine with neither GPU nor NCCL: the choice between
// NCCL and host staging, the unique ids handed round over the ranks' FIFOs (real processes' worth: one
// worker thread a rank), the ranks' place on their host, and the one-line error when libnccl is missing.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import { chooseExchange } from "../src/comm/exchange-choice.js";
import { rankEnv } from "../src/comm/rank-env.js";
import { UsageError } from "../src/errors.js";
import { ROOT, tempDir } from "./helpers.js";

const work = tempDir("kiln-nccl-setup-");
after(() => fs.rmSync(work, { recursive: true, force: true }));

describe("NCCL or host staging", () => {
  test("worked examples: NCCL when every rank on the host has a GPU, else the host", () => {
    const table: [number, number, string | undefined, string][] = [
      [2, 2, undefined, "nccl"],
      [4, 8, undefined, "nccl"],
      [2, 1, undefined, "host"],
      [4, 2, "auto", "host"],
      [4, 1, "", "host"],
      [2, 2, "host", "host"],
      [2, 2, "nccl", "nccl"],
    ];
    for (const [ranksOnHost, gpus, requested, want] of table) {
      assert.equal(chooseExchange({ ranksOnHost, gpus, requested }), want, `${ranksOnHost} ranks, ${gpus} GPUs`);
    }
  });

  test("KILN_COLLECTIVES=nccl with more ranks than GPUs is one line naming both counts", () => {
    assert.throws(
      () => chooseExchange({ ranksOnHost: 4, gpus: 1, requested: "nccl" }),
      (e: Error) =>
        e instanceof UsageError &&
        !e.message.includes("\n") &&
        /KILN_COLLECTIVES=nccl: 4 ranks on this host but 1 GPU: NCCL needs a GPU per rank/.test(e.message),
    );
    assert.throws(
      () => chooseExchange({ ranksOnHost: 2, gpus: 2, requested: "mpi" }),
      /KILN_COLLECTIVES=mpi: expected auto, nccl or host/,
    );
  });
});

describe("a rank's place on its host", () => {
  test("kiln's launcher starts every rank on one host; mpirun says where each rank is", () => {
    const kiln = rankEnv({ KILN_RANK: "3", KILN_WORLD_SIZE: "4", KILN_COMM_DIR: "/tmp/x" });
    assert.deepEqual([kiln?.localRank, kiln?.localSize], [3, 4]);
    const mpi = rankEnv({
      OMPI_COMM_WORLD_RANK: "5",
      OMPI_COMM_WORLD_SIZE: "8",
      OMPI_COMM_WORLD_LOCAL_RANK: "1",
      OMPI_COMM_WORLD_LOCAL_SIZE: "4",
      KILN_COMM_DIR: "/tmp/x",
    });
    assert.deepEqual([mpi?.rank, mpi?.localRank, mpi?.localSize], [5, 1, 4]);
    const old = rankEnv({ OMPI_COMM_WORLD_RANK: "1", OMPI_COMM_WORLD_SIZE: "2", KILN_COMM_DIR: "/tmp/x" });
    assert.deepEqual([old?.localRank, old?.localSize], [1, 2]);
    assert.throws(
      () =>
        rankEnv({
          OMPI_COMM_WORLD_RANK: "1",
          OMPI_COMM_WORLD_SIZE: "2",
          OMPI_COMM_WORLD_LOCAL_RANK: "x",
          KILN_COMM_DIR: "/t",
        }),
      /OMPI_COMM_WORLD_LOCAL_RANK=x: expected a non-negative integer/,
    );
  });
});

/** Runs `world` ranks as worker threads, each joining a FifoCommunicator and sharing its groups' ids. */
function shareIdsInWorkers(sizes: { tpSize?: number; ppSize?: number }, world: number): Promise<IdsOfRank[]> {
  const dir = path.join(work, `comm-${world}-${JSON.stringify(sizes).replace(/\W/g, "")}`);
  const dist = (m: string) => pathToFileURL(path.join(ROOT, "dist", "src", m)).href;
  // Each root makes bytes that would not survive being read as float32 numbers (signalling NaNs, -0), marked
  // with its own rank so that two groups' ids differ.
  const code = `
    const { workerData, parentPort } = require("node:worker_threads");
    (async () => {
      const { FifoCommunicator } = await import(${JSON.stringify(dist("comm/fifo-comm.js"))});
      const { shareGroupIds } = await import(${JSON.stringify(dist("comm/group-ids.js"))});
      const { Mapping } = await import(${JSON.stringify(dist("mapping.js"))});
      const { dir, rank, world, sizes } = workerData;
      const comm = new FifoCommunicator(dir, rank, world);
      let made = 0;
      const ids = shareGroupIds(comm, new Mapping(sizes), () => {
        made++;
        const id = new Uint8Array(128);
        const v = new DataView(id.buffer);
        for (let w = 0; w < 32; w++) v.setUint32(4 * w, w % 2 ? 0x7fa00000 + w : 0x80000000, true);
        id[0] = rank;
        id[127] = made;
        return id;
      });
      comm.close();
      parentPort.postMessage({ rank, made, tp: ids.tp && Array.from(ids.tp), pp: ids.pp && Array.from(ids.pp) });
    })().catch((e) => { throw e; });
  `;
  return Promise.all(
    Array.from(
      { length: world },
      (_, rank) =>
        new Promise<IdsOfRank>((resolve, reject) => {
          const w = new Worker(code, { eval: true, workerData: { dir, rank, world, sizes } });
          w.once("message", resolve);
          w.once("error", reject);
        }),
    ),
  );
}

interface IdsOfRank {
  rank: number;
  made: number;
  tp: number[] | null;
  pp: number[] | null;
}

describe("unique ids over the ranks' FIFOs", () => {
  test("tp 2 × pp 2: each group's first rank makes its id, every member gets its exact bytes", async () => {
    // Ranks: tp groups [0, 1] [2, 3], pp groups [0, 2] [1, 3].
    const ranks = await shareIdsInWorkers({ tpSize: 2, ppSize: 2 }, 4);
    const [r0, r1, r2, r3] = ranks.sort((a, b) => a.rank - b.rank);
    assert.deepEqual(
      ranks.map((r) => r.made),
      [2, 1, 1, 0],
      "rank 0 roots a tp and a pp group, 1 a pp group, 2 a tp group",
    );
    assert.deepEqual(r1.tp, r0.tp);
    assert.deepEqual(r3.tp, r2.tp);
    assert.deepEqual(r2.pp, r0.pp);
    assert.deepEqual(r3.pp, r1.pp);
    assert.notDeepEqual(r0.tp, r2.tp);
    assert.notDeepEqual(r0.pp, r1.pp);
    // The bytes rank 0 made for its tp group (its first id), NaN payloads and -0 included.
    assert.equal(r1.tp?.[0], 0);
    assert.equal(r1.tp?.[127], 1);
    assert.deepEqual(r1.tp?.slice(4, 8), [0x01, 0x00, 0xa0, 0x7f]);
    assert.deepEqual(r1.tp?.slice(8, 12), [0x00, 0x00, 0x00, 0x80]);
    assert.equal(r3.pp?.[0], 1, "rank 1 made the id of pp group [1, 3]");
  });

  test("a group of one has no id: tp 1 × pp 2 shares only pp ids", async () => {
    const ranks = await shareIdsInWorkers({ ppSize: 2 }, 2);
    for (const r of ranks) assert.equal(r.tp, null);
    assert.deepEqual(ranks[0].pp, ranks[1].pp);
  });
});

describe("loading NCCL", () => {
  test("importing the bindings turns NVLink multicast off before any NCCL call", async () => {
    delete process.env.NCCL_NVLS_ENABLE;
    await import("../src/backends/cuda/nccl.js");
    assert.equal(process.env.NCCL_NVLS_ENABLE, "0");
  });

  test("a missing libnccl is one line naming where it was looked for and how to point kiln at it", async () => {
    const { openNccl, ncclCandidates } = await import("../src/backends/cuda/nccl.js");
    const where = path.join(work, "no-such-dir", "libnccl.so.2");
    assert.throws(
      () => openNccl([where]),
      (e: Error) =>
        e.name === "CudaUnavailableError" &&
        !e.message.includes("\n") &&
        e.message.startsWith(`NCCL (libnccl.so.2) not found (${where})`) &&
        e.message.includes("KILN_CUDA_LIB_DIR"),
    );
    assert.ok(ncclCandidates()[0].endsWith("/libnccl.so.2"));
  });
});
