/**
 * A checkpoint's tokenizer: tokenizer.json (a Hugging Face fast tokenizer, run by
 * @huggingface/tokenizers) plus the special-token ids and chat template spread over
 * tokenizer_config.json, config.json, generation_config.json and chat_template.jinja.
 */
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { Environment, Interpreter, Template } from '@huggingface/jinja';
import { TesseraError } from '../errors.js';
import { isDirectory, parseJsonObject, readOptionalTextFile } from '../util/files.js';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool' | string;
  content: string;
}

type Json = Record<string, unknown>;

/** The special tokens a chat template may refer to by name. */
type SpecialTokenStrings = Partial<Record<'bos_token' | 'eos_token' | 'pad_token' | 'unk_token', string>>;

export class TesseraTokenizer {
  /** Ids 0..vocabSize-1, added tokens included. */
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  /** Every id that ends a generation, from all three config files. */
  readonly eosTokenIds: number[];
  readonly chatTemplate: string | null;

  private compiledTemplate: Template | null = null;
  /** True when the post-processor itself prepends BOS, so a BOS already in the text would double. */
  private readonly postProcessorAddsBos: boolean;

  private constructor(
    private readonly hf: Tokenizer,
    private readonly dir: string,
    private readonly specialIds: ReadonlySet<number>,
    private readonly specialTokens: SpecialTokenStrings,
    /** Names the template's origin in errors, e.g. ".../tokenizer_config.json chat_template". */
    private readonly templateSource: string,
    fields: { vocabSize: number; bosTokenId: number | null; eosTokenIds: number[]; chatTemplate: string | null },
  ) {
    this.vocabSize = fields.vocabSize;
    this.bosTokenId = fields.bosTokenId;
    this.eosTokenIds = fields.eosTokenIds;
    this.chatTemplate = fields.chatTemplate;
    const bos = this.bosTokenId;
    this.postProcessorAddsBos = bos !== null && hf.encode('a', { add_special_tokens: true }).ids[0] === bos;
  }

