/**
 * Safetensors: an 8-byte little-endian u64 header length N, N bytes of UTF-8 JSON header, then the
 * data buffer. The header maps tensor name -> {dtype, shape, data_offsets: [begin, end]}, offsets in
 * bytes from the start of the data buffer, plus an optional "__metadata__": {string: string}.
 *
 * Opening reads and validates only the header; tensor bytes are read when asked for, so a checkpoint
 * of tens of GB never has to fit in memory. Element bytes are little-endian, as on every host Node
 * runs on, so they are viewed as typed arrays without swapping.
 */
import { open, readFile, stat } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { TesseraError } from '../errors.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../util/dtype.js';
import { errnoOf, fsError } from '../util/files.js';

/** Bits per element of every dtype the format defines; F4 and F6 pack several elements per byte. */
export const SAFETENSORS_DTYPE_BITS = {
  BOOL: 8,
  F4: 4,
  F6_E2M3: 6,
  F6_E3M2: 6,
  U8: 8,
  I8: 8,
  F8_E5M2: 8,
  F8_E4M3: 8,
  F8_E8M0: 8,
  F8_E4M3FNUZ: 8,
  F8_E5M2FNUZ: 8,
  I16: 16,
  U16: 16,
  F16: 16,
  BF16: 16,
  I32: 32,
  U32: 32,
  F32: 32,
  C64: 64,
  F64: 64,
  I64: 64,
  U64: 64,
} as const;

export type SafetensorsDType = keyof typeof SAFETENSORS_DTYPE_BITS;

export interface TensorInfo {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Path of the file that holds the tensor. */
  file: string;
  /** Absolute offset of the first byte in the file. */
  byteOffset: number;
  byteLength: number;
}

export const SINGLE_FILE_NAME = 'model.safetensors';
export const INDEX_FILE_NAME = 'model.safetensors.index.json';

const LENGTH_PREFIX_BYTES = 8;
/** Headers of real checkpoints are well under 10 MB; the reference implementation stops at 100 MB. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;
/** F16/BF16 bytes are widened through a scratch buffer of this size instead of a full-size copy. */
const CONVERT_CHUNK_BYTES = 4 * 1024 * 1024;
/** One FileHandle.read moves at most 2 GiB - 1; larger tensors take several calls. */
const MAX_READ_CALL_BYTES = 1024 * 1024 * 1024;

