/**
 * The tessera commands end to end on a copy of the demo model, through the real CLI
 * (bin/tessera.js from dist/, built by tests/setup/build.ts). The demo model is retrained now and
 * then, so nothing here depends on its exact text: expected outputs come from a first run of the
 * CLI or from the library on the same model.
 */
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Tessera, type GenerationChunk } from '../../src/llm.js';
import type { ChatMessage } from '../../src/tokenizer/tokenizer.js';
import { type RawSafetensors, copyDemo, editJson, expectOneSentence, readRawSafetensors, runCli, scratchDir } from './helpers.js';

const PROMPT = 'In the beginning';

let scratch: { dir: string; remove: () => Promise<void> };
let model: string;
let noTemplate: string;

beforeAll(async () => {
  scratch = await scratchDir('tessera-cli-cmd-');
  [model, noTemplate] = await Promise.all([copyDemo(scratch.dir, 'demo'), copyDemo(scratch.dir, 'no-template')]);
  await editJson(path.join(noTemplate, 'tokenizer_config.json'), (j) => void delete j.chat_template);
  await rm(path.join(noTemplate, 'chat_template.jinja'), { force: true });
});

afterAll(async () => {
  await scratch?.remove();
});

/** The generated part of `generate`'s stdout: after the echoed prompt, without the final newline. */
function generatedPart(stdout: string, prompt: string): string {
  expect(stdout.startsWith(prompt), `stdout ${JSON.stringify(stdout)} does not start with the prompt`).toBe(true);
  expect(stdout.endsWith('\n')).toBe(true);
  return stdout.slice(prompt.length, -1);
}

function lastLine(text: string): string {
  return text.trimEnd().split('\n').at(-1) ?? '';
}

async function collect(stream: AsyncIterable<GenerationChunk>): Promise<string> {
  let text = '';
  for await (const chunk of stream) text += chunk.text;
  return text;
}

describe.concurrent('tessera generate', () => {
  it('prints the prompt followed by the greedy continuation, and the same on a second run', async () => {
    const args = ['generate', '--model', model, '--temperature', '0', '-n', '16', '--ignore-eos', PROMPT];
    const [a, b] = await Promise.all([runCli(args), runCli(args)]);
    expect(a.code, a.stderr).toBe(0);
    expect(generatedPart(a.stdout, PROMPT).length).toBeGreaterThan(0);
    expect(b.code, b.stderr).toBe(0);
    expect(b.stdout).toBe(a.stdout);
    // stderr: the load summary, ending with the usage line: exactly 16 tokens, stopped by the length limit.
    for (const line of a.stderr.trimEnd().split('\n')) expect(line).toMatch(/^tessera: /);
    expect(lastLine(a.stderr)).toMatch(/^tessera: \d+ prompt \+ 16 generated tokens \(length\); first token \d+ ms, decode [\d.]+ tokens\/s$/);
  });

  it('gives identical output for the same --seed and different output for different seeds', async () => {
    const sample = (seed: number) =>
      runCli(['generate', '--model', model, '--seed', String(seed), '--temperature', '0.8', '-n', '16', '--ignore-eos', '-q', PROMPT]);
    const [a, b, ...others] = await Promise.all([7, 7, 1, 2, 3, 4, 5, 6].map(sample));
    for (const r of [a, b, ...others]) {
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toBe('');
      expect(generatedPart(r.stdout, PROMPT).length).toBeGreaterThan(0);
    }
    expect(b.stdout).toBe(a.stdout);
    const pairsDiffering = [0, 2, 4].filter((i) => others[i].stdout !== others[i + 1].stdout);
    expect(pairsDiffering.length).toBeGreaterThanOrEqual(1);
  });

  it('--stop ends the output before the stop string, which is not printed', async () => {
    const base = ['generate', '--model', model, '--temperature', '0', '-n', '32', '--ignore-eos', PROMPT];
    const full = await runCli([...base, '-q']);
    expect(full.code, full.stderr).toBe(0);
    const gen = generatedPart(full.stdout, PROMPT);
    // A 2-character stop string from the middle of the greedy text whose first occurrence is not at the start.
    const candidates = Array.from({ length: gen.length - 1 }, (_, k) => gen.slice(k, k + 2)).filter((s) => !s.includes('\uFFFD'));
    const stop = candidates.find((s, k) => k >= gen.length / 2 && gen.indexOf(s) > 0) ?? candidates.find((s) => gen.indexOf(s) > 0);
    expect(stop, `no usable stop string in ${JSON.stringify(gen)}`).toBeDefined();
    const cut = gen.indexOf(stop!);

    const stopped = await runCli([...base, '--stop', stop!]);
    expect(stopped.code, stopped.stderr).toBe(0);
    expect(stopped.stdout).toBe(`${PROMPT}${gen.slice(0, cut)}\n`);
    expect(generatedPart(stopped.stdout, PROMPT)).not.toContain(stop);
    expect(stopped.stdout.length).toBeLessThan(full.stdout.length);
    expect(lastLine(stopped.stderr)).toMatch(/ generated tokens \(stop\);/);
  });
});

