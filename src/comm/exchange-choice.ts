// How a GPU engine's ranks exchange activations: through NCCL when every rank on the host has a GPU of its
// own (NCCL refuses two ranks of one communicator on one GPU), else through the host's Communicator.
// KILN_COLLECTIVES=nccl|host forces one (auto: the default).

import { UsageError } from "../errors.js";

export const EXCHANGES = ["nccl", "host"] as const;
export type Exchange = (typeof EXCHANGES)[number];

export interface ExchangeFacts {
  /** Ranks of this run on this host. */
  ranksOnHost: number;
  /** GPUs the driver sees on this host. */
  gpus: number;
  /** KILN_COLLECTIVES as set (undefined: auto). */
  requested?: string;
}

/** This host's choice (ranks on different hosts must still agree: NCCL only where every rank chose it). */
export function chooseExchange(f: ExchangeFacts): Exchange {
  const requested = f.requested === undefined || f.requested === "" ? "auto" : f.requested;
  if (requested !== "auto" && requested !== "nccl" && requested !== "host") {
    throw new UsageError(`KILN_COLLECTIVES=${f.requested}: expected auto, nccl or host`);
  }
  const gpuEach = f.ranksOnHost <= f.gpus;
  if (requested === "nccl" && !gpuEach) {
    throw new UsageError(
      `KILN_COLLECTIVES=nccl: ${f.ranksOnHost} ranks on this host but ${f.gpus} GPU${f.gpus === 1 ? "" : "s"}: NCCL needs a GPU per rank (unset KILN_COLLECTIVES to exchange through the host)`,
    );
  }
  if (requested === "host") return "host";
  return gpuEach ? "nccl" : "host";
}
