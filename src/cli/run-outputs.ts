// The files kiln run writes: --output_json and run.py's .npy outputs (logits, log probs, cum log probs).

import fs from "node:fs";
import type { GenerationOutput } from "../runtime/llm.js";
import { writeNpyFloat32, writeNpyInt32 } from "../util/npy.js";

export interface RunOutputFlags {
  output_npy?: string;
  output_json?: string;
  output_logits_npy?: string;
  output_log_probs_npy?: string;
  output_cum_log_probs_npy?: string;
}

/** [prompt][sequence][step] padded with zeros to the longest output. */
function logProbsTensor(outs: GenerationOutput[]): { data: Float32Array; shape: number[] } {
  const seqs = Math.max(...outs.map((o) => o.sequences.length));
  const steps = Math.max(1, ...outs.flatMap((o) => o.sequences.map((s) => s.logProbs.length)));
  const data = new Float32Array(outs.length * seqs * steps);
  outs.forEach((o, p) => {
    o.sequences.forEach((s, q) => {
      data.set(s.logProbs, (p * seqs + q) * steps);
    });
  });
  return { data, shape: [outs.length, seqs, steps] };
}

export function writeRunOutputs(
  flags: RunOutputFlags,
  inputIds: number[][],
  outs: GenerationOutput[],
  vocab: number,
  padId: number,
): void {
  const multi = outs.some((o) => o.sequences.length > 1);
  if (flags.output_npy) {
    // run.py's layout: [prompt][sequence][max output length], the tail after each output filled with pad_id.
    const seqs = Math.max(...outs.map((o) => o.sequences.length));
    const steps = Math.max(1, ...outs.flatMap((o) => o.sequences.map((s) => s.outputIds.length)));
    const data = new Int32Array(outs.length * seqs * steps).fill(padId);
    outs.forEach((o, p) => {
      o.sequences.forEach((s, q) => {
        data.set(s.outputIds, (p * seqs + q) * steps);
      });
    });
    writeNpyInt32(flags.output_npy, data, [outs.length, seqs, steps]);
  }
  if (flags.output_json) {
    // One sequence per prompt keeps the flat [prompt][tokens] shape; several become [prompt][sequence][tokens].
    const json: Record<string, unknown> = {
      input_ids: inputIds,
      output_ids: outs.map((o) => (multi ? o.sequences.map((s) => s.outputIds) : o.outputIds)),
      cum_log_probs: outs.map((o) => (multi ? o.sequences.map((s) => s.cumLogProb) : o.sequences[0].cumLogProb)),
    };
    if (outs[0].contextLogits) json.context_logits = outs.map((o) => o.contextLogits!.map((r) => Array.from(r)));
    if (outs[0].generationLogits)
      json.generation_logits = outs.map((o) => o.generationLogits!.map((r) => Array.from(r)));
    fs.writeFileSync(flags.output_json, JSON.stringify(json));
  }
  if (flags.output_logits_npy) {
    const stem = flags.output_logits_npy.replace(/\.npy$/, "");
    if (outs[0].contextLogits) {
      const rows = outs.flatMap((o) => o.contextLogits!);
      const data = new Float32Array(rows.length * vocab);
      rows.forEach((r, i) => {
        data.set(r, i * vocab);
      });
      writeNpyFloat32(`${stem}_context.npy`, data, [rows.length, vocab]);
    }
    if (outs[0].generationLogits && !multi) {
      const steps = Math.max(1, ...outs.map((o) => o.generationLogits!.length));
      const data = new Float32Array(outs.length * steps * vocab);
      outs.forEach((o, p) => {
        o.generationLogits!.forEach((r, s) => {
          data.set(r, (p * steps + s) * vocab);
        });
      });
      writeNpyFloat32(`${stem}_generation.npy`, data, [outs.length, 1, steps, vocab]);
    }
  }
  if (flags.output_log_probs_npy) {
    const { data, shape } = logProbsTensor(outs);
    writeNpyFloat32(flags.output_log_probs_npy, data, shape);
  }
  if (flags.output_cum_log_probs_npy) {
    const seqs = Math.max(...outs.map((o) => o.sequences.length));
    const data = new Float32Array(outs.length * seqs);
    outs.forEach((o, p) => {
      o.sequences.forEach((s, q) => {
        data[p * seqs + q] = s.cumLogProb;
      });
    });
    writeNpyFloat32(flags.output_cum_log_probs_npy, data, [outs.length, seqs]);
  }
}
