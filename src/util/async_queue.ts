/**
 * A push-driven async iterator: the producer pushes, ends or fails it; the consumer iterates with
 * for-await. When the consumer stops early (break, return), onCancel runs once.
 */
export class AsyncQueue<T> implements AsyncIterableIterator<T> {
  private readonly items: T[] = [];
  private waiter: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | null = null;
  private done = false;
  private error: unknown = null;
  private settleCallbacks: Array<() => void> = [];

  constructor(private readonly onCancel?: () => void) {}

  /** Runs `cb` once when the queue ends, fails or the consumer stops. */
  onSettle(cb: () => void): void {
    if (this.done) cb();
    else this.settleCallbacks.push(cb);
  }

  private settle(): void {
    this.done = true;
    const cbs = this.settleCallbacks;
    this.settleCallbacks = [];
    for (const cb of cbs) cb();
  }

  push(item: T): void {
    if (this.done) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve({ value: item, done: false });
    } else this.items.push(item);
  }

  end(): void {
    if (this.done) return;
    this.settle();
    if (this.waiter && this.items.length === 0) {
      this.waiter.resolve({ value: undefined, done: true });
      this.waiter = null;
    }
  }

  fail(err: unknown): void {
    if (this.done) return;
    this.error = err;
    this.settle();
    if (this.waiter) {
      this.waiter.reject(err);
      this.waiter = null;
    }
  }

  get finished(): boolean {
    return this.done;
  }

  next(): Promise<IteratorResult<T>> {
    if (this.items.length > 0) return Promise.resolve({ value: this.items.shift()!, done: false });
    if (this.error !== null) {
      const err = this.error;
      this.error = null;
      return Promise.reject(err);
    }
    if (this.done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  return(): Promise<IteratorResult<T>> {
    if (!this.done) {
      this.settle();
      this.items.length = 0;
      this.onCancel?.();
    }
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }
}
