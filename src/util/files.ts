/**
 * Reading the files a user points Tessera at. Every failure becomes one sentence that names the
 * path and the reason in words, never a raw errno.
 */
import { readFile, stat } from 'node:fs/promises';
import { TesseraError } from '../errors.js';

const FS_REASONS: Record<string, string> = {
  ENOENT: 'does not exist',
  ENOTDIR: 'does not exist (part of its path is not a directory)',
  EACCES: 'cannot be read: permission denied',
  EPERM: 'cannot be read: permission denied',
  EISDIR: 'is a directory, not a file',
  ELOOP: 'cannot be read: it is a loop of symbolic links',
};

export function errnoOf(err: unknown): string | undefined {
  const cause = err instanceof TesseraError ? err.cause : err;
  const code = (cause as NodeJS.ErrnoException | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** Turns a Node errno error about `path` into a TesseraError; anything else passes through. */
export function fsError(path: string, err: unknown): unknown {
  const code = errnoOf(err);
  if (code === undefined || err instanceof TesseraError) return err;
  return new TesseraError(`${path} ${FS_REASONS[code] ?? `cannot be read (${code})`}.`, 'invalid_checkpoint', { cause: err });
}

export async function readTextFile(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw fsError(path, err);
  }
}

/** The file's text, or null when it does not exist. */
export async function readOptionalTextFile(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    const code = errnoOf(err);
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw fsError(path, err);
  }
}

export async function isFile(path: string): Promise<boolean> {
  return stat(path).then((s) => s.isFile(), () => false);
}

export async function isDirectory(path: string): Promise<boolean> {
  return stat(path).then((s) => s.isDirectory(), () => false);
}

export function parseJsonObject(text: string, path: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new TesseraError(`${path} is not valid JSON (${(err as Error).message}).`, 'invalid_checkpoint');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new TesseraError(`${path} must hold a JSON object.`, 'invalid_checkpoint');
  return value as Record<string, unknown>;
}
