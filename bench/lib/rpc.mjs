// Minimal request/response over a worker_threads port or a child process.
import { parentPort } from 'node:worker_threads';

/** In a worker: answer `{ id, cmd, args }` with `handlers[cmd](args)`. */
export function serve(handlers) {
  parentPort.on('message', async ({ id, cmd, args }) => {
    try {
      parentPort.postMessage({ id, result: await handlers[cmd](args ?? {}) });
    } catch (err) {
      parentPort.postMessage({ id, error: err instanceof Error ? err.stack : String(err) });
    }
  });
}

/** On the parent side of a Worker or ChildProcess: `call(cmd, args)` -> Promise of the result. */
export function client(endpoint, send = (m) => endpoint.postMessage(m)) {
  let next = 1;
  const waiting = new Map();
  endpoint.on('message', (m) => {
    const w = waiting.get(m.id);
    if (!w) return;
    waiting.delete(m.id);
    if (m.error) w.reject(new Error(m.error));
    else w.resolve(m.result ?? m);
  });
  const fail = (err) => {
    for (const w of waiting.values()) w.reject(err);
    waiting.clear();
  };
  endpoint.on('error', fail);
  endpoint.on('exit', (code) => fail(new Error(`exited with code ${code}`)));
  return (cmd, args) =>
    new Promise((resolve, reject) => {
      const id = next++;
      waiting.set(id, { resolve, reject });
      send({ id, cmd, args });
    });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