describe.concurrent('tessera info', () => {
  let header: RawSafetensors;
  let config: Record<string, unknown>;
  beforeAll(async () => {
    header = await readRawSafetensors(path.join(model, 'model.safetensors'));
    config = JSON.parse(await readFile(path.join(model, 'config.json'), 'utf8')) as Record<string, unknown>;
  });

  it('prints architecture, parameters, dtypes and memory', async () => {
    const r = await runCli(['info', '--model', model]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
    const arch = (config.architectures as string[])[0];
    expect(r.stdout).toMatch(new RegExp(`^model +${model.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'));
    expect(r.stdout).toMatch(new RegExp(`^architecture +${arch} \\(llama\\)$`, 'm'));
    expect(r.stdout).toMatch(/^parameters +[\d,]+ \(\d+\.\d\dM\)$/m);
    expect(r.stdout).toMatch(/^stored dtypes +(F32|F16|BF16) x\d+(, (F32|F16|BF16) x\d+)*$/m);
    expect(r.stdout).toMatch(new RegExp(`^positions +.*; context ${config.max_position_embeddings as number}$`, 'm'));
    for (const key of ['weights', 'KV cache', 'activations', 'memory needed'])
      expect(r.stdout).toMatch(new RegExp(`^${key} +\\d+(\\.\\d+)? (B|KiB|MiB|GiB)`, 'm'));
  });

  it('--json parses and counts the parameters and dtypes of the checkpoint', async () => {
    const r = await runCli(['info', '--model', model, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout) as {
      dir: string;
      numParameters: number;
      dtypes: Record<string, number>;
      config: { hfArchitecture: string; maxPositions: number };
      memory: { weightBytes: number; kvCacheBytes: number; activationBytes: number };
      unusedTensors: string[];
    };
    expect(info.dir).toBe(model);
    expect(info.config.hfArchitecture).toBe((config.architectures as string[])[0]);
    expect(info.config.maxPositions).toBe(config.max_position_embeddings);
    expect(info.numParameters).toBeGreaterThan(0);
    const used = Object.entries(header.entries).filter(([name]) => !info.unusedTensors.includes(name));
    expect(info.numParameters).toBe(used.reduce((sum, [, e]) => sum + e.shape.reduce((a, d) => a * d, 1), 0));
    const dtypes: Record<string, number> = {};
    for (const [, e] of used) dtypes[e.dtype] = (dtypes[e.dtype] ?? 0) + 1;
    expect(info.dtypes).toEqual(dtypes);
    expect(info.memory.weightBytes).toBeGreaterThan(0);
    expect(info.memory.kvCacheBytes).toBeGreaterThan(0);
  });
});

describe.concurrent('tessera chat', () => {
  it('holds a two-turn conversation from piped stdin, sending what Tessera.chat sends', async () => {
    const turns = ['Hello there.', 'What is thy name?'];
    const maxTokens = 16;
    const cli = runCli(['chat', '--model', model, '--temperature', '0', '-n', String(maxTokens), '-q'], `${turns.join('\n')}\n`);

    // The same conversation through the library, greedy: reply 1, then reply 2 with the first exchange in its prompt.
    const llm = await Tessera.load(model, { device: 'cpu' });
    let expected: string;
    try {
      const history: ChatMessage[] = [{ role: 'user', content: turns[0] }];
      const first = await collect(llm.chat(history, { temperature: 0, maxTokens }));
      history.push({ role: 'assistant', content: first }, { role: 'user', content: turns[1] });
      const secondPrompt = llm.tokenizer.decode(llm.tokenizer.encodeChat(history, { addGenerationPrompt: true }));
      expect(secondPrompt).toContain(turns[0]);
      expect(secondPrompt).toContain(turns[1]);
      expect(secondPrompt.indexOf(turns[0])).toBeLessThan(secondPrompt.indexOf(turns[1]));
      const second = await collect(llm.chat(history, { temperature: 0, maxTokens }));
      expected = `${first}\n${second}\n`;
    } finally {
      await llm.close();
    }

    const r = await cli;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(expected);
    expect(r.stdout.trim().length).toBeGreaterThan(0);
  });

  it('fails with one sentence on a model without a chat template', async () => {
    const r = await runCli(['chat', '--model', noTemplate], 'Hello\n');
    const sentence = expectOneSentence(r);
    expect(sentence).toContain(noTemplate);
    expect(sentence).toMatch(/has no chat template/);
    expect(sentence).toContain('chat_template');
    expect(r.stdout).toBe('');
  });
});

describe.concurrent('tessera bench', () => {
  it('--json reports prefill and decode tokens/s', async () => {
    const r = await runCli(['bench', '--model', model, '--prompt-tokens', '16', '--decode-tokens', '8', '--runs', '2', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
    const report = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(report).toMatchObject({ promptTokens: 16, decodeTokens: 8, runs: 2, batch: 1, model });
    expect(report.prefillTokensPerSecond).toBeGreaterThan(0);
    expect(report.decodeTokensPerSecond).toBeGreaterThan(0);
    expect(Number.isFinite(report.prefillTokensPerSecond)).toBe(true);
    expect(Number.isFinite(report.decodeTokensPerSecond)).toBe(true);
  });

  it('--prefill-tokens times prefill alone at each length; the roofline fields come with it', async () => {
    const r = await runCli(['bench', '--model', model, '--prompt-tokens', '8', '--decode-tokens', '4', '--runs', '2', '--prefill-tokens', '24,40', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as { prefillByLength: Array<{ promptTokens: number; tokensPerSecond: number }>; copyBandwidthGBs: number; weightReadPercentOfCopy: number; hostShareOfDecodeStep: number | null; sampling: string };
    expect(report.prefillByLength.map((p) => p.promptTokens)).toEqual([24, 40]);
    for (const p of report.prefillByLength) expect(p.tokensPerSecond).toBeGreaterThan(0);
    expect(report.copyBandwidthGBs).toBeGreaterThan(0);
    expect(report.weightReadPercentOfCopy).toBeGreaterThan(0);
    expect(report.hostShareOfDecodeStep).toBeNull(); // the CPU has no device time apart from the wall
    expect(report.sampling).toBe('host');
  });
});

describe.concurrent('tessera usage', () => {
  it('with no command prints the usage and exits 1', async () => {
    const r = await runCli([]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/^Usage: tessera <command> \[options\]/);
    for (const cmd of ['generate', 'chat', 'info', 'bench']) expect(r.stdout).toMatch(new RegExp(`^  ${cmd} `, 'm'));
  });

  it('with an unknown command exits 1 with one sentence', async () => {
    const r = await runCli(['nope']);
    const sentence = expectOneSentence(r);
    expect(sentence).toContain('"nope"');
    expect(sentence).toMatch(/unknown command/);
    expect(sentence).toContain('generate, chat, info, bench');
    expect(r.stdout).toBe('');
  });

  it('--help prints the usage and exits 0', async () => {
    const r = await runCli(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Usage: tessera <command>/);
  });

  for (const cmd of ['generate', 'chat', 'info', 'bench']) {
    it(`${cmd} --help prints its options and exits 0`, async () => {
      const r = await runCli([cmd, '--help']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toBe('');
      expect(r.stdout).toMatch(new RegExp(`^Usage: tessera ${cmd} `));
      expect(r.stdout).toContain('--model DIR');
    });
  }
});

describe('loading report', () => {
  it('says the bytes of each part: weights, activations and the KV cache', async () => {
    const r = await runCli(['generate', 'In the beginning', '--max-tokens', '2', '--device', 'cpu', '--kv-cache-memory', '2MiB']);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/^tessera: memory \(float32\): weights 12\.3 MiB, activations [\d.]+ [KM]iB, KV cache 2\.00 MiB \(32 blocks of 16 tokens\)$/m);
  });
});
