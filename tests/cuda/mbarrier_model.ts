/**
 * An mbarrier as PTX defines it, for the model checks of the sm90 kernels' pipelines
 * (sm90_pipeline.test.ts, attention_sm90_pipeline.test.ts): a phase completes when its pending
 * arrivals and transaction bytes reach zero; try_wait.parity(P) succeeds once the phase of parity
 * P has completed, so on a fresh barrier parity 1 succeeds at once.
 */
export class MBarrier {
  phase = 0;
  pending: number;
  tx = 0;
  constructor(readonly count: number) {
    this.pending = count;
  }
  /** try_wait.parity: the phase with this parity has completed. */
  done(parity: number): boolean {
    return (this.phase & 1) !== parity;
  }
  private maybeComplete(): void {
    if (this.pending === 0 && this.tx === 0) {
      this.phase++;
      this.pending = this.count;
    }
  }
  arrive(): void {
    if (this.pending <= 0) throw new Error('arrive past the expected count');
    this.pending--;
    this.maybeComplete();
  }
  arriveExpectTx(bytes: number): void {
    this.tx += bytes;
    this.arrive();
  }
  completeTx(bytes: number): void {
    this.tx -= bytes;
    this.maybeComplete();
  }
}
