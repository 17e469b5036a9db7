import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TesseraError } from '../../src/errors.js';
import type { TesseraErrorCode } from '../../src/errors.js';
import { SafetensorsCheckpoint, SafetensorsFile, writeSafetensors } from '../../src/formats/safetensors.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../src/util/dtype.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tessera-safetensors-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const utf8 = new TextEncoder();

/** Deterministic uniform values in [-scale, scale), so failures reproduce. */
function randomF32(count: number, seed: number, scale = 10): Float32Array {
  const out = new Float32Array(count);
  let state = seed >>> 0;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    out[i] = (state / 2 ** 32 - 0.5) * 2 * scale;
  }
  return out;
}

function randomBits16(count: number, seed: number): Uint16Array {
  const out = new Uint16Array(count);
  let state = seed >>> 0;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    out[i] = state >>> 16;
  }
  return out;
}

/** A file image: u64 LE header length (the true one unless given), header, data bytes. */
function fileImage(header: string | Uint8Array | object, data: Uint8Array | number = 0, headerLength?: bigint): Uint8Array {
  const headerBytes =
    typeof header === 'string' ? utf8.encode(header) : header instanceof Uint8Array ? header : utf8.encode(JSON.stringify(header));
  const dataBytes = typeof data === 'number' ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + headerBytes.length + dataBytes.length);
  new DataView(out.buffer).setBigUint64(0, headerLength ?? BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  out.set(dataBytes, 8 + headerBytes.length);
  return out;
}

const entry = (dtype: string, shape: unknown, dataOffsets: unknown) => ({ dtype, shape, data_offsets: dataOffsets });

async function put(name: string, bytes: Uint8Array | string): Promise<string> {
  const file = path.join(dir, name);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, bytes);
  return file;
}

/** Asserts a one-sentence TesseraError of `code` whose message contains every fragment. */
async function expectError(work: Promise<unknown>, code: TesseraErrorCode, fragments: string[]): Promise<void> {
  const err = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TesseraError);
  const { message, code: actualCode } = err as TesseraError;
  expect(actualCode).toBe(code);
  for (const fragment of fragments) expect(message).toContain(fragment);
  expect(message).not.toContain('\n');
  expect(message.endsWith('.')).toBe(true);
}

/** Index of the first element whose bits differ, or -1. */
function firstBitMismatch(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return i;
  return -1;
}

describe('writeSafetensors', () => {
  it('writes the bytes the reference implementation writes', async () => {
    const values = Float32Array.from([0, 1, 2, 3, 4, 5]);
    const valueBytes = new Uint8Array(values.buffer);

    const file = path.join(dir, 'ref-a.safetensors');
    await writeSafetensors(file, { 'attn.0': { dtype: 'F32', shape: [1, 2, 3], data: values } });
    const header = '{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}';
    expect(header.length).toBe(64);
    expect(new Uint8Array(await readFile(file))).toEqual(fileImage(header, valueBytes));

    // A 65-byte header is padded with 7 spaces so that the data starts at a multiple of 8.
    const padded = path.join(dir, 'ref-b.safetensors');
    await writeSafetensors(padded, { attn0: { dtype: 'F32', shape: [1, 1, 2, 3], data: values } });
    const paddedHeader = '{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}' + ' '.repeat(7);
    expect(new Uint8Array(await readFile(padded))).toEqual(fileImage(paddedHeader, valueBytes));
  });

  it('rejects data that does not match its shape or dtype', async () => {
    const file = path.join(dir, 'bad-write.safetensors');
    await expectError(writeSafetensors(file, { w: { dtype: 'F32', shape: [2, 2], data: new Float32Array(3) } }), 'invalid_input', [
      file,
      "'w'",
      'shape [2, 2] but 3 values',
    ]);
    await expectError(writeSafetensors(file, { w: { dtype: 'F32', shape: [2], data: new Int32Array(2) } }), 'invalid_input', [
      'dtype F32',
      'Int32Array',
    ]);
    await expectError(writeSafetensors(file, { __metadata__: { dtype: 'I32', shape: [1], data: new Int32Array(1) } }), 'invalid_input', [
      'reserved',
    ]);
  });
});

