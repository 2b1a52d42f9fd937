import { LengthFramedDecoder, type HeaderRefusal } from './length-framed.decoder.js';
import { CLIENT_HEADER_LENGTH, type ClientFrameError, MAX_CLIENT_DATA_LENGTH } from './protocol.constants.js';
import { type ClientFrame, createClientFrame, fillClientFrame, inspectClientHeader } from './client-frame.codec.js';

// One refusal object per reason: refusals on a stream are all fatal, and
// allocating them per bad frame would let garbage cost us memory churn.
const FATAL: Record<ClientFrameError, HeaderRefusal<ClientFrameError>> = {
  'too-short': { reason: 'too-short', fatal: true, skip: 0 },
  'bad-version': { reason: 'bad-version', fatal: true, skip: 0 },
  'unknown-cmd': { reason: 'unknown-cmd', fatal: true, skip: 0 },
  'bad-data-length': { reason: 'bad-data-length', fatal: true, skip: 0 },
  'bad-length': { reason: 'bad-length', fatal: true, skip: 0 },
};

/**
 * Streaming decoder for device frames on a TCP connection (port 9966).
 * Handles partial reads and many frames per chunk. Any malformed header is
 * fatal for the connection (protocol.md section 7): after it, `write` returns
 * false and the caller closes the socket.
 *
 * The frame passed to `onFrame` is reused for the next frame and may point into
 * the chunk or into the decoder's scratch buffer: copy what must outlive the
 * callback.
 */
export class ClientFrameStreamDecoder extends LengthFramedDecoder<ClientFrameError> {
  private readonly frame = createClientFrame();

  constructor(
    private readonly onFrame: (frame: ClientFrame) => void,
    private readonly onError: (reason: ClientFrameError) => void = () => {},
  ) {
    super(CLIENT_HEADER_LENGTH, MAX_CLIENT_DATA_LENGTH);
  }

  protected inspect(buf: Uint8Array, offset: number): number | HeaderRefusal<ClientFrameError> {
    const r = inspectClientHeader(buf, offset);
    return typeof r === 'number' ? r : FATAL[r];
  }

  protected emit(buf: Buffer, offset: number, bodyLength: number): void {
    this.onFrame(fillClientFrame(this.frame, buf, offset, bodyLength));
  }

  protected refuse(reason: ClientFrameError): void {
    this.onError(reason);
  }
}
