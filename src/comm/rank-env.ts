// Which rank this process is: set by kiln's own launcher (KILN_RANK, KILN_WORLD_SIZE, KILN_COMM_DIR) or by
// OpenMPI's mpirun (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK and _LOCAL_SIZE,
// and a job id every rank of the job shares).

import os from "node:os";
import path from "node:path";
import { UsageError } from "../errors.js";
import type { Communicator } from "./communicator.js";
import { FifoCommunicator } from "./fifo-comm.js";

export interface RankEnv {
  rank: number;
  worldSize: number;
  /** The rank among this host's ranks: what picks its GPU. kiln's launcher starts every rank on one host. */
  localRank: number;
  /** Ranks of this run on this host. */
  localSize: number;
  /** Where the ranks of this run meet (every rank computes the same path). */
  commDir: string;
  /** Who started the ranks, for error messages. */
  launcher: "kiln" | "mpirun";
}

/** OpenMPI's job id, in whichever variable this OpenMPI version sets. */
function mpiJobId(env: NodeJS.ProcessEnv): string | undefined {
  const raw = env.OMPI_MCA_ess_base_jobid ?? env.PMIX_NAMESPACE ?? env.OMPI_MCA_orte_hnp_uri ?? env.OMPI_MCA_pmix;
  return raw?.replace(/[^A-Za-z0-9_.-]/g, "_").slice(0, 80);
}

/** This process's rank, or null when nobody started it as one (a single-rank run). */
export function rankEnv(env: NodeJS.ProcessEnv = process.env): RankEnv | null {
  const int = (name: string) => {
    const v = Number(env[name]);
    if (!Number.isInteger(v) || v < 0) throw new UsageError(`${name}=${env[name]}: expected a non-negative integer`);
    return v;
  };
  if (env.KILN_RANK !== undefined) {
    if (!env.KILN_COMM_DIR) throw new UsageError("KILN_RANK is set but KILN_COMM_DIR is not");
    const rank = int("KILN_RANK");
    const worldSize = int("KILN_WORLD_SIZE");
    return { rank, worldSize, localRank: rank, localSize: worldSize, commDir: env.KILN_COMM_DIR, launcher: "kiln" };
  }
  if (env.OMPI_COMM_WORLD_RANK !== undefined) {
    const job = env.KILN_COMM_DIR ? undefined : mpiJobId(env);
    if (!env.KILN_COMM_DIR && !job) {
      throw new UsageError("under mpirun: no OpenMPI job id found to meet the other ranks by; set KILN_COMM_DIR");
    }
    const rank = int("OMPI_COMM_WORLD_RANK");
    return {
      rank,
      worldSize: int("OMPI_COMM_WORLD_SIZE"),
      localRank: env.OMPI_COMM_WORLD_LOCAL_RANK === undefined ? rank : int("OMPI_COMM_WORLD_LOCAL_RANK"),
      localSize:
        env.OMPI_COMM_WORLD_LOCAL_SIZE === undefined ? int("OMPI_COMM_WORLD_SIZE") : int("OMPI_COMM_WORLD_LOCAL_SIZE"),
      commDir: env.KILN_COMM_DIR ?? path.join(os.tmpdir(), `kiln-comm-${job}`),
      launcher: "mpirun",
    };
  }
  return null;
}

/** Checks the ranks started match the engine's world size, then joins them. */
export function joinWorld(env: RankEnv, engineWorldSize: number, engineDir: string): Communicator {
  if (env.worldSize !== engineWorldSize) {
    const how = env.launcher === "mpirun" ? `mpirun -n ${env.worldSize}` : `${env.worldSize} ranks`;
    throw new UsageError(
      `${how}, but ${engineDir} was built for world_size ${engineWorldSize}: run it with mpirun -n ${engineWorldSize}, or with kiln run alone, which starts the ranks itself`,
    );
  }
  if (env.rank >= env.worldSize) throw new UsageError(`rank ${env.rank} is outside world_size ${env.worldSize}`);
  return new FifoCommunicator(env.commDir, env.rank, env.worldSize);
}
