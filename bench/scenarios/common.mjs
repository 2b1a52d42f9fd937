// Row construction shared by the scenarios.
import { median } from '../lib/harness.mjs';

/**
 * One result row: medians of the per-run figures of nest-push and of the raw
 * forwarder measured in the same run, their ratio (nest-push / raw), and the
 * target check when the issue sets one.
 */
export function row({ id, scenario, metric, unit, better = 'higher', nest, raw, target = null, check = null, notes = [] }) {
  const n = median(nest);
  const r = raw === null ? NaN : median(raw);
  const ratio = Number.isFinite(n) && Number.isFinite(r) && r !== 0 ? n / r : NaN;
  return {
    id,
    scenario,
    metric,
    unit,
    better,
    nest: n,
    raw: r,
    ratio,
    target,
    pass: check ? Boolean(check(n, r, ratio)) : null,
    runs: { nest, raw },
    notes,
  };
}

export function unavailable(id, scenario, reason) {
  return { id, scenario, metric: '', unit: '', nest: NaN, raw: NaN, ratio: NaN, target: null, pass: null, unavailable: reason, runs: { nest: [], raw: [] }, notes: [] };
}

export const fmtPct = (x) => `${Math.round(x * 100)}%`;

/** Like Promise.all, but waits for every promise before throwing the first error (so nothing is left half-open). */
export async function settleAll(promises) {
  const results = await Promise.allSettled(promises);
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) throw failed.reason;
  return results.map((r) => r.value);
}
