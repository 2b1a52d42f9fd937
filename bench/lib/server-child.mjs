import { fork } from 'node:child_process';

/**
 * Runs `file --serve <opts>` as a server child (with --expose-gc) for the
 * hardening scripts, and talks to it over IPC: `ready` carries its ports,
 * `stats(gc, resetLoop)` asks for a memory/counter sample.
 */
export function startServerChild(file, opts) {
  let stderr = '';
  const child = fork(file, ['--serve', JSON.stringify(opts)], { execArgv: ['--expose-gc'], stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  const waiting = new Map();
  let nextId = 0;
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, stderr })));
  const ready = new Promise((resolve, reject) => {
    child.on('message', (m) => {
      if (m.type === 'ready') resolve(m);
      else if (m.type === 'stats') waiting.get(m.id)?.(m.stats), waiting.delete(m.id);
    });
    exited.then((e) => reject(new Error(`server child exited during start (${e.code ?? e.signal}): ${e.stderr}`)));
  });
  return {
    child,
    ready,
    exited,
    stats: (gc = false, resetLoop = false) =>
      new Promise((resolve, reject) => {
        const id = nextId++;
        waiting.set(id, resolve);
        child.send({ type: 'stats', id, gc, resetLoop }, (err) => err && reject(err));
        exited.then(() => reject(new Error('server child is gone')));
      }),
    stop: () => {
      child.disconnect?.();
      return exited;
    },
  };
}

/**
 * The server a hardening script's child runs: memory store, engine,
 * dispatcher and both transports on 127.0.0.1 (free ports), from the built
 * dist. `onError` receives socket errors (fuzzing provokes ICMP unreachables).
 */
export async function startServer(opts, onError = () => {}) {
  const lib = await import('../../dist/index.js');
  const store = new lib.MemoryOfflineStore(opts.store ?? {});
  const engine = new lib.DeviceEngine(store, new lib.LocalPushRouter(), opts.engine ?? {});
  const dispatcher = new lib.PushDispatcher(engine, store, opts.send ?? {});
  const device = new lib.DeviceTransportStrategy(engine, { host: '127.0.0.1', port: 0, ...opts.device });
  const pusher = new lib.PusherTransportStrategy(dispatcher, { host: '127.0.0.1', port: 0, maxContentLength: engine.options.maxContentLength, ...opts.pusher });
  device.on('error', onError);
  pusher.on('error', onError);
  await device.start();
  await pusher.start();
  return { lib, store, engine, dispatcher, device, pusher };
}
