/**
 * Loads the model for a command with a progress bar. The one-line summary is printed by the
 * command once the request is known to be valid, so a user mistake stays one sentence.
 */
import { Tessera, type TesseraOptions } from '../llm.js';
import { formatBytes, loadProgressBar } from './progress.js';

export async function loadForCli(dir: string | undefined, opts: TesseraOptions, quiet = false): Promise<{ llm: Tessera; reportLoad: () => void }> {
  const bar = loadProgressBar();
  const t0 = performance.now();
  let llm: Tessera;
  try {
    llm = await Tessera.load(dir, { ...opts, onProgress: quiet ? undefined : bar.update });
  } finally {
    bar.done();
  }
  const seconds = ((performance.now() - t0) / 1000).toFixed(2);
  const reportLoad = () => {
    if (quiet) return;
    const i = llm.info;
    const m = i.memory;
    console.error(
      `tessera: ${i.config.hfArchitecture} ${(i.numParameters / 1e6).toFixed(1)}M params from ${i.dir}, ` +
        `${formatBytes(i.storedBytes)} loaded in ${seconds}s on ${i.deviceReason}\n` +
        `tessera: memory (${i.computeDtype}): weights ${formatBytes(m.weightBytes)}, activations ${formatBytes(m.activationBytes)}, ` +
        `KV cache ${formatBytes(m.kvCacheBytes)} (${i.kvCacheBlocks} blocks of ${i.kvBlockSize} tokens)`,
    );
  };
  return { llm, reportLoad };
}
