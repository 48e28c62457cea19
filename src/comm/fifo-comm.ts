// Collectives for cpu ranks that are processes of one host: a named pipe (FIFO) per ordered pair of ranks
// in a shared directory, read and written with blocking system calls. Blocking I/O keeps the model's
// forward pass synchronous, as NCCL's calls are from the host's point of view; Node has no synchronous
// sockets, but a FIFO opened read-write never blocks at open (Linux) and then reads and writes like a file.
//
// A collective goes through its group's first rank: the others send to it, it combines in group order and
// sends the result back. No two ranks ever write to each other at once, so full pipe buffers cannot
// deadlock.

import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { KilnError } from "../errors.js";
import type { Communicator } from "./communicator.js";

const HEADER_BYTES = 4;

function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export class FifoCommunicator implements Communicator {
  private readonly readFds = new Map<number, number>();
  private readonly writeFds = new Map<number, number>();
  private readonly everyone: number[];

  /**
   * Joins the world in `dir` (shared by every rank): makes this rank's incoming pipes, opens every peer's,
   * and waits for all ranks. `startTimeoutMs` bounds how long a peer may take to appear.
   */
  constructor(
    readonly dir: string,
    readonly rank: number,
    readonly worldSize: number,
    startTimeoutMs = 120_000,
  ) {
    this.everyone = Array.from({ length: worldSize }, (_, r) => r);
    const peers = this.everyone.filter((r) => r !== rank);
    fs.mkdirSync(dir, { recursive: true });
    const incoming = peers.map((p) => this.pipe(p, rank));
    for (const f of incoming) fs.rmSync(f, { force: true }); // a stale pipe of an earlier run
    if (incoming.length > 0) {
      try {
        execFileSync("mkfifo", ["-m", "600", ...incoming], { stdio: ["ignore", "ignore", "pipe"] });
      } catch (e) {
        throw new KilnError(`cannot make the ranks' pipes in ${dir} (mkfifo): ${(e as Error).message.split("\n")[0]}`);
      }
    }
    peers.forEach((p, i) => {
      this.readFds.set(p, fs.openSync(incoming[i], "r+"));
    });
    const deadline = Date.now() + startTimeoutMs;
    for (const p of peers) {
      const out = this.pipe(rank, p);
      while (!fs.existsSync(out)) {
        if (Date.now() > deadline) {
          throw new KilnError(`rank ${p} of ${worldSize} did not start within ${startTimeoutMs / 1000} s (${dir})`);
        }
        sleepMs(5);
      }
      this.writeFds.set(p, fs.openSync(out, "r+"));
    }
    this.barrier();
    // Everyone holds every pipe open now: the names are no longer needed.
    for (const f of incoming) fs.rmSync(f, { force: true });
    try {
      fs.rmdirSync(dir);
    } catch {
      // another rank's pipes are still there; the last rank out removes the directory
    }
  }

  private pipe(from: number, to: number): string {
    return path.join(this.dir, `${from}-to-${to}`);
  }

  send(data: Float32Array, to: number): void {
    const fd = this.writeFds.get(to);
    if (fd === undefined) throw new Error(`rank ${this.rank} has no pipe to rank ${to}`);
    const header = new Uint8Array(HEADER_BYTES);
    new DataView(header.buffer).setUint32(0, data.byteLength, true);
    writeAll(fd, header);
    writeAll(fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }

  recv(from: number): Float32Array {
    const fd = this.readFds.get(from);
    if (fd === undefined) throw new Error(`rank ${this.rank} has no pipe from rank ${from}`);
    const header = readExact(fd, HEADER_BYTES);
    const bytes = readExact(fd, new DataView(header.buffer).getUint32(0, true));
    return new Float32Array(bytes.buffer, 0, bytes.byteLength / 4);
  }

  allReduce(data: Float32Array, group: readonly number[]): Float32Array {
    if (group.length === 1) return data;
    const root = group[0];
    if (this.rank !== root) {
      this.send(data, root);
      return this.recv(root);
    }
    const sum = Float32Array.from(data);
    for (const p of group.slice(1)) {
      const part = this.recv(p);
      if (part.length !== sum.length) {
        throw new Error(`all-reduce: rank ${p} sent ${part.length} values, rank ${root} has ${sum.length}`);
      }
      for (let i = 0; i < sum.length; i++) sum[i] += part[i];
    }
    for (const p of group.slice(1)) this.send(sum, p);
    return sum;
  }

  allGather(data: Float32Array, group: readonly number[]): Float32Array[] {
    if (group.length === 1) return [data];
    const root = group[0];
    if (this.rank !== root) {
      this.send(data, root);
      return group.map(() => this.recv(root));
    }
    const parts = [data, ...group.slice(1).map((p) => this.recv(p))];
    for (const p of group.slice(1)) for (const part of parts) this.send(part, p);
    return parts;
  }

  barrier(): void {
    this.allReduce(new Float32Array(1), this.everyone);
  }

  close(): void {
    for (const fd of [...this.readFds.values(), ...this.writeFds.values()]) fs.closeSync(fd);
    this.readFds.clear();
    this.writeFds.clear();
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  for (let at = 0; at < bytes.byteLength; ) at += fs.writeSync(fd, bytes, at, bytes.byteLength - at);
}

function readExact(fd: number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let at = 0; at < n; ) {
    const got = fs.readSync(fd, out, at, n - at, null);
    if (got === 0) throw new KilnError(`rank pipe closed after ${at} of ${n} bytes (a peer rank exited)`);
    at += got;
  }
  return out;
}
