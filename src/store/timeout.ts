/**
 * The one deadline helper of the library: every request that can hang (a
 * store call, a keep-alive, a broker operation) is raced against a timer on
 * an injected clock, so that the simulator and tests can run it in virtual
 * time and so that it is written (and fixed) once.
 */
import { StoreUnavailableError } from '../errors.js';
import type { Clock } from './contract.js';

export interface TimeoutOptions {
  /**
   * The error to reject with when the time is up. Called when the timer
   * fires, so it may also clean up or look at how far the operation got
   * (e.g. whether a request left its send queue). Default: a
   * StoreUnavailableError whose outcome is unknown.
   */
  readonly onTimeout?: (() => Error) | undefined;
  /**
   * Whether the deadline may let the process exit while it is pending (see
   * Clock.setTimeout). Default false: someone is awaiting the answer.
   */
  readonly background?: boolean | undefined;
}

/**
 * Settle like `p`, or reject once `ms` have passed on `clock`. The operation
 * itself is not cancelled: callers treat a timed-out one as failed, with an
 * unknown outcome unless `onTimeout` knows better. A rejection that is not an
 * Error is wrapped in one.
 */
export function withTimeout<T>(p: Promise<T>, ms: number, clock: Clock, options: TimeoutOptions = {}): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const timer = clock.setTimeout(
      () => {
        if (settled) return;
        settled = true;
        reject(
          options.onTimeout?.() ??
            new StoreUnavailableError(`store request timed out after ${ms} ms`, { outcome: 'unknown' }),
        );
      },
      ms,
      { background: options.background === true },
    );
    p.then(
      (v) => {
        if (settled) return;
        settled = true;
        clock.clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        if (settled) return;
        settled = true;
        clock.clearTimeout(timer);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}
