/**
 * Streaming detokenization with the prefix-offset / read-offset method of vLLM and TGI.
 *
 * Decoding one token at a time is wrong twice over: a byte-level token can hold part of a UTF-8
 * character, and decoders such as Metaspace drop the leading space of the first token they see.
 * So each step decodes a short window that starts a little before the new tokens, and emits
 * what the new tokens added to the window's text once that text does not end in U+FFFD.
 */
import type { TesseraTokenizer } from './tokenizer.js';

/** Prompt ids kept as left context: enough for a leading-space rule or a multi-token character. */
const PROMPT_CONTEXT_TOKENS = 5;
/** What the UTF-8 decoder shows for an incomplete byte sequence at the end. */
const REPLACEMENT_CHAR = '\uFFFD';

export class IncrementalDetokenizer {
  private readonly skipSpecialTokens: boolean;
  /** The current window only; ids before prefixOffset are dropped so memory stays O(window). */
  private ids: number[];
  /** ids[0 .. readOffset) have been emitted; they are the context the next tokens decode after. */
  private readOffset: number;
  /** decode(ids[0 .. readOffset)), fixed until the window moves. */
  private prefixText: string;
  private emitted = '';

  /** skipSpecialTokens defaults to true: streamed text is for people, not for the model's control tokens. */
  constructor(
    private readonly tokenizer: TesseraTokenizer,
    opts: { promptIds?: number[]; skipSpecialTokens?: boolean } = {},
  ) {
    this.skipSpecialTokens = opts.skipSpecialTokens ?? true;
    let context = (opts.promptIds ?? []).slice(-PROMPT_CONTEXT_TOKENS);
    let contextText = this.decode(context);
    // A prompt that ends inside a character leaves nothing to continue from; the reply decodes on its own.
    if (contextText.endsWith(REPLACEMENT_CHAR)) [context, contextText] = [[], ''];
    this.ids = context;
    this.readOffset = context.length;
    this.prefixText = contextText;
  }

  /** Everything emitted so far. */
  get text(): string {
    return this.emitted;
  }

  /** The text that became final with this token; '' while a character is still incomplete. */
  push(id: number): string {
    this.ids.push(id);
    return this.advance(false);
  }

  /** Whatever is still held back, even an incomplete character (as U+FFFD). */
  flush(): string {
    return this.advance(true);
  }

  private advance(final: boolean): string {
    if (this.readOffset === this.ids.length) return '';
    const windowText = this.decode(this.ids);
    if (windowText.length <= this.prefixText.length) {
      if (final) this.moveWindow();
      return '';
    }
    if (!final && windowText.endsWith(REPLACEMENT_CHAR)) return '';
    const delta = windowText.slice(this.prefixText.length);
    this.moveWindow();
    this.emitted += delta;
    return delta;
  }

  /** The tokens just emitted become the next window's prefix. */
  private moveWindow(): void {
    const emittedIds = this.ids.slice(this.readOffset);
    this.prefixText = this.decode(emittedIds);
    this.ids = emittedIds;
    this.readOffset = emittedIds.length;
  }

  private decode(ids: number[]): string {
    return this.tokenizer.decode(ids, { skipSpecialTokens: this.skipSpecialTokens });
  }
}
