import type { PendingWrite } from '../store/offline-store.js';

/** Where a push came from (for outcome events and metrics). */
export type PushSource = 'service' | 'pusher';

/**
 * How a submit reports: `err` set when the push was not stored (nothing to
 * deliver), null once it is stored. Called exactly once, possibly before
 * `submit` returns.
 */
export type SubmitCallback = (err: Error | null) => void;

/**
 * The one acceptance path for pushes: `PushService.send()` and the pusher port
 * both submit here. Calls back once the push is stored (durably, when the
 * store is durable), or with the error when it was not stored. A callback,
 * not a promise: this runs once per push at full rate, and a store's group
 * commit wakes thousands of submits at once.
 */
export interface PushSubmitter {
  submit(uuid: string, write: PendingWrite, source: PushSource, done: SubmitCallback): void;
}
