/**
 * Kernel declarations: for each extern "C" entry of kernels/*.cu, its name and parameter list.
 * A declaration is the single source of truth on the host side: arguments are packed from it,
 * and a test checks it against the `.entry` signature in the compiled PTX.
 */
import type { DevPtr } from './driver.js';

/**
 * 'tmap' is a TMA tensor map passed by value (`const __grid_constant__ CUtensorMap`): 128 bytes,
 * aligned to 128 as CUDA 13's cuda.h declares CUtensorMap (alignas(128)).
 */
export type ParamType = 'ptr' | 'i32' | 'u32' | 'f32' | 'u64' | 'tmap';

export interface KernelDecl {
  name: string;
  params: ReadonlyArray<readonly [name: string, type: ParamType]>;
}

/**
 * Kernels that read or write the 16-bit storage type have one entry per type, named alike but
 * for the type: `ts_rmsnorm_bf16` / `ts_rmsnorm_f16`, `ts_gemm_64x128_bf16_f32` /
 * `ts_gemm_64x128_f16_f32`. Declarations name the bf16 entry; this gives the entry for `dtype`
 * (the same declaration for bf16, and for a kernel without a storage type).
 */
export function forStorage(decl: KernelDecl, dtype: 'bf16' | 'f16'): KernelDecl {
  if (dtype === 'bf16') return decl;
  // Made once per declaration (a launch asks for it every step): the twin, or decl itself.
  let twin = fp16Twins.get(decl);
  if (!twin) {
    twin = /_bf16(_|$)/.test(decl.name) ? { name: decl.name.replace(/_bf16(_|$)/, '_f16$1'), params: decl.params } : decl;
    fp16Twins.set(decl, twin);
  }
  return twin;
}
const fp16Twins = new WeakMap<KernelDecl, KernelDecl>();

/** The declarations with each storage-typed one's fp16 twin beside it (for the check against the PTX). */
export function withStorageTwins(decls: readonly KernelDecl[]): KernelDecl[] {
  return decls.flatMap((d) => {
    const twin = forStorage(d, 'f16');
    return twin === d ? [d] : [d, twin];
  });
}

/**
 * How each parameter type appears in PTX (`int` is .u32, pointers are .u64), as
 * tools/build_kernels.mjs writes it: a CUtensorMap is `.param .align 128 .b8 name[128]`.
 */
export const PTX_PARAM_TYPE: Record<ParamType, string> = { ptr: 'u64', i32: 'u32', u32: 'u32', f32: 'f32', u64: 'u64', tmap: 'align128.b8[128]' };

/** Each type's size and its alignment in the argument buffer (C layout). */
export const PARAM_LAYOUT: Record<ParamType, { size: number; align: number }> = {
  ptr: { size: 8, align: 8 },
  i32: { size: 4, align: 4 },
  u32: { size: 4, align: 4 },
  f32: { size: 4, align: 4 },
  u64: { size: 8, align: 8 },
  tmap: { size: 128, align: 128 },
};

/** A scalar or pointer, or a tensor map's 128 bytes (CudaDriver.encodeTensorMap2d). */
export type ArgValue = number | bigint | DevPtr | Uint8Array;

/**
 * Writes the arguments into `view` in C layout (each at an offset aligned to its alignment,
 * padding zeroed) and returns the byte size: the end of the last parameter. Every declared
 * parameter must be given, and nothing else.
 */
export function packArgs(view: DataView, decl: KernelDecl, args: Record<string, ArgValue>): number {
  let offset = 0;
  for (const [name, type] of decl.params) {
    const v = args[name];
    if (v === undefined) throw new Error(`${decl.name}: argument ${name} is missing`);
    const { size, align } = PARAM_LAYOUT[type];
    const start = Math.ceil(offset / align) * align;
    if (start + size > view.byteLength) throw new Error(`${decl.name}: arguments do not fit the ${view.byteLength}-byte argument buffer`);
    // Zeroed so that the same arguments always pack to the same bytes.
    for (let i = offset; i < start; i++) view.setUint8(i, 0);
    offset = start;
    if (type === 'tmap') {
      if (!(v instanceof Uint8Array) || v.byteLength !== size)
        throw new Error(`${decl.name}: argument ${name} must be a tensor map of ${size} bytes (Uint8Array), not ${v instanceof Uint8Array ? `${v.byteLength} bytes` : typeof v}`);
    } else if (v instanceof Uint8Array) throw new Error(`${decl.name}: argument ${name} is a ${type}, not bytes`);
    switch (type) {
      case 'ptr':
      case 'u64':
        view.setBigUint64(offset, BigInt(v as number | bigint), true);
        break;
      case 'i32':
        view.setInt32(offset, Number(v), true);
        break;
      case 'u32':
        view.setUint32(offset, Number(v), true);
        break;
      case 'f32':
        view.setFloat32(offset, Number(v), true);
        break;
      case 'tmap':
        new Uint8Array(view.buffer, view.byteOffset + offset, size).set(v as Uint8Array);
        break;
    }
    offset += size;
  }
  if (Object.keys(args).length !== decl.params.length) {
    const extra = Object.keys(args).filter((k) => !decl.params.some(([n]) => n === k));
    throw new Error(`${decl.name}: unknown arguments ${extra.join(', ')}`);
  }
  return offset;
}
