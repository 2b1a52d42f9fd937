/**
 * Dotted IPv4 text to a u32 without allocating (the heartbeat path runs this
 * for every datagram). Returns -1 for anything that is not plain IPv4.
 */
export function parseIpv4(s: string): number {
  const n = s.length;
  if (n < 7 || n > 15) return -1;
  let value = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || dots === 3) return -1;
      value = value * 256 + part;
      part = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57) {
      part = part * 10 + (c - 48);
      if (++digits > 3 || part > 255) return -1;
    } else return -1;
  }
  if (dots !== 3 || digits === 0) return -1;
  return value * 256 + part;
}

export function formatIpv4(v: number): string {
  return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

/**
 * `formatIpv4` behind a small direct-mapped cache: the engine names a
 * device's address on every UDP send, and building the dotted text allocates
 * several strings. 256 slots (a few KiB, fixed): a slot holds the last address
 * that hashed to it, so devices behind the same NAT or gateway (and a
 * benchmark's loopback) share one string, and a miss costs what no cache did.
 */
export class Ipv4TextCache {
  private readonly values = new Uint32Array(256);
  private readonly texts: (string | undefined)[] = new Array<string | undefined>(256).fill(undefined);

  format(v: number): string {
    const slot = (v ^ (v >>> 8) ^ (v >>> 16) ^ (v >>> 24)) & 255;
    const text = this.texts[slot];
    if (text !== undefined && this.values[slot] === v >>> 0) return text;
    const fresh = formatIpv4(v);
    this.values[slot] = v;
    this.texts[slot] = fresh;
    return fresh;
  }
}
