/**
 * tessera graph: the model's graph before and after the passes, the kernels it launches per
 * step and per layer, and the activation memory it plans. Text, Graphviz DOT, or SVG (through
 * Graphviz's dot when installed).
 */
import { spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { TesseraError } from '../errors.js';
import { openCheckpoint } from '../formats/checkpoint.js';
import type { Graph } from '../graph/ir.js';
import { lower } from '../graph/lower.js';
import { buildModelGraph } from '../graph/models/index.js';
import { optimize } from '../graph/passes/index.js';
import { graphToDot, graphToText, summarize } from '../graph/print.js';
import { DEMO_MODEL_DIR } from '../llm.js';
import { numberFlag, parse } from './args.js';
import { formatBytes } from './progress.js';

const HELP = `Usage: tessera graph [options]

Prints the model's graph before and after the optimization passes, the kernels per step and
per layer, and the activation memory. Only config.json is read.

  -m, --model DIR                Hugging Face model directory (default: the demo model)
      --no-fuse                  show the graph without the passes
      --format text|dot|svg      text (default), Graphviz DOT, or SVG (needs Graphviz's dot)
  -o, --out FILE                 write the graph there instead of stdout
      --summary                  only the summary, not the graph
      --max-num-batched-tokens N tokens per step the arena is planned for (default 1024)
      --kv-block-size N          tokens per KV-cache block (default 16)`;

interface Stats {
  kernelsPerStep: number;
  layerKernels: Record<string, number>;
  arenaBytes: number;
  totalBytes: number;
  bytesPerToken: number;
}

/** Kernel counts and the activation plan, at 4 bytes an element (the CPU backend's f32). */
function stats(graph: Graph, maxTokens: number): Stats {
  const s = summarize(graph);
  const program = lower(graph, { maxTokens, maxLogitRows: 1 });
  const perToken = lower(graph, { maxTokens: 1, maxLogitRows: 1 });
  return { ...s, arenaBytes: 4 * program.arenaSize, totalBytes: 4 * program.activationTotal, bytesPerToken: 4 * perToken.arenaSize };
}

function fmtKernels(k: Record<string, number>): string {
  return Object.entries(k)
    .map(([op, n]) => `${op} ${n}`)
    .join(', ');
}

export async function graph(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      model: { type: 'string', short: 'm' },
      'no-fuse': { type: 'boolean' },
      format: { type: 'string' },
      out: { type: 'string', short: 'o' },
      summary: { type: 'boolean' },
      'max-num-batched-tokens': { type: 'string' },
      'kv-block-size': { type: 'string' },
    },
    'graph',
  );
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const format = (values.format as string | undefined) ?? 'text';
  if (!['text', 'dot', 'svg'].includes(format)) throw new TesseraError(`--format must be text, dot or svg, not "${format}".`, 'invalid_input');
  const maxTokens = numberFlag(values, 'max-num-batched-tokens', true) ?? 1024;
  const kvBlockSize = numberFlag(values, 'kv-block-size', true) ?? 16;
  if (maxTokens < 1 || kvBlockSize < 1) throw new TesseraError('--max-num-batched-tokens and --kv-block-size must be at least 1.', 'invalid_input');
  const dir = (values.model as string | undefined) ?? DEMO_MODEL_DIR;
  const ckpt = await openCheckpoint(dir);
  await ckpt.weights.close();
  const config = ckpt.config;
  const before = buildModelGraph(config, { kvBlockSize });
  const beforeStats = stats(before, maxTokens);
  const fuse = values['no-fuse'] !== true;
  const optimized = fuse ? optimize(buildModelGraph(config, { kvBlockSize })) : null;
  const shown = optimized?.graph ?? before;

  const lines: string[] = [];
  lines.push(`${config.hfArchitecture} from ${dir}: ${config.numLayers} layers, hidden ${config.hiddenSize}`);
  if (optimized) {
    const applied = optimized.reports.flatMap((r) => Object.entries(r.rewrites).filter(([, n]) => n > 0).map(([rule, n]) => `${rule} x${n}`));
    lines.push(`passes: ${applied.join(', ') || 'nothing to rewrite'}`);
    const after = stats(optimized.graph, maxTokens);
    const row = (name: string, a: string, b: string) => `  ${name.padEnd(28)}${a.padStart(12)}${b.padStart(12)}`;
    lines.push(row('', 'unfused', 'fused'));
    lines.push(row('kernels per step', String(beforeStats.kernelsPerStep), String(after.kernelsPerStep)));
    lines.push(row('kernels in layer 0', String(Object.values(beforeStats.layerKernels).reduce((a, b) => a + b, 0)), String(Object.values(after.layerKernels).reduce((a, b) => a + b, 0))));
    lines.push(row(`activation arena (${maxTokens} tok)`, formatBytes(beforeStats.arenaBytes), formatBytes(after.arenaBytes)));
    lines.push(row('sum of activation buffers', formatBytes(beforeStats.totalBytes), formatBytes(after.totalBytes)));
    lines.push(row('activation bytes per token', formatBytes(beforeStats.bytesPerToken), formatBytes(after.bytesPerToken)));
    lines.push(`  layer 0 unfused: ${fmtKernels(beforeStats.layerKernels)}`);
    lines.push(`  layer 0 fused:   ${fmtKernels(after.layerKernels)}`);
  } else {
    lines.push(`kernels per step ${beforeStats.kernelsPerStep}; layer 0: ${fmtKernels(beforeStats.layerKernels)}`);
    lines.push(`activation arena ${formatBytes(beforeStats.arenaBytes)} for ${maxTokens} tokens (sum of buffers ${formatBytes(beforeStats.totalBytes)}), ${formatBytes(beforeStats.bytesPerToken)} per token`);
  }
  lines.push('(activation sizes at 4 bytes an element, as on the CPU backend)');
  const summary = lines.join('\n') + '\n';

  let body = '';
  if (!values.summary) {
    if (format === 'text') {
      body = optimized ? `\n== before the passes ==\n${graphToText(before)}\n== after the passes ==\n${graphToText(optimized.graph)}` : `\n${graphToText(before)}`;
    } else {
      const dot = graphToDot(shown, `${config.hfArchitecture}${fuse ? ' (fused)' : ''}`);
      if (format === 'dot') body = dot;
      else {
        const r = spawnSync('dot', ['-Tsvg'], { input: dot, encoding: 'utf8' });
        if (r.error || r.status !== 0)
          throw new TesseraError("--format svg needs Graphviz's dot on the PATH (apt-get install graphviz); --format dot writes the DOT source instead.", 'unsupported');
        body = r.stdout;
      }
    }
  }
  if (values.out) {
    await writeFile(values.out as string, format === 'text' ? summary + body : body);
    process.stdout.write(summary);
  } else {
    process.stdout.write(format === 'text' || !body ? summary + body : body);
  }
  return 0;
}