function invalid(message: string, cause?: unknown): TesseraError {
  return new TesseraError(message, 'invalid_checkpoint', cause === undefined ? undefined : { cause });
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isCount(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0;
}

function elementCount(shape: readonly number[]): number {
  return shape.includes(0) ? 0 : shape.reduce((acc, dim) => acc * dim, 1);
}

const shapeText = (shape: readonly number[]): string => `[${shape.join(', ')}]`;

async function readExactly(handle: FileHandle, file: string, dst: Uint8Array, byteOffset: number): Promise<void> {
  for (let doneBytes = 0; doneBytes < dst.length; ) {
    const wantBytes = Math.min(dst.length - doneBytes, MAX_READ_CALL_BYTES);
    let bytesRead: number;
    try {
      ({ bytesRead } = await handle.read(dst, doneBytes, wantBytes, byteOffset + doneBytes));
    } catch (err) {
      throw fsError(file, err);
    }
    if (bytesRead === 0) {
      throw invalid(`${file} ended at byte ${byteOffset + doneBytes} while ${dst.length - doneBytes} more were expected; it was truncated after it was opened.`);
    }
    doneBytes += bytesRead;
  }
}

/**
 * The first top-level key of a JSON object text that occurs twice, which JSON.parse silently
 * resolves to the last value. The text must already be valid JSON.
 */
function duplicateTopLevelKey(json: string): string | undefined {
  const seen = new Set<string>();
  const colonAfter = /\s*:/y;
  let depth = 0;
  for (let i = 0; i < json.length; i++) {
    const ch = json[i];
    if (ch === '"') {
      const start = i;
      for (i++; json[i] !== '"'; i++) if (json[i] === '\\') i++;
      colonAfter.lastIndex = i + 1;
      if (depth === 1 && colonAfter.test(json)) {
        const key = JSON.parse(json.slice(start, i + 1)) as string;
        if (seen.has(key)) return key;
        seen.add(key);
      }
    } else if (ch === '{' || ch === '[') depth++;
    else if (ch === '}' || ch === ']') depth--;
  }
  return undefined;
}

/** Validates one header entry; `dataBytes` is the size of the data buffer, which starts at `dataStart`. */
function parseEntry(file: string, name: string, entry: unknown, dataStart: number, dataBytes: number): TensorInfo {
  const where = `${file}: tensor '${name}'`;
  if (!isObject(entry)) throw invalid(`${where} is not an object with dtype, shape and data_offsets.`);
  for (const key of ['dtype', 'shape', 'data_offsets']) {
    if (!Object.hasOwn(entry, key)) throw invalid(`${where} has no ${key}; every entry needs dtype, shape and data_offsets.`);
  }
  const { dtype, shape, data_offsets: offsets } = entry;
  if (typeof dtype !== 'string' || !Object.hasOwn(SAFETENSORS_DTYPE_BITS, dtype)) {
    throw invalid(`${where} has unknown dtype ${JSON.stringify(dtype)}.`);
  }
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    throw invalid(`${where} has shape ${JSON.stringify(shape)}, which is not an array of non-negative integers.`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
    throw invalid(`${where} has data_offsets ${JSON.stringify(offsets)}, which are not two non-negative integers.`);
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) throw invalid(`${where} has data_offsets [${begin}, ${end}], which end before they begin.`);
  const numBits = elementCount(shape) * SAFETENSORS_DTYPE_BITS[dtype as SafetensorsDType];
  if (!Number.isSafeInteger(numBits)) throw invalid(`${where} has shape ${shapeText(shape)}, which is too large to address.`);
  if (numBits % 8 !== 0) {
    throw invalid(`${where} has shape ${shapeText(shape)} of ${dtype}, which does not fill a whole number of bytes.`);
  }
  const numBytes = numBits / 8;
  if (end - begin !== numBytes) {
    throw invalid(`${where} has data_offsets [${begin}, ${end}] spanning ${end - begin} bytes, but shape ${shapeText(shape)} of ${dtype} needs ${numBytes} bytes.`);
  }
  if (end > dataBytes) {
    throw invalid(`${where} points outside the file: its data_offsets [${begin}, ${end}] run past the end of the ${dataBytes}-byte data buffer.`);
  }
  return { name, dtype: dtype as SafetensorsDType, shape: [...shape], file, byteOffset: dataStart + begin, byteLength: numBytes };
}

/** Like the reference implementation, requires the tensors, sorted by offset, to tile the data buffer exactly. */
function checkTiling(file: string, tensors: TensorInfo[], dataStart: number, dataBytes: number): void {
  const sorted = [...tensors].sort((a, b) => a.byteOffset - b.byteOffset || a.byteLength - b.byteLength);
  let cursorBytes = 0;
  let previous: TensorInfo | undefined;
  for (const tensor of sorted) {
    const beginBytes = tensor.byteOffset - dataStart;
    if (previous && beginBytes < cursorBytes) {
      throw invalid(`${file}: tensors '${previous.name}' and '${tensor.name}' overlap: '${previous.name}' ends at data offset ${cursorBytes} but '${tensor.name}' begins at ${beginBytes}.`);
    }
    if (beginBytes > cursorBytes) {
      throw invalid(`${file} has a gap in its data buffer: bytes [${cursorBytes}, ${beginBytes}) before tensor '${tensor.name}' belong to no tensor.`);
    }
    cursorBytes = beginBytes + tensor.byteLength;
    previous = tensor;
  }
  if (cursorBytes !== dataBytes) {
    const after = previous ? `after its last tensor '${previous.name}'` : 'after its header, which lists no tensors';
    throw invalid(`${file} has ${dataBytes - cursorBytes} trailing bytes (data offsets [${cursorBytes}, ${dataBytes})) ${after}.`);
  }
}

function parseHeader(file: string, raw: Uint8Array, dataStart: number, dataBytes: number) {
  let text: string;
  try {
    // ignoreBOM keeps a byte-order mark in the text, so that JSON.parse rejects it as the reference does.
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(raw);
  } catch (err) {
    throw invalid(`${file} has a header that is not valid UTF-8.`, err);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw invalid(`${file} has a header that is not valid JSON (${(err as Error).message.replace(/\.$/, '')}).`, err);
  }
  if (!isObject(json)) throw invalid(`${file} has a header that is not a JSON object.`);
  const duplicate = duplicateTopLevelKey(text);
  if (duplicate !== undefined) throw invalid(`${file} has a header that lists '${duplicate}' twice.`);

  let metadata: Record<string, string> = {};
  const tensors: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isObject(entry) || !Object.values(entry).every((v) => typeof v === 'string')) {
        throw invalid(`${file} has a __metadata__ entry that is not an object of string values.`);
      }
      metadata = Object.fromEntries(Object.entries(entry)) as Record<string, string>;
    } else {
      tensors.push(parseEntry(file, name, entry, dataStart, dataBytes));
    }
  }
  checkTiling(file, tensors, dataStart, dataBytes);
  return { metadata, tensors };
}

