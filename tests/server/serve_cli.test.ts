/**
 * `tessera serve` as a process (bin/tessera.js, built by the test setup): the listening line, the
 * API key from the environment, and SIGTERM with a request in flight that still finishes.
 */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { BIN, ROOT, expectOneSentence, runCli } from '../cli/helpers.js';

describe('tessera serve', () => {
  it('checks its flags before loading the model, with one sentence', async () => {
    expect(expectOneSentence(await runCli(['serve', '--port', '70000']))).toBe('--port must be from 0 to 65535, not 70000.');
    expect(expectOneSentence(await runCli(['serve', '--port', 'http']))).toBe('--port takes a whole number, not "http".');
    expect(expectOneSentence(await runCli(['serve', '--max-queue=-1']))).toBe('--max-queue must be 0 or more, not -1.');
    expect(expectOneSentence(await runCli(['serve', '--shutdown-timeout', 'soon']))).toBe('--shutdown-timeout takes a number, not "soon".');
    expect(expectOneSentence(await runCli(['serve', '--bogus']))).toMatch(/--bogus.*tessera serve --help/);
    const help = await runCli(['serve', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--served-model-name NAME/);
  });

  it('prints where it listens, serves, and on SIGTERM lets a request in flight finish, then exits 0', async () => {
    const child = spawn(process.execPath, [BIN, 'serve', '--port', '0', '--device', 'cpu', '--shutdown-timeout', '20'], {
      cwd: ROOT,
      env: { ...process.env, NO_COLOR: '1', TESSERA_API_KEY: 'env-key' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const killer = setTimeout(() => child.kill('SIGKILL'), 40_000);
    let stderr = '';
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    try {
      const url = await new Promise<string>((resolve, reject) => {
        child.stderr.setEncoding('utf8');
        child.stderr.on('data', (d: string) => {
          stderr += d;
          const m = /^tessera: serving demo on (http:\/\/127\.0\.0\.1:\d+)$/m.exec(stderr);
          if (m) resolve(m[1]);
        });
        void exited.then(() => reject(new Error(`tessera serve exited early:\n${stderr}`)));
      });
      expect((await fetch(`${url}/health`)).status).toBe(200);
      expect((await fetch(`${url}/v1/models`)).status).toBe(401);
      const auth = { authorization: 'Bearer env-key', 'content-type': 'application/json' };
      const models = (await (await fetch(`${url}/v1/models`, { headers: auth })).json()) as { data: Array<{ id: string }> };
      expect(models.data[0].id).toBe('demo');

      const res = await fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: auth,
        body: JSON.stringify({ model: 'demo', prompt: 'And God said', max_tokens: 40, ignore_eos: true, stream: true }),
      });
      expect(res.status).toBe(200);
      const reader = res.body!.getReader();
      const decoder = new TextDecoder();
      let body = '';
      while (!body.includes('data: {')) {
        const { done, value } = await reader.read();
        if (done) break;
        body += decoder.decode(value, { stream: true });
      }
      child.kill('SIGTERM'); // the request is in flight: its first chunk came
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        body += decoder.decode(value, { stream: true });
      }
      const events = body.split('\n\n').filter(Boolean);
      expect(events[events.length - 1]).toBe('data: [DONE]');
      const chunks = events.slice(0, -1).map((e) => JSON.parse(e.slice('data: '.length)) as { choices: Array<{ finish_reason: string | null }> });
      expect(chunks[chunks.length - 1].choices[0].finish_reason).toBe('length');

      expect(await exited).toEqual({ code: 0, signal: null });
      expect(stderr).toMatch(/SIGTERM: no longer listening; letting 1 request in flight finish \(up to 20s\)\./);
      expect(stderr).toMatch(/tessera: stopped\.\n$/);
      await expect(fetch(`${url}/health`)).rejects.toThrow();
    } finally {
      clearTimeout(killer);
      child.kill('SIGKILL');
    }
  });
});
