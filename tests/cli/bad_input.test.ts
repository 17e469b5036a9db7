/**
 * Every mistake a user can make with a model directory or a flag ends the CLI with exit code 1 and
 * one sentence on stderr that names the file (or flag) and the problem, never a stack trace. Each
 * case breaks a fresh copy of the demo model in exactly one way and runs the real CLI
 * (bin/tessera.js, from dist/, built by tests/setup/build.ts) as a child process.
 */
import { copyFile, open, rename, rm, stat, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CudaBackend } from '../../src/backend/cuda/backend.js';
import { TesseraError } from '../../src/errors.js';
import { Tessera } from '../../src/llm.js';
import {
  type CliResult,
  type RawSafetensors,
  byOffset,
  copyDemo,
  editJson,
  expectOneSentence,
  inParallel,
  openFilesUnder,
  readJson,
  readRawSafetensors,
  replaceTensor,
  runCli,
  scratchDir,
  writeJson,
  writeRawSafetensors,
} from './helpers.js';

const CUDA = CudaBackend.probe();

const ST = 'model.safetensors';
const INDEX = 'model.safetensors.index.json';

/** What the checks may refer to: the case's model directory and facts read from the demo model. */
interface Ctx {
  dir: string;
  /** The scratch directory all copies live in. */
  scratch: string;
  st: string;
  config: string;
  maxPositions: number;
  /** The demo's tensor names in data-buffer order. */
  tensorOrder: string[];
}

interface Case {
  name: string;
  /** Breaks the copy in `ctx.dir` (absent: the case uses an intact copy or no directory). */
  breakIt?: (ctx: Ctx, st: RawSafetensors) => Promise<void>;
  /** The --model argument (default: the case's copy). */
  model?: (ctx: Ctx) => string;
  /** Extra arguments for generate (default: none beyond --model DIR -n 4). */
  args?: (ctx: Ctx) => string[];
  /** Also run `tessera info --model DIR` (for problems info can see without reading weights or tokenizer). */
  info?: boolean;
  /** Fragments the sentence must contain, and patterns it must match. */
  expect: (ctx: Ctx) => Array<string | RegExp>;
}

/** Overwrites the 8-byte header length of a safetensors file. */
async function writePrefix(file: string, headerBytes: bigint): Promise<void> {
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(headerBytes);
  const handle = await open(file, 'r+');
  try {
    await handle.write(prefix, 0, 8, 0);
  } finally {
    await handle.close();
  }
}

/** The final RMSNorm weight: a 1-D tensor every Llama checkpoint has. */
const NORM = 'model.norm.weight';

