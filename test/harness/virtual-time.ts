/**
 * Driving code that runs on a VirtualClock from a test: advance virtual time in small steps until a promise settles
 * or a condition holds, with a message that says what was awaited.
 */
import type { VirtualClock } from '../../src/store/clock.js';

/** Advance `clock` 10 ms at a time until `p` settles; resolve or reject as it does. */
export async function drive<T>(clock: VirtualClock, p: Promise<T>): Promise<T> {
  let done = false;
  const q = p.finally(() => (done = true));
  // Settled by the caller's await below; this only keeps an early rejection from counting as unhandled.
  q.catch(() => undefined);
  while (!done) await clock.runFor(10);
  return q;
}

/** Advance `clock` 10 ms at a time until `pred()` holds; fail after `maxMs` of virtual time, naming `what`. */
export async function until(clock: VirtualClock, pred: () => boolean, what: string, maxMs = 20_000): Promise<void> {
  const end = clock.now() + maxMs;
  while (!pred()) {
    if (clock.now() > end) throw new Error(`not reached in ${maxMs} ms of virtual time: ${what}`);
    await clock.runFor(10);
  }
}
