import { LengthFramedDecoder, type HeaderRefusal } from './length-framed.decoder.js';
import {
  CLIENT_HEADER_LENGTH,
  DEFAULT_MAX_CONTENT_LENGTH,
  MASK_LENGTH,
  MAX_U16,
  type PusherTaskError,
} from './protocol.constants.js';
import { type PusherTask, inspectPusherHeader, readPusherTask } from './pusher-task.codec.js';

/** Receives the decoder's output in stream order: one call per task, good or bad. */
export interface PusherTaskSink {
  task(task: PusherTask): void;
  /**
   * A refused task. `fatal` means the stream cannot be resynchronised (bad
   * version: the length field cannot be trusted); the caller replies 0x01 and
   * closes. Otherwise the task's body is skipped and decoding goes on.
   */
  malformed(reason: PusherTaskError, fatal: boolean): void;
}

/**
 * Streaming decoder for pusher tasks on port 9999: pipelined tasks, partial
 * reads, bounded memory. A task whose content exceeds `maxContent` is refused
 * and its body discarded as it streams by (never buffered), so one oversized
 * task does not cost the connection.
 *
 * With `stableChunks`, the content of a task that lies whole in one chunk is
 * a view of that chunk rather than a copy (see `readPusherTask`).
 */
export class PusherTaskStreamDecoder extends LengthFramedDecoder<PusherTaskError> {
  constructor(
    private readonly sink: PusherTaskSink,
    private readonly maxContent = DEFAULT_MAX_CONTENT_LENGTH,
    /**
     * The chunks passed to `write` are never changed afterwards (Node's socket
     * chunks are not reused): whole tasks' content may then be views of them.
     * Default false: every task owns a copy of its content.
     */
    private readonly stableChunks = false,
  ) {
    if (!Number.isInteger(maxContent) || maxContent < 1 || maxContent > MAX_U16) {
      throw new RangeError(`maxContent must be an integer in 1..${MAX_U16}, got ${maxContent}`);
    }
    // A 0x11 body is always 8 bytes, whatever the 0x20 limit: the scratch must hold it.
    super(CLIENT_HEADER_LENGTH, Math.max(maxContent, MASK_LENGTH));
  }

  protected inspect(buf: Uint8Array, offset: number): number | HeaderRefusal<PusherTaskError> {
    const r = inspectPusherHeader(buf, offset, this.maxContent);
    if (typeof r === 'number') return r;
    const fatal = r === 'bad-version';
    const skip = fatal ? 0 : (buf[offset + 19]! << 8) | buf[offset + 20]!;
    return { reason: r, fatal, skip };
  }

  protected emit(buf: Buffer, offset: number, bodyLength: number, inChunk: boolean): void {
    this.sink.task(readPusherTask(buf, offset, bodyLength, inChunk && this.stableChunks));
  }

  protected refuse(reason: PusherTaskError, fatal: boolean): void {
    this.sink.malformed(reason, fatal);
  }
}
