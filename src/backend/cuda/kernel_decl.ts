/**
 * Kernel declarations: for each extern "C" entry of kernels/*.cu, its name and parameter list.
 * A declaration is the single source of truth on the host side: arguments are packed from it,
 * and a test checks it against the `.entry` signature in the compiled PTX.
 */
import type { DevPtr } from './driver.js';

export type ParamType = 'ptr' | 'i32' | 'u32' | 'f32' | 'u64';

export interface KernelDecl {
  name: string;
  params: ReadonlyArray<readonly [name: string, type: ParamType]>;
}

/** How each parameter type appears in PTX (`int` is .u32, pointers are .u64). */
export const PTX_PARAM_TYPE: Record<ParamType, string> = { ptr: 'u64', i32: 'u32', u32: 'u32', f32: 'f32', u64: 'u64' };

const SIZE: Record<ParamType, number> = { ptr: 8, i32: 4, u32: 4, f32: 4, u64: 8 };

export type ArgValue = number | bigint | DevPtr;

/**
 * Writes the arguments into `view` in C layout (each at an offset aligned to its size) and
 * returns the byte size. Every declared parameter must be given, and nothing else.
 */
export function packArgs(view: DataView, decl: KernelDecl, args: Record<string, ArgValue>): number {
  let offset = 0;
  for (const [name, type] of decl.params) {
    const v = args[name];
    if (v === undefined) throw new Error(`${decl.name}: argument ${name} is missing`);
    const size = SIZE[type];
    offset = Math.ceil(offset / size) * size;
    switch (type) {
      case 'ptr':
      case 'u64':
        view.setBigUint64(offset, BigInt(v), true);
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
    }
    offset += size;
  }
  if (Object.keys(args).length !== decl.params.length) {
    const extra = Object.keys(args).filter((k) => !decl.params.some(([n]) => n === k));
    throw new Error(`${decl.name}: unknown arguments ${extra.join(', ')}`);
  }
  return offset;
}
