/** Outcome reasons that blame the push itself rather than the server. */
const REQUEST_FAULTS = new Set(['payload-too-large', 'invalid-payload', 'empty-payload', 'invalid-mask', 'invalid-uuid']);

/** A push that was not accepted (nothing stored). `reason` is the outcome's reason. */
export class PushFailedError extends Error {
  constructor(
    readonly uuid: string,
    readonly reason: string,
  ) {
    super(`Push to ${uuid} was not accepted: ${reason}`);
    this.name = 'PushFailedError';
  }

  /** The push was malformed (a pusher task gets 0x01), as opposed to a server-side failure (0xff). */
  get isRequestFault(): boolean {
    return REQUEST_FAULTS.has(this.reason);
  }
}
