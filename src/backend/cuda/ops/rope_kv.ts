/**
 * rope, kv_write, rope_kv_write: kernels/rope_kv.cu. RoPE's inv_freq table comes from
 * ropeInvFreq (src/graph/rope.ts), the same f32 values the CPU reference uses, made once per
 * distinct rope configuration with ctx.constant.
 */
import type { Attrs } from '../../../graph/ir.js';
import { ropeAttrs, ropeInvFreq } from '../../../graph/rope.js';
import type { DevPtr } from '../driver.js';
import { forStorage, type KernelDecl } from '../kernel_decl.js';
import type { CudaOp, CudaOpContext, DeviceTensor } from './types.js';
import { ceilDiv } from './types.js';
import { aligned16, expectDType, fmtShape, nextPow2, roundUp, storageOf } from './elementwise.js';

export const ROPE: KernelDecl = {
  name: 'ts_rope_bf16',
  params: [
    ['y', 'ptr'],
    ['x', 'ptr'],
    ['positions', 'ptr'],
    ['invFreq', 'ptr'],
    ['numHeads', 'i32'],
    ['headDim', 'i32'],
    ['rotaryDim', 'i32'],
    ['lanes', 'i32'],
    ['vec', 'i32'],
  ],
};

export const KV_WRITE: KernelDecl = {
  name: 'ts_kv_write_bf16',
  params: [
    ['cacheK', 'ptr'],
    ['cacheV', 'ptr'],
    ['k', 'ptr'],
    ['v', 'ptr'],
    ['slots', 'ptr'],
    ['width', 'i32'],
    ['numSlots', 'i32'],
    ['vec', 'i32'],
  ],
};

export const ROPE_KV_WRITE: KernelDecl = {
  name: 'ts_rope_kv_write_bf16',
  params: [
    ['q', 'ptr'],
    ['cacheK', 'ptr'],
    ['cacheV', 'ptr'],
    ['qkv', 'ptr'],
    ['positions', 'ptr'],
    ['slots', 'ptr'],
    ['invFreq', 'ptr'],
    ['qNorm', 'ptr'],
    ['kNorm', 'ptr'],
    ['numHeads', 'i32'],
    ['numKvHeads', 'i32'],
    ['headDim', 'i32'],
    ['rotaryDim', 'i32'],
    ['numSlots', 'i32'],
    ['eps', 'f32'],
    ['norm', 'i32'],
    ['lanes', 'i32'],
    ['vec', 'i32'],
  ],
};

/** The rope kernels' launch for one token (block) of `heads` heads. */
export interface RopePlan {
  vec: number;
  /** Threads per head: a power of two <= 32. */
  lanes: number;
  block: number;
  sharedBytes: number;
}

/**
 * 16-byte vectors when heads and the rotary half split into whole vectors (and `aligned`); a team
 * of lanes per head, each lane one rotary pair of vectors (or elements), at most 256 threads.
 */
export function planRope(heads: number, headDim: number, rotaryDim: number, aligned: boolean): RopePlan {
  const vec = aligned && headDim % 8 === 0 && rotaryDim % 16 === 0 ? 1 : 0;
  const chunks = vec ? headDim / 8 : headDim;
  const lanes = Math.min(32, nextPow2(Math.max(1, ceilDiv(chunks, 2))));
  return { vec, lanes, block: Math.min(256, roundUp(lanes * heads, 32)), sharedBytes: rotaryDim * 4 };
}

/** RoPE's inv_freq table on the device (made once per distinct configuration), and the rotary dims. */
export function ropeInvFreqOn(ctx: CudaOpContext, attrs: Attrs, op: string, headDim: number): { ptr: DevPtr; rotaryDim: number } {
  const ra = ropeAttrs(attrs);
  const rotaryDim = ra.rotaryDim;
  if (!Number.isInteger(rotaryDim) || rotaryDim < 0 || rotaryDim % 2 !== 0 || rotaryDim > headDim)
    throw new Error(`${op}: rotaryDim ${rotaryDim} must be even and at most headDim ${headDim}`);
  if (rotaryDim === 0) return { ptr: 0n, rotaryDim };
  return { ptr: ctx.constant(`rope_inv_freq:${JSON.stringify(ra)}`, () => ropeInvFreq(ra)), rotaryDim };
}

