/** DDPush protocol version carried in byte 0 of every client frame and pusher task. */
export const PROTOCOL_VERSION = 1;
/** Size of a client -> server frame header (and of a pusher task header). */
export const CLIENT_HEADER_LENGTH = 21;
/** Size of a server -> client frame header. */
export const SERVER_HEADER_LENGTH = 5;
/** Offset of the 16-byte uuid inside a client frame or pusher task. */
export const UUID_OFFSET = 3;
export const UUID_LENGTH = 16;
/** Size of the 0x11 category mask. */
export const MASK_LENGTH = 8;
/** Largest data length a v1 client frame may carry (the 0x11 ack's mask). */
export const MAX_CLIENT_DATA_LENGTH = 8;
/** Default maximum 0x20 content, as in the original server. */
export const DEFAULT_MAX_CONTENT_LENGTH = 500;
/** The u16 length field caps any content at this size. */
export const MAX_U16 = 0xffff;

/** Commands a device sends (protocol.md section 3). */
export const ClientCmd = {
  Heartbeat: 0x00,
  AckNotice: 0x10,
  AckCategory: 0x11,
  AckMessage: 0x20,
  Reset: 0xff,
} as const;
export type ClientCmd = (typeof ClientCmd)[keyof typeof ClientCmd];

/** Commands the server sends to a device (protocol.md section 4). */
export const ServerCmd = {
  HeartbeatEcho: 0x00,
  Notice: 0x10,
  Category: 0x11,
  Message: 0x20,
} as const;
export type ServerCmd = (typeof ServerCmd)[keyof typeof ServerCmd];

/** Commands of a pusher task (protocol.md section 5): the same numbers as the server frames they cause. */
export const PusherCmd = {
  Notice: 0x10,
  Category: 0x11,
  Message: 0x20,
} as const;
export type PusherCmd = (typeof PusherCmd)[keyof typeof PusherCmd];

/** The one reply byte written after each pusher task. */
export const PusherReply = {
  Accepted: 0x00,
  Malformed: 0x01,
  ServerError: 0xff,
} as const;
export type PusherReply = (typeof PusherReply)[keyof typeof PusherReply];

/**
 * Why a client frame was refused. Transports count drops per reason, so this is
 * a closed union rather than free text.
 */
export type ClientFrameError =
  /** Fewer than 21 bytes: not even a header. */
  | 'too-short'
  /** Version byte is not 1. */
  | 'bad-version'
  /** Command byte is not one of 0x00, 0x10, 0x11, 0x20, 0xff. */
  | 'unknown-cmd'
  /** dataLen does not match what the command requires (0, or 8 for 0x11). */
  | 'bad-data-length'
  /** Datagram length differs from 21 + dataLen. */
  | 'bad-length';

/** Why a pusher task was refused (each one gets the reply byte 0x01). */
export type PusherTaskError =
  | 'bad-version'
  | 'unknown-cmd'
  /** 0x10 with content, 0x11 without exactly 8 bytes, 0x20 with none. */
  | 'bad-data-length'
  /** 0x20 content above the configured maximum. */
  | 'content-too-long';

/** Why a server frame (as seen by a device) was refused. */
export type ServerFrameError = 'too-short' | 'bad-version' | 'unknown-cmd' | 'bad-data-length' | 'bad-length';

export const CLIENT_FRAME_ERRORS: readonly ClientFrameError[] = [
  'too-short',
  'bad-version',
  'unknown-cmd',
  'bad-data-length',
  'bad-length',
];
export const PUSHER_TASK_ERRORS: readonly PusherTaskError[] = [
  'bad-version',
  'unknown-cmd',
  'bad-data-length',
  'content-too-long',
];
