/**
 * tessera chat: a conversation through the checkpoint's chat template. On a terminal it is a
 * REPL (/reset, /exit; Ctrl-C stops a reply); with piped input, each line is one user turn.
 */
import { createInterface } from 'node:readline';
import { TesseraError, isTesseraError } from '../errors.js';
import type { ChatMessage } from '../tokenizer/tokenizer.js';
import { MODEL_HELP, MODEL_OPTIONS, SAMPLING_FLAG_NAMES, SAMPLING_HELP, SAMPLING_OPTIONS, modelOptions, parse, samplingOptions } from './args.js';
import { resolveSamplingParams } from '../sampling/params.js';
import { loadForCli } from './load.js';

const HELP = `Usage: tessera chat [options]

Talks to the model through its chat template. Type a message and press Enter;
/reset starts over, /exit (or Ctrl-D) leaves. With piped input, each line is a turn.

  -s, --system TEXT              a system message to start the conversation
  -q, --quiet                    no load summary on stderr

${MODEL_HELP}

${SAMPLING_HELP}`;

export async function chat(argv: string[]): Promise<number> {
  const { values } = parse(argv, { ...MODEL_OPTIONS, ...SAMPLING_OPTIONS, system: { type: 'string', short: 's' }, quiet: { type: 'boolean', short: 'q' } }, 'chat');
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const { dir, opts } = modelOptions(values);
  const sampling = samplingOptions(values);
  resolveSamplingParams(sampling, SAMPLING_FLAG_NAMES); // flags checked before the model loads
  const { llm, reportLoad } = await loadForCli(dir, opts, values.quiet === true);
  try {
    if (!llm.tokenizer.chatTemplate)
      throw new TesseraError(`${llm.info.dir} has no chat template (tokenizer_config.json chat_template or chat_template.jinja); use tessera generate instead.`, 'invalid_checkpoint');
    const params = llm.samplingParams(sampling, SAMPLING_FLAG_NAMES);
    reportLoad();
    const start: ChatMessage[] = values.system ? [{ role: 'system', content: values.system as string }] : [];
    let messages = [...start];
    const tty = process.stdin.isTTY === true;
    const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: tty, prompt: 'you> ' });
    let current: AbortController | null = null;
    rl.on('SIGINT', () => (current ? current.abort() : rl.close()));
    if (tty) {
      console.log('Chatting with the model. /reset starts over, /exit leaves.');
      rl.prompt();
    }
    for await (const raw of rl) {
      const line = raw.trim();
      if (line === '/exit' || line === '/quit') break;
      if (line === '/reset') {
        messages = [...start];
        if (tty) rl.prompt();
        continue;
      }
      if (line) {
        messages.push({ role: 'user', content: line });
        current = new AbortController();
        if (tty) process.stdout.write('model> ');
        let reply = '';
        try {
          for await (const chunk of llm.chat(messages, { ...params, signal: current.signal })) {
            process.stdout.write(chunk.text);
            reply += chunk.text;
          }
          messages.push({ role: 'assistant', content: reply });
        } catch (err) {
          messages.pop();
          if (current.signal.aborted) process.stdout.write(' [stopped]');
          else if (isTesseraError(err)) process.stdout.write(`\ntessera: ${err.message} (/reset starts over)`);
          else throw err;
        } finally {
          current = null;
        }
        process.stdout.write('\n');
      }
      if (tty) rl.prompt();
    }
    rl.close();
    return 0;
  } finally {
    await llm.close();
  }
}
