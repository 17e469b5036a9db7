/** Loads the model for a command, with the progress bar and a one-line summary on stderr. */
import { Tessera, type TesseraOptions } from '../llm.js';
import { formatBytes, loadProgressBar } from './progress.js';

export async function loadForCli(dir: string | undefined, opts: TesseraOptions, quiet = false): Promise<Tessera> {
  const bar = loadProgressBar();
  const t0 = performance.now();
  let llm: Tessera;
  try {
    llm = await Tessera.load(dir, { ...opts, onProgress: quiet ? undefined : bar.update });
  } finally {
    bar.done();
  }
  if (!quiet) {
    const i = llm.info;
    const seconds = ((performance.now() - t0) / 1000).toFixed(2);
    console.error(
      `tessera: ${i.config.hfArchitecture} ${(i.numParameters / 1e6).toFixed(1)}M params from ${i.dir}, ` +
        `${formatBytes(llm.runner.weights.storedBytes)} loaded in ${seconds}s on ${llm.deviceReason}`,
    );
  }
  return llm;
}
