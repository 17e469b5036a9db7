import { beforeAll, describe, expect, it, vi } from 'vitest';
import { IncrementalDetokenizer } from '../../src/tokenizer/detokenizer.js';
import { TesseraTokenizer } from '../../src/tokenizer/tokenizer.js';
import { BYTE_DIR, LLAMA3_DIR, QWEN3_DIR, SPM_WORDS, seededRandom, sentencePieceDir } from './helpers.js';

const TRICKY_TEXTS = [
  'naïve café 😀 日本語',
  '😀😀😀',
  ' leading space',
  '  two leading spaces and trailing  ',
  'line one\nline two\n\n\tindented\r\n',
  '👩‍👩‍👧 family, 🇺🇳 flag',
  'ǅ ﬁ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑∫ ₿',
  'Mixed: ascii, Ελληνικά, русский, العربية, हिन्दी, 한국어.',
  '',
];

/** Characters with 1- to 4-byte UTF-8 encodings, whitespace included. */
const ALPHABET = [...'abcXYZ019 ,.!?\n\t  éüßñ€日本語中文한글😀🎉👍🚀𝄞\u0301'];

function randomText(random: () => number, length: number): string {
  let text = '';
  for (let i = 0; i < length; i++) text += ALPHABET[Math.floor(random() * ALPHABET.length)];
  return text;
}

interface Stream {
  chunks: string[];
  text: string;
}

function stream(tok: TesseraTokenizer, ids: number[], opts: { promptIds?: number[]; skipSpecialTokens?: boolean } = {}): Stream {
  const detok = new IncrementalDetokenizer(tok, opts);
  const chunks = ids.map((id) => detok.push(id));
  chunks.push(detok.flush());
  expect(detok.text).toBe(chunks.join(''));
  return { chunks, text: detok.text };
}

/** The streaming contract: same text as one decode, and no chunk shows U+FFFD the full text lacks. */
function expectFaithful(tok: TesseraTokenizer, ids: number[], skipSpecialTokens: boolean): void {
  const full = tok.decode(ids, { skipSpecialTokens });
  const { chunks, text } = stream(tok, ids, { skipSpecialTokens });
  expect(text).toBe(full);
  if (!full.includes('\uFFFD')) for (const chunk of chunks) expect(chunk).not.toContain('\uFFFD');
}

const TOKENIZERS: [string, () => Promise<TesseraTokenizer>][] = [
  ['Llama-3', () => TesseraTokenizer.load(LLAMA3_DIR)],
  ['Qwen3', () => TesseraTokenizer.load(QWEN3_DIR)],
  ['byte-level demo', () => TesseraTokenizer.load(BYTE_DIR)],
];

describe.each(TOKENIZERS)('IncrementalDetokenizer with %s', (_name, load) => {
  let tok: TesseraTokenizer;
  beforeAll(async () => {
    tok = await load();
  });

  it('streams tricky texts exactly', () => {
    for (const text of TRICKY_TEXTS) {
      const ids = tok.encode(text, { addSpecialTokens: false });
      expectFaithful(tok, ids, true);
      expect(stream(tok, ids).text).toBe(text);
    }
  });

  it('streams random texts exactly', () => {
    const random = seededRandom(7);
    for (let i = 0; i < 40; i++) expectFaithful(tok, tok.encode(randomText(random, 1 + Math.floor(random() * 60)), { addSpecialTokens: false }), true);
  });

  it('streams random token ids, broken UTF-8 and special tokens included, like one decode', () => {
    const random = seededRandom(11);
    for (let i = 0; i < 40; i++) {
      const ids = Array.from({ length: 1 + Math.floor(random() * 40) }, () => Math.floor(random() * tok.vocabSize));
      expectFaithful(tok, ids, true);
      expectFaithful(tok, ids, false);
    }
  });

  it('keeps or skips the special tokens of a chat rendering', () => {
    if (!tok.chatTemplate) return;
    const ids = tok.encodeChat([{ role: 'user', content: 'Où est 😀?' }]);
    expectFaithful(tok, ids, false);
    expectFaithful(tok, ids, true);
    expect(stream(tok, ids, { skipSpecialTokens: false }).text).toBe(tok.applyChatTemplate([{ role: 'user', content: 'Où est 😀?' }]));
  });

  it('continues a prompt as the full decode does', () => {
    const prompt = tok.encode('Question: naïve?\nAnswer:', { addSpecialTokens: false });
    const reply = tok.encode(' Oui, très 😀 naïve.\n', { addSpecialTokens: false });
    const { text } = stream(tok, reply, { promptIds: prompt });
    expect(text).toBe(tok.decode([...prompt, ...reply]).slice(tok.decode(prompt).length));
    expect(text).toBe(' Oui, très 😀 naïve.\n');
  });

  it('decodes only a small window per token, never the whole sequence', () => {
    const ids = tok.encode(randomText(seededRandom(3), 3000), { addSpecialTokens: false });
    const decode = vi.spyOn(tok, 'decode');
    const detok = new IncrementalDetokenizer(tok, { promptIds: ids.slice(0, 100) });
    for (const id of ids) detok.push(id);
    detok.flush();
    const longest = Math.max(...decode.mock.calls.map(([window]) => window.length));
    decode.mockRestore();
    expect(detok.text).toBe(tok.decode(ids));
    expect(longest).toBeLessThanOrEqual(8);
  });
});

