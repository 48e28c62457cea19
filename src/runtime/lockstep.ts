// A served engine's ranks in lockstep. Only rank 0 hears the clients, yet every rank must run the same steps
// over the same requests, or their collectives would not match. So before each step rank 0 tells the others
// what changed since the last one (requests submitted, requests aborted, in the order it did them), and they
// replay that, then step with it. Sampling needs no message: every rank draws from the same seeded streams
// over the same logits, as in `kiln run`.

import type { Communicator } from "../comm/communicator.js";
import { KilnError } from "../errors.js";
import type { GenerateOptions } from "./results.js";

/** What a request's arrival or end is to the other ranks: `id` is the request id rank 0 gave it. */
export type LockstepChange =
  | { submit: number; promptIds: readonly number[]; opts: GenerateOptions }
  | { abort: number };

/** Rank 0's message before a step: the changes to replay first, or `stop`: no more steps, leave. */
export interface LockstepMessage {
  changes: LockstepChange[];
  stop?: true;
}

/** A message as the bytes of a Float32Array (the communicator's unit): its JSON's length, then the JSON. */
function encode(message: LockstepMessage): Float32Array {
  const json = new TextEncoder().encode(JSON.stringify(message));
  const bytes = new Uint8Array(4 * Math.ceil((4 + json.length) / 4));
  new DataView(bytes.buffer).setUint32(0, json.length, true);
  bytes.set(json, 4);
  return new Float32Array(bytes.buffer);
}

function decode(data: Float32Array): LockstepMessage {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const n = new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true);
  return JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + n)));
}

/** Rank 0's side: gathers the changes, sends them to every other rank before each step. */
export class LockstepLeader {
  private changes: LockstepChange[] = [];

  constructor(private readonly comm: Communicator) {}

  record(change: LockstepChange): void {
    this.changes.push(change);
  }

  /** Before a step: what changed goes to every other rank. */
  beforeStep(): void {
    this.send({ changes: this.changes });
    this.changes = [];
  }

  /** The other ranks leave their loops. */
  stop(): void {
    this.send({ changes: [], stop: true });
  }

  private send(message: LockstepMessage): void {
    const data = encode(message);
    for (let r = 1; r < this.comm.worldSize; r++) this.comm.send(data, r);
  }
}

/** A follower's next message from rank 0 (blocking until it comes). */
export function nextLockstepMessage(comm: Communicator): LockstepMessage {
  try {
    return decode(comm.recv(0));
  } catch (e) {
    if (e instanceof KilnError) throw e;
    throw new KilnError(`rank ${comm.rank}: a garbled message from rank 0 (${(e as Error).message})`);
  }
}
