import type { DeviceTransportKind, PushKind } from '../interfaces/push-kind.interface.js';

/** A device registered (first heartbeat, or first after going offline/expiring, or a TCP reconnect). */
export interface DeviceOnlineEvent {
  type: 'online';
  uuid: string;
  transport: DeviceTransportKind;
  address: string;
  port: number;
  at: number;
}

/** Why a device went offline. */
export type OfflineReason = 'tcp-closed' | 'unreachable' | 'expired';

export interface DeviceOfflineEvent {
  type: 'offline';
  uuid: string;
  reason: OfflineReason;
  at: number;
}

/** A device acknowledged a push and the store cleared it. */
export interface DeviceAckEvent {
  type: 'ack';
  uuid: string;
  kind: PushKind;
  /** Version cleared (notice/message); for category, the version of the last category write. */
  version: number;
  /** Category acks: the bits acknowledged and the bits still pending. */
  mask?: bigint;
  remaining?: bigint;
  at: number;
}

/** A frame was handed to a socket for a device (first sends and re-sends alike). */
export interface DeviceSentEvent {
  type: 'sent';
  uuid: string;
  kind: PushKind;
  version: number;
  transport: DeviceTransportKind;
  /** False for the immediate send of a new push, true for re-sends on heartbeat. */
  resend: boolean;
  at: number;
}

export type DeviceEvent = DeviceOnlineEvent | DeviceOfflineEvent | DeviceAckEvent | DeviceSentEvent;

/** Reasons a frame, a device or a send was dropped; each one has a counter. */
export type DeviceDropReason =
  | 'unknown-device'
  | 'ack-foreign-address'
  | 'ack-unmatched'
  | 'admission-refused'
  | 'device-limit'
  | 'reply-budget'
  | 'tcp-backpressure'
  | 'tcp-connection-limit'
  | 'store-error';
