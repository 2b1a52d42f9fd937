/** A push that was not accepted (nothing stored). `reason` is the outcome's reason. */
export class PushFailedError extends Error {
  constructor(
    readonly uuid: string,
    readonly reason: string,
  ) {
    super(`Push to ${uuid} was not accepted: ${reason}`);
    this.name = 'PushFailedError';
  }
}
