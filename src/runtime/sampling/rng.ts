// A small seedable PRNG, one per request: xoshiro128** 1.1 (Blackman & Vigna) seeded by splitmix64.
// Written on 32-bit ints so the hot path needs no BigInt; only the seeding uses it, once per request.

const MASK64 = (1n << 64n) - 1n;

/** splitmix64 spreads any seed, including 0, over the state; as a bijection of its counter it never yields two
 * zero outputs in a row, so the xoshiro state is never all zero. */
function splitmix64(state: { x: bigint }): bigint {
  state.x = (state.x + 0x9e3779b97f4a7c15n) & MASK64;
  let z = state.x;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return z ^ (z >> 31n);
}

const rotl = (x: number, k: number): number => (x << k) | (x >>> (32 - k));

export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /** `seed` is a non-negative safe integer; the same seed always gives the same stream. */
  constructor(seed: number) {
    const mix = { x: BigInt(seed) & MASK64 };
    const a = splitmix64(mix);
    const b = splitmix64(mix);
    this.s0 = Number(a & 0xffffffffn) | 0;
    this.s1 = Number(a >> 32n) | 0;
    this.s2 = Number(b & 0xffffffffn) | 0;
    this.s3 = Number(b >> 32n) | 0;
  }

  /** The next 32 random bits, as an unsigned integer. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9);
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result >>> 0;
  }

  /** A uniform float in [0, 1) with all 53 bits of a double's mantissa random. */
  next(): number {
    const high27 = this.nextUint32() >>> 5;
    const low26 = this.nextUint32() >>> 6;
    return (high27 * 2 ** 26 + low26) / 2 ** 53;
  }
}