describe('SafetensorsFile round trip', () => {
  it('reads back F32, F16, BF16 and I32 tensors with their metadata', async () => {
    // Known roundings first: f16(1/3) = 0x3555, bf16(1/3) = 0x3EAB; 1 + 2^-8 ties to even (1) in bf16,
    // 1 + 3 * 2^-8 ties up to 1 + 2^-6; 65520 overflows f16; 2^-24 is the smallest f16 subnormal.
    const known = Float32Array.from([1 / 3, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 65520, 2 ** -24, -0, 1e-9]);
    const values = new Float32Array(6 * 7);
    values.set(known);
    values.set(randomF32(values.length - known.length, 7), known.length);
    const ids = Int32Array.from({ length: 10 }, (_, i) => (i - 5) * 123_456_789);

    const file = path.join(dir, 'roundtrip.safetensors');
    const metadata = { format: 'pt', note: 'ünïcode ✓' };
    await writeSafetensors(
      file,
      {
        w32: { dtype: 'F32', shape: [6, 7], data: values },
        w16: { dtype: 'F16', shape: [6, 7], data: values },
        wbf: { dtype: 'BF16', shape: [42], data: values },
        ids: { dtype: 'I32', shape: [2, 5], data: ids },
        empty: { dtype: 'F32', shape: [0, 3], data: new Float32Array(0) },
      },
      metadata,
    );

    const st = await SafetensorsFile.open(file);
    try {
      expect(st.path).toBe(file);
      expect(st.metadata).toEqual(metadata);
      expect([...st.tensors.keys()].sort()).toEqual(['empty', 'ids', 'w16', 'w32', 'wbf']);
      const w32 = st.tensors.get('w32')!;
      expect(w32).toMatchObject({ name: 'w32', dtype: 'F32', shape: [6, 7], file, byteLength: 168 });
      expect(st.tensors.get('wbf')).toMatchObject({ dtype: 'BF16', shape: [42], byteLength: 84 });

      expect(firstBitMismatch(await st.readF32('w32'), values)).toBe(-1);

      const f16 = await st.readF32('w16');
      expect(Array.from(f16.subarray(0, 7))).toEqual([0.333251953125, 1.00390625, 1.01171875, Infinity, 2 ** -24, -0, 0]);
      const f16Bits = new Uint16Array(values.length);
      f32ToF16(values, f16Bits);
      const f16Rounded = new Float32Array(values.length);
      f16ToF32(f16Bits, f16Rounded);
      expect(firstBitMismatch(f16, f16Rounded)).toBe(-1);
      expect(new Uint16Array((await st.readBytes('w16')).buffer)).toEqual(f16Bits);

      const bf16 = await st.readF32('wbf');
      expect(Array.from(bf16.subarray(0, 5))).toEqual([0.333984375, 1, 1.015625, 65536, 2 ** -24]);
      const bfBits = new Uint16Array(values.length);
      f32ToBf16(values, bfBits);
      const bfRounded = new Float32Array(values.length);
      bf16ToF32(bfBits, bfRounded);
      expect(firstBitMismatch(bf16, bfRounded)).toBe(-1);
      expect(Array.from(bf16).every((x, i) => Math.abs(x - values[i]) <= Math.abs(values[i]) * 2 ** -8)).toBe(true);

      const idBytes = await st.readBytes('ids');
      expect(Array.from(new Int32Array(idBytes.buffer))).toEqual(Array.from(ids));
      expect((await st.readF32('empty')).length).toBe(0);

      // The writer puts 4-byte dtypes first, so every tensor sits at a multiple of its element size.
      for (const info of st.tensors.values()) expect(info.byteOffset % (info.dtype === 'F16' || info.dtype === 'BF16' ? 2 : 4)).toBe(0);
    } finally {
      await st.close();
    }
  });

  it('takes a Uint16Array as raw F16/BF16 bits', async () => {
    const file = path.join(dir, 'raw-bits.safetensors');
    await writeSafetensors(file, {
      h: { dtype: 'F16', shape: [3], data: Uint16Array.from([0x3c00, 0xc000, 0x7c00]) },
      b: { dtype: 'BF16', shape: [3], data: Uint16Array.from([0x3f80, 0x4049, 0xff80]) },
    });
    const st = await SafetensorsFile.open(file);
    expect(Array.from(await st.readF32('h'))).toEqual([1, -2, Infinity]);
    expect(Array.from(await st.readF32('b'))).toEqual([1, 3.140625, -Infinity]);
    await st.close();
  });

  it('reads tensors at odd file offsets', async () => {
    // Data buffer: u8[3] at 0, f32[5] at 3, f16[3] at 23, bf16[3] at 29; the header is 8-byte padded,
    // so the three float tensors start at odd file offsets.
    const header = {
      pad: entry('U8', [3], [0, 3]),
      f: entry('F32', [5], [3, 23]),
      h: entry('F16', [3], [23, 29]),
      b: entry('BF16', [3], [29, 35]),
    };
    let json = JSON.stringify(header);
    json += ' '.repeat((8 - (json.length % 8)) % 8);
    const data = new Uint8Array(35);
    const view = new DataView(data.buffer);
    data.set([7, 8, 9]);
    const floats = [1.5, -2.25, 3e-3, 1e30, -0.125];
    floats.forEach((x, i) => view.setFloat32(3 + 4 * i, x, true));
    [0x3c00, 0x3800, 0xbc00].forEach((bits, i) => view.setUint16(23 + 2 * i, bits, true));
    [0x3f80, 0x4000, 0xc040].forEach((bits, i) => view.setUint16(29 + 2 * i, bits, true));
    const file = await put('odd.safetensors', fileImage(json, data));

    const st = await SafetensorsFile.open(file);
    try {
      for (const name of ['f', 'h', 'b']) expect(st.tensors.get(name)!.byteOffset % 2).toBe(1);
      expect(Array.from(await st.readBytes('pad'))).toEqual([7, 8, 9]);
      expect(Array.from(await st.readF32('f'))).toEqual(Array.from(Float32Array.from(floats)));
      expect(Array.from(await st.readF32('h'))).toEqual([1, 0.5, -1]);
      expect(Array.from(await st.readF32('b'))).toEqual([1, 2, -3]);
      // readBytes hands back a buffer of its own, which can be viewed as f32 despite the odd offset.
      expect(Array.from(new Float32Array((await st.readBytes('f')).buffer))).toEqual(Array.from(Float32Array.from(floats)));
      // An F32 read lands in a destination that is a view at a non-zero byte offset.
      const backing = new Float32Array(7).fill(42);
      const dst = backing.subarray(1, 6);
      expect(await st.readF32('f', dst)).toBe(dst);
      expect(Array.from(backing)).toEqual([42, ...Float32Array.from(floats), 42]);
    } finally {
      await st.close();
    }
  });

  it('widens a large F16/BF16 tensor in chunks exactly as a direct conversion does', async () => {
    // 2.5 M elements each (5 MB), more than one 4 MiB conversion chunk, at odd file offsets.
    const numElements = 2_500_001;
    const bfBits = randomBits16(numElements, 11);
    const hBits = randomBits16(numElements, 12);
    const bfBytes = 2 * numElements;
    const header = {
      pad: entry('U8', [1], [0, 1]),
      b: entry('BF16', [numElements], [1, 1 + bfBytes]),
      h: entry('F16', [1, numElements], [1 + bfBytes, 1 + 2 * bfBytes]),
    };
    const data = new Uint8Array(1 + 2 * bfBytes);
    data.set(new Uint8Array(bfBits.buffer), 1);
    data.set(new Uint8Array(hBits.buffer), 1 + bfBytes);
    const file = await put('large.safetensors', fileImage(header, data));

    const st = await SafetensorsFile.open(file);
    try {
      const bfExpected = new Float32Array(numElements);
      bf16ToF32(bfBits, bfExpected);
      expect(firstBitMismatch(await st.readF32('b'), bfExpected)).toBe(-1);

      const hExpected = new Float32Array(numElements);
      f16ToF32(hBits, hExpected);
      const dst = new Float32Array(numElements);
      expect(await st.readF32('h', dst)).toBe(dst);
      expect(firstBitMismatch(dst, hExpected)).toBe(-1);
    } finally {
      await st.close();
    }
  });

  it('accepts sub-byte dtypes, empty tensors, an empty header and padding', async () => {
    const header = {
      __metadata__: { a: 'b' },
      q: entry('F4', [2, 2], [0, 2]),
      z: entry('F64', [3, 0], [2, 2]),
      s: entry('F6_E2M3', [4], [2, 5]),
    };
    const file = await put('misc.safetensors', fileImage(JSON.stringify(header) + '   ', 5));
    const st = await SafetensorsFile.open(file);
    expect(st.tensors.get('q')).toMatchObject({ dtype: 'F4', byteLength: 2 });
    expect(st.tensors.get('s')).toMatchObject({ dtype: 'F6_E2M3', byteLength: 3 });
    expect((await st.readBytes('z')).length).toBe(0);
    await st.close();

    const empty = await SafetensorsFile.open(await put('empty.safetensors', fileImage('{}')));
    expect(empty.tensors.size).toBe(0);
    expect(empty.metadata).toEqual({});
    await empty.close();
  });

  it('reports reads it cannot do', async () => {
    const file = path.join(dir, 'reads.safetensors');
    await writeSafetensors(file, {
      ids: { dtype: 'I32', shape: [3], data: new Int32Array(3) },
      w: { dtype: 'F32', shape: [2, 2], data: new Float32Array(4) },
    });
    const st = await SafetensorsFile.open(file);
    await expectError(st.readF32('ids'), 'unsupported', [file, "'ids'", 'I32']);
    await expectError(st.readBytes('nope'), 'invalid_checkpoint', [file, "no tensor named 'nope'"]);
    await expectError(st.readF32('w', new Float32Array(3)), 'invalid_checkpoint', [file, "'w'", 'shape [2, 2]', 'destination holds 3']);
    await st.close();
  });
});

