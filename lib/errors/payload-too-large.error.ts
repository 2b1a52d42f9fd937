/** A 0x20 message above the configured maximum: refused before anything is stored. */
export class PayloadTooLargeError extends RangeError {
  constructor(
    readonly size: number,
    readonly max: number,
  ) {
    super(`Message is ${size} bytes; the limit is ${max} (option maxContentLength). Send less, or raise the limit on server and devices alike`);
    this.name = 'PayloadTooLargeError';
  }
}