/** The k and v halves of one layer's cache [2, numBlocks, blockSize, KV, hd]. */
export function cacheHalves(op: string, cache: DeviceTensor, kvHeads: number, headDim: number): { k: DevPtr; v: DevPtr; numSlots: number } {
  const s = cache.shape;
  if (s.length !== 5 || s[0] !== 2 || s[3] !== kvHeads || s[4] !== headDim)
    throw new Error(`${op}: cache ${fmtShape(cache)} is not [2, numBlocks, blockSize, ${kvHeads}, ${headDim}]`);
  const numSlots = s[1] * s[2];
  if (numSlots > 0x7fffffff) throw new Error(`${op}: cache ${fmtShape(cache)} has more than 2^31 slots`);
  const k = BigInt(cache.ptr);
  return { k, v: k + BigInt(numSlots * kvHeads * headDim * 2), numSlots };
}

/** rope(x[T, H*hd], positions[T]); attrs numHeads, headDim, rotaryDim, theta, scaling */
export const rope: CudaOp = (ctx) => {
  const [x, positions] = ctx.inputs, y = ctx.outputs[0];
  const heads = ctx.attrs.numHeads as number, hd = ctx.attrs.headDim as number;
  const dtype = storageOf('rope', [
    ['x', x],
    ['output', y],
  ]);
  expectDType('rope', 'positions', positions, 'i32');
  const T = x.shape[0];
  if (x.shape.length !== 2 || x.shape[1] !== heads * hd || y.shape[0] !== T || y.shape[1] !== heads * hd || positions.shape[0] < T)
    throw new Error(`rope: x ${fmtShape(x)}, positions ${fmtShape(positions)}, output ${fmtShape(y)} do not match ${heads} heads of ${hd}`);
  const freq = ropeInvFreqOn(ctx, ctx.attrs, 'rope', hd);
  if (T === 0 || heads === 0) return;
  const plan = planRope(heads, hd, freq.rotaryDim, aligned16(x.ptr, y.ptr));
  ctx.launch(
    forStorage(ROPE, dtype),
    { grid: [T, 1, 1], block: [plan.block, 1, 1], sharedBytes: plan.sharedBytes },
    { y: y.ptr, x: x.ptr, positions: positions.ptr, invFreq: freq.ptr, numHeads: heads, headDim: hd, rotaryDim: freq.rotaryDim, lanes: plan.lanes, vec: plan.vec },
  );
};

/** kv_write(k[T, KV*hd], v[T, KV*hd], cache, slots[T]) -> cache (the same buffer) */
export const kvWrite: CudaOp = (ctx) => {
  const [k, v, cache, slots] = ctx.inputs;
  if (ctx.outputs[0].ptr !== cache.ptr) throw new Error('kv_write must update its cache in place');
  const dtype = storageOf('kv_write', [
    ['k', k],
    ['v', v],
    ['cache', cache],
  ]);
  expectDType('kv_write', 'slots', slots, 'i32');
  const kvHeads = cache.shape[3], hd = cache.shape[4];
  const { k: cacheK, v: cacheV, numSlots } = cacheHalves('kv_write', cache, kvHeads, hd);
  const T = k.shape[0], width = kvHeads * hd;
  if (k.shape.length !== 2 || k.shape[1] !== width || v.shape[0] !== T || v.shape[1] !== width || slots.shape[0] < T)
    throw new Error(`kv_write: k ${fmtShape(k)}, v ${fmtShape(v)}, slots ${fmtShape(slots)} do not match cache ${fmtShape(cache)}`);
  if (T === 0 || width === 0) return;
  const vec = width % 8 === 0 && aligned16(k.ptr, v.ptr, cacheK, cacheV) ? 1 : 0;
  const block = Math.min(256, roundUp(vec ? width / 8 : width, 32));
  ctx.launch(forStorage(KV_WRITE, dtype), { grid: [T, 1, 1], block: [block, 1, 1] }, { cacheK, cacheV, k: k.ptr, v: v.ptr, slots: slots.ptr, width, numSlots, vec });
};

