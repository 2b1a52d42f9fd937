import type { AckResult } from './offline-store.js';

// Ack results are answers their receivers never change: one frozen object each, no allocation per ack.
/** Nothing of the kind was pending. */
export const NOT_PENDING: AckResult = Object.freeze({ cleared: false, remaining: false });
/** Another version is pending: the ack cleared nothing. */
export const OTHER_PENDING: AckResult = Object.freeze({ cleared: false, remaining: true });
/** The acked version is gone and nothing of the kind remains. */
export const CLEARED: AckResult = Object.freeze({ cleared: true, remaining: false });
/** The acked version is gone; the next queued message is pending. */
export const CLEARED_MORE: AckResult = Object.freeze({ cleared: true, remaining: true });
