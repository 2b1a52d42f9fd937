/**
 * The push server answered a pusher task with 0x01 (malformed) or 0xff (server
 * error). Nothing was stored for that task.
 */
export class PusherRejectedError extends Error {
  /** True for 0xff: the task was well-formed and may succeed when retried later. */
  readonly retryable: boolean;

  constructor(
    /** The reply byte: 0x01 or 0xff. */
    readonly code: number,
  ) {
    super(
      code === 0x01
        ? 'Push server rejected the task as malformed (reply 0x01): check the uuid (16 bytes), the kind, and that a message is 1..maxContentLength bytes (server default 500; the server and its devices must agree on the limit)'
        : code === 0xff
          ? 'Push server could not store the task (reply 0xff): a server or store error, nothing was stored; retry later and check the push server\'s logs and store health'
          : `Push server sent an unknown reply byte 0x${code.toString(16).padStart(2, '0')}: it does not speak the DDPush v1 pusher protocol; check host and port`,
    );
    this.name = 'PusherRejectedError';
    this.retryable = code === 0xff;
  }
}
