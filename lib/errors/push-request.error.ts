/** A `PushService.send()` request that cannot be understood (a programming error, raised on subscribe). */
export class PushRequestError extends TypeError {
  constructor(message: string) {
    super(`Invalid push request: ${message}`);
    this.name = 'PushRequestError';
  }
}
