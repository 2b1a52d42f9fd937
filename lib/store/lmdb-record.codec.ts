/**
 * On-disk records of the LMDB offline store: one compact binary value per
 * device (key: the 16 raw uuid bytes) and one `state` value for the store.
 * Big-endian, versioned by a leading format byte so a later layout can be
 * told apart (and a foreign or damaged value is refused, not misread).
 *
 * Device record (format 1):
 * ```
 * 0   u8   format = 1
 * 1   u8   reserved (0)
 * 2   u32  notice version (0: none pending)
 * 6   u32  category version (0: none pending)
 * 10  u64  pending category mask
 * 18  f64  touched (ms since epoch; last write)
 * 26  u16  message count
 * 28  per message, oldest (the head) first:
 *       u32 version, f64 expiresAt (ms; 0 = no queue TTL), u16 length, bytes
 * ```
 * Latest-only retention keeps at most one message; queue retention up to N.
 */

export const RECORD_FORMAT = 1;
const HEADER = 28;
const PER_MESSAGE = 14;

export interface StoredMessage {
  version: number;
  /** Time the queue TTL ends, in ms; 0 when the message has no TTL (latest-only). */
  expiresAt: number;
  content: Buffer;
}

/** A device's pending state as the LMDB store holds it (decoded). */
export interface DeviceRecord {
  notice: number;
  category: bigint;
  categoryVersion: number;
  /** Oldest first: `messages[0]` is what the device is sent. */
  messages: StoredMessage[];
  touched: number;
}

/** Thrown when a stored value cannot be decoded (damaged or foreign data). */
export class RecordFormatError extends Error {
  constructor(what: string) {
    super(what);
    this.name = 'RecordFormatError';
  }
}

export function emptyRecord(now: number): DeviceRecord {
  return { notice: 0, category: 0n, categoryVersion: 0, messages: [], touched: now };
}

export function isEmptyRecord(r: DeviceRecord): boolean {
  return r.notice === 0 && r.category === 0n && r.messages.length === 0;
}

/** Message content bytes held by a record (what `maxBytes` limits). */
export function recordContentBytes(r: DeviceRecord): number {
  let n = 0;
  for (const m of r.messages) n += m.content.length;
  return n;
}

/** Encoded size of a record, in bytes. */
export function recordSize(r: DeviceRecord): number {
  let size = HEADER;
  for (const m of r.messages) size += PER_MESSAGE + m.content.length;
  return size;
}

/**
 * A record's value, in a fresh buffer (lmdb-js keeps a pointer to it until
 * the commit). With `adopt`, the record's message contents then become views
 * of that buffer (see `adoptContents`), which is then exact-size and its own.
 */
export function encodeRecord(r: DeviceRecord, adopt = false): Buffer {
  const size = recordSize(r);
  // A record that keeps views of its value must not pin a slab of Node's shared pool.
  const b = adopt && r.messages.length > 0 ? Buffer.allocUnsafeSlow(size) : Buffer.allocUnsafe(size);
  encodeRecordInto(r, b, 0);
  if (adopt) adoptContents(r, b, 0);
  return b;
}

/**
 * Points the record's message contents at their bytes in `b`, where the
 * record was just encoded at `o`: the store then keeps the message bytes it
 * has written (a log value, a record value) instead of a buffer per push, and
 * drops whatever the contents referenced before (a pusher connection's read
 * chunk, the caller's buffer).
 */
export function adoptContents(r: DeviceRecord, b: Buffer, o: number): void {
  const messages = r.messages;
  o += HEADER;
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i]!;
    const start = o + PER_MESSAGE;
    const end = start + m.content.length;
    m.content = b.subarray(start, end);
    o = end;
  }
}

/**
 * Writes `r` at `o` in `b` (which has `recordSize(r)` bytes there); returns
 * the offset after it. `v` is a DataView over all of `b`: a caller encoding
 * many records into one buffer (a log value) makes it once. DataView and
 * `Uint8Array.set` rather than Buffer's write helpers: this runs once per
 * push on the durable store's hot path, and those helpers add argument
 * checks and a JS-level copy per call.
 */