describe('SafetensorsFile rejects bad files', () => {
  const f32x2 = (begin: number) => entry('F32', [2], [begin, begin + 8]);
  const cases: { label: string; image: Uint8Array; fragments: string[] }[] = [
    { label: 'tiny', image: new Uint8Array(5), fragments: ['5 bytes', 'too short', '8-byte header length'] },
    { label: 'zero-header', image: fileImage('{}', 0, 0n), fragments: ['empty header', 'header length is 0'] },
    { label: 'truncated', image: fileImage('{}', 0, 2048n), fragments: ['is truncated', 'header says 2048 bytes', 'only 2 after the length prefix'] },
    { label: 'absurd', image: fileImage('{}', 0, 2n ** 40n), fragments: ['1099511627776 bytes', '100 MiB'] },
    { label: 'max-u64', image: fileImage('{}', 0, 2n ** 64n - 1n), fragments: ['18446744073709551615 bytes', '100 MiB'] },
    { label: 'not-utf8', image: fileImage(Uint8Array.from([0x7b, 0xff, 0x7d])), fragments: ['not valid UTF-8'] },
    { label: 'not-json', image: fileImage('{"a": '), fragments: ['not valid JSON'] },
    { label: 'bom', image: fileImage('\ufeff{}'), fragments: ['not valid JSON'] },
    { label: 'array', image: fileImage('[]'), fragments: ['not a JSON object'] },
    { label: 'entry-number', image: fileImage({ a: 5 }), fragments: ["tensor 'a'", 'not an object with dtype, shape and data_offsets'] },
    { label: 'entry-missing', image: fileImage({ a: { dtype: 'F32', shape: [1] } }, 4), fragments: ["tensor 'a'", 'has no data_offsets'] },
    { label: 'dtype-unknown', image: fileImage({ a: entry('F128', [1], [0, 16]) }, 16), fragments: ["tensor 'a'", 'unknown dtype "F128"'] },
    { label: 'dtype-lowercase', image: fileImage({ a: entry('f32', [1], [0, 4]) }, 4), fragments: ['unknown dtype "f32"'] },
    { label: 'shape-negative', image: fileImage({ a: entry('F32', [-1], [0, 4]) }, 4), fragments: ['shape [-1]', 'non-negative integers'] },
    { label: 'shape-fraction', image: fileImage({ a: entry('F32', [1.5], [0, 4]) }, 4), fragments: ['shape [1.5]', 'non-negative integers'] },
    { label: 'shape-string', image: fileImage({ a: entry('F32', '4', [0, 4]) }, 4), fragments: ['shape "4"', 'non-negative integers'] },
    { label: 'offsets-three', image: fileImage({ a: entry('F32', [1], [0, 4, 8]) }, 8), fragments: ['data_offsets [0,4,8]', 'two non-negative integers'] },
    { label: 'offsets-negative', image: fileImage({ a: entry('F32', [1], [-4, 0]) }, 4), fragments: ['data_offsets [-4,0]', 'two non-negative integers'] },
    { label: 'offsets-reversed', image: fileImage({ a: entry('F32', [1], [8, 4]) }, 8), fragments: ['[8, 4]', 'end before they begin'] },
    { label: 'size-mismatch', image: fileImage({ a: entry('F32', [2, 2], [0, 12]) }, 12), fragments: ["'a'", 'spanning 12 bytes', 'shape [2, 2] of F32 needs 16 bytes'] },
    { label: 'sub-byte', image: fileImage({ a: entry('F4', [3], [0, 1]) }, 1), fragments: ["'a'", 'whole number of bytes'] },
    { label: 'huge-shape', image: fileImage({ a: entry('F32', [2 ** 40, 2 ** 40], [0, 4]) }, 4), fragments: ['too large to address'] },
    { label: 'outside', image: fileImage({ a: entry('F32', [4], [0, 16]) }, 8), fragments: ["'a' points outside the file", '[0, 16]', '8-byte data buffer'] },
    { label: 'outside-by-one', image: fileImage({ a: entry('F32', [4], [0, 16]) }, 15), fragments: ["'a' points outside the file", '15-byte data buffer'] },
    { label: 'overlap', image: fileImage({ b: f32x2(4), a: f32x2(0) }, 12), fragments: ["'a' and 'b' overlap", 'ends at data offset 8', 'begins at 4'] },
    { label: 'gap', image: fileImage({ a: f32x2(0), b: f32x2(12) }, 20), fragments: ['gap', 'bytes [8, 12)', "before tensor 'b'"] },
    { label: 'gap-at-start', image: fileImage({ a: f32x2(4) }, 12), fragments: ['gap', 'bytes [0, 4)', "before tensor 'a'"] },
    { label: 'trailing', image: fileImage({ a: f32x2(0) }, 11), fragments: ['3 trailing bytes', '[8, 11)', "last tensor 'a'"] },
    { label: 'trailing-no-tensors', image: fileImage('{}', 2), fragments: ['2 trailing bytes', 'lists no tensors'] },
    {
      label: 'duplicate-key',
      image: fileImage(`{"a":${JSON.stringify(f32x2(0))},"x\\u0061y":{},"a":${JSON.stringify(f32x2(0))}}`, 8),
      fragments: ["lists 'a' twice"],
    },
    { label: 'metadata-number', image: fileImage({ __metadata__: { epoch: 3 } }), fragments: ['__metadata__', 'string values'] },
    { label: 'metadata-array', image: fileImage({ __metadata__: ['x'] }), fragments: ['__metadata__', 'string values'] },
  ];

  it.each(cases)('rejects $label', async ({ label, image, fragments }) => {
    const file = await put(`bad-${label}.safetensors`, image);
    await expectError(SafetensorsFile.open(file), 'invalid_checkpoint', [file, ...fragments]);
  });

  it('names a path that does not exist, is a directory, or cannot be read', async () => {
    const missing = path.join(dir, 'missing.safetensors');
    await expectError(SafetensorsFile.open(missing), 'invalid_checkpoint', [`${missing} does not exist`]);
    await expectError(SafetensorsFile.open(dir), 'invalid_checkpoint', [`${dir} is a directory`]);
  });

  it.skipIf(process.getuid?.() === 0)('names a file it has no permission to read', async () => {
    const file = await put('locked.safetensors', fileImage('{}'));
    await chmod(file, 0o000);
    await expectError(SafetensorsFile.open(file), 'invalid_checkpoint', [file, 'permission denied']);
  });
});

