import type { Clock, TimerHandle, TimerOptions } from './contract.js';

interface RealTimer extends TimerHandle {
  readonly __timer: NodeJS.Timeout;
}

/**
 * The process's monotonic clock (performance.now), with Node timers.
 * Background timers are unref'd so that a forgotten keep-alive loop never
 * keeps a process alive; request deadlines are not, so that a process
 * awaiting a request does not exit while nothing else is pending.
 */
export const systemClock: Clock = {
  now: () => performance.now(),
  setTimeout(fn, delayMs, options?: TimerOptions) {
    const t = setTimeout(fn, Math.max(0, delayMs));
    if (options?.background === true) t.unref();
    return { __timer: t } satisfies RealTimer;
  },
  clearTimeout(handle) {
    clearTimeout((handle as RealTimer).__timer);
  },
};

/** Sleep on a clock. */
export function sleep(clock: Clock, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(signal.reason as Error);
      return;
    }
    const onAbort = (): void => {
      clock.clearTimeout(handle);
      reject(signal?.reason as Error);
    };
    const handle = clock.setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

interface VirtualTimer extends TimerHandle {
  readonly __timer: number;
}

/**
 * A virtual clock for the simulator and deterministic tests: time moves only
 * when `advance` is called, and timers fire in (time, creation) order.
 */
export class VirtualClock implements Clock {
  #now: number;
  #seq = 0;
  readonly #timers = new Map<number, { at: number; fn: () => void }>();

  constructor(startMs = 0) {
    this.#now = startMs;
  }

  now(): number {
    return this.#now;
  }

  setTimeout(fn: () => void, delayMs: number): TimerHandle {
    const id = ++this.#seq;
    this.#timers.set(id, { at: this.#now + Math.max(0, delayMs), fn });
    return { __timer: id } satisfies VirtualTimer;
  }

  clearTimeout(handle: TimerHandle): void {
    this.#timers.delete((handle as VirtualTimer).__timer);
  }

  /** Time of the next pending timer, if any. */
  nextTimerAt(): number | undefined {
    let min: number | undefined;
    for (const t of this.#timers.values()) if (min === undefined || t.at < min) min = t.at;
    return min;
  }

  /** Number of pending timers. */
  get pending(): number {
    return this.#timers.size;
  }

  /**
   * Fire the earliest due timer (at or before `limitMs`), moving time to it.
   * Returns false when none is due.
   */
  fireNext(limitMs = Number.POSITIVE_INFINITY): boolean {
    let best: [number, { at: number; fn: () => void }] | undefined;
    for (const entry of this.#timers) {
      if (entry[1].at > limitMs) continue;
      if (best === undefined || entry[1].at < best[1].at) best = entry; // Map keeps creation order: ties fire FIFO
    }
    if (best === undefined) return false;
    this.#timers.delete(best[0]);
    if (best[1].at > this.#now) this.#now = best[1].at;
    best[1].fn();
    return true;
  }

  /**
   * Move time forward by `ms`, firing due timers in order and letting all
   * promise callbacks run after each one (a macrotask turn), so async code
   * driven by this clock makes the progress it would in real time.
   */
  async runFor(ms: number): Promise<void> {
    const target = this.#now + ms;
    for (;;) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (!this.fireNext(target)) break;
    }
    this.#now = Math.max(this.#now, target);
    await new Promise<void>((resolve) => setImmediate(resolve));
  }

  /** Move time forward by `ms`, firing due timers in order (not awaiting microtasks). */
  advance(ms: number): void {
    const target = this.#now + ms;
    while (this.fireNext(target)) {
      /* keep firing */
    }
    this.#now = target;
  }
}

/**
 * A view of another clock that runs at `rate` times its speed (rate 1.01 =
 * 1 % fast). The simulator gives each node one, to model clock drift between
 * nodes and the store within the stated bound.
 */
export class ScaledClock implements Clock {
  readonly #base: Clock;
  #rate: number;
  #origin: number;
  #offset: number;

  constructor(base: Clock, rate: number, offsetMs = 0) {
    if (!(rate > 0) || !Number.isFinite(rate)) throw new RangeError(`clock rate must be positive, got ${rate}`);
    this.#base = base;
    this.#rate = rate;
    this.#origin = base.now();
    this.#offset = offsetMs;
  }

  now(): number {
    return this.#offset + (this.#base.now() - this.#origin) * this.#rate;
  }

  /** Run at `rate` from now on (the simulator's clock-rate fault); time goes on from where it is. */
  setRate(rate: number): void {
    if (!(rate > 0) || !Number.isFinite(rate)) throw new RangeError(`clock rate must be positive, got ${rate}`);
    this.#offset = this.now();
    this.#origin = this.#base.now();
    this.#rate = rate;
  }

  setTimeout(fn: () => void, delayMs: number, options?: TimerOptions): TimerHandle {
    return this.#base.setTimeout(fn, Math.max(0, delayMs) / this.#rate, options);
  }

  clearTimeout(handle: TimerHandle): void {
    this.#base.clearTimeout(handle);
  }
}
