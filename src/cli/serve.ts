/**
 * tessera serve: the OpenAI-compatible HTTP server. The engine runs in a worker thread; this
 * thread answers HTTP. SIGTERM or SIGINT stops taking requests, lets those in flight finish (up
 * to --shutdown-timeout seconds), aborts the rest, closes the model and exits 0; a second signal
 * aborts at once.
 */
import path from 'node:path';
import { TesseraError } from '../errors.js';
import { DEMO_MODEL_DIR } from '../llm.js';
import { DEFAULT_MAX_QUEUE, createServer } from '../server/app.js';
import { MODEL_HELP, MODEL_OPTIONS, modelOptions, numberFlag, parse } from './args.js';
import { loadForCli } from './load.js';

const HELP = `Usage: tessera serve [options]

Serves the model over an OpenAI-compatible HTTP API: /v1/completions, /v1/chat/completions,
/v1/models, /health and /metrics (Prometheus).

      --host HOST                address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)
      --port N                   port (default 8000; 0 picks a free one)
      --api-key KEY              clients of /v1/* must send "Authorization: Bearer KEY"
                                 (default: $TESSERA_API_KEY; none when unset)
      --served-model-name NAME   the model name clients pass (default: the model directory's name)
      --max-queue N              requests that may wait beyond --max-num-seqs; more get 429 (default ${DEFAULT_MAX_QUEUE})
      --shutdown-timeout SECONDS on SIGTERM/SIGINT, how long requests in flight may finish (default 30)
  -q, --quiet                    no load summary on stderr

${MODEL_HELP}`;

const SERVE_OPTIONS = {
  host: { type: 'string' },
  port: { type: 'string' },
  'api-key': { type: 'string' },
  'served-model-name': { type: 'string' },
  'max-queue': { type: 'string' },
  'shutdown-timeout': { type: 'string' },
  quiet: { type: 'boolean', short: 'q' },
} as const;

export async function serve(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, { ...MODEL_OPTIONS, ...SERVE_OPTIONS }, 'serve');
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (positionals.length) throw new TesseraError(`tessera serve takes no positional arguments (got "${positionals[0]}"); the model is --model DIR.`, 'invalid_input');
  // Every flag is checked before the model loads.
  const { dir, opts } = modelOptions(values);
  const host = (values.host as string | undefined) ?? '127.0.0.1';
  if (host.trim() === '') throw new TesseraError('--host takes an address such as 127.0.0.1 or 0.0.0.0, not an empty string.', 'invalid_input');
  const port = numberFlag(values, 'port', true) ?? 8000;
  if (port < 0 || port > 65535) throw new TesseraError(`--port must be from 0 to 65535, not ${port}.`, 'invalid_input');
  const maxQueue = numberFlag(values, 'max-queue', true) ?? DEFAULT_MAX_QUEUE;
  if (maxQueue < 0) throw new TesseraError(`--max-queue must be 0 or more, not ${maxQueue}.`, 'invalid_input');
  const shutdownTimeout = numberFlag(values, 'shutdown-timeout') ?? 30;
  if (shutdownTimeout < 0) throw new TesseraError(`--shutdown-timeout must be 0 or more seconds, not ${shutdownTimeout}.`, 'invalid_input');
  const apiKeyFlag = values['api-key'] as string | undefined;
  if (apiKeyFlag !== undefined && apiKeyFlag === '') throw new TesseraError('--api-key takes a non-empty key.', 'invalid_input');
  const apiKey = apiKeyFlag ?? (process.env.TESSERA_API_KEY || null);
  const nameFlag = values['served-model-name'] as string | undefined;
  if (nameFlag !== undefined && nameFlag.trim() === '') throw new TesseraError('--served-model-name takes a non-empty name.', 'invalid_input');
  const servedModelName = nameFlag ?? path.basename(path.resolve(dir ?? DEMO_MODEL_DIR));

  const { llm, reportLoad } = await loadForCli(dir, { ...opts, engineThread: 'worker' }, values.quiet === true);
  try {
    reportLoad();
    const server = await createServer(llm, { host, port, apiKey, servedModelName, maxQueue });
    console.error(`tessera: serving ${servedModelName} on ${server.url}`);
    let signals = 0;
    let onSignal!: (signal: NodeJS.Signals) => void;
    const stopped = new Promise<NodeJS.Signals>((resolve) => {
      onSignal = (signal) => {
        signals++;
        if (signals === 1) resolve(signal);
        else {
          console.error(`tessera: ${signal} again; aborting ${server.numActive} requests in flight.`);
          server.abortAll();
        }
      };
    });
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    try {
      const signal = await stopped;
      const inFlight = server.numActive;
      console.error(
        inFlight > 0
          ? `tessera: ${signal}: no longer listening; letting ${inFlight} request${inFlight === 1 ? '' : 's'} in flight finish (up to ${shutdownTimeout}s).`
          : `tessera: ${signal}: shutting down.`,
      );
      await server.close({ timeoutMs: shutdownTimeout * 1000 });
    } finally {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
    }
    console.error('tessera: stopped.');
    return 0;
  } finally {
    await llm.close();
  }
}