describe('IncrementalDetokenizer on byte tokens', () => {
  let tok: TesseraTokenizer;
  beforeAll(async () => {
    tok = await TesseraTokenizer.load(BYTE_DIR);
  });

  it('holds a 4-byte emoji back until its last byte', () => {
    const detok = new IncrementalDetokenizer(tok);
    expect([...Buffer.from('a😀b')].map((byte) => detok.push(byte))).toEqual(['a', '', '', '', '😀', 'b']);
    expect(detok.flush()).toBe('');
    expect(detok.text).toBe('a😀b');
  });

  it('flushes an incomplete character as U+FFFD, as the full decode shows it', () => {
    const detok = new IncrementalDetokenizer(tok);
    expect([0x68, 0xf0, 0x9f].map((byte) => detok.push(byte))).toEqual(['h', '', '']);
    expect(detok.flush()).toBe('\uFFFD');
    expect(tok.decode([0x68, 0xf0, 0x9f])).toBe('h\uFFFD');
  });

  it('emits an invalid byte once a later character shows it cannot complete', () => {
    const detok = new IncrementalDetokenizer(tok);
    expect([0xe6, 0x41].map((byte) => detok.push(byte))).toEqual(['', '\uFFFDA']);
  });

  it('decodes a reply on its own when the prompt ends inside a character', () => {
    const reply = [0x98, 0x80, 0x21];
    expect(stream(tok, reply, { promptIds: [0x68, 0xf0, 0x9f] }).text).toBe(tok.decode(reply));
  });
});

describe('IncrementalDetokenizer with a SentencePiece-style decoder', () => {
  let tok: TesseraTokenizer;
  const id = (word: string) => 259 + SPM_WORDS.indexOf(word);
  const byteIds = (text: string) => [...Buffer.from(text)].map((byte) => 3 + byte);
  beforeAll(async () => {
    tok = await TesseraTokenizer.load(sentencePieceDir());
  });

  it('decodes the fixture as Llama-2 does (it has no merges, so ids are written by hand)', () => {
    expect(tok.decode([1, id('▁Hello'), id('▁world')], { skipSpecialTokens: true })).toBe('Hello world');
    expect(tok.decode([id('▁world')])).toBe('world');
  });

  it('keeps the leading space of a reply when seeded with the prompt', () => {
    const prompt = [1, id('▁Hello')];
    const reply = [id('▁world'), id('!'), id('▁na'), id('ïve'), id('▁'), ...byteIds('😀'), id('▁café')];
    const full = tok.decode([...prompt, ...reply], { skipSpecialTokens: true });
    expect(full).toBe('Hello world! naïve 😀 café');
    const seeded = stream(tok, reply, { promptIds: prompt });
    expect(seeded.text).toBe(' world! naïve 😀 café');
    expect(seeded.chunks).toEqual([' world', '!', ' na', 'ïve', ' ', '', '', '', '😀', ' café', '']);
    // Unseeded, the first token is the start of the text and loses its space, as in decode(reply).
    expect(stream(tok, reply).text).toBe(tok.decode(reply, { skipSpecialTokens: true }));
    expect(stream(tok, reply).text).toBe('world! naïve 😀 café');
  });

  it('streams random token ids like one decode', () => {
    const random = seededRandom(5);
    for (let i = 0; i < 60; i++) {
      const ids = Array.from({ length: 1 + Math.floor(random() * 30) }, () => Math.floor(random() * tok.vocabSize));
      expectFaithful(tok, ids, true);
      expectFaithful(tok, ids, false);
    }
  });
});