  static async load(dir: string): Promise<TesseraTokenizer> {
    const tokenizerPath = join(dir, 'tokenizer.json');
    const tokenizerText = await readOptionalTextFile(tokenizerPath);
    if (tokenizerText === null) {
      if (!(await isDirectory(dir))) throw new TesseraError(`Model directory ${dir} does not exist or is not a directory.`, 'invalid_checkpoint');
      throw new TesseraError(`${dir} has no tokenizer.json; Tessera needs a Hugging Face fast tokenizer file.`, 'invalid_checkpoint');
    }
    const tokenizerJson = parseJsonObject(tokenizerText, tokenizerPath);

    const configPaths = {
      tokenizer: join(dir, 'tokenizer_config.json'),
      generation: join(dir, 'generation_config.json'),
      model: join(dir, 'config.json'),
      template: join(dir, 'chat_template.jinja'),
    };
    const [tokCfgText, genCfgText, modelCfgText, templateText] = await Promise.all([
      readOptionalTextFile(configPaths.tokenizer),
      readOptionalTextFile(configPaths.generation),
      readOptionalTextFile(configPaths.model),
      readOptionalTextFile(configPaths.template),
    ]);
    const tokCfg = tokCfgText === null ? {} : parseJsonObject(tokCfgText, configPaths.tokenizer);
    const genCfg = genCfgText === null ? {} : parseJsonObject(genCfgText, configPaths.generation);
    const modelCfg = modelCfgText === null ? {} : parseJsonObject(modelCfgText, configPaths.model);

    const specialTokens: SpecialTokenStrings = {};
    for (const key of ['bos_token', 'eos_token', 'pad_token', 'unk_token'] as const) {
      const token = tokenString(tokCfg[key], `${configPaths.tokenizer}: "${key}"`);
      if (token !== null) specialTokens[key] = token;
    }

    let hf: Tokenizer;
    try {
      // The library reads bos/eos/unk from this config as plain strings, so hand it the unwrapped ones.
      hf = new Tokenizer(tokenizerJson, { ...tokCfg, ...specialTokens });
    } catch (err) {
      throw new TesseraError(`${tokenizerPath} cannot be loaded (${messageOf(err)}).`, 'invalid_checkpoint');
    }

    let vocabSize = 0;
    for (const id of hf.get_vocab(true).values()) vocabSize = Math.max(vocabSize, id + 1);

    const specialIds = new Set<number>();
    for (const [id, added] of hf.get_added_tokens_decoder()) if (added.special) specialIds.add(id);
    const additional = Array.isArray(tokCfg.additional_special_tokens) ? tokCfg.additional_special_tokens : [];
    for (const token of [...additional, ...Object.values(specialTokens)]) {
      const id = hf.token_to_id(tokenString(token, `${configPaths.tokenizer}: "additional_special_tokens"`) ?? '');
      if (id !== undefined) specialIds.add(id);
    }

    // A token string the vocabulary lacks cannot be generated or encoded, so it contributes no id.
    const idOf = (token: string | undefined) => (token === undefined ? undefined : hf.token_to_id(token));
    const configBos = tokenIds(modelCfg, 'bos_token_id', configPaths.model)[0];
    const bosTokenId = configBos ?? idOf(specialTokens.bos_token) ?? null;
    const tokenizerEos = idOf(specialTokens.eos_token);
    const eosTokenIds = [
      ...new Set([
        ...tokenIds(genCfg, 'eos_token_id', configPaths.generation),
        ...tokenIds(modelCfg, 'eos_token_id', configPaths.model),
        ...(tokenizerEos === undefined ? [] : [tokenizerEos]),
      ]),
    ];

    let chatTemplate: string | null = templateText;
    let templateSource = configPaths.template;
    if (chatTemplate === null) {
      templateSource = `${configPaths.tokenizer} chat_template`;
      chatTemplate = templateFromConfig(tokCfg.chat_template, templateSource);
    }

    return new TesseraTokenizer(hf, dir, specialIds, specialTokens, templateSource, {
      vocabSize,
      bosTokenId,
      eosTokenIds,
      chatTemplate,
    });
  }

  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    const addSpecialTokens = opts.addSpecialTokens ?? true;
    const ids = this.hf.encode(text, { add_special_tokens: addSpecialTokens }).ids;
    // Text that already starts with BOS (e.g. a rendered template) must not get a second one.
    if (addSpecialTokens && this.postProcessorAddsBos && ids.length >= 2 && ids[1] === this.bosTokenId) ids.shift();
    return ids;
  }

  decode(ids: ArrayLike<number>, opts: { skipSpecialTokens?: boolean } = {}): string {
    const skipSpecial = opts.skipSpecialTokens ?? false;
    const kept: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      // Like the Rust tokenizers, ids outside the vocabulary (padded embedding rows) decode to nothing.
      if (this.hf.id_to_token(id) === undefined) continue;
      if (skipSpecial && this.specialIds.has(id)) continue;
      kept.push(id);
    }
    if (kept.length === 0) return '';
    // clean_up_tokenization_spaces is a lossy heuristic ("a ." -> "a."); generated text is returned as produced.
    return this.hf.decode(kept, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /** Renders messages with the checkpoint's chat template. addGenerationPrompt defaults to true: Tessera renders prompts to generate a reply. */
  applyChatTemplate(messages: ChatMessage[], opts: { addGenerationPrompt?: boolean; extra?: Record<string, unknown> } = {}): string {
    const template = this.template();
    messages.forEach((m, i) => {
      if (typeof m?.role !== 'string' || m.role === '') throw new TesseraError(`messages[${i}].role must be a non-empty string.`, 'invalid_input');
      if (typeof m.content !== 'string') throw new TesseraError(`messages[${i}].content must be a string.`, 'invalid_input');
    });
    const context: Record<string, unknown> = {
      ...JINJA_GLOBALS,
      raise_exception: (message: unknown) => {
        throw new TesseraError(`The chat template rejected the messages: ${sentenceEnd(String(message))}`, 'invalid_input');
      },
      strftime_now: (format: unknown) => strftime(new Date(), String(format)),
      ...this.specialTokens,
      messages,
      add_generation_prompt: opts.addGenerationPrompt ?? true,
      ...opts.extra,
    };
    try {
      const env = new Environment();
      for (const [name, value] of Object.entries(context)) env.set(name, value);
      return String(new Interpreter(env).run(template.parsed).value);
    } catch (err) {
      if (err instanceof TesseraError) throw err;
      throw new TesseraError(`${this.templateSource} failed to render these messages (${messageOf(err)}).`, 'invalid_input');
    }
  }

  /** The template writes BOS and the role markers itself, so the rendering is encoded without special tokens. */
  encodeChat(messages: ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): number[] {
    return this.encode(this.applyChatTemplate(messages, opts), { addSpecialTokens: false });
  }

  private template(): Template {
    if (this.compiledTemplate) return this.compiledTemplate;
    if (this.chatTemplate === null)
      throw new TesseraError(
        `${this.dir} has no chat template (tokenizer_config.json chat_template or chat_template.jinja); use generate instead of chat.`,
        'invalid_input',
      );
    try {
      this.compiledTemplate = new Template(this.chatTemplate);
    } catch (err) {
      throw new TesseraError(`${this.templateSource} does not parse (${messageOf(err)}).`, 'invalid_checkpoint');
    }
    return this.compiledTemplate;
  }
}