/**
 * rope_kv_write(qkv[T, (H + 2 KV) hd], positions[T], cache, slots[T] (, qNorm[hd], kNorm[hd]))
 * -> (q[T, H hd], cache); attrs numHeads, numKvHeads, headDim, rope (null: no rotation), qkNormEps
 */
export const ropeKvWrite: CudaOp = (ctx) => {
  const [qkv, positions, cache, slots] = ctx.inputs;
  const [q, cacheOut] = ctx.outputs;
  const op = 'rope_kv_write';
  if (cacheOut.ptr !== cache.ptr) throw new Error('rope_kv_write must update its cache in place');
  const heads = ctx.attrs.numHeads as number, kvHeads = ctx.attrs.numKvHeads as number, hd = ctx.attrs.headDim as number;
  const eps = ctx.attrs.qkNormEps as number | null | undefined;
  const norm = eps !== null && eps !== undefined;
  const qNorm = norm ? ctx.inputs[4] : null, kNorm = norm ? ctx.inputs[5] : null;
  if (norm && (!qNorm || !kNorm || qNorm.shape[0] !== hd || kNorm.shape[0] !== hd))
    throw new Error(`${op}: q/k norm weights must be [${hd}], got ${qNorm ? fmtShape(qNorm) : 'none'} and ${kNorm ? fmtShape(kNorm) : 'none'}`);
  const dtype = storageOf(op, [
    ['qkv', qkv],
    ['q', q],
    ['cache', cache],
    ['qNorm', qNorm],
    ['kNorm', kNorm],
  ]);
  expectDType(op, 'positions', positions, 'i32');
  expectDType(op, 'slots', slots, 'i32');
  const { k: cacheK, v: cacheV, numSlots } = cacheHalves(op, cache, kvHeads, hd);
  const T = qkv.shape[0];
  if (qkv.shape.length !== 2 || qkv.shape[1] !== (heads + 2 * kvHeads) * hd || q.shape[0] !== T || q.shape[1] !== heads * hd || positions.shape[0] < T || slots.shape[0] < T)
    throw new Error(`${op}: qkv ${fmtShape(qkv)}, q ${fmtShape(q)}, positions ${fmtShape(positions)}, slots ${fmtShape(slots)} do not match ${heads} + 2 x ${kvHeads} heads of ${hd}`);
  const freq = ctx.attrs.rope ? ropeInvFreqOn(ctx, ctx.attrs.rope as Attrs, op, hd) : { ptr: 0n, rotaryDim: 0 };
  if (T === 0) return;
  const ptrs = [q.ptr, qkv.ptr, cacheK, cacheV, ...(norm ? [qNorm!.ptr, kNorm!.ptr] : [])];
  const plan = planRope(heads + 2 * kvHeads, hd, freq.rotaryDim, aligned16(...ptrs));
  ctx.launch(
    forStorage(ROPE_KV_WRITE, dtype),
    { grid: [T, 1, 1], block: [plan.block, 1, 1], sharedBytes: plan.sharedBytes },
    {
      q: q.ptr,
      cacheK,
      cacheV,
      qkv: qkv.ptr,
      positions: positions.ptr,
      slots: slots.ptr,
      invFreq: freq.ptr,
      qNorm: norm ? qNorm!.ptr : 0n,
      kNorm: norm ? kNorm!.ptr : 0n,
      numHeads: heads,
      numKvHeads: kvHeads,
      headDim: hd,
      rotaryDim: freq.rotaryDim,
      numSlots,
      eps: norm ? eps : 0,
      norm: norm ? 1 : 0,
      lanes: plan.lanes,
      vec: plan.vec,
    },
  );
};

export const DECLS = [ROPE, KV_WRITE, ROPE_KV_WRITE];
