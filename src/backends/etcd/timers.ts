import type { Clock, TimerHandle } from '../../store/contract.js';

interface NodeTimer extends TimerHandle {
  readonly __timer: NodeJS.Timeout;
}

/**
 * Real time for network work: request deadlines, retry back-off, watch
 * heartbeats and reconnects. Unlike `systemClock` these timers are ref'd: a
 * caller awaiting a request (say, `await openStore(url)` at the top level of
 * a script while etcd is down) must not see the process exit under it because
 * the only thing left pending was an unref'd back-off timer. Every such timer
 * is bounded or cleared by `close()`, so a closed store keeps nothing alive.
 * The store's injected clock still governs sessions and `safeUntilMs`.
 */
export const networkClock: Clock = {
  now: () => performance.now(),
  setTimeout(fn, delayMs) {
    return { __timer: setTimeout(fn, Math.max(0, delayMs)) } satisfies NodeTimer;
  },
  clearTimeout(handle) {
    clearTimeout((handle as NodeTimer).__timer);
  },
};