/** One .safetensors file: its validated header and an open handle for reading tensors on demand. */
export class SafetensorsFile {
  readonly tensors: Map<string, TensorInfo>;
  private handle: FileHandle | null;

  private constructor(
    readonly path: string,
    handle: FileHandle,
    readonly metadata: Record<string, string>,
    tensors: TensorInfo[],
  ) {
    this.handle = handle;
    this.tensors = new Map(tensors.map((t) => [t.name, t]));
  }

  /** Reads and validates the header only; the handle stays open until close(). */
  static async open(file: string): Promise<SafetensorsFile> {
    let handle: FileHandle;
    try {
      handle = await open(file, 'r');
    } catch (err) {
      throw fsError(file, err);
    }
    try {
      const stats = await handle.stat();
      if (stats.isDirectory()) throw invalid(`${file} is a directory, not a safetensors file.`);
      const fileBytes = stats.size;
      if (fileBytes < LENGTH_PREFIX_BYTES) {
        throw invalid(`${file} is too short to be a safetensors file: it has ${fileBytes} bytes, fewer than the 8-byte header length.`);
      }
      const prefix = new Uint8Array(LENGTH_PREFIX_BYTES);
      await readExactly(handle, file, prefix, 0);
      const headerBytes = new DataView(prefix.buffer).getBigUint64(0, true);
      if (headerBytes === 0n) throw invalid(`${file} has an empty header: its header length is 0.`);
      if (headerBytes > BigInt(MAX_HEADER_BYTES)) {
        throw invalid(`${file} is not a valid safetensors file: its header length of ${headerBytes} bytes exceeds the 100 MiB limit.`);
      }
      const numHeaderBytes = Number(headerBytes);
      const afterPrefixBytes = fileBytes - LENGTH_PREFIX_BYTES;
      if (numHeaderBytes > afterPrefixBytes) {
        throw invalid(`${file} is truncated: its header says ${numHeaderBytes} bytes but the file has only ${afterPrefixBytes} after the length prefix.`);
      }
      const raw = new Uint8Array(numHeaderBytes);
      await readExactly(handle, file, raw, LENGTH_PREFIX_BYTES);
      const dataStart = LENGTH_PREFIX_BYTES + numHeaderBytes;
      const { metadata, tensors } = parseHeader(file, raw, dataStart, fileBytes - dataStart);
      return new SafetensorsFile(file, handle, metadata, tensors);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw invalid(`${this.path} has no tensor named '${name}'.`);
    return info;
  }

  /** One tensor's raw bytes, in a fresh buffer that starts at byte 0 and so can be viewed as any typed array. */
  async readBytes(name: string): Promise<Uint8Array> {
    const info = this.info(name);
    const bytes = new Uint8Array(info.byteLength);
    await readExactly(this.liveHandle(), this.path, bytes, info.byteOffset);
    return bytes;
  }

  /** One F32, F16 or BF16 tensor as f32, into `dst` (which must hold exactly its elements) or a new array. */
  async readF32(name: string, dst?: Float32Array): Promise<Float32Array> {
    const info = this.info(name);
    const { dtype } = info;
    if (dtype !== 'F32' && dtype !== 'F16' && dtype !== 'BF16') {
      throw new TesseraError(`${this.path}: tensor '${name}' has dtype ${dtype}, which cannot be read as f32 (only F32, F16 and BF16 can).`, 'unsupported');
    }
    const numElements = elementCount(info.shape);
    if (dst && dst.length !== numElements) {
      throw invalid(`${this.path}: tensor '${name}' has shape ${shapeText(info.shape)} (${numElements} elements) but the destination holds ${dst.length}.`);
    }
    const out = dst ?? new Float32Array(numElements);
    const handle = this.liveHandle();
    if (dtype === 'F32') {
      await readExactly(handle, this.path, new Uint8Array(out.buffer, out.byteOffset, out.byteLength), info.byteOffset);
      return out;
    }
    const widen = dtype === 'F16' ? f16ToF32 : bf16ToF32;
    // The scratch is a whole Uint16Array, so it is aligned whatever the parity of the tensor's file offset.
    const scratch = new Uint16Array(Math.min(numElements, CONVERT_CHUNK_BYTES / 2));
    const scratchBytes = new Uint8Array(scratch.buffer);
    for (let first = 0; first < numElements; first += scratch.length) {
      const count = Math.min(scratch.length, numElements - first);
      await readExactly(handle, this.path, scratchBytes.subarray(0, 2 * count), info.byteOffset + 2 * first);
      widen(scratch.subarray(0, count), out.subarray(first, first + count));
    }
    return out;
  }

  async close(): Promise<void> {
    const handle = this.handle;
    this.handle = null;
    await handle?.close();
  }

  private liveHandle(): FileHandle {
    if (!this.handle) throw new Error(`SafetensorsFile ${this.path} was used after close().`);
    return this.handle;
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return false;
    throw fsError(file, err);
  }
}

async function closeAll(files: SafetensorsFile[]): Promise<void> {
  await Promise.all(files.map((f) => f.close()));
}

/** A checkpoint's weights: one model.safetensors, or shards listed by model.safetensors.index.json. */
export class SafetensorsCheckpoint {
  /** Union of the shards' tensors; each name lives in exactly one shard. */
  readonly tensors = new Map<string, TensorInfo>();
  /** Sum of the tensors' byte lengths, headers excluded. */
  readonly totalBytes: number;
  private readonly filesByPath: Map<string, SafetensorsFile>;

