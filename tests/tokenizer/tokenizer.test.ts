import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { TesseraTokenizer, strftime } from '../../src/tokenizer/tokenizer.js';
import { BYTE_DIR, LLAMA3_DIR, QWEN3_DIR, modelDir, tesseraError } from './helpers.js';

const HELLO = [{ role: 'user', content: 'Hello' }];
/** Exercises system prompts, whitespace, reasoning text and multiple turns in one rendering. */
const MULTI_TURN = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: '  Hi there \n' },
  { role: 'assistant', content: '<think>\nsome thought\n</think>\n\nHello!' },
  { role: 'user', content: 'Bye' },
];
const ROUND_TRIP_TEXTS = ['Hello world', 'naïve café 😀 日本語', '  leading spaces\n\nand\ttabs ', 'x = a + b * 2; // ok', '🇺🇳👩‍👩‍👧'];

// Expected renderings were produced by Python Jinja2 with transformers' settings (trim_blocks, lstrip_blocks).
describe('Llama-3 (lenml tokenizer files)', () => {
  let tok: TesseraTokenizer;
  beforeAll(async () => {
    tok = await TesseraTokenizer.load(LLAMA3_DIR);
  });

  it('reads the special tokens the files declare', () => {
    expect(tok.vocabSize).toBe(128256);
    expect(tok.bosTokenId).toBe(128000);
    // Only tokenizer_config.json's eos_token (<|end_of_text|>); there is no config.json or generation_config.json.
    expect(tok.eosTokenIds).toEqual([128001]);
    expect(tok.isSpecial(128000)).toBe(true);
    expect(tok.isSpecial(128009)).toBe(true);
    expect(tok.isSpecial(9906)).toBe(false);
  });

  it('encodes without BOS because this tokenizer.json has only a ByteLevel post-processor', () => {
    expect(tok.encode('Hello world')).toEqual([9906, 1917]);
    expect(tok.encode('Hello world', { addSpecialTokens: false })).toEqual([9906, 1917]);
    expect(tok.encode('<|begin_of_text|>Hello world')).toEqual([128000, 9906, 1917]);
  });

  it('round-trips text through decode', () => {
    for (const text of ROUND_TRIP_TEXTS) expect(tok.decode(tok.encode(text))).toBe(text);
    expect(tok.decode(new Int32Array([128000, 9906, 1917, 128009]))).toBe('<|begin_of_text|>Hello world<|eot_id|>');
    expect(tok.decode([128000, 9906, 1917, 128009], { skipSpecialTokens: true })).toBe('Hello world');
    expect(tok.decode([])).toBe('');
    // Ids past the tokenizer's vocabulary (padded embedding rows) decode to nothing.
    expect(tok.decode([9906, 200000])).toBe('Hello');
  });

  it('does not apply clean_up_tokenization_spaces to decoded text', () => {
    expect(tok.decode(tok.encode('Hello , world .'))).toBe('Hello , world .');
  });

  it('renders the chat template', () => {
    expect(tok.applyChatTemplate(HELLO, { addGenerationPrompt: true })).toBe(
      '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    );
    // This template writes the assistant header whatever add_generation_prompt says, and trims contents.
    expect(tok.applyChatTemplate(MULTI_TURN, { addGenerationPrompt: false })).toBe(
      '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>' +
        '<|start_header_id|>assistant<|end_header_id|>\n\n<think>\nsome thought\n</think>\n\nHello!<|eot_id|>' +
        '<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    );
  });

  it('encodes a chat with exactly one BOS, written by the template', () => {
    expect(tok.encodeChat(HELLO)).toEqual([128000, 128006, 882, 128007, 271, 9906, 128009, 128006, 78191, 128007, 271]);
  });
});

describe('Llama-3 with the official post-processor and generation config', () => {
  let tok: TesseraTokenizer;
  beforeAll(async () => {
    const tokenizerJson = JSON.parse(readFileSync(join(LLAMA3_DIR, 'tokenizer.json'), 'utf8'));
    // Meta's published tokenizer.json: ByteLevel, then TemplateProcessing that prepends <|begin_of_text|>.
    tokenizerJson.post_processor = {
      type: 'Sequence',
      processors: [
        { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
        {
          type: 'TemplateProcessing',
          single: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [],
          special_tokens: { '<|begin_of_text|>': { id: '<|begin_of_text|>', ids: [128000], tokens: ['<|begin_of_text|>'] } },
        },
      ],
    };
    tok = await TesseraTokenizer.load(
      modelDir({
        'tokenizer.json': tokenizerJson,
        'tokenizer_config.json': readFileSync(join(LLAMA3_DIR, 'tokenizer_config.json'), 'utf8'),
        'generation_config.json': { bos_token_id: 128000, eos_token_id: [128001, 128009] },
        'config.json': { bos_token_id: 128000, eos_token_id: 128009 },
      }),
    );
  });

  it('adds BOS through the post-processor, never twice', () => {
    expect(tok.encode('Hello world')).toEqual([128000, 9906, 1917]);
    expect(tok.encode('Hello world', { addSpecialTokens: false })).toEqual([9906, 1917]);
    expect(tok.encode('<|begin_of_text|>Hello world')).toEqual([128000, 9906, 1917]);
    expect(tok.encodeChat(HELLO)).toEqual([128000, 128006, 882, 128007, 271, 9906, 128009, 128006, 78191, 128007, 271]);
  });

  it('unions and deduplicates EOS ids from all three files', () => {
    expect(tok.eosTokenIds).toEqual([128001, 128009]);
  });
});

describe('Qwen3 (lenml tokenizer files)', () => {
  let tok: TesseraTokenizer;
  beforeAll(async () => {
    tok = await TesseraTokenizer.load(QWEN3_DIR);
  });

  it('reads the special tokens the files declare', () => {
    expect(tok.vocabSize).toBe(151669);
    expect(tok.bosTokenId).toBeNull();
    expect(tok.eosTokenIds).toEqual([151645]);
    expect(tok.isSpecial(151643)).toBe(true);
    expect(tok.isSpecial(151645)).toBe(true);
    expect(tok.isSpecial(9707)).toBe(false);
  });

  it('encodes without BOS and round-trips', () => {
    expect(tok.encode('Hello world')).toEqual([9707, 1879]);
    expect(tok.encode('Hello world', { addSpecialTokens: false })).toEqual([9707, 1879]);
    for (const text of ROUND_TRIP_TEXTS) expect(tok.decode(tok.encode(text))).toBe(text);
  });

  it('renders the chat template, with and without thinking', () => {
    expect(tok.applyChatTemplate(HELLO, { addGenerationPrompt: true })).toBe('<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n');
    expect(tok.applyChatTemplate(HELLO, { addGenerationPrompt: true, extra: { enable_thinking: false } })).toBe(
      '<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n',
    );
    expect(tok.applyChatTemplate(HELLO, { addGenerationPrompt: false })).toBe('<|im_start|>user\nHello<|im_end|>\n');
  });

  it('drops reasoning from earlier turns and groups tool responses as the template says', () => {
    expect(tok.applyChatTemplate(MULTI_TURN)).toBe(
      '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n  Hi there \n<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n' +
        '<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n',
    );
    const withTools = [
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: '<think>\nhmm\n</think>\n\nHello!' },
      { role: 'tool', content: '42' },
      { role: 'tool', content: '43' },
    ];
    expect(tok.applyChatTemplate(withTools)).toBe(
      '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\n\nHello!<|im_end|>\n' +
        '<|im_start|>user\n<tool_response>\n42\n</tool_response>\n<tool_response>\n43\n</tool_response><|im_end|>\n<|im_start|>assistant\n',
    );
  });

  it('encodes a chat with the template markers as single special tokens', () => {
    expect(tok.encodeChat(HELLO)).toEqual([151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198]);
  });
});

describe('byte-level demo tokenizer', () => {
  let tok: TesseraTokenizer;
  beforeAll(async () => {
    tok = await TesseraTokenizer.load(BYTE_DIR);
  });

  it('maps text to its UTF-8 bytes', () => {
    const text = 'naïve café 😀 日本語\n';
    expect(tok.encode(text, { addSpecialTokens: false })).toEqual([...Buffer.from(text, 'utf8')]);
    expect(tok.encode('hi')).toEqual([256, 104, 105]);
    expect(tok.encode('<s>hi')).toEqual([256, 104, 105]);
    expect(tok.decode(tok.encode(text))).toBe(`<s>${text}`);
    expect(tok.decode(tok.encode(text), { skipSpecialTokens: true })).toBe(text);
  });

  it('reads the special tokens', () => {
    expect(tok.vocabSize).toBe(264);
    expect(tok.bosTokenId).toBe(256);
    expect(tok.eosTokenIds).toEqual([257]);
    expect([255, 256, 257, 263].map((id) => tok.isSpecial(id))).toEqual([false, true, true, true]);
  });

  it('renders and encodes the chat template', () => {
    expect(tok.applyChatTemplate(HELLO)).toBe('<s><|user|>Hello\n<|assistant|>');
    expect(tok.applyChatTemplate(MULTI_TURN, { addGenerationPrompt: false })).toBe(
      '<s><|system|>Be brief.\n<|user|>  Hi there \n\n<|assistant|><think>\nsome thought\n</think>\n\nHello!</s>\n<|user|>Bye\n',
    );
    expect(tok.encodeChat(HELLO)).toEqual([256, 258, ...Buffer.from('Hello\n'), 259]);
  });

  it('turns the template raise_exception into an invalid_input error carrying its message', async () => {
    const err = await tesseraError(() => tok.applyChatTemplate([{ role: 'tool', content: '42' }]));
    expect(err.code).toBe('invalid_input');
    expect(err.message).toBe('The chat template rejected the messages: roles are system, user and assistant.');
  });

  it('rejects a message without string content', async () => {
    const err = await tesseraError(() => tok.applyChatTemplate([{ role: 'user', content: 42 as unknown as string }]));
    expect(err.message).toBe('messages[0].content must be a string.');
  });
});

describe('chat template sources and strftime_now', () => {
  const TOKENIZER_JSON = readFileSync(join(BYTE_DIR, 'tokenizer.json'), 'utf8');
  afterEach(() => {
    vi.useRealTimers();
  });

  it('prefers chat_template.jinja over tokenizer_config.json', async () => {
    const dir = modelDir({
      'tokenizer.json': TOKENIZER_JSON,
      'tokenizer_config.json': { chat_template: 'from config' },
      'chat_template.jinja': '{{ "from jinja file" }}{% if bos_token is not defined %} without bos_token{% endif %}',
    });
    const tok = await TesseraTokenizer.load(dir);
    expect(tok.applyChatTemplate(HELLO)).toBe('from jinja file without bos_token');
  });

  it('takes the template named "default" from a list', async () => {
    const dir = modelDir({
      'tokenizer.json': TOKENIZER_JSON,
      'tokenizer_config.json': {
        bos_token: { content: '<s>', special: true },
        chat_template: [
          { name: 'tool_use', template: 'tools' },
          { name: 'default', template: '{{ bos_token }}{{ messages[0].content }}{{ custom }}' },
        ],
      },
    });
    const tok = await TesseraTokenizer.load(dir);
    expect(tok.bosTokenId).toBe(256);
    expect(tok.applyChatTemplate(HELLO, { extra: { custom: '!' } })).toBe('<s>Hello!');
  });

  it('formats strftime_now in local time with English names', async () => {
    vi.useFakeTimers();
    vi.setSystemTime(new Date(2024, 6, 6, 9, 5, 3));
    const dir = modelDir({
      'tokenizer.json': TOKENIZER_JSON,
      // The Llama-3.1 template's date logic.
      'chat_template.jinja':
        '{%- if not date_string is defined %}{%- if strftime_now is defined %}{%- set date_string = strftime_now("%d %b %Y") %}' +
        '{%- else %}{%- set date_string = "26 Jul 2024" %}{%- endif %}{%- endif %}Today Date: {{ date_string }}|{{ strftime_now("%B %m %Y") }}',
    });
    const tok = await TesseraTokenizer.load(dir);
    expect(tok.applyChatTemplate(HELLO)).toBe('Today Date: 06 Jul 2024|July 07 2024');
    expect(tok.applyChatTemplate(HELLO, { extra: { date_string: '26 Jul 2024' } })).toBe('Today Date: 26 Jul 2024|July 07 2024');
    expect(tok.applyChatTemplate(HELLO, { extra: { strftime_now: () => '01 Jan 2000' } })).toBe('Today Date: 01 Jan 2000|01 Jan 2000');
  });

  it('supports the common strftime directives', () => {
    const date = new Date(2025, 0, 5, 14, 7, 9);
    expect(strftime(date, '%Y-%m-%d %H:%M:%S %y %b %B %a %A %I%p %e %% %Z')).toBe('2025-01-05 14:07:09 25 Jan January Sun Sunday 02PM  5 % %Z');
  });
});

describe('errors', () => {
  const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const TOKENIZER_JSON = readFileSync(join(BYTE_DIR, 'tokenizer.json'), 'utf8');

  it('names a directory that does not exist', async () => {
    const err = await tesseraError(() => TesseraTokenizer.load('/nonexistent/tessera-model'));
    expect(err.code).toBe('invalid_checkpoint');
    expect(err.message).toBe('Model directory /nonexistent/tessera-model does not exist or is not a directory.');
  });

  it('names a directory without tokenizer.json', async () => {
    const dir = modelDir({ 'config.json': {} });
    const err = await tesseraError(() => TesseraTokenizer.load(dir));
    expect(err.code).toBe('invalid_checkpoint');
    expect(err.message).toBe(`${dir} has no tokenizer.json; Tessera needs a Hugging Face fast tokenizer file.`);
  });

  it('names a file that is not valid JSON', async () => {
    let dir = modelDir({ 'tokenizer.json': '{"model": ' });
    let err = await tesseraError(() => TesseraTokenizer.load(dir));
    expect(err.code).toBe('invalid_checkpoint');
    expect(err.message).toMatch(new RegExp(`^${escape(join(dir, 'tokenizer.json'))} is not valid JSON \\(.+\\)\\.$`));

    dir = modelDir({ 'tokenizer.json': TOKENIZER_JSON, 'tokenizer_config.json': '[1, 2]' });
    err = await tesseraError(() => TesseraTokenizer.load(dir));
    expect(err.message).toBe(`${join(dir, 'tokenizer_config.json')} must hold a JSON object.`);
  });

  it('names an unreadable path', async () => {
    // A directory where a file should be cannot be read as one.
    const dir = modelDir({});
    mkdirSync(join(dir, 'tokenizer.json'));
    const err = await tesseraError(() => TesseraTokenizer.load(dir));
    expect(err.message).toBe(`${join(dir, 'tokenizer.json')} is a directory, not a file.`);
  });

  it('names a bad eos_token_id field', async () => {
    const dir = modelDir({ 'tokenizer.json': TOKENIZER_JSON, 'generation_config.json': { eos_token_id: '</s>' } });
    const err = await tesseraError(() => TesseraTokenizer.load(dir));
    expect(err.message).toBe(`${join(dir, 'generation_config.json')}: "eos_token_id" must be a token id or a list of them, not "</s>".`);
  });

  it('names the directory when there is no chat template', async () => {
    const dir = modelDir({ 'tokenizer.json': TOKENIZER_JSON, 'tokenizer_config.json': { eos_token: '</s>' } });
    const tok = await TesseraTokenizer.load(dir);
    expect(tok.chatTemplate).toBeNull();
    expect(tok.eosTokenIds).toEqual([257]);
    const err = await tesseraError(() => tok.encodeChat(HELLO));
    expect(err.code).toBe('invalid_input');
    expect(err.message).toBe(`${dir} has no chat template (tokenizer_config.json chat_template or chat_template.jinja); use generate instead of chat.`);
  });

  it('names the template file when the template does not parse or render', async () => {
    let dir = modelDir({ 'tokenizer.json': TOKENIZER_JSON, 'chat_template.jinja': '{% for m in messages %}{{ m.content }}' });
    let tok = await TesseraTokenizer.load(dir);
    let err = await tesseraError(() => tok.applyChatTemplate(HELLO));
    expect(err.code).toBe('invalid_checkpoint');
    expect(err.message).toMatch(new RegExp(`^${escape(join(dir, 'chat_template.jinja'))} does not parse \\(.+\\)\\.$`));

    dir = modelDir({ 'tokenizer.json': TOKENIZER_JSON, 'tokenizer_config.json': { chat_template: '{{ messages | no_such_filter }}' } });
    tok = await TesseraTokenizer.load(dir);
    err = await tesseraError(() => tok.applyChatTemplate(HELLO));
    expect(err.message).toMatch(new RegExp(`^${escape(join(dir, 'tokenizer_config.json'))} chat_template failed to render these messages \\(.*no_such_filter.*\\)\\.$`));
  });

  it('names a template list without a default', async () => {
    const dir = modelDir({ 'tokenizer.json': TOKENIZER_JSON, 'tokenizer_config.json': { chat_template: [{ name: 'rag', template: 'x' }] } });
    const err = await tesseraError(() => TesseraTokenizer.load(dir));
    expect(err.message).toBe(`${join(dir, 'tokenizer_config.json')} chat_template lists templates named "rag" but none named "default" with a template string.`);
  });
});
