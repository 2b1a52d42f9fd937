/**
 * Runs `act`, then reads `count()` right after it and after each following
 * event-loop turn (a `setImmediate`), until it reaches `total` or 10 turns
 * have passed: how work paced per turn progresses.
 */
export async function countPerTurn(act: () => void, count: () => number, total: number): Promise<number[]> {
  act();
  const seen = [count()];
  for (let i = 0; i < 10 && seen[seen.length - 1]! < total; i++) {
    await new Promise<void>((r) => setImmediate(r));
    seen.push(count());
  }
  return seen;
}