  /** `source` names the checkpoint in errors: its directory, or its files. */
  private constructor(
    readonly source: string,
    readonly files: readonly SafetensorsFile[],
  ) {
    this.filesByPath = new Map(files.map((f) => [f.path, f]));
    let totalBytes = 0;
    for (const file of files) {
      for (const [name, info] of file.tensors) {
        const other = this.tensors.get(name);
        if (other) throw invalid(`${other.file} and ${file.path} both contain tensor '${name}'; a checkpoint must store each tensor once.`);
        this.tensors.set(name, info);
        totalBytes += info.byteLength;
      }
    }
    this.totalBytes = totalBytes;
  }

  /** Prefers model.safetensors.index.json when present, else model.safetensors. */
  static async open(dir: string): Promise<SafetensorsCheckpoint> {
    let dirStats;
    try {
      dirStats = await stat(dir);
    } catch (err) {
      throw fsError(dir, err);
    }
    if (!dirStats.isDirectory()) {
      throw invalid(`${dir} is not a directory; a checkpoint is a directory holding ${INDEX_FILE_NAME} or ${SINGLE_FILE_NAME}.`);
    }
    const indexPath = path.join(dir, INDEX_FILE_NAME);
    if (await exists(indexPath)) return SafetensorsCheckpoint.openIndex(indexPath);
    const singlePath = path.join(dir, SINGLE_FILE_NAME);
    if (await exists(singlePath)) return SafetensorsCheckpoint.assemble(dir, [singlePath]);
    throw invalid(`${dir} contains neither ${INDEX_FILE_NAME} nor ${SINGLE_FILE_NAME}.`);
  }