const CHECKPOINT_CASES: Case[] = [
  {
    name: 'safetensors file cut short inside the data buffer',
    breakIt: async (c) => {
      await truncate(c.st, (await stat(c.st)).size - 1000);
    },
    info: true,
    expect: (c) => [c.st, /tensor '[^']+' points outside the file/, /run past the end of the \d+-byte data buffer/],
  },
  {
    name: 'safetensors file shorter than its 8-byte header length',
    breakIt: async (c) => truncate(c.st, 5),
    info: true,
    expect: (c) => [c.st, /too short to be a safetensors file/, /5 bytes/],
  },
  {
    name: 'safetensors file cut short inside the header',
    breakIt: async (c) => truncate(c.st, 8 + 100),
    info: true,
    expect: (c) => [c.st, /is truncated/, /header says \d+ bytes but the file has only 100 after the length prefix/],
  },
  {
    name: 'header length pointing past the end of the file',
    // The header length counts the whole file, so the header would run past its end.
    breakIt: async (c) => writePrefix(c.st, BigInt((await stat(c.st)).size)),
    info: true,
    expect: (c) => [c.st, /is truncated/, /header says \d+ bytes but the file has only \d+ after the length prefix/],
  },
  {
    name: 'header length beyond the 100 MiB limit',
    breakIt: async (c) => writePrefix(c.st, 1n << 40n),
    info: true,
    expect: (c) => [c.st, /header length of 1099511627776 bytes exceeds the 100 MiB limit/],
  },
  {
    name: "a tensor's data_offsets outside the file",
    breakIt: async (c, st) => {
      const e = st.entries[NORM];
      const len = e.data_offsets[1] - e.data_offsets[0];
      e.data_offsets = [st.data.length + 64, st.data.length + 64 + len];
      await writeRawSafetensors(c.st, st);
    },
    info: true,
    expect: (c) => [c.st, `'${NORM}'`, /points outside the file/, /data_offsets \[\d+, \d+\]/],
  },
  {
    name: 'two tensors overlapping',
    breakIt: async (c, st) => {
      // The last tensor in the buffer moves onto the bytes of the one before it.
      const [prev, last] = c.tensorOrder.slice(-2);
      const p = st.entries[prev];
      const l = st.entries[last];
      const len = l.data_offsets[1] - l.data_offsets[0];
      l.data_offsets = [p.data_offsets[0], p.data_offsets[0] + len];
      await writeRawSafetensors(c.st, st);
    },
    info: true,
    expect: (c) => [c.st, `'${c.tensorOrder.at(-2)}'`, `'${c.tensorOrder.at(-1)}'`, /overlap/],
  },
  {
    name: 'config.json intermediate_size disagreeing with the MLP tensors',
    breakIt: async (c) => editJson(c.config, (j) => void (j.intermediate_size = (j.intermediate_size as number) * 2)),
    info: true,
    expect: (c) => [c.st, /tensor "model\.layers\.\d+\.mlp\.(gate|up|down)_proj\.weight" has shape \[\d+, \d+\] but config\.json implies \[\d+, \d+\]/],
  },
  {
    name: 'one tensor stored with a wrong shape',
    breakIt: async (c, st) => {
      const [h] = st.entries[NORM].shape;
      st.entries[NORM].shape = [2, h / 2];
      await writeRawSafetensors(c.st, st);
    },
    info: true,
    expect: (c) => [c.st, /tensor "model\.norm\.weight" has shape \[2, \d+\] but config\.json implies \[\d+\]/],
  },
  {
    name: 'a weight stored as I32',
    breakIt: async (c, st) => {
      const shape = st.entries[NORM].shape;
      await writeRawSafetensors(c.st, replaceTensor(st, NORM, 'I32', shape, Buffer.alloc(4 * shape[0])));
    },
    info: true,
    expect: (c) => [c.st, /tensor "model\.norm\.weight" is I32/, /F32, F16 and BF16/],
  },
  {
    name: 'a weight stored as U8',
    breakIt: async (c, st) => {
      const shape = st.entries[NORM].shape;
      await writeRawSafetensors(c.st, replaceTensor(st, NORM, 'U8', shape, Buffer.alloc(shape[0])));
    },
    info: true,
    expect: (c) => [c.st, /tensor "model\.norm\.weight" is U8/, /F32, F16 and BF16/],
  },
  {
    name: 'unsupported architecture',
    breakIt: async (c) => editJson(c.config, (j) => void (j.architectures = ['FalconForCausalLM'])),
    info: true,
    expect: (c) => [c.config, /architecture FalconForCausalLM is not supported/, /LlamaForCausalLM/],
  },
  {
    name: 'config.json missing a required field',
    breakIt: async (c) => editJson(c.config, (j) => void delete j.hidden_size),
    info: true,
    expect: (c) => [c.config, /"hidden_size" is missing/],
  },
  {
    name: 'config.json that is not JSON',
    breakIt: async (c) => writeFile(c.config, '{ "architectures": ["LlamaForCausalLM"], "hidden_size": 256,\n'),
    info: true,
    expect: (c) => [c.config, /is not valid JSON/],
  },
  {
    name: 'missing tokenizer.json',
    breakIt: async (c) => rm(path.join(c.dir, 'tokenizer.json')),
    expect: (c) => [c.dir, /has no tokenizer\.json/],
  },
  {
    name: 'missing model.safetensors',
    breakIt: async (c) => rm(c.st),
    info: true,
    expect: (c) => [c.dir, /neither model\.safetensors\.index\.json nor model\.safetensors/],
  },
  {
    name: 'a --model path that does not exist',
    model: (c) => path.join(c.scratch, 'no-such-model'),
    info: true,
    expect: (c) => [path.join(c.scratch, 'no-such-model'), /does not exist/],
  },
  {
    name: 'a --model path that is a file',
    model: (c) => c.config,
    info: true,
    expect: (c) => [c.config, /is not a directory/],
  },
  {
    name: 'a sharded index that lists a missing shard',
    breakIt: async (c, st) => {
      // Shard 1 holds every tensor; the index also places the final norm in a shard 2 that is absent.
      await rename(c.st, path.join(c.dir, 'model-00001-of-00002.safetensors'));
      const weightMap = Object.fromEntries(Object.keys(st.entries).map((n) => [n, 'model-00001-of-00002.safetensors']));
      weightMap[NORM] = 'model-00002-of-00002.safetensors';
      await writeJson(path.join(c.dir, INDEX), { metadata: {}, weight_map: weightMap });
    },
    info: true,
    expect: (c) => [path.join(c.dir, INDEX), 'model-00002-of-00002.safetensors', path.join(c.dir, 'model-00002-of-00002.safetensors'), /does not exist/],
  },
];

