// NCCL through koffi, loaded at run time (libnccl.so.2 from KILN_CUDA_LIB_DIR or the loader's path): the
// calls kiln's ranks make, each result checked. A missing library is one clear CudaUnavailableError.

import koffi, { type LibraryHandle } from "koffi";
import type { CudaDtype } from "./cuda-tensor.js";
// ffi.ts registers CUstream, which the signatures below name.
import { CUDA_LIB, CudaUnavailableError } from "./ffi.js";

// NVLink SHARP (multicast) can take a shared host's GPUs out of service; NCCL reads this at its first call,
// so it is set before the library is even loaded, in every process that may load it.
process.env.NCCL_NVLS_ENABLE = "0";

export class NcclError extends Error {
  override name = "NcclError";
}

/** ncclUniqueId: 128 opaque bytes rank 0 of a group makes and every member passes to ncclCommInitRank. */
export const NCCL_UNIQUE_ID_BYTES = 128;
// Passed by value to ncclCommInitRank.
koffi.struct("ncclUniqueId", { internal: koffi.array("uint8_t", NCCL_UNIQUE_ID_BYTES, "Typed") });
koffi.pointer("ncclComm_t", koffi.opaque());

/** ncclDataType_t of each dtype kiln's tensors hold. */
export const NCCL_TYPE: Record<CudaDtype, number> = { F16: 6, F32: 7, BF16: 9 };
const NCCL_SUM = 0;

function ncclApi(lib: LibraryHandle) {
  const f = (sig: string) => lib.func(sig);
  // cudaStream_t is the driver's CUstream; device pointers go as integers, as in ffi.ts.
  return {
    ncclGetVersion: f("int ncclGetVersion(_Out_ int *version)"),
    ncclGetErrorString: f("const char *ncclGetErrorString(int result)"),
    ncclGetUniqueId: f("int ncclGetUniqueId(_Out_ uint8_t *id)"),
    ncclCommInitRank: f("int ncclCommInitRank(_Out_ ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank)"),
    ncclCommDestroy: f("int ncclCommDestroy(ncclComm_t comm)"),
    ncclAllReduce: f(
      "int ncclAllReduce(uint64_t sendbuff, uint64_t recvbuff, size_t count, int datatype, int op, ncclComm_t comm, CUstream stream)",
    ),
    ncclAllGather: f(
      "int ncclAllGather(uint64_t sendbuff, uint64_t recvbuff, size_t sendcount, int datatype, ncclComm_t comm, CUstream stream)",
    ),
    ncclSend: f(
      "int ncclSend(uint64_t sendbuff, size_t count, int datatype, int peer, ncclComm_t comm, CUstream stream)",
    ),
    ncclRecv: f(
      "int ncclRecv(uint64_t recvbuff, size_t count, int datatype, int peer, ncclComm_t comm, CUstream stream)",
    ),
    ncclGroupStart: f("int ncclGroupStart()"),
    ncclGroupEnd: f("int ncclGroupEnd()"),
  };
}

export type NcclApi = ReturnType<typeof ncclApi>;

/** Where libnccl.so.2 is looked for, in order. */
export function ncclCandidates(): string[] {
  return [`${CUDA_LIB}/libnccl.so.2`, "libnccl.so.2", "libnccl.so"];
}

/** Opens NCCL from the first candidate that loads; one line naming them all when none does. */
export function openNccl(candidates: readonly string[] = ncclCandidates()): NcclApi {
  for (const c of candidates) {
    try {
      return ncclApi(koffi.load(c));
    } catch {
      // the next candidate
    }
  }
  throw new CudaUnavailableError(
    `NCCL (libnccl.so.2) not found (${candidates.join(", ")}): ranks with a GPU each exchange through NCCL; install it (libnccl2, or the nvidia-nccl-cu12 wheel's lib/) and point KILN_CUDA_LIB_DIR or LD_LIBRARY_PATH at it`,
  );
}

let nccl: NcclApi | null = null;

/** NCCL, loaded once per process. */
export function loadNccl(): NcclApi {
  nccl ??= openNccl();
  return nccl;
}

/** The calls kiln makes, each checked: a failure throws NcclError naming the call and NCCL's reason. */
export class Nccl {
  constructor(readonly api: NcclApi = loadNccl()) {}

  check(code: number, what: string): void {
    if (code !== 0) throw new NcclError(`${what} failed: ${this.api.ncclGetErrorString(code)} (${code})`);
  }

  /** NCCL's version as major.minor.patch. */
  version(): string {
    const v = [0];
    this.check(this.api.ncclGetVersion(v), "ncclGetVersion");
    const n = v[0];
    return n >= 10000
      ? `${Math.floor(n / 10000)}.${Math.floor(n / 100) % 100}.${n % 100}`
      : `${Math.floor(n / 1000)}.${Math.floor(n / 100) % 10}.${n % 100}`;
  }

  uniqueId(): Uint8Array {
    const id = new Uint8Array(NCCL_UNIQUE_ID_BYTES);
    this.check(this.api.ncclGetUniqueId(id), "ncclGetUniqueId");
    return id;
  }

  /** Joins the communicator of `nranks` ranks that `id` names, as `rank` (blocks until all have joined). */
  initRank(id: Uint8Array, nranks: number, rank: number): unknown {
    const comm = [null];
    this.check(
      this.api.ncclCommInitRank(comm, nranks, { internal: id }, rank),
      `ncclCommInitRank(rank ${rank} of ${nranks})`,
    );
    return comm[0];
  }

  destroy(comm: unknown): void {
    this.check(this.api.ncclCommDestroy(comm), "ncclCommDestroy");
  }

  /** recv = the sum over the communicator of send (`count` elements of `dtype`; send = recv is in place). */
  allReduce(send: number, recv: number, count: number, dtype: CudaDtype, comm: unknown, stream: unknown): void {
    this.check(this.api.ncclAllReduce(send, recv, count, NCCL_TYPE[dtype], NCCL_SUM, comm, stream), "ncclAllReduce");
  }

  /** recv = every rank's `count` elements of send, in rank order. */
  allGather(send: number, recv: number, count: number, dtype: CudaDtype, comm: unknown, stream: unknown): void {
    this.check(this.api.ncclAllGather(send, recv, count, NCCL_TYPE[dtype], comm, stream), "ncclAllGather");
  }

  /** Point-to-point transfers issued as one NCCL group, so that a rank's sends and receives cannot deadlock. */
  group(body: (ops: { send: P2p; recv: P2p }) => void): void {
    this.check(this.api.ncclGroupStart(), "ncclGroupStart");
    try {
      body({
        send: (buf, count, dtype, peer, comm, stream) =>
          this.check(this.api.ncclSend(buf, count, NCCL_TYPE[dtype], peer, comm, stream), `ncclSend(to ${peer})`),
        recv: (buf, count, dtype, peer, comm, stream) =>
          this.check(this.api.ncclRecv(buf, count, NCCL_TYPE[dtype], peer, comm, stream), `ncclRecv(from ${peer})`),
      });
    } finally {
      this.check(this.api.ncclGroupEnd(), "ncclGroupEnd");
    }
  }
}

type P2p = (buf: number, count: number, dtype: CudaDtype, peer: number, comm: unknown, stream: unknown) => void;
