/** Who a push goes to: exactly one of these. */
export interface PushTargets {
  /** One device uuid (32 hex characters or 16 bytes). */
  uuid?: string | Uint8Array;
  /** Several device uuids. */
  uuids?: ReadonlyArray<string | Uint8Array>;
  /** A user key: the device uuid is its MD5 (DDPush convention). */
  key?: string;
  keys?: readonly string[];
  /**
   * Every device online on this node (in a cluster, on every node), optionally
   * only those carrying one of `tags` (see `PushService.tag`) and/or accepted
   * by `filter`. Paced by the node's broadcast rate limit.
   */
  broadcast?: true | { tags?: readonly string[]; filter?: (uuid: string) => boolean };
}

/** The payload: exactly one kind. */
export type PushPayload =
  /** 0x10 general notice: "there is something new". */
  | { kind: 'notice' }
  /** 0x11 category notice: bits OR-ed into the device's pending mask. */
  | { kind: 'category'; mask: bigint }
  /** 0x20 custom message: bytes, a string (UTF-8) or a JSON-encoded value. Only the latest unacked one is kept. */
  | { kind: 'message'; content: Buffer | Uint8Array | string | object };

export interface PushSendOptions {
  /** How long to wait for the device's ack, in ms. Default: the module's `send.timeoutMs` (3000). */
  timeout?: number;
  /** `'device'` (default): success when the device acks. `'none'`: success once written to the socket. */
  ack?: 'device' | 'none';
}

/** A push request for `PushService.send()`. */
export type PushRequest = PushTargets & PushPayload & PushSendOptions;
