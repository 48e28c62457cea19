// Rotary position embedding frequencies, with the rope scalings kiln supports (linear, llama3), computed in
// float32 as transformers computes them.

import type { RopeSpec } from "../backends/backend.js";
import type { PretrainedConfig } from "../checkpoint/pretrained-config.js";

export function ropeSpec(cfg: PretrainedConfig): RopeSpec {
  const dim = cfg.rotary_embedding_dim;
  const half = dim / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.fround(cfg.rotary_base ** Math.fround((2 * i) / dim));
  const s = cfg.rotary_scaling;
  if (s?.type === "linear") {
    for (let i = 0; i < half; i++) inv[i] = inv[i] / s.factor;
  } else if (s?.type === "llama3") {
    // Llama 3: long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
    const oldLen = s.original_max_position_embeddings ?? 8192;
    const low = s.low_freq_factor ?? 1;
    const high = s.high_freq_factor ?? 4;
    const lowWavelen = oldLen / low;
    const highWavelen = oldLen / high;
    for (let i = 0; i < half; i++) {
      const f = inv[i];
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < highWavelen) continue;
      if (wavelen > lowWavelen) {
        inv[i] = f / s.factor;
        continue;
      }
      const smooth = (oldLen / wavelen - low) / (high - low);
      inv[i] = (1 - smooth) * (f / s.factor) + smooth * f;
    }
  }
  return { invFreq: inv, rotaryDim: dim };
}
