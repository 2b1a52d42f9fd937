import { UUID_LENGTH } from '../protocol/protocol.constants.js';

/** Record flag bits (the `flags` column). */
export const DeviceFlag = {
  /** The record has announced `online` and not yet `offline`. */
  Online: 1 << 0,
  /** `ipv4`/`port` hold an IPv4 address; otherwise see the IPv6 side map. */
  Ipv4: 1 << 1,
  /** A UDP address is known. */
  HasUdp: 1 << 2,
  /** Hints that the store holds a pending message of that kind (the store is the truth). */
  PendingNotice: 1 << 3,
  PendingCategory: 1 << 4,
  PendingMessage: 1 << 5,
  /** A store read for this device is in flight: heartbeats meanwhile do not start another. */
  Loading: 1 << 6,
} as const;
export const PENDING_ANY = DeviceFlag.PendingNotice | DeviceFlag.PendingCategory | DeviceFlag.PendingMessage;

const EMPTY = -1;
const MIN_RECORDS = 1024;

/**
 * Compact registry of device records keyed by the 16 raw uuid bytes.
 *
 * A `Map<string, object>` costs ~330 B per idle device (hex key string, object,
 * map entry); a push server is expected to hold millions, so records live in
 * typed-array columns addressed by a stable record id, found through an
 * open-addressing index (linear probing, backward-shift deletion) holding only
 * ids. Columns and index double when full; ids never move, so side maps keyed
 * by id (TCP links, IPv6 addresses) stay valid. Roughly 60-110 B per record
 * depending on where the columns are in their doubling.
 *
 * The table is bounded by `maxRecords`: `insert` returns -1 when full and the
 * caller refuses the device.
 */
export class DeviceTable {
  /** Records in use. */
  size = 0;
  private cap = 0;
  keys!: Uint8Array;
  /** `keys` as a Buffer (same memory): its native hex encoder builds a uuid string in one allocation. */
  private keysText!: Buffer;
  private hashes!: Uint32Array;
  /** Epoch ms of the last heartbeat (0 for a free id). */
  lastSeen!: Float64Array;
  /**
   * Bumped each time the id is freed: an id and the generation read with it
   * name one record, even after the id is reused (the engine checks this in
   * store callbacks, which may land after the device expired).
   */
  gen!: Uint32Array;
  ipv4!: Uint32Array;
  port!: Uint16Array;
  appId!: Uint8Array;
  flags!: Uint8Array;
  /** UDP reply budget in bytes (anti-amplification). */
  credit!: Int32Array;
  /** At-least-once ack tracking, per kind: see `DeviceEngine`. */
  txNoticeVersion!: Uint32Array;
  txNoticeCount!: Uint8Array;
  txNoticeOlder!: Uint8Array;
  txMessageVersion!: Uint32Array;
  txMessageCount!: Uint8Array;
  txMessageOlder!: Uint8Array;

  private index!: Int32Array;
  private indexMask = 0;
  private freeIds!: Int32Array;
  private freeTop = 0;
  /** Next never-used id (ids below it are in use or on the free stack). */
  private highWater = 0;

  constructor(readonly maxRecords: number) {
    if (!Number.isInteger(maxRecords) || maxRecords < 1) throw new RangeError(`maxRecords must be a positive integer, got ${maxRecords}`);
    this.allocColumns(Math.min(MIN_RECORDS, maxRecords));
    this.allocIndex(nextPow2(Math.min(MIN_RECORDS, maxRecords) * 2));
  }

  /** Ids below this bound may be in use (for incremental sweeps). */
  get idBound(): number {
    return this.highWater;
  }

  /** Approximate bytes held by the columns and index (for stats and the memory benchmark). */
  get byteSize(): number {
    return this.cap * BYTES_PER_RECORD + this.index.byteLength + this.freeIds.byteLength;
  }

  isUsed(id: number): boolean {
    return this.lastSeen[id]! !== 0;
  }

  /** The record id for the uuid at `offset` of `src`, or -1. Allocates nothing. */
  find(src: Uint8Array, offset: number): number {
    const h = hashUuid(src, offset);
    const index = this.index;
    const mask = this.indexMask;
    for (let slot = h & mask; ; slot = (slot + 1) & mask) {
      const id = index[slot]!;
      if (id === EMPTY) return -1;
      if (this.hashes[id] === h && this.keyEquals(id, src, offset)) return id;
    }
  }

  /**
   * Adds the uuid (which must not be present) and returns its id, or -1 when
   * the table holds `maxRecords` already. `now` must be non-zero.
   */
  insert(src: Uint8Array, offset: number, now: number): number {
    if (this.size >= this.maxRecords) return -1;
    let id: number;
    if (this.freeTop > 0) id = this.freeIds[--this.freeTop]!;
    else {
      if (this.highWater === this.cap) this.allocColumns(Math.min(this.cap * 2, this.maxRecords));
      id = this.highWater++;
    }
    if ((this.size + 1) * 2 > this.index.length) this.allocIndex(this.index.length * 2);
    const h = hashUuid(src, offset);
    this.keys.set(src.subarray(offset, offset + UUID_LENGTH), id * UUID_LENGTH);
    this.hashes[id] = h;
    this.lastSeen[id] = now;
    this.ipv4[id] = 0;
    this.port[id] = 0;
    this.appId[id] = 0;
    this.flags[id] = 0;
    this.credit[id] = 0;
    this.txNoticeVersion[id] = 0;
    this.txNoticeCount[id] = 0;
    this.txNoticeOlder[id] = 0;
    this.txMessageVersion[id] = 0;
    this.txMessageCount[id] = 0;
    this.txMessageOlder[id] = 0;
    this.placeInIndex(id, h);
    this.size++;
    return id;
  }

