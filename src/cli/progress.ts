/** A progress bar on stderr while weights load (only on a terminal), and byte formatting. */
import type { LoadProgress } from '../backend/backend.js';

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

export function loadProgressBar(stream: NodeJS.WriteStream = process.stderr): { update: (p: LoadProgress) => void; done: () => void } {
  const tty = stream.isTTY === true;
  let lastDraw = 0;
  let drawn = false;
  const width = 30;
  return {
    update(p: LoadProgress) {
      if (!tty) return;
      const now = performance.now();
      if (now - lastDraw < 50 && p.loadedBytes < p.totalBytes) return;
      lastDraw = now;
      const frac = p.totalBytes > 0 ? p.loadedBytes / p.totalBytes : 1;
      const filled = Math.round(frac * width);
      stream.write(`\rloading weights [${'#'.repeat(filled)}${' '.repeat(width - filled)}] ${(frac * 100).toFixed(0).padStart(3)}%  ${formatBytes(p.loadedBytes)} / ${formatBytes(p.totalBytes)}\x1b[K`);
      drawn = true;
    },
    done() {
      if (drawn) stream.write('\r\x1b[K');
    },
  };
}
