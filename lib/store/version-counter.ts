/**
 * Versions for pending pushes: u32, never 0, from one counter per store rather
 * than per device. A per-device sequence restarts when a device's entry drains,
 * so a late duplicate ack for an old "version 1" could clear a new "version 1";
 * a store-wide counter (randomly seeded, so a restart does not replay recent
 * numbers) makes two versions of one device equal only 2^32 pushes apart.
 */
export class VersionCounter {
  private value: number;

  constructor(seed = 1 + Math.floor(Math.random() * 0xfffffffe)) {
    this.value = seed >>> 0 || 1;
  }

  next(): number {
    this.value = this.value >= 0xffffffff ? 1 : this.value + 1;
    return this.value;
  }
}
