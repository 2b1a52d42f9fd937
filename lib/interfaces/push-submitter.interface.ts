import type { PendingWrite } from '../store/offline-store.js';

/** Where a push came from (for outcome events and metrics). */
export type PushSource = 'service' | 'pusher';

/**
 * The one acceptance path for pushes: `PushService.send()` and the pusher port
 * both submit here. Resolves once the push is stored (durably, when the store
 * is durable); rejects when it was not stored.
 */
export interface PushSubmitter {
  submit(uuid: string, write: PendingWrite, source: PushSource): Promise<unknown>;
}
