/** Why `PusherClient` gave up on a task without a reply byte from the server. */
export type PusherClientErrorReason =
  /** The connection died after the task was written: the server may or may not have stored it. */
  | 'connection-lost'
  /** Client-side queue full (`maxQueued`): nothing was sent. */
  | 'queue-full'
  /** The client was closed before the task got its reply. */
  | 'closed'
  /** No reply within `timeoutMs`. */
  | 'timeout'
  /** The input cannot be encoded as a pusher task: nothing was sent. */
  | 'invalid-input';

/** A push that `PusherClient` could not complete. `maybeStored` says whether resending could duplicate it. */
export class PusherClientError extends Error {
  constructor(
    readonly reason: PusherClientErrorReason,
    /** True when the task reached the wire: the server may have stored it, so a blind resend can deliver it twice. */
    readonly maybeStored: boolean,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'PusherClientError';
  }
}