describe('SafetensorsCheckpoint', () => {
  /** Two shards of a model in `name`/, plus a decoy model.safetensors that the index must win over. */
  async function writeSharded(name: string, weightMap?: Record<string, unknown>): Promise<string> {
    const ckpt = path.join(dir, name);
    await mkdir(ckpt, { recursive: true });
    await writeSafetensors(path.join(ckpt, 'model-00001-of-00002.safetensors'), {
      'embed.weight': { dtype: 'BF16', shape: [4, 3], data: randomF32(12, 1) },
      'layer.0.w': { dtype: 'F32', shape: [3, 3], data: randomF32(9, 2) },
    });
    await writeSafetensors(path.join(ckpt, 'model-00002-of-00002.safetensors'), {
      'layer.1.w': { dtype: 'F16', shape: [3, 3], data: randomF32(9, 3) },
      'lm_head.weight': { dtype: 'F32', shape: [4, 3], data: randomF32(12, 4) },
    });
    await writeSafetensors(path.join(ckpt, 'model.safetensors'), { decoy: { dtype: 'F32', shape: [1], data: new Float32Array(1) } });
    const index = {
      metadata: { total_size: 24 + 36 + 18 + 48 },
      weight_map: weightMap ?? {
        'embed.weight': 'model-00001-of-00002.safetensors',
        'layer.0.w': 'model-00001-of-00002.safetensors',
        'layer.1.w': 'model-00002-of-00002.safetensors',
        'lm_head.weight': 'model-00002-of-00002.safetensors',
      },
    };
    await writeFile(path.join(ckpt, 'model.safetensors.index.json'), JSON.stringify(index));
    return ckpt;
  }

  it('reads a two-shard checkpoint through its index', async () => {
    const ckpt = await writeSharded('sharded');
    const checkpoint = await SafetensorsCheckpoint.open(ckpt);
    try {
      expect([...checkpoint.tensors.keys()].sort()).toEqual(['embed.weight', 'layer.0.w', 'layer.1.w', 'lm_head.weight']);
      expect(checkpoint.totalBytes).toBe(24 + 36 + 18 + 48);
      expect(checkpoint.tensors.get('layer.1.w')!.file).toBe(path.join(ckpt, 'model-00002-of-00002.safetensors'));

      expect(firstBitMismatch(await checkpoint.readF32('lm_head.weight'), randomF32(12, 4))).toBe(-1);
      expect(new Float32Array((await checkpoint.readBytes('layer.0.w')).buffer)).toEqual(randomF32(9, 2));
      const bfBits = new Uint16Array(12);
      f32ToBf16(randomF32(12, 1), bfBits);
      const bfExpected = new Float32Array(12);
      bf16ToF32(bfBits, bfExpected);
      expect(firstBitMismatch(await checkpoint.readF32('embed.weight'), bfExpected)).toBe(-1);
      const hBits = new Uint16Array(9);
      f32ToF16(randomF32(9, 3), hBits);
      expect(new Uint16Array((await checkpoint.readBytes('layer.1.w')).buffer)).toEqual(hBits);

      await expectError(checkpoint.readF32('decoy'), 'invalid_checkpoint', [ckpt, "no tensor named 'decoy'"]);
    } finally {
      await checkpoint.close();
    }
  });

  it('reads a single model.safetensors, and files given by path', async () => {
    const ckpt = path.join(dir, 'single');
    await mkdir(ckpt);
    const file = path.join(ckpt, 'model.safetensors');
    await writeSafetensors(file, { w: { dtype: 'F32', shape: [2], data: Float32Array.from([1, 2]) } });
    const checkpoint = await SafetensorsCheckpoint.open(ckpt);
    expect(Array.from(await checkpoint.readF32('w'))).toEqual([1, 2]);
    expect(checkpoint.totalBytes).toBe(8);
    await checkpoint.close();

    const other = path.join(dir, 'other.safetensors');
    await writeSafetensors(other, { v: { dtype: 'I32', shape: [1], data: Int32Array.from([-7]) } });
    const pair = await SafetensorsCheckpoint.openFiles([file, other]);
    expect(Array.from(new Int32Array((await pair.readBytes('v')).buffer))).toEqual([-7]);
    expect(pair.tensors.size).toBe(2);
    await pair.close();

    await expectError(SafetensorsCheckpoint.openFiles([file, file]), 'invalid_checkpoint', ['both contain tensor', file]);
  });

  it('rejects a directory without weights, or a path that is no directory', async () => {
    const emptyDir = path.join(dir, 'no-weights');
    await mkdir(emptyDir);
    await expectError(SafetensorsCheckpoint.open(emptyDir), 'invalid_checkpoint', [
      emptyDir,
      'neither model.safetensors.index.json nor model.safetensors',
    ]);
    const missingDir = path.join(dir, 'no-such-dir');
    await expectError(SafetensorsCheckpoint.open(missingDir), 'invalid_checkpoint', [`${missingDir} does not exist`]);
    const file = await put('plain-file', 'x');
    await expectError(SafetensorsCheckpoint.open(file), 'invalid_checkpoint', [`${file} is not a directory`]);
  });

  it('rejects a bad index', async () => {
    const notJson = await writeSharded('index-not-json');
    const notJsonIndex = path.join(notJson, 'model.safetensors.index.json');
    await writeFile(notJsonIndex, '{"weight_map": ');
    await expectError(SafetensorsCheckpoint.open(notJson), 'invalid_checkpoint', [notJsonIndex, 'not valid JSON']);

    const noMap = await writeSharded('index-no-map');
    const noMapIndex = path.join(noMap, 'model.safetensors.index.json');
    await writeFile(noMapIndex, JSON.stringify({ metadata: {} }));
    await expectError(SafetensorsCheckpoint.open(noMap), 'invalid_checkpoint', [noMapIndex, 'no "weight_map" object']);

    const notName = await writeSharded('index-not-name', { 'layer.0.w': 3 });
    await expectError(SafetensorsCheckpoint.open(notName), 'invalid_checkpoint', ["'layer.0.w'", 'not a shard file name']);
  });

  it('rejects shard names that leave the directory', async () => {
    for (const shard of ['../model-00001-of-00002.safetensors', 'sub/../../x.safetensors', '/etc/passwd']) {
      const ckpt = await writeSharded('escape', { 'layer.0.w': shard });
      await expectError(SafetensorsCheckpoint.open(ckpt), 'invalid_checkpoint', [
        path.join(ckpt, 'model.safetensors.index.json'),
        `shard '${shard}'`,
        `outside ${ckpt}`,
      ]);
    }
  });

  it('rejects a missing shard, a tensor absent from its shard, and a tensor in two shards', async () => {
    const missing = await writeSharded('missing-shard', {
      'layer.0.w': 'model-00001-of-00002.safetensors',
      'layer.9.w': 'model-00003-of-00003.safetensors',
    });
    const missingIndex = path.join(missing, 'model.safetensors.index.json');
    await expectError(SafetensorsCheckpoint.open(missing), 'invalid_checkpoint', [
      missingIndex,
      'lists shard model-00003-of-00003.safetensors',
      `${path.join(missing, 'model-00003-of-00003.safetensors')} does not exist`,
    ]);

    const misplaced = await writeSharded('misplaced', {
      'layer.0.w': 'model-00001-of-00002.safetensors',
      'layer.1.w': 'model-00001-of-00002.safetensors',
      'lm_head.weight': 'model-00002-of-00002.safetensors',
    });
    await expectError(SafetensorsCheckpoint.open(misplaced), 'invalid_checkpoint', [
      path.join(misplaced, 'model.safetensors.index.json'),
      "tensor 'layer.1.w'",
      'in shard model-00001-of-00002.safetensors',
      'has no tensor of that name',
    ]);

    const twice = await writeSharded('twice');
    const second = path.join(twice, 'model-00002-of-00002.safetensors');
    await writeSafetensors(second, {
      'layer.0.w': { dtype: 'F32', shape: [1], data: new Float32Array(1) },
      'layer.1.w': { dtype: 'F16', shape: [3, 3], data: new Float32Array(9) },
      'lm_head.weight': { dtype: 'F32', shape: [4, 3], data: new Float32Array(12) },
    });
    await expectError(SafetensorsCheckpoint.open(twice), 'invalid_checkpoint', [
      path.join(twice, 'model-00001-of-00002.safetensors'),
      second,
      "both contain tensor 'layer.0.w'",
    ]);
  });

  it('passes on a corrupt shard as the shard error', async () => {
    const ckpt = await writeSharded('corrupt-shard');
    const shard = path.join(ckpt, 'model-00002-of-00002.safetensors');
    await writeFile(shard, fileImage('{}', 0, 99n));
    await expectError(SafetensorsCheckpoint.open(ckpt), 'invalid_checkpoint', [shard, 'is truncated']);
  });
});
