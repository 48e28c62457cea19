// How a command that runs an engine starts on a split engine: started by hand, it becomes the launcher of one
// process per rank, each running this same command (comm/launch.ts); started as a rank (by that launcher or
// by mpirun), it runs as that rank.

import { launchRanks } from "../comm/launch.js";
import { rankEnv } from "../comm/rank-env.js";
import { readEngineConfig } from "../runtime/engine-loader.js";

/**
 * This process's rank in `engineDir`'s world (0 for a single-rank engine), or null once it has launched the
 * ranks and they have ended (process.exitCode is then theirs).
 */
export async function rankOrLaunch(engineDir: string, opts: { drainOnSignal?: boolean } = {}): Promise<number | null> {
  const worldSize = readEngineConfig(engineDir).pretrained_config.mapping.world_size;
  const env = rankEnv();
  if (worldSize > 1 && env === null) {
    process.exitCode = await launchRanks(worldSize, opts);
    return null;
  }
  return env?.rank ?? 0;
}
