// NCCL through kiln's bindings on one GPU: a communicator of one rank (NCCL refuses two ranks of one
// communicator on one GPU) moving float32 and bfloat16 device buffers, eagerly and captured in a CUDA graph
// and replayed. A machine without a GPU or without libnccl.so.2 fails here, saying which. Multi-rank runs over
// NCCL: test-gpu/multi-rank.test.ts.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import type { CudaDtype } from "../src/backends/cuda/cuda-tensor.js";
import { CudaDevice } from "../src/backends/cuda/driver.js";
import { Nccl } from "../src/backends/cuda/nccl.js";
import { decodeToFloat32, encodeFromFloat32 } from "../src/checkpoint/dtype.js";

const device = CudaDevice.open();
const nccl = new Nccl();
const comm = nccl.initRank(nccl.uniqueId(), 1, 0);
const allocations: number[] = [];
after(() => {
  nccl.destroy(comm);
  for (const p of allocations) device.free(p);
});

const BYTES: Record<CudaDtype, number> = { F32: 4, BF16: 2, F16: 2 };
const N = 4099; // not a multiple of any vector width

/** Values every dtype holds exactly (multiples of 1/8 in [-32, 32): 8 significant bits, as bfloat16 has). */
function values(seed: number): Float32Array {
  return Float32Array.from({ length: N }, (_, i) => (((i * 37 + seed * 11) % 512) - 256) / 8);
}

function buffer(dtype: CudaDtype, data: Float32Array | null = null): number {
  const p = device.alloc(N * BYTES[dtype]);
  allocations.push(p);
  device.uploadInStreamOrder(p, data ? encodeFromFloat32(data, dtype) : new Uint8Array(N * BYTES[dtype]).fill(0xff));
  return p;
}

function read(p: number, dtype: CudaDtype, count = N): Float32Array {
  device.synchronize();
  const raw = new Uint8Array(count * BYTES[dtype]);
  device.download(raw, p);
  return decodeToFloat32(raw, dtype);
}

describe(`NCCL on ${device.name}`, () => {
  test("the library loads, says its version, and every kiln process runs it with NVLink multicast off", () => {
    const version = nccl.version();
    console.log(`# NCCL ${version}`);
    assert.match(version, /^2\.\d+\.\d+$/);
    assert.equal(process.env.NCCL_NVLS_ENABLE, "0");
  });

  for (const dtype of ["F32", "BF16"] as const) {
    test(`${dtype}: all-reduce (into another buffer and in place), all-gather and send/recv of one rank give the values exactly`, () => {
      const x = values(1);
      const send = buffer(dtype, x);
      const recv = buffer(dtype);
      nccl.allReduce(send, recv, N, dtype, comm, device.stream);
      assert.deepEqual(read(recv, dtype), x);
      nccl.allReduce(send, send, N, dtype, comm, device.stream);
      assert.deepEqual(read(send, dtype), x);
      const gathered = buffer(dtype);
      nccl.allGather(send, gathered, N, dtype, comm, device.stream);
      assert.deepEqual(read(gathered, dtype), x);
      const received = buffer(dtype);
      nccl.group(({ send: put, recv: take }) => {
        put(send, N, dtype, 0, comm, device.stream);
        take(received, N, dtype, 0, comm, device.stream);
      });
      assert.deepEqual(read(received, dtype), x);
    });

    test(`${dtype}: captured in a CUDA graph, the collectives run at each replay on what the buffers then hold`, () => {
      const send = buffer(dtype, values(2));
      const reduced = buffer(dtype);
      const gathered = buffer(dtype);
      const graph = device.capture(() => {
        nccl.allReduce(send, reduced, N, dtype, comm, device.stream);
        nccl.allGather(reduced, gathered, N, dtype, comm, device.stream);
      });
      try {
        // Capturing records the work without doing it.
        assert.ok(
          read(reduced, dtype).every((v) => Number.isNaN(v)),
          "the capture ran the all-reduce",
        );
        for (const seed of [3, 4]) {
          const x = values(seed);
          device.uploadInStreamOrder(send, encodeFromFloat32(x, dtype));
          device.replay(graph);
          assert.deepEqual(read(reduced, dtype), x, `replay with seed ${seed}`);
          assert.deepEqual(read(gathered, dtype), x, `replay with seed ${seed}`);
        }
      } finally {
        device.destroyGraph(graph);
      }
    });
  }
});
