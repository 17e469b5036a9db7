/** OpenAI's response shapes: completions, chat completions, their stream chunks, usage and logprobs. */
import { randomUUID } from 'node:crypto';
import type { ChunkLogprob } from '../llm.js';
import type { FinishReason } from '../scheduler/sequence.js';

export type ApiFinishReason = 'stop' | 'length';

export function apiFinishReason(r: FinishReason): ApiFinishReason {
  return r === 'length' ? 'length' : 'stop';
}

export function newId(prefix: 'cmpl' | 'chatcmpl'): string {
  return `${prefix}-${randomUUID().replaceAll('-', '')}`;
}

export function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

export function usage(promptTokens: number, completionTokens: number, cachedTokens: number): Usage {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    prompt_tokens_details: { cached_tokens: cachedTokens },
  };
}

/** OpenAI clamps logprobs of impossible tokens; JSON has no -Infinity. */
function lp(x: number): number {
  return Number.isFinite(x) ? x : -9999;
}

/** Legacy completions logprobs: parallel lists, and each token's offset in the choice's text. */
export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Array<Record<string, number>>;
  text_offset: number[];
}

export class CompletionLogprobsBuilder {
  readonly all: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };

  /** `offset`: where the generated text starts in the choice's text (after an echoed prompt). */
  constructor(private offset: number) {}

  /** Adds a chunk's entries; returns them alone (a stream chunk's logprobs). */
  add(entries: ChunkLogprob[]): CompletionLogprobs {
    const part: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
    for (const e of entries) {
      // The top alternatives, and always the chosen token (so up to logprobs + 1 entries, as OpenAI).
      const top: Record<string, number> = {};
      for (const t of e.top ?? []) if (!(t.token in top)) top[t.token] = lp(t.logprob);
      if (!(e.token in top)) top[e.token] = lp(e.logprob);
      part.tokens.push(e.token);
      part.token_logprobs.push(lp(e.logprob));
      part.top_logprobs.push(top);
      part.text_offset.push(this.offset);
      this.offset += e.token.length;
    }
    for (const k of ['tokens', 'token_logprobs', 'top_logprobs', 'text_offset'] as const) (this.all[k] as unknown[]).push(...part[k]);
    return part;
  }
}

export interface ChatTokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: Array<{ token: string; logprob: number; bytes: number[] }>;
}

export function chatLogprobs(entries: ChunkLogprob[]): ChatTokenLogprob[] {
  const bytes = (s: string) => [...Buffer.from(s, 'utf8')];
  return entries.map((e) => ({
    token: e.token,
    logprob: lp(e.logprob),
    bytes: bytes(e.token),
    top_logprobs: (e.top ?? []).map((t) => ({ token: t.token, logprob: lp(t.logprob), bytes: bytes(t.token) })),
  }));
}

/** One choice as it accumulates over a request's chunks. */
export interface ChoiceState {
  text: string;
  finishReason: ApiFinishReason | null;
  completionTokens: number;
  cachedTokens: number;
  completionLogprobs: CompletionLogprobsBuilder | null;
  chatLogprobs: ChatTokenLogprob[] | null;
}