  static async openFiles(paths: string[]): Promise<SafetensorsCheckpoint> {
    if (paths.length === 0) throw new TesseraError('A checkpoint needs at least one safetensors file, but none was given.', 'invalid_input');
    const more = paths.length - 1;
    const source = more === 0 ? paths[0] : `${paths[0]} and ${more} more file${more === 1 ? '' : 's'}`;
    return SafetensorsCheckpoint.assemble(source, paths);
  }

  /** Opens a sharded checkpoint; the index maps tensor name -> shard file name in the index's directory. */
  static async openIndex(indexPath: string): Promise<SafetensorsCheckpoint> {
    const dir = path.dirname(indexPath);
    let json: unknown;
    try {
      json = JSON.parse(await readFile(indexPath, 'utf8'));
    } catch (err) {
      if (err instanceof SyntaxError) throw invalid(`${indexPath} is not valid JSON (${err.message.replace(/\.$/, '')}).`, err);
      throw fsError(indexPath, err);
    }
    const weightMap = isObject(json) ? json.weight_map : undefined;
    if (!isObject(weightMap) || Object.keys(weightMap).length === 0) {
      throw invalid(`${indexPath} has no "weight_map" object mapping tensor names to shard files.`);
    }
    for (const [tensor, shard] of Object.entries(weightMap)) {
      if (typeof shard !== 'string' || shard === '') {
        throw invalid(`${indexPath} maps tensor '${tensor}' to ${JSON.stringify(shard)}, which is not a shard file name.`);
      }
      if (path.isAbsolute(shard) || shard.split(/[\\/]/).includes('..')) {
        throw invalid(`${indexPath} maps tensor '${tensor}' to shard '${shard}', which lies outside ${dir}.`);
      }
    }
    const placement = weightMap as Record<string, string>;
    // Keyed by path, so that 'a.safetensors' and './a.safetensors' are one shard.
    const shardNames = new Map(Object.values(placement).map((shard) => [path.join(dir, shard), shard]));
    const files: SafetensorsFile[] = [];
    try {
      for (const [shardPath, shard] of shardNames) {
        try {
          files.push(await SafetensorsFile.open(shardPath));
        } catch (err) {
          if (errnoOf(err) === 'ENOENT') throw invalid(`${indexPath} lists shard ${shard}, but ${shardPath} does not exist.`, err);
          throw err;
        }
      }
      const checkpoint = new SafetensorsCheckpoint(dir, files);
      for (const [tensor, shard] of Object.entries(placement)) {
        const shardPath = path.join(dir, shard);
        if (checkpoint.tensors.get(tensor)?.file !== shardPath) {
          throw invalid(`${indexPath} places tensor '${tensor}' in shard ${shard}, but ${shardPath} has no tensor of that name.`);
        }
      }
      return checkpoint;
    } catch (err) {
      await closeAll(files);
      throw err;
    }
  }

  private static async assemble(source: string, paths: string[]): Promise<SafetensorsCheckpoint> {
    const files: SafetensorsFile[] = [];
    try {
      for (const file of paths) files.push(await SafetensorsFile.open(file));
      return new SafetensorsCheckpoint(source, files);
    } catch (err) {
      await closeAll(files);
      throw err;
    }
  }

  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw invalid(`Checkpoint ${this.source} has no tensor named '${name}'.`);
    return info;
  }

  async readBytes(name: string): Promise<Uint8Array> {
    return this.fileOf(name).readBytes(name);
  }

  async readF32(name: string, dst?: Float32Array): Promise<Float32Array> {
    return this.fileOf(name).readF32(name, dst);
  }

  async close(): Promise<void> {
    await closeAll([...this.files]);
  }

  private fileOf(name: string): SafetensorsFile {
    return this.filesByPath.get(this.info(name).file)!;
  }
}

