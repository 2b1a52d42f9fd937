import { cpus, loadavg } from 'node:os';

/** Shared by the hardening scripts' reports. */
export function machine() {
  return `${cpus().length} CPUs, load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}, Node ${process.version}`;
}
export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}
export function mb(b) {
  return `${(b / 1048576).toFixed(1)} MiB`;
}
export function delta(b) {
  return `${b >= 0 ? '+' : ''}${(b / 1048576).toFixed(1)} MiB`;
}
export function fmtInt(n) {
  return n.toLocaleString('en-US');
}