/** Flag mistakes, on an intact copy. */
const FLAG_CASES: Case[] = [
  { name: 'an unknown flag', args: () => ['--bogus'], expect: () => [/Unknown option '--bogus'/, /tessera generate --help/] },
  { name: '--temperature abc', args: () => ['--temperature', 'abc'], expect: () => ['--temperature', '"abc"', /number/] },
  // parseArgs reads -1 as a flag, not a value: whatever the sentence says, it must name the flag.
  { name: '--temperature -1', args: () => ['--temperature', '-1'], expect: () => ['--temperature'] },
  { name: '--temperature=-1', args: () => ['--temperature=-1'], expect: () => ['--temperature', /from 0 to 100/, '-1'] },
  { name: '--top-p 0', args: () => ['--top-p', '0'], expect: () => ['--top-p', /greater than 0/, /got 0/] },
  { name: '--max-tokens 0', args: () => ['--max-tokens', '0'], expect: () => ['--max-tokens', />= 1/, /got 0/] },
  { name: '--device tpu', args: () => ['--device', 'tpu'], expect: () => ['--device', '"tpu"', /auto, cpu or cuda/] },
  { name: '--dtype float32', args: () => ['--dtype', 'float32'], expect: () => ['--dtype', /auto, bfloat16 or float16/, '"float32"'] },
  // Where CUDA works, --device cuda is no mistake.
  ...(CUDA.ok ? [] : [{ name: '--device cuda', args: () => ['--device', 'cuda'], expect: () => [/^CUDA is not available|needs 8\.0|kernels are not built/] }]),
  {
    name: "a prompt longer than the model's context",
    args: (c) => ['--prompt', 'a'.repeat(c.maxPositions + 10)],
    expect: (c) => [/The prompt has \d+ tokens/, `context is ${c.maxPositions} tokens`],
  },
];

function checkSentence(r: CliResult, expected: Array<string | RegExp>): void {
  const sentence = expectOneSentence(r);
  for (const e of expected) {
    if (typeof e === 'string') expect(sentence).toContain(e);
    else expect(sentence).toMatch(e);
  }
}

let scratch: { dir: string; remove: () => Promise<void> };
let demoConfig: Record<string, unknown>;
let demoSt: RawSafetensors;
const results = new Map<string, { ctx: Ctx; generate: CliResult; info?: CliResult }>();

function ctxFor(dir: string): Ctx {
  return {
    dir,
    scratch: scratch.dir,
    st: path.join(dir, ST),
    config: path.join(dir, 'config.json'),
    maxPositions: demoConfig.max_position_embeddings as number,
    tensorOrder: byOffset(demoSt),
  };
}

beforeAll(async () => {
  scratch = await scratchDir('tessera-cli-bad-');
  // Facts about the model come from this copy, not from models/demo, which may be replaced meanwhile.
  const intactDir = await copyDemo(scratch.dir, 'intact');
  demoConfig = await readJson(path.join(intactDir, 'config.json'));
  demoSt = await readRawSafetensors(path.join(intactDir, ST));
  const intact = ctxFor(intactDir);
  // One copy per broken checkpoint, each from a fresh parse of the demo's safetensors.
  const all = [...CHECKPOINT_CASES, ...FLAG_CASES];
  const ctxs = await inParallel(
    all.map((c, i) => async () => {
      if (!c.breakIt) return intact;
      const ctx = ctxFor(await copyDemo(scratch.dir, `case-${i}`));
      await c.breakIt(ctx, await readRawSafetensors(ctx.st));
      return ctx;
    }),
  );
  const runs = all.map((c, i) => {
    const model = c.model ? c.model(ctxs[i]) : ctxs[i].dir;
    return {
      generate: () => runCli(['generate', '--model', model, '-n', '4', ...(c.args?.(ctxs[i]) ?? [])]),
      info: c.info ? () => runCli(['info', '--model', model]) : undefined,
    };
  });
  const [generated, inspected] = await Promise.all([
    inParallel(runs.map((r) => r.generate), 3),
    inParallel(runs.map((r) => r.info ?? (async () => undefined)), 1),
  ]);
  all.forEach((c, i) => results.set(c.name, { ctx: ctxs[i], generate: generated[i], info: inspected[i] }));
}, 120_000);