/** The globals @huggingface/jinja's own render() declares; raise_exception and strftime_now are ours. */
const JINJA_GLOBALS: Record<string, unknown> = {
  true: true,
  false: false,
  none: null,
  True: true,
  False: false,
  None: null,
  range: (start: number, stop?: number, step = 1) => {
    if (stop === undefined) [start, stop] = [0, start];
    if (step === 0) throw new Error('range() step must not be zero');
    const values: number[] = [];
    for (let i = start; step > 0 ? i < stop : i > stop; i += step) values.push(i);
    return values;
  },
};

const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
const WEEKDAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];

/** Python's strftime for the directives chat templates use, in local time and the C locale's English names. */
export function strftime(date: Date, format: string): string {
  const pad2 = (n: number) => String(n).padStart(2, '0');
  return format.replace(/%[YymdeBbAaHIMSp%]/g, (directive) => {
    switch (directive) {
      case '%Y': return String(date.getFullYear());
      case '%y': return pad2(date.getFullYear() % 100);
      case '%m': return pad2(date.getMonth() + 1);
      case '%d': return pad2(date.getDate());
      case '%e': return String(date.getDate()).padStart(2, ' ');
      case '%B': return MONTHS[date.getMonth()];
      case '%b': return MONTHS[date.getMonth()].slice(0, 3);
      case '%A': return WEEKDAYS[date.getDay()];
      case '%a': return WEEKDAYS[date.getDay()].slice(0, 3);
      case '%H': return pad2(date.getHours());
      case '%I': return pad2(date.getHours() % 12 || 12);
      case '%M': return pad2(date.getMinutes());
      case '%S': return pad2(date.getSeconds());
      case '%p': return date.getHours() < 12 ? 'AM' : 'PM';
      case '%%': return '%';
      default: return directive;
    }
  });
}

/** The file's text, or null when it does not exist; any other failure names the path. */

/** A special token given as "<s>" or as {"content": "<s>", ...}; `field` names it in errors. */
function tokenString(value: unknown, field: string): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value === 'string') return value;
  const content = typeof value === 'object' ? (value as Json).content : undefined;
  if (typeof content === 'string') return content;
  throw new TesseraError(`${field} must be a token string or {"content": string}, not ${JSON.stringify(value)}.`, 'invalid_checkpoint');
}

/** An id field that may be absent, one id, or a list of ids. */
function tokenIds(cfg: Json, key: string, path: string): number[] {
  const value = cfg[key];
  if (value === undefined || value === null) return [];
  const ids = Array.isArray(value) ? value : [value];
  for (const id of ids)
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0)
      throw new TesseraError(`${path}: "${key}" must be a token id or a list of them, not ${JSON.stringify(value)}.`, 'invalid_checkpoint');
  return ids as number[];
}

/** tokenizer_config's chat_template: a string, or a list of named templates of which "default" is the chat one. */
function templateFromConfig(value: unknown, field: string): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) {
    const named = value.find((t) => (t as Json)?.name === 'default') as Json | undefined;
    if (named && typeof named.template === 'string') return named.template;
    const names = value.map((t) => JSON.stringify((t as Json)?.name)).join(', ');
    throw new TesseraError(`${field} lists templates named ${names} but none named "default" with a template string.`, 'invalid_checkpoint');
  }
  throw new TesseraError(`${field} must be a string or a list of {name, template}, not ${typeof value}.`, 'invalid_checkpoint');
}

function sentenceEnd(text: string): string {
  return /[.!?]$/.test(text.trimEnd()) ? text.trimEnd() : `${text.trimEnd()}.`;
}

function messageOf(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).replace(/\.\s*$/, '');
}
