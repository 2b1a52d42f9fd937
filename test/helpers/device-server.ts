import { DeviceEngine } from '../../lib/device/device-engine.js';
import type { DeviceEngineOptions } from '../../lib/device/device-engine.options.js';
import { LocalPushRouter } from '../../lib/router/local-push-router.js';
import { DeviceTransportStrategy, type DeviceTransportOptions } from '../../lib/server/device-transport.strategy.js';
import { MemoryOfflineStore } from '../../lib/store/memory-offline-store.js';
import type { OfflineStore } from '../../lib/store/offline-store.js';

/** A real device server on 127.0.0.1, port 0, without Nest. */
export async function startDeviceServer(
  engineOptions: DeviceEngineOptions = {},
  transportOptions: DeviceTransportOptions = {},
  store: OfflineStore = new MemoryOfflineStore(),
) {
  const router = new LocalPushRouter();
  const engine = new DeviceEngine(store, router, engineOptions);
  const transport = new DeviceTransportStrategy(engine, { host: '127.0.0.1', port: 0, ...transportOptions });
  await transport.start();
  return {
    engine,
    transport,
    store,
    router,
    port: transport.port,
    async close() {
      await transport.close();
      engine.close();
    },
  };
}
