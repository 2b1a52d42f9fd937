import type { DeviceTransportKind, PushKind } from './push-kind.interface.js';
import type { PushSource } from './push-submitter.interface.js';

/**
 * What happened to a push for one device (mpush's PushSender model):
 * - `success`: the device acked it (or, with `ack: 'none'`, it was written to the socket);
 * - `offline`: stored; the device is not reachable now and gets it on its next heartbeat;
 * - `timeout`: sent, not acked within the timeout; still pending (re-sent on heartbeats,
 *   and a later ack still fires the ack handlers);
 * - `replaced`: a newer 0x20 message took its place before it was acked;
 * - `failure`: not accepted (nothing stored), see `reason`.
 */
export type PushStatus = 'success' | 'offline' | 'timeout' | 'failure' | 'replaced';

export interface PushOutcome {
  uuid: string;
  status: PushStatus;
  kind: PushKind;
  /** Why: a failure's cause (`payload-too-large`, `store-full`, `store-error`, `overloaded`, `invalid-uuid`, ...), or `not-sent` for an offline outcome of a device whose reply budget was spent. */
  reason?: string;
  /** Store version of this push (absent on failure). */
  version?: number;
  transport?: DeviceTransportKind;
  node?: string;
  source: PushSource;
  /** Epoch ms. `accepted` is absent when the push was not accepted. */
  timeline: { accepted?: number; sent?: number; acked?: number };
}
