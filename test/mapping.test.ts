// Mapping, as TensorRT-LLM numbers ranks: worked layouts first, then an exhaustive sweep over every small
// (tp, pp, cp, moe_tp, moe_ep) tuple checking that coordinates, groups and layer ranges are consistent.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Mapping, MappingError } from "../src/mapping.js";

describe("worked layouts", () => {
  test("8 ranks, tp 4, pp 2: tp groups [0..3] [4..7], pp groups [0,4] [1,5] [2,6] [3,7]", () => {
    const m = new Mapping({ tpSize: 4, ppSize: 2 });
    assert.equal(m.worldSize, 8);
    assert.deepEqual(m.tpGroup(2), [0, 1, 2, 3]);
    assert.deepEqual(m.tpGroup(5), [4, 5, 6, 7]);
    assert.deepEqual(
      [0, 1, 2, 3].map((r) => m.ppGroup(r)),
      [
        [0, 4],
        [1, 5],
        [2, 6],
        [3, 7],
      ],
    );
    assert.deepEqual(m.coords(6), { tpRank: 2, cpRank: 0, ppRank: 1 });
    assert.equal(m.fileRank(6), 6);
    assert.ok(m.isFirstPpRank(3) && m.isLastPpRank(4));
  });

  test("tp 2, cp 2, pp 2: cp ranks share their (tp, pp) file", () => {
    const m = new Mapping({ tpSize: 2, cpSize: 2, ppSize: 2 });
    // rank = tp + 2·(cp + 2·pp)
    assert.deepEqual(m.coords(5), { tpRank: 1, cpRank: 0, ppRank: 1 });
    assert.deepEqual(m.coords(3), { tpRank: 1, cpRank: 1, ppRank: 0 });
    assert.deepEqual(m.cpGroup(1), [1, 3]);
    assert.deepEqual(m.ppGroup(3), [3, 7]);
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 6, 7].map((r) => m.fileRank(r)),
      [0, 1, 0, 1, 2, 3, 2, 3],
    );
    assert.equal(m.numFileRanks, 4);
  });

  test("pp layer ranges: 30 layers on 4 stages → 8, 8, 7, 7; the first stages take the extra layers", () => {
    const m = new Mapping({ ppSize: 4 });
    assert.deepEqual(
      [0, 1, 2, 3].map((p) => [m.ppLayers(30, p)[0], m.ppLayers(30, p).length]),
      [
        [0, 8],
        [8, 8],
        [16, 7],
        [23, 7],
      ],
    );
    assert.throws(() => new Mapping({ ppSize: 5 }).ppLayers(4, 0), /--pp_size 5 exceeds the model's 4 layers/);
  });

  test("MoE: tp 4 as moe_tp 2 × moe_ep 2; a missing size is derived; experts split contiguously", () => {
    const m = new Mapping({ tpSize: 4, moeEpSize: 2 });
    assert.equal(m.moeTpSize, 2);
    assert.deepEqual(
      [0, 1, 2, 3].map((r) => [m.moeTpRank(r), m.moeEpRank(r)]),
      [
        [0, 0],
        [0, 1],
        [1, 0],
        [1, 1],
      ],
    );
    assert.deepEqual(m.epExperts(8, 1), [4, 5, 6, 7]);
    assert.throws(
      () => new Mapping({ tpSize: 4, moeEpSize: 4 }).epExperts(6, 0),
      /does not divide the model's 6 experts/,
    );
    assert.deepEqual(new Mapping({ tpSize: 4 }).toConfig().moe_tp_size, 4);
  });

  test("invalid sizes are refused naming the flags and numbers", () => {
    assert.throws(() => new Mapping({ tpSize: 0 }), MappingError);
    assert.throws(
      () => new Mapping({ tpSize: 4, moeTpSize: 2, moeEpSize: 1 }),
      /--moe_tp_size 2 × --moe_ep_size 1 must equal --tp_size 4/,
    );
    assert.throws(() => new Mapping({ tpSize: 4, moeEpSize: 3 }), /--moe_ep_size 3 does not divide --tp_size 4/);
    assert.throws(() => new Mapping({ tpSize: 2, cpSize: 2, moeEpSize: 2 }), /context parallelism/);
    const qwen05 = { num_attention_heads: 14, num_key_value_heads: 2, num_hidden_layers: 24 };
    assert.throws(
      () => new Mapping({ tpSize: 4 }).validateFor(qwen05),
      /--tp_size 4 does not divide num_attention_heads 14/,
    );
    new Mapping({ tpSize: 2 }).validateFor(qwen05);
    const llama = { num_attention_heads: 32, num_key_value_heads: 8, num_hidden_layers: 32 };
    new Mapping({ tpSize: 16 }).validateFor(llama); // 8 KV heads replicated across 16 ranks
    assert.throws(
      () => new Mapping({ tpSize: 16 }).validateFor({ ...llama, num_key_value_heads: 6, num_attention_heads: 48 }),
      /num_key_value_heads 6/,
    );
    assert.throws(
      () => Mapping.fromConfig({ ...new Mapping({ tpSize: 2 }).toConfig(), world_size: 3 }, "config.json"),
      /world_size 3/,
    );
  });
});