export interface WritableTensor {
  dtype: 'F32' | 'F16' | 'BF16' | 'I32';
  shape: number[];
  /** F32: Float32Array; I32: Int32Array; F16/BF16: Float32Array (rounded to nearest even) or Uint16Array of raw bits. */
  data: Float32Array | Uint16Array | Int32Array;
}

function encodeTensor(file: string, name: string, tensor: WritableTensor): Uint8Array {
  const fail = (problem: string) => new TesseraError(`Cannot write ${file}: tensor '${name}' ${problem}.`, 'invalid_input');
  const { dtype, shape, data } = tensor;
  if (!Array.isArray(shape) || !shape.every(isCount)) throw fail(`has shape ${JSON.stringify(shape)}, which is not an array of non-negative integers`);
  if (elementCount(shape) !== data.length) throw fail(`has shape ${shapeText(shape)} but ${data.length} values`);
  const ok =
    (dtype === 'F32' && data instanceof Float32Array) ||
    (dtype === 'I32' && data instanceof Int32Array) ||
    ((dtype === 'F16' || dtype === 'BF16') && (data instanceof Float32Array || data instanceof Uint16Array));
  if (!ok) throw fail(`has dtype ${String(dtype)}, which cannot be written from a ${data.constructor.name}`);
  let stored: Float32Array | Uint16Array | Int32Array = data;
  if ((dtype === 'F16' || dtype === 'BF16') && data instanceof Float32Array) {
    stored = new Uint16Array(data.length);
    (dtype === 'F16' ? f32ToF16 : f32ToBf16)(data, stored);
  }
  return new Uint8Array(stored.buffer, stored.byteOffset, stored.byteLength);
}

/**
 * Writes a safetensors file laid out as the reference writer does: widest dtype first, then by
 * name, with the header padded by spaces to a multiple of 8 bytes, so every tensor starts at a
 * file offset that is a multiple of its element size.
 */
export async function writeSafetensors(
  file: string,
  tensors: Record<string, WritableTensor>,
  metadata?: Record<string, string>,
): Promise<void> {
  const entries = Object.entries(tensors).map(([name, tensor]) => {
    if (name === '__metadata__') throw new TesseraError(`Cannot write ${file}: '__metadata__' is reserved and cannot name a tensor.`, 'invalid_input');
    return { name, tensor, bytes: encodeTensor(file, name, tensor) };
  });
  entries.sort(
    (a, b) =>
      SAFETENSORS_DTYPE_BITS[b.tensor.dtype] - SAFETENSORS_DTYPE_BITS[a.tensor.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );
  // A prototype-free object, so that a tensor named '__proto__' is an ordinary key.
  const header: Record<string, unknown> = Object.create(null);
  if (metadata !== undefined) header.__metadata__ = metadata;
  let dataBytes = 0;
  for (const { name, tensor, bytes } of entries) {
    header[name] = { dtype: tensor.dtype, shape: [...tensor.shape], data_offsets: [dataBytes, dataBytes + bytes.length] };
    dataBytes += bytes.length;
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const headerBytes = Buffer.alloc(Math.ceil(json.length / 8) * 8, ' ');
  json.copy(headerBytes);
  const prefix = Buffer.alloc(LENGTH_PREFIX_BYTES);
  prefix.writeBigUInt64LE(BigInt(headerBytes.length));

  let handle: FileHandle;
  try {
    handle = await open(file, 'w');
  } catch (err) {
    const code = errnoOf(err);
    if (code === undefined) throw err;
    throw new TesseraError(`Cannot write ${file}: ${code === 'ENOENT' ? 'its directory does not exist' : `the system refused (${code})`}.`, 'invalid_input', { cause: err });
  }
  try {
    let position = 0;
    for (const chunk of [prefix, headerBytes, ...entries.map((e) => e.bytes)]) {
      for (let doneBytes = 0; doneBytes < chunk.length; ) {
        const length = Math.min(chunk.length - doneBytes, MAX_READ_CALL_BYTES);
        const { bytesWritten } = await handle.write(chunk, doneBytes, length, position);
        doneBytes += bytesWritten;
        position += bytesWritten;
      }
    }
  } finally {
    await handle.close();
  }
}
