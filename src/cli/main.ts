/**
 * The tessera command: generate, chat, info, bench. A mistake the user can fix (a bad flag, a
 * missing file, a prompt too long) prints one sentence and exits 1; anything else is a bug and
 * prints its stack.
 */
import { isTesseraError } from '../errors.js';
import { bench } from './bench.js';
import { chat } from './chat.js';
import { check } from './check.js';
import { generate } from './generate.js';
import { graph } from './graph.js';
import { info } from './info.js';
import { serve } from './serve.js';

const COMMANDS: Record<string, (argv: string[]) => Promise<number>> = { generate, chat, info, bench, graph, serve, check };

const USAGE = `Usage: tessera <command> [options]

Commands:
  generate [PROMPT]   continue a prompt, streaming text (default: the demo model)
  chat                talk to a model through its chat template
  info                architecture, parameters, dtypes and memory of a model
  bench               prefill and decode tokens/s
  graph               the graph before and after the fusion passes, kernels and memory
  serve               an OpenAI-compatible HTTP server (completions, chat, metrics)
  check               the GPU backend against the CPU backend on a model, op by op

Run tessera <command> --help for the options of each.`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    console.log(USAGE);
    return command ? 0 : 1;
  }
  const run = COMMANDS[command];
  if (!run) {
    console.error(`tessera: unknown command "${command}"; the commands are ${Object.keys(COMMANDS).join(', ')}.`);
    return 1;
  }
  try {
    return await run(rest);
  } catch (err) {
    if (isTesseraError(err)) {
      console.error(`tessera: ${err.message}`);
      return 1;
    }
    console.error('tessera: internal error (this is a bug in Tessera, please report it):');
    console.error(err);
    return 70;
  }
}
