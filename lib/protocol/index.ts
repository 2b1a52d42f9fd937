export * from './protocol.constants.js';
export * from './uuid.util.js';
export * from './client-frame.codec.js';
export * from './client-frame.decoder.js';
export * from './server-frame.codec.js';
export * from './server-frame.decoder.js';
export * from './pusher-task.codec.js';
export * from './pusher-task.decoder.js';
export { LengthFramedDecoder, type HeaderRefusal } from './length-framed.decoder.js';
