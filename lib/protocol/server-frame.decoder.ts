import { LengthFramedDecoder, type HeaderRefusal } from './length-framed.decoder.js';
import { MASK_LENGTH, MAX_U16, SERVER_HEADER_LENGTH, type ServerFrameError } from './protocol.constants.js';
import { type ServerFrame, inspectServerHeader, readServerFrame } from './server-frame.codec.js';

/**
 * Streaming decoder for server frames on a device's TCP connection (used by the
 * device SDK). Any malformed header is fatal for the connection.
 */
export class ServerFrameStreamDecoder extends LengthFramedDecoder<ServerFrameError> {
  constructor(
    private readonly onFrame: (frame: ServerFrame) => void,
    private readonly onError: (reason: ServerFrameError) => void = () => {},
    private readonly maxContent = MAX_U16,
  ) {
    // A 0x11 body is always 8 bytes, whatever the 0x20 limit: the scratch must hold it.
    super(SERVER_HEADER_LENGTH, Math.max(maxContent, MASK_LENGTH));
  }

  protected inspect(buf: Uint8Array, offset: number): number | HeaderRefusal<ServerFrameError> {
    const r = inspectServerHeader(buf, offset, this.maxContent);
    return typeof r === 'number' ? r : { reason: r, fatal: true, skip: 0 };
  }

  protected emit(buf: Buffer, offset: number, bodyLength: number): void {
    this.onFrame(readServerFrame(buf, offset, bodyLength));
  }

  protected refuse(reason: ServerFrameError): void {
    this.onError(reason);
  }
}