describe("sweep over every small layout", () => {
  test("coordinates round-trip, groups partition the world, files cover every (tp, pp), layers cover the model once", () => {
    let layouts = 0;
    for (const tp of [1, 2, 3, 4, 6, 8]) {
      for (const pp of [1, 2, 3, 4]) {
        for (const cp of [1, 2, 3]) {
          for (let moeEp = 1; moeEp <= tp; moeEp++) {
            if (tp % moeEp !== 0 || (moeEp > 1 && cp > 1)) continue;
            const m = new Mapping({ tpSize: tp, ppSize: pp, cpSize: cp, moeEpSize: moeEp });
            layouts++;
            assert.equal(m.moeTpSize * m.moeEpSize, tp);
            assert.ok(Mapping.fromConfig(m.toConfig(), "sweep").equals(m));
            const seen = { tp: new Set<string>(), pp: new Set<string>(), cp: new Set<string>() };
            const files = new Set<number>();
            const moe = new Set<string>();
            for (let r = 0; r < m.worldSize; r++) {
              const c = m.coords(r);
              assert.equal(m.rankOf(c), r);
              assert.ok(c.tpRank < tp && c.ppRank < pp && c.cpRank < cp);
              for (const [k, g] of [
                ["tp", m.tpGroup(r)],
                ["pp", m.ppGroup(r)],
                ["cp", m.cpGroup(r)],
              ] as const) {
                assert.ok(g.includes(r));
                seen[k].add(JSON.stringify(g));
              }
              files.add(m.fileRank(r));
              if (c.cpRank === 0 && c.ppRank === 0) moe.add(`${m.moeTpRank(r)},${m.moeEpRank(r)}`);
            }
            // Each kind of group partitions the world into equal, disjoint groups.
            for (const [k, size] of [
              ["tp", tp],
              ["pp", pp],
              ["cp", cp],
            ] as const) {
              const groups = [...seen[k]].map((g) => JSON.parse(g) as number[]);
              assert.equal(groups.length * size, m.worldSize, `${k} groups of tp ${tp} pp ${pp} cp ${cp}`);
              assert.equal(new Set(groups.flat()).size, m.worldSize);
            }
            assert.deepEqual(
              [...files].sort((a, b) => a - b),
              Array.from({ length: tp * pp }, (_, i) => i),
            );
            assert.equal(moe.size, tp, "every (moe_tp, moe_ep) pair appears once in a tp group");
            for (let layers = pp; layers <= 10; layers++) {
              const all = Array.from({ length: pp }, (_, p) => m.ppLayers(layers, p)).flat();
              assert.deepEqual(
                all,
                Array.from({ length: layers }, (_, i) => i),
              );
              const counts = Array.from({ length: pp }, (_, p) => m.ppLayers(layers, p).length);
              assert.ok(counts.every((n, i) => i === 0 || n <= counts[i - 1]) && counts[0] - counts[pp - 1] <= 1);
            }
          }
        }
      }
    }
    assert.ok(layouts > 100);
  });
});
