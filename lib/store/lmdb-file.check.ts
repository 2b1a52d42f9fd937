import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

/** `MDB_MAGIC`, little-endian at the start of each meta page's payload. */
const MDB_MAGIC = 0xbeefc0de;
/** Page header size of the LMDB build shipped by lmdb-js (0.9.90: 24 bytes). */
const PAGE_HEADER = 24;
/** `P_INVALID`: the root of an empty tree. */
const NO_PAGE = 0xffffffffffffffffn;

interface Meta {
  psize: number;
  freeRoot: bigint;
  mainRoot: bigint;
  txnid: bigint;
}

/**
 * Sanity check of an existing LMDB data file, done before LMDB maps it.
 *
 * LMDB trusts its file: opening garbage, a foreign file or a truncated copy
 * crashes the process (SIGSEGV / SIGBUS) instead of returning an error, which
 * would turn a bad data directory into a crash loop without a message. This
 * reads the meta pages (a few KiB, bounded) and returns why the file is
 * unusable, or null when it looks like an LMDB environment:
 * - the first and at least one other meta page carry the LMDB magic, with a sane page size;
 * - the newest meta page's tree roots lie inside the file.
 *
 * It cannot vouch for every page (LMDB keeps no checksums); it catches
 * overwritten headers, foreign files and truncation.
 */
export function checkLmdbDataFile(file: string): string | null {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null; // a new environment
    return `cannot read ${file}: ${(err as Error).message}`;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) return `${file} is not a regular file`;
    const size = st.size;
    if (size === 0) return null; // LMDB initialises an empty file
    const head = Buffer.alloc(Math.min(size, 256));
    readSync(fd, head, 0, head.length, 0);
    const m0 = readMeta(head, 0);
    if (!m0) return `${file} does not start with an LMDB meta page (bad magic number)`;
    const psize = m0.psize;
    if (size < 2 * psize) return `${file} is ${size} bytes, shorter than its two ${psize}-byte meta pages (truncated)`;
    // Two meta pages (offsets 0 and psize), or three half-page metas with overlapping sync (0, psize/2, psize).
    const metas = [m0];
    for (const at of [psize / 2, psize]) {
      const b = Buffer.alloc(256);
      readSync(fd, b, 0, b.length, at);
      const m = readMeta(b, 0);
      if (m && m.psize === psize) metas.push(m);
    }
    if (metas.length < 2) return `${file}: the second LMDB meta page is damaged`;
    const newest = metas.reduce((a, b) => (b.txnid > a.txnid ? b : a));
    const pages = BigInt(Math.floor(size / psize));
    for (const [name, root] of [
      ['main', newest.mainRoot],
      ['free-space', newest.freeRoot],
    ] as const) {
      if (root !== NO_PAGE && root >= pages) {
        return `${file} is ${size} bytes (${pages} pages) but its ${name} tree starts at page ${root}: the file is truncated`;
      }
    }
    return null;
  } catch (err) {
    return `cannot read ${file}: ${(err as Error).message}`;
  } finally {
    closeSync(fd);
  }
}

function readMeta(b: Buffer, at: number): Meta | null {
  const o = at + PAGE_HEADER;
  if (b.length < o + 144) return null;
  if (b.readUInt32LE(o) !== MDB_MAGIC) return null;
  // MDB_meta: magic u32, version u32, address (8), mapsize (8), dbs[2] (48 each), last_pg (8), txnid (8).
  // dbs[0] (free space) md_pad holds the page size; md_root is the last field of each MDB_db.
  const dbs = o + 24;
  const psize = b.readUInt32LE(dbs);
  if (psize < 512 || psize > 65536 || (psize & (psize - 1)) !== 0) return null;
  return {
    psize,
    freeRoot: b.readBigUInt64LE(dbs + 40),
    mainRoot: b.readBigUInt64LE(dbs + 48 + 40),
    txnid: b.readBigUInt64LE(dbs + 96 + 8),
  };
}