  /** Removes a record; its id may be reused by a later insert. */
  remove(id: number): void {
    if (!this.isUsed(id)) return;
    const index = this.index;
    const mask = this.indexMask;
    let slot = this.hashes[id]! & mask;
    while (index[slot] !== id) slot = (slot + 1) & mask;
    // Backward-shift deletion keeps probe chains intact without tombstones,
    // so lookups never slow down as devices churn.
    let hole = slot;
    for (let next = (hole + 1) & mask; index[next] !== EMPTY; next = (next + 1) & mask) {
      const home = this.hashes[index[next]!]! & mask;
      const between = hole <= next ? hole < home && home <= next : hole < home || home <= next;
      if (!between) {
        index[hole] = index[next]!;
        hole = next;
      }
    }
    index[hole] = EMPTY;
    this.lastSeen[id] = 0;
    this.flags[id] = 0;
    this.gen[id] = (this.gen[id]! + 1) >>> 0;
    this.freeIds[this.freeTop++] = id;
    this.size--;
  }

  /** The record's uuid as 32 lowercase hex characters (one string allocation: the engine calls this per ack). */
  uuidHex(id: number): string {
    const base = id * UUID_LENGTH;
    return this.keysText.toString('hex', base, base + UUID_LENGTH);
  }

  uuidBytes(id: number): Buffer {
    return Buffer.from(this.keys.subarray(id * UUID_LENGTH, (id + 1) * UUID_LENGTH));
  }

  private keyEquals(id: number, src: Uint8Array, offset: number): boolean {
    const keys = this.keys;
    const base = id * UUID_LENGTH;
    for (let i = 0; i < UUID_LENGTH; i++) if (keys[base + i] !== src[offset + i]) return false;
    return true;
  }

  private placeInIndex(id: number, h: number): void {
    const index = this.index;
    const mask = this.indexMask;
    let slot = h & mask;
    while (index[slot] !== EMPTY) slot = (slot + 1) & mask;
    index[slot] = id;
  }

  private allocIndex(size: number): void {
    this.index = new Int32Array(size).fill(EMPTY);
    this.indexMask = size - 1;
    // Rehash from the stored hashes: no key bytes are re-read.
    for (let id = 0; id < this.highWater; id++) if (this.lastSeen[id] !== 0) this.placeInIndex(id, this.hashes[id]!);
  }

  private allocColumns(cap: number): void {
    this.keys = grow(this.keys, Uint8Array, cap * UUID_LENGTH);
    this.keysText = Buffer.from(this.keys.buffer, this.keys.byteOffset, this.keys.byteLength);
    this.hashes = grow(this.hashes, Uint32Array, cap);
    this.lastSeen = grow(this.lastSeen, Float64Array, cap);
    this.gen = grow(this.gen, Uint32Array, cap);
    this.ipv4 = grow(this.ipv4, Uint32Array, cap);
    this.port = grow(this.port, Uint16Array, cap);
    this.appId = grow(this.appId, Uint8Array, cap);
    this.flags = grow(this.flags, Uint8Array, cap);
    this.credit = grow(this.credit, Int32Array, cap);
    this.txNoticeVersion = grow(this.txNoticeVersion, Uint32Array, cap);
    this.txNoticeCount = grow(this.txNoticeCount, Uint8Array, cap);
    this.txNoticeOlder = grow(this.txNoticeOlder, Uint8Array, cap);
    this.txMessageVersion = grow(this.txMessageVersion, Uint32Array, cap);
    this.txMessageCount = grow(this.txMessageCount, Uint8Array, cap);
    this.txMessageOlder = grow(this.txMessageOlder, Uint8Array, cap);
    this.freeIds = grow(this.freeIds, Int32Array, cap);
    this.cap = cap;
  }
}

/** Column bytes per record: keep in step with `allocColumns`. */
const BYTES_PER_RECORD = UUID_LENGTH + 4 + 8 + 4 + 4 + 2 + 1 + 1 + 4 + 4 + 1 + 1 + 4 + 1 + 1 + 4;

type TypedCtor<T> = { new (n: number): T };
function grow<T extends { length: number; set(a: ArrayLike<number> | ArrayLike<bigint>): void }>(
  old: T | undefined,
  ctor: TypedCtor<T>,
  size: number,
): T {
  const next = new ctor(size);
  if (old) next.set(old as never);
  return next;
}

function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

// Devices choose their own uuids, so a hash over part of the key, or an
// unseeded one, would let a client craft colliding uuids and turn every probe
// into a linear scan. All 16 bytes are mixed with a per-process random seed.
const SEED = (Math.random() * 0x100000000) >>> 0;

function word(src: Uint8Array, o: number): number {
  return src[o]! | (src[o + 1]! << 8) | (src[o + 2]! << 16) | (src[o + 3]! << 24);
}

function mix(h: number, k: number): number {
  k = Math.imul(k, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  h ^= Math.imul(k, 0x1b873593);
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

/** Murmur3-style 32-bit hash of the 16 uuid bytes at `o`. Allocates nothing. */
export function hashUuid(src: Uint8Array, o: number): number {
  let h = SEED;
  h = mix(h, word(src, o));
  h = mix(h, word(src, o + 4));
  h = mix(h, word(src, o + 8));
  h = mix(h, word(src, o + 12));
  h ^= 16;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}