afterAll(async () => {
  await scratch?.remove();
});

describe('tessera generate on a broken model directory', () => {
  it('works on the intact copy (the cases below break only one thing each)', async () => {
    const r = await runCli(['generate', '--model', path.join(scratch.dir, 'intact'), '-n', '4', '--temperature', '0', '-q', 'In the']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.startsWith('In the')).toBe(true);
  });

  for (const c of CHECKPOINT_CASES) {
    it(c.name, () => {
      const { ctx, generate } = results.get(c.name)!;
      checkSentence(generate, c.expect(ctx));
    });
  }
});

describe('tessera info on a broken model directory', () => {
  for (const c of CHECKPOINT_CASES.filter((x) => x.info)) {
    it(c.name, () => {
      const { ctx, info } = results.get(c.name)!;
      checkSentence(info!, c.expect(ctx));
    });
  }
});

describe('tessera generate with a bad flag', () => {
  for (const c of FLAG_CASES) {
    it(c.name, () => {
      const { ctx, generate } = results.get(c.name)!;
      checkSentence(generate, c.expect(ctx));
      // Nothing was generated: stdout is empty, or holds only the echoed prompt.
      const args = c.args?.(ctx) ?? [];
      const prompt = args.includes('--prompt') ? args[args.indexOf('--prompt') + 1] : '';
      expect(['', prompt]).toContain(generate.stdout);
    });
  }
});

describe('Tessera.load on a broken model directory', () => {
  const LIBRARY_CASES = [
    'safetensors file cut short inside the data buffer',
    'two tensors overlapping',
    'config.json intermediate_size disagreeing with the MLP tensors',
    'a weight stored as I32',
    'unsupported architecture',
    'config.json that is not JSON',
    'missing tokenizer.json',
    'a sharded index that lists a missing shard',
  ];

  for (const name of LIBRARY_CASES) {
    it(`rejects with a TesseraError: ${name}`, async () => {
      const c = CHECKPOINT_CASES.find((x) => x.name === name)!;
      const { ctx } = results.get(name)!;
      const err: unknown = await Tessera.load(ctx.dir, { device: 'cpu' }).then(
        () => new Error('Tessera.load resolved'),
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(TesseraError);
      const message = (err as TesseraError).message;
      expect(message).not.toContain('\n');
      for (const e of c.expect(ctx)) {
        if (typeof e === 'string') expect(message).toContain(e);
        else expect(message).toMatch(e);
      }
      const open = await openFilesUnder(ctx.dir);
      if (open !== null) expect(open).toEqual([]);
    });
  }

  it('leaves nothing open: a failed load, then a load of the repaired directory works', async () => {
    const ctx = ctxFor(await copyDemo(scratch.dir, 'repair'));
    const good = path.join(scratch.dir, 'repair-good');
    await copyFile(ctx.st, `${good}.safetensors`);
    await copyFile(ctx.config, `${good}.json`);

    // Break the weights, then the config, then the tokenizer; each load fails and holds nothing.
    const st = await readRawSafetensors(ctx.st);
    st.entries[NORM].shape = [2, st.entries[NORM].shape[0] / 2];
    await writeRawSafetensors(ctx.st, st);
    await expect(Tessera.load(ctx.dir, { device: 'cpu' })).rejects.toBeInstanceOf(TesseraError);
    await copyFile(`${good}.safetensors`, ctx.st);
    await editJson(ctx.config, (j) => void (j.architectures = ['FalconForCausalLM']));
    await expect(Tessera.load(ctx.dir, { device: 'cpu' })).rejects.toBeInstanceOf(TesseraError);
    await copyFile(`${good}.json`, ctx.config);
    if (!CUDA.ok) await expect(Tessera.load(ctx.dir, { device: 'cuda' })).rejects.toThrow(/CUDA is not available|kernels are not built/);
    const open = await openFilesUnder(ctx.dir);
    if (open !== null) expect(open).toEqual([]);

    const llm = await Tessera.load(ctx.dir, { device: 'cpu' });
    try {
      const out = await llm.complete('In the', { temperature: 0, maxTokens: 4, ignoreEos: true });
      expect(out.tokenIds).toHaveLength(4);
    } finally {
      await llm.close();
    }
    const after = await openFilesUnder(ctx.dir);
    if (after !== null) expect(after).toEqual([]);
  });
});
