/**
 * The engine worker thread: loads the model, then runs the engine loop, taking requests and
 * aborts by message and posting each step's outputs. The front end keeps HTTP, tokenization and
 * detokenization on the main thread, so neither waits for the other.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { buildEngine } from './build.js';
import { engineStats } from './core.js';
import type { LLMEngine } from './engine.js';
import { toPortable, type FromWorker, type ToWorker, type WorkerInit } from './worker_protocol.js';

const port = parentPort!;
const post = (m: FromWorker) => port.postMessage(m);
const init = workerData as WorkerInit;

let engine: LLMEngine;
try {
  const built = await buildEngine(init.dir, init.opts, init.eosTokenIds, (progress) => post({ t: 'progress', progress }));
  engine = built.engine;
  post({ t: 'ready', info: built.info });
} catch (err) {
  post({ t: 'failed', error: toPortable(err) });
  port.close();
  throw new Error('engine worker failed to load');
}

let looping = false;
let closed = false;
let steps = 0;

async function loop(): Promise<void> {
  if (looping) return;
  looping = true;
  try {
    while (engine.hasUnfinished && !closed) {
      const outputs = await engine.step();
      steps++;
      post({ t: 'outputs', outputs, stats: engineStats(engine, steps) });
      // Take new requests and aborts between steps.
      await new Promise((resolve) => setImmediate(resolve));
    }
  } catch (err) {
    post({ t: 'fatal', error: toPortable(err) });
  } finally {
    looping = false;
  }
}

port.on('message', async (m: ToWorker) => {
  switch (m.t) {
    case 'add':
      try {
        engine.addRequest(m.req);
        void loop();
      } catch (err) {
        post({ t: 'rejected', requestId: m.req.requestId, error: toPortable(err) });
      }
      break;
    case 'abort':
      engine.abort(m.requestId, m.sampleIndex);
      post({ t: 'outputs', outputs: [], stats: engineStats(engine, steps) });
      break;
    case 'close':
      closed = true;
      await engine.runner.backend.dispose();
      post({ t: 'closed' });
      port.close();
      break;
  }
});