export function encodeRecordInto(r: DeviceRecord, b: Uint8Array, o: number, v: DataView = new DataView(b.buffer, b.byteOffset, b.byteLength)): number {
  b[o] = RECORD_FORMAT;
  b[o + 1] = 0;
  v.setUint32(o + 2, r.notice);
  v.setUint32(o + 6, r.categoryVersion);
  v.setBigUint64(o + 10, BigInt.asUintN(64, r.category));
  v.setFloat64(o + 18, r.touched);
  const messages = r.messages;
  v.setUint16(o + 26, messages.length);
  o += HEADER;
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i]!;
    const len = m.content.length;
    v.setUint32(o, m.version);
    v.setFloat64(o + 4, m.expiresAt);
    v.setUint16(o + 12, len);
    b.set(m.content, o + PER_MESSAGE);
    o += PER_MESSAGE + len;
  }
  return o;
}

/**
 * When an encoded device record falls due for the expiry sweep, read from its
 * bytes without decoding it: the earlier of `touched + ttlMs` and the first
 * queue TTL among its messages. -1 when the value is not a well-formed record
 * (the sweep leaves it alone; operations on the device report the damage).
 * The sweep examines thousands of records per period and almost none are due:
 * this keeps it from allocating a decoded record (and its message copies) for
 * each of them.
 */
export function recordDueAt(b: Uint8Array, ttlMs: number): number {
  if (b.length < HEADER || b[0] !== RECORD_FORMAT) return -1;
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let due = v.getFloat64(18) + ttlMs;
  const count = v.getUint16(26);
  let o = HEADER;
  for (let i = 0; i < count; i++) {
    if (o + PER_MESSAGE > b.length) return -1;
    const expiresAt = v.getFloat64(o + 4);
    if (expiresAt > 0 && expiresAt < due) due = expiresAt;
    o += PER_MESSAGE + v.getUint16(o + 12);
    if (o > b.length) return -1;
  }
  return due;
}

/**
 * Decodes a device record. `b` may be a volatile lmdb-js buffer: nothing
 * keeps a reference to it. Message contents are views of one exact-size copy
 * of the record (one allocation however many messages, and no slab of
 * Node's shared pool pinned by a message kept for hours).
 */
export function decodeRecord(b: Uint8Array): DeviceRecord {
  if (b.length < HEADER || b[0] !== RECORD_FORMAT) {
    throw new RecordFormatError(`device record of ${b.length} bytes with format byte ${b[0] ?? 'none'} (expected format ${RECORD_FORMAT})`);
  }
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const count = v.getUint16(26);
  const messages: StoredMessage[] = new Array(count);
  let own: Buffer | undefined;
  let o = HEADER;
  for (let i = 0; i < count; i++) {
    if (o + PER_MESSAGE > b.length) throw new RecordFormatError(`device record truncated in message ${i} of ${count}`);
    const len = v.getUint16(o + 12);
    const start = o + PER_MESSAGE;
    if (start + len > b.length) throw new RecordFormatError(`device record truncated in message ${i} of ${count}`);
    own ??= copyOf(b);
    messages[i] = { version: v.getUint32(o), expiresAt: v.getFloat64(o + 4), content: own.subarray(start, start + len) };
    o = start + len;
  }
  return {
    notice: v.getUint32(2),
    categoryVersion: v.getUint32(6),
    category: v.getBigUint64(10),
    touched: v.getFloat64(18),
    messages,
  };
}

function copyOf(b: Uint8Array): Buffer {
  const own = Buffer.allocUnsafeSlow(b.length);
  // lmdb-js's volatile buffers report the value's size as `length` over a larger array: copy that many bytes.
  own.set(b.subarray(0, b.length));
  return own;
}

/**
 * The store's own record, written in the same LMDB transaction as the device
 * records it describes (from a `beforecommit` hook), so it is exact after any
 * crash:
 * ```
 * 0  u8   format = 1
 * 1  u32  last version handed out (the VersionCounter resumes after it)
 * 5  f64  content bytes held
 * ```
 */
export interface StoreState {
  lastVersion: number;
  bytes: number;
}

const STATE_SIZE = 13;

export function encodeState(s: StoreState): Buffer {
  const b = Buffer.allocUnsafe(STATE_SIZE);
  b[0] = RECORD_FORMAT;
  b.writeUInt32BE(s.lastVersion >>> 0, 1);
  b.writeDoubleBE(s.bytes, 5);
  return b;
}

export function decodeState(b: Uint8Array): StoreState {
  if (b.length !== STATE_SIZE || b[0] !== RECORD_FORMAT) {
    throw new RecordFormatError(`store state record of ${b.length} bytes with format byte ${b[0] ?? 'none'} (expected ${STATE_SIZE} bytes, format ${RECORD_FORMAT})`);
  }
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return { lastVersion: v.getUint32(1), bytes: v.getFloat64(5) };
}
