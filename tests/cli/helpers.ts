/**
 * Helpers for the CLI tests: run bin/tessera.js (built by tests/setup/build.ts) as a child
 * process, copy the demo model to a scratch directory, and rewrite safetensors files byte by byte
 * so that a test can break them in exactly one way.
 */
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, readlink, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'vitest';

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const BIN = path.join(ROOT, 'bin/tessera.js');
export const DEMO_DIR = path.join(ROOT, 'models/demo');
/** A hang fails the test instead of stalling the run. */
export const CLI_TIMEOUT_MS = 20_000;

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `node bin/tessera.js ...args` with `input` (if any) on its stdin. */
export function runCli(args: string[], input?: string): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = execFile(
      process.execPath,
      [BIN, ...args],
      { cwd: ROOT, timeout: CLI_TIMEOUT_MS, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024, env: { ...process.env, NO_COLOR: '1' } },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
        resolve({ code, signal: err?.signal ?? null, stdout, stderr });
      },
    );
    child.stdin?.end(input ?? '');
  });
}

/**
 * The contract for a mistake the user can fix: exit code 1 and exactly one line on stderr,
 * `tessera: <one sentence>`, with no stack trace and no error class prefix. Returns the sentence.
 */
export function expectOneSentence(r: CliResult): string {
  const context = `exit ${r.code} (signal ${r.signal}); stderr:\n${r.stderr}`;
  expect(r.signal, context).toBeNull();
  expect(r.code, context).toBe(1);
  expect(r.stderr.endsWith('\n'), context).toBe(true);
  const lines = r.stderr.slice(0, -1).split('\n');
  expect(lines, context).toHaveLength(1);
  const [line] = lines;
  expect(line, context).toMatch(/^tessera: \S/);
  expect(line, context).not.toMatch(/^\s+at /m);
  expect(line, context).not.toMatch(/Error:/);
  expect(line, context).not.toMatch(/internal error/);
  // One sentence: it ends with a full stop (or a question mark) and has no line breaks.
  expect(line, context).toMatch(/[.?]$/);
  return line.slice('tessera: '.length);
}

/** A fresh directory under the system temp dir, removed by the returned function. */
export async function scratchDir(prefix: string): Promise<{ dir: string; remove: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

/** Copies the demo model into `parent/name` and returns the copy's path. */
export async function copyDemo(parent: string, name: string): Promise<string> {
  const dir = path.join(parent, name);
  await cp(DEMO_DIR, dir, { recursive: true });
  return dir;
}

export async function readJson(file: string): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
}

export async function writeJson(file: string, value: unknown): Promise<void> {
  await writeFile(file, JSON.stringify(value, null, 1));
}

export async function editJson(file: string, edit: (json: Record<string, unknown>) => void): Promise<void> {
  const json = await readJson(file);
  edit(json);
  await writeJson(file, json);
}

export interface RawEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

export interface RawSafetensors {
  /** Tensor entries by name, without __metadata__. */
  entries: Record<string, RawEntry>;
  metadata: unknown;
  /** The data buffer (everything after the header). */
  data: Buffer;
}

export async function readRawSafetensors(file: string): Promise<RawSafetensors> {
  const bytes = await readFile(file);
  const headerBytes = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerBytes).toString('utf8')) as Record<string, unknown>;
  const { __metadata__: metadata, ...entries } = header;
  return { entries: entries as Record<string, RawEntry>, metadata, data: bytes.subarray(8 + headerBytes) };
}

/** Writes a header (padded with spaces to 8 bytes) and a data buffer as they are, consistent or not. */
export async function writeRawSafetensors(file: string, st: RawSafetensors): Promise<void> {
  const header = st.metadata === undefined ? st.entries : { __metadata__: st.metadata, ...st.entries };
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Buffer.alloc(Math.ceil(json.length / 8) * 8, ' ');
  json.copy(padded);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(padded.length));
  await writeFile(file, Buffer.concat([prefix, padded, st.data]));
}

/** Tensor names ordered by where their bytes lie in the data buffer. */
export function byOffset(st: RawSafetensors): string[] {
  return Object.keys(st.entries).sort((a, b) => st.entries[a].data_offsets[0] - st.entries[b].data_offsets[0]);
}

/**
 * Replaces one tensor's dtype, shape and bytes and lays every tensor out again, so the file stays
 * a valid safetensors file and only the replaced tensor is wrong for the model.
 */
export function replaceTensor(st: RawSafetensors, name: string, dtype: string, shape: number[], bytes: Buffer): RawSafetensors {
  const entries: Record<string, RawEntry> = {};
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const n of byOffset(st)) {
    const e = st.entries[n];
    const data = n === name ? bytes : st.data.subarray(e.data_offsets[0], e.data_offsets[1]);
    entries[n] = n === name ? { dtype, shape, data_offsets: [offset, offset + data.length] } : { ...e, data_offsets: [offset, offset + data.length] };
    chunks.push(data);
    offset += data.length;
  }
  return { entries, metadata: st.metadata, data: Buffer.concat(chunks) };
}

/** Paths the current process holds open (Linux: /proc/self/fd) that lie under `dir`; null where unknown. */
export async function openFilesUnder(dir: string): Promise<string[] | null> {
  let fds: string[];
  try {
    fds = await readdir('/proc/self/fd');
  } catch {
    return null;
  }
  const open: string[] = [];
  for (const fd of fds) {
    const target = await readlink(path.join('/proc/self/fd', fd)).catch(() => '');
    if (target.startsWith(dir + path.sep)) open.push(target);
  }
  return open;
}

/** Runs `tasks` at most `limit` at a time, keeping their order in the results. */
export async function inParallel<T>(tasks: Array<() => Promise<T>>, limit = 4): Promise<T[]> {
  const results = new Array<T>(tasks.length);
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) {
      const i = next++;
      results[i] = await tasks[i]();
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  return results;
}
