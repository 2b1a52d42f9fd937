/**
 * Shared machinery of the three streaming decoders: frames are a fixed header
 * carrying a big-endian u16 body length, read back to back from a TCP stream.
 *
 * A frame that lies whole inside one chunk is handed over in place (no copy);
 * only a frame split across chunks is assembled in a fixed scratch buffer of
 * `headerLength + maxBody` bytes, so memory per connection is bounded whatever
 * the peer sends. A refused header either ends the stream (`fatal`) or has its
 * body skipped without buffering it (`skip`), as the subclass decides.
 */
export abstract class LengthFramedDecoder<E extends string> {
  private readonly scratch: Buffer;
  private have = 0;
  /** Body length of the frame being assembled, or -1 while the header is incomplete. */
  private bodyLength = -1;
  private skipRemaining = 0;
  private failed: E | undefined;

  protected constructor(
    private readonly headerLength: number,
    maxBody: number,
  ) {
    this.scratch = Buffer.allocUnsafe(headerLength + maxBody);
  }

  /** The fatal reason once the stream has been refused; further input is ignored. */
  get error(): E | undefined {
    return this.failed;
  }

  /** Bytes held for a frame split across chunks (bounded by header + max body). */
  get buffered(): number {
    return this.have;
  }

  /**
   * Returns the body length to read after the header at `offset`, or a refusal:
   * `{ reason, fatal: true }` stops the stream, `{ reason, fatal: false }` skips
   * `skip` body bytes and goes on with the next frame.
   */
  protected abstract inspect(buf: Uint8Array, offset: number): number | HeaderRefusal<E>;
  /**
   * A whole frame at `offset` in `buf`. `inChunk`: `buf` is the chunk passed
   * to `write` (the caller's); false when it is the decoder's scratch, which
   * the next split frame overwrites (copy what you keep).
   */
  protected abstract emit(buf: Buffer, offset: number, bodyLength: number, inChunk: boolean): void;
  protected abstract refuse(reason: E, fatal: boolean): void;

  /**
   * Feeds one chunk. Frames and refusals are reported synchronously through the
   * subclass hooks, in stream order. Returns false once the stream is refused.
   */
  write(chunk: Buffer): boolean {
    if (this.failed !== undefined) return false;
    const n = chunk.length;
    let i = 0;
    while (i < n) {
      if (this.skipRemaining > 0) {
        const take = Math.min(this.skipRemaining, n - i);
        this.skipRemaining -= take;
        i += take;
        continue;
      }
      if (this.have === 0) {
        // Fast path: the header (and usually the whole frame) is in this chunk.
        if (n - i >= this.headerLength) {
          const body = this.check(chunk, i);
          if (body < 0) {
            if (this.failed !== undefined) return false;
            i += this.headerLength;
            continue;
          }
          const total = this.headerLength + body;
          if (n - i >= total) {
            this.emit(chunk, i, body, true);
            i += total;
            continue;
          }
          this.bodyLength = body;
        }
        const take = Math.min(n - i, this.bodyLength < 0 ? this.headerLength : this.headerLength + this.bodyLength);
        chunk.copy(this.scratch, 0, i, i + take);
        this.have = take;
        i += take;
        continue;
      }
      // Slow path: completing a frame split across chunks.
      if (this.bodyLength < 0) {
        const take = Math.min(this.headerLength - this.have, n - i);
        chunk.copy(this.scratch, this.have, i, i + take);
        this.have += take;
        i += take;
        if (this.have < this.headerLength) continue;
        const body = this.check(this.scratch, 0);
        if (body < 0) {
          this.have = 0;
          if (this.failed !== undefined) return false;
          continue;
        }
        this.bodyLength = body;
      }
      const total = this.headerLength + this.bodyLength;
      const take = Math.min(total - this.have, n - i);
      chunk.copy(this.scratch, this.have, i, i + take);
      this.have += take;
      i += take;
      if (this.have === total) {
        const body = this.bodyLength;
        this.have = 0;
        this.bodyLength = -1;
        this.emit(this.scratch, 0, body, false);
      }
    }
    return true;
  }

  /** Runs `inspect`; on refusal reports it and returns -1 (after arming the skip or the failure). */
  private check(buf: Buffer, offset: number): number {
    const r = this.inspect(buf, offset);
    if (typeof r === 'number') return r;
    if (r.fatal) this.failed = r.reason;
    else this.skipRemaining = r.skip;
    this.refuse(r.reason, r.fatal);
    return -1;
  }
}

export interface HeaderRefusal<E extends string> {
  reason: E;
  fatal: boolean;
  /** Body bytes to discard when not fatal. */
  skip: number;
}
