import { adoptContents, decodeRecord, type DeviceRecord, encodeRecordInto, RecordFormatError, recordSize } from './lmdb-record.codec.js';

/**
 * Log values of the LMDB offline store: one value per event turn that changed
 * devices, holding the newest state of each device changed in that turn. The
 * store appends one log value per turn instead of updating one B-tree record
 * per device, and a periodic checkpoint moves the states into the device
 * records (and removes the log values) in one transaction.
 *
 * Log value (format 1):
 * ```
 * 0  u8   format = 1
 * then per device:
 *    16   uuid bytes (the device record's key)
 *    u32  record length; 0xFFFFFFFF: the device has no record (removed)
 *    ...  the device record (see lmdb-record.codec.ts)
 * ```
 */
export const LOG_FORMAT = 1;
const REMOVED = 0xffffffff;
const PER_DEVICE = 20;

/** A device's newest state as a log value carries it. */
export interface LogItem {
  key: Buffer;
  rec: DeviceRecord | null;
}

/** One log value holding the given states, in order (a later item for the same key wins on replay); adopts like `LogValueBuilder.add`. */
export function encodeLogValue(items: readonly LogItem[]): Buffer {
  let size = 1;
  for (const it of items) size += PER_DEVICE + (it.rec ? recordSize(it.rec) : 0);
  const b = new LogValueBuilder(size);
  for (const it of items) b.add(it.key, it.rec);
  return b.finish();
}

/**
 * Builds one log value item by item, each encoded when it is added: the store
 * adds a device when an operation has just changed it, while its state (and
 * the message just copied into it) is still in the CPU cache, rather than
 * walking thousands of cold entries at the end of the turn. The bytes equal
 * `encodeLogValue` of the same items.
 *
 * The buffer starts at `sizeHint` bytes (the store passes the previous
 * value's size: consecutive turns under load are alike) and doubles when an
 * item does not fit; it is bounded by what one event turn changes.
 *
 * `add` adopts: the record's message contents become views of the bytes it
 * just wrote (see `adoptContents`), so the store keeps no other copy of a
 * pushed message. The buffer (and one it outgrew) then lives as long as such
 * a view: until the device changes again or the next checkpoint re-homes it.
 */
export class LogValueBuilder {
  private buf: Buffer;
  private view: DataView;
  private used = 1;
  /** Items added. */
  count = 0;

  constructor(sizeHint: number) {
    this.buf = Buffer.allocUnsafeSlow(Math.max(256, sizeHint));
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    this.buf[0] = LOG_FORMAT;
  }

  /** Appends the state of one device (a later item for the same key wins on replay); its contents become views of the value. */
  add(key: Uint8Array, rec: DeviceRecord | null): void {
    const o = this.used;
    const need = PER_DEVICE + (rec ? recordSize(rec) : 0);
    if (o + need > this.buf.length) this.grow(o + need);
    const b = this.buf;
    const v = this.view;
    b.set(key, o);
    if (rec) {
      const start = o + PER_DEVICE;
      const end = encodeRecordInto(rec, b, start, v);
      adoptContents(rec, b, start);
      v.setUint32(o + 16, end - start);
      this.used = end;
    } else {
      v.setUint32(o + 16, REMOVED);
      this.used = o + PER_DEVICE;
    }
    this.count++;
  }

  /** The value (a view of the builder's buffer: add nothing after this). */
  finish(): Buffer {
    return this.buf.subarray(0, this.used);
  }

  private grow(min: number): void {
    let size = this.buf.length * 2;
    while (size < min) size *= 2;
    const next = Buffer.allocUnsafeSlow(size);
    next.set(this.buf.subarray(0, this.used));
    this.buf = next;
    this.view = new DataView(next.buffer, next.byteOffset, next.byteLength);
  }
}

/**
 * Calls `visit` with each device state of a log value, in order: the 16-byte
 * key (a view: copy it to keep it) and the record bytes (a view), or null when
 * the device was removed. Throws `RecordFormatError` on a damaged value; every
 * record is decoded once to check it.
 */
export function readLogValue(b: Uint8Array, visit: (key: Uint8Array, record: Uint8Array | null) => void): void {
  if (b.length < 1 || b[0] !== LOG_FORMAT) throw new RecordFormatError(`log value of ${b.length} bytes with format byte ${b[0] ?? 'none'} (expected format ${LOG_FORMAT})`);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let o = 1;
  while (o < b.length) {
    if (o + PER_DEVICE > b.length) throw new RecordFormatError(`log value truncated at byte ${o} of ${b.length}`);
    const key = b.subarray(o, o + 16);
    const len = v.getUint32(o + 16);
    o += PER_DEVICE;
    if (len === REMOVED) {
      visit(key, null);
      continue;
    }
    if (o + len > b.length) throw new RecordFormatError(`log value truncated in a record of ${len} bytes at byte ${o} of ${b.length}`);
    const record = b.subarray(o, o + len);
    decodeRecord(record);
    visit(key, record);
    o += len;
  }
}
