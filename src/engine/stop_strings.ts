/**
 * Stop strings over streamed text. Text that might be the start of a stop string is held back
 * until it is known not to be; when a stop string appears, the text before it is released and
 * the rest dropped (OpenAI semantics: the stop string is not part of the output).
 */
export class StopStringFilter {
  private pending = '';
  private readonly holdback: number;

  constructor(private readonly stops: readonly string[]) {
    this.holdback = Math.max(0, ...stops.map((s) => s.length - 1));
  }

  /** Adds new text; returns what may be released now and whether a stop string was hit. */
  push(text: string): { text: string; stopped: boolean } {
    this.pending += text;
    if (this.stops.length === 0) return this.release(this.pending.length);
    let hit = -1;
    for (const s of this.stops) {
      const i = this.pending.indexOf(s);
      if (i >= 0 && (hit < 0 || i < hit)) hit = i;
    }
    if (hit >= 0) {
      const out = this.pending.slice(0, hit);
      this.pending = '';
      return { text: out, stopped: true };
    }
    let cut = Math.max(0, this.pending.length - this.holdback);
    // Never split a surrogate pair.
    if (cut > 0 && cut < this.pending.length && isHighSurrogate(this.pending.charCodeAt(cut - 1))) cut--;
    return this.release(cut);
  }

  /** At the end of generation: everything still held back. */
  flush(): string {
    const out = this.pending;
    this.pending = '';
    return out;
  }

  private release(n: number): { text: string; stopped: boolean } {
    const out = this.pending.slice(0, n);
    this.pending = this.pending.slice(n);
    return { text: out, stopped: false };
  }
}

function isHighSurrogate(code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff;
}
