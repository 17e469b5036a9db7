#!/usr/bin/env node
// Draws the charts of docs/perf/ from a `tessera bench kernels --out` report: one horizontal bar
// per case, with the target drawn as a line. GEMM: speed-up over cuBLASLt (target 1.0x);
// attention: TFLOP/s for prefill and % of copy bandwidth for decode; memory-bound ops: % of copy
// bandwidth (target 85%). No dependencies: plain SVG text.
//
//   node tools/plot_kernels.mjs REPORT.json [OUT_DIR]   (default OUT_DIR: docs/perf)
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** bars: [{ label, value }]; a horizontal bar chart with an optional target line. */
export function barChart({ title, unit, bars, target, subtitle }) {
  const rowH = 16, left = 330, width = 820, plotW = width - left - 70, top = 46;
  const max = Math.max(target ?? 0, ...bars.map((b) => b.value), 1e-9) * 1.08;
  const x = (v) => left + (plotW * v) / max;
  const height = top + bars.length * rowH + 30;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="10" y="18" font-size="14" font-weight="bold">${esc(title)}</text>`,
    `<text x="10" y="34" fill="#555">${esc(subtitle ?? '')}</text>`,
  ];
  bars.forEach((b, i) => {
    const y = top + i * rowH;
    const ok = target === undefined || b.value >= target;
    out.push(`<text x="${left - 6}" y="${y + 11}" text-anchor="end">${esc(b.label)}</text>`);
    out.push(`<rect x="${left}" y="${y + 2}" width="${Math.max(0, x(b.value) - left).toFixed(1)}" height="${rowH - 4}" fill="${ok ? '#3a7bd5' : '#d5703a'}"/>`);
    out.push(`<text x="${(x(b.value) + 4).toFixed(1)}" y="${y + 11}">${b.value.toFixed(b.value < 10 ? 2 : 0)}${esc(unit)}</text>`);
  });
  if (target !== undefined) {
    const tx = x(target).toFixed(1);
    out.push(`<line x1="${tx}" y1="${top - 4}" x2="${tx}" y2="${top + bars.length * rowH}" stroke="#222" stroke-dasharray="4 3"/>`);
    out.push(`<text x="${tx}" y="${top + bars.length * rowH + 14}" text-anchor="middle">target ${target}${esc(unit)}</text>`);
  }
  out.push('</svg>');
  return out.join('\n') + '\n';
}

export function charts(report) {
  const d = report.device ?? {};
  const subtitle = `${d.name ?? '?'}, driver ${d.driver ?? '?'}, ${String(report.date ?? '').slice(0, 10)}; copy ${report.ceilings?.copyGBs} GB/s, cuBLASLt ${report.ceilings?.gemmTFLOPs} TFLOP/s`;
  const ran = (report.results ?? []).filter((r) => r.tessera);
  const gemm = ran.filter((r) => r.family === 'gemm' && typeof r.speedupVsCublasLt === 'number').map((r) => ({ label: r.name.replace(/^gemm /, ''), value: r.speedupVsCublasLt }));
  const prefill = ran.filter((r) => r.name.startsWith('attention prefill')).map((r) => ({ label: r.name.replace(/^attention /, ''), value: r.tessera.tflops }));
  const decode = ran.filter((r) => r.name.startsWith('attention decode')).map((r) => ({ label: r.name.replace(/^attention /, ''), value: r.tessera.percentOfCopy }));
  const memory = ran.filter((r) => r.family === 'memory').map((r) => ({ label: r.name, value: r.tessera.percentOfCopy }));
  const out = {};
  if (gemm.length) out['gemm.svg'] = barChart({ title: 'GEMM: speed-up over cuBLASLt (same inputs, same stream)', unit: 'x', bars: gemm, target: 1, subtitle });
  if (prefill.length) out['attention_prefill.svg'] = barChart({ title: 'Attention prefill: TFLOP/s', unit: '', bars: prefill, target: 550, subtitle });
  if (decode.length) out['attention_decode.svg'] = barChart({ title: 'Attention decode: % of copy bandwidth', unit: '%', bars: decode, target: 80, subtitle });
  if (memory.length) out['memory_bound.svg'] = barChart({ title: 'Memory-bound ops: % of copy bandwidth', unit: '%', bars: memory, target: 85, subtitle });
  return out;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [reportPath, outDir = 'docs/perf'] = process.argv.slice(2);
  if (!reportPath) {
    console.error('usage: node tools/plot_kernels.mjs REPORT.json [OUT_DIR]');
    process.exit(1);
  }
  const files = charts(JSON.parse(readFileSync(reportPath, 'utf8')));
  for (const [name, svg] of Object.entries(files)) {
    writeFileSync(path.join(outDir, name), svg);
    console.log(`wrote ${path.join(outDir, name)}`);
  }
}
