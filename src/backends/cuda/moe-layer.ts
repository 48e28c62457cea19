// A mixture-of-experts layer on the GPU (decoder.cu's moe_* kernels): routing, each row's chosen experts as
// GEMVs on expert-indexed weights, and the shared expert behind its sigmoid gate.

import type { MoeSpec, MoeWeights } from "../backend.js";
import type { CudaTensor, QuantizedLaunch } from "./cuda-tensor.js";
import { i32, ptr } from "./driver.js";

export function moeLayer(ctx: QuantizedLaunch, x: CudaTensor, w: MoeWeights<CudaTensor>, spec: MoeSpec): CudaTensor {
  const { rows, cols: hidden } = x;
  const k = spec.topK;
  const out = ctx.alloc(rows, hidden);
  if (rows === 0) return out;
  const experts = ctx.alloc(rows, k, "F32"); // int32 ids, as many bytes as float32
  const weights = ctx.alloc(rows, k, "F32");
  ctx.device.launch(
    ctx.fn("moe_route"),
    [rows],
    [256],
    [
      ptr(experts.ptr),
      ptr(weights.ptr),
      ptr(x.ptr),
      ptr(w.router.ptr),
      i32(hidden),
      i32(spec.numExperts),
      i32(k),
      i32(spec.renormalize ? 1 : 0),
    ],
  );
  const first = spec.firstExpert;
  expertsInto(
    ctx,
    out,
    x,
    w.fc,
    w.proj,
    { experts: experts.ptr, weights: weights.ptr, first, local: spec.expertsLocal, k },
    spec.expertInter,
  );
  if (w.shared && spec.sharedInter > 0) {
    const shared = ctx.alloc(rows, hidden);
    expertsInto(
      ctx,
      shared,
      x,
      w.shared.fc,
      w.shared.proj,
      { experts: 0, weights: 0, first: 0, local: 1, k: 1 },
      spec.sharedInter,
    );
    ctx.device.launch(
      ctx.fn("moe_add_gated"),
      [rows],
      [256],
      [ptr(out.ptr), ptr(shared.ptr), ptr(x.ptr), ptr(w.shared.gate.ptr), i32(hidden)],
    );
  }
  return out;
}

/** out = Σ over each row's experts (from `route`; experts 0: expert 0, weight 1) of weight · proj_e(silu·up). */
function expertsInto(
  ctx: QuantizedLaunch,
  out: CudaTensor,
  x: CudaTensor,
  fc: CudaTensor,
  proj: CudaTensor,
  route: { experts: number; weights: number; first: number; local: number; k: number },
  inter: number,
): void {
  const { rows, cols: hidden } = x;
  const act = ctx.alloc(rows * route.k, inter);
  ctx.device.launch(
    ctx.fn("moe_expert_act"),
    [rows * route.k, Math.ceil(inter / 8)],
    [256],
    [
      ptr(act.ptr),
      ptr(x.ptr),
      ptr(fc.ptr),
      ptr(route.experts),
      i32(route.first),
      i32(route.local),
      i32(hidden),
      i32(inter),
      i32(route.k),
    ],
  );
  ctx.device.launch(
    ctx.fn("moe_expert_out"),
    [rows, Math.ceil(hidden / 8)],
    [256],
    [
      ptr(out.ptr),
      ptr(act.ptr),
      ptr(proj.ptr),
      ptr(route.experts),
      ptr(route.weights),
      i32(route.first),
      i32(route.local),
      i32(hidden),
      i32(inter),
      i32(route.k),
    ],
  );
}
