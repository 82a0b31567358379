/**
 * The client clock's rate against the server's (issue 12 item 5): the pure estimator (no alarm within the bound
 * whatever the jitter; an alarm at rates 0.75, 0.5 and 1.25 within a few samples; a step of the server's wall clock
 * is no alarm), and a member on the memory store whose host clock runs at 0.75 of the server's: it stops at once
 * with a typed CLOCK_RATE error and does not rejoin while the rate stays out, then rejoins once it is back.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MemoryServer } from '../../src/backends/memory/server.js';
import { MemoryStore } from '../../src/backends/memory/store.js';
import { createSqliteStore } from '../../src/backends/sqlite/index.js';
import { ClockRateError } from '../../src/errors.js';
import { Membership } from '../../src/runtime/membership.js';
import { ClockRateEstimator, type ServerClockSample } from '../../src/store/clock-rate.js';
import type { Clock, TimerHandle } from '../../src/store/contract.js';
import { VirtualClock } from '../../src/store/clock.js';
import { drive } from '../harness/virtual-time.js';

const BOUND = 0.01;
const TTL = 2000;
/** The shortest span a verdict looks at here (the store uses half a TTL). */
const WINDOW = TTL;
const BEAT = TTL / 3;

/**
 * Samples every beat for `n` beats of server time: the local clock runs at `rate` (plus an offset), each request's
 * two legs take `legs(i)` ms of server time, and the server adds `serverStep(i)` to its wall clock from sample i on.
 */
function samples(
  n: number,
  rate: number,
  legs: (i: number) => [number, number],
  serverStep: (i: number) => number = () => 0,
): ServerClockSample[] {
  const out: ServerClockSample[] = [];
  const offset = 123_456;
  let step = 0;
  for (let i = 0; i < n; i++) {
    const t = 1_000_000 + i * BEAT;
    const [up, down] = legs(i);
    step += serverStep(i);
    out.push({ sentAtMs: offset + (t - up) * rate, receivedAtMs: offset + (t + down) * rate, serverMs: t + step });
  }
  return out;
}

function firstAlarm(xs: readonly ServerClockSample[]): number | undefined {
  const e = new ClockRateEstimator(BOUND);
  for (let i = 0; i < xs.length; i++) {
    e.add(xs[i]!, WINDOW);
    if (e.verdict(WINDOW).kind === 'out') return i;
  }
  return undefined;
}

describe('clock rate estimator', () => {
  it('never alarms within the bound, whatever the round trips', () => {
    fc.assert(
      fc.property(
        fc.double({ min: 1 - BOUND, max: 1 + BOUND, noNaN: true }),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 200 }), fc.integer({ min: 0, max: 200 })), {
          minLength: 60,
          maxLength: 60,
        }),
        (rate, legs) => firstAlarm(samples(60, rate, (i) => legs[i] as [number, number])) === undefined,
      ),
      { numRuns: 300 },
    );
  });

  it('alarms at rates 0.75, 0.5 and 1.25 within a window and a few samples, under jitter', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(0.75, 0.5, 1.25),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 20 }), fc.integer({ min: 0, max: 20 })), {
          minLength: 40,
          maxLength: 40,
        }),
        (rate, legs) => {
          const at = firstAlarm(samples(40, rate, (i) => legs[i] as [number, number]));
          // The window is in local time: it spans WINDOW / rate ms of the server's; two samples more for jitter.
          return at !== undefined && at <= Math.ceil(WINDOW / rate / BEAT) + 2;
        },
      ),
      { numRuns: 300 },
    );
  });

  it('a clock that went wrong after a long good time is caught within about one window; 3 % slow is caught too', () => {
    const good = samples(30, 1, () => [1, 1]);
    const slow = samples(30, 0.75, () => [1, 1]);
    // The slow part goes on from where the good part ended, on both clocks.
    const serverShift = good.at(-1)!.serverMs + BEAT - slow[0]!.serverMs;
    const localShift = good.at(-1)!.receivedAtMs + 0.75 * BEAT - slow[0]!.receivedAtMs;
    const xs = [
      ...good,
      ...slow.map((x) => ({
        sentAtMs: x.sentAtMs + localShift,
        receivedAtMs: x.receivedAtMs + localShift,
        serverMs: x.serverMs + serverShift,
      })),
    ];
    const at = firstAlarm(xs);
    expect(at).toBeDefined();
    expect(at! - 30).toBeLessThanOrEqual(Math.ceil(WINDOW / 0.75 / BEAT) + 2);
    expect(firstAlarm(samples(60, 0.97, () => [1, 1]))).toBeDefined();
    expect(firstAlarm(samples(60, 1.03, () => [1, 1]))).toBeDefined();
  });

  it('a single step of the server wall clock (NTP) is no alarm; a server clock that goes back restarts the window', () => {
    for (const stepMs of [-5000, -300, 300, 2000, 5000]) {
      const xs = samples(
        40,
        1,
        () => [1, 1],
        (i) => (i === 15 ? stepMs : 0),
      );
      expect(firstAlarm(xs), `step ${stepMs} ms`).toBeUndefined();
    }
  });
});

/** A clock running at `rate` of `base`'s, switchable at any time (libfaketime, a starved VM). */
class RateClock implements Clock {
  #rate: number;
  #originBase: number;
  #originMs: number;
  constructor(
    readonly base: VirtualClock,
    rate: number,
  ) {
    this.#rate = rate;
    this.#originBase = base.now();
    this.#originMs = base.now();
  }
  set rate(r: number) {
    this.#originMs = this.now();
    this.#originBase = this.base.now();
    this.#rate = r;
  }
  now(): number {
    return this.#originMs + (this.base.now() - this.#originBase) * this.#rate;
  }
  setTimeout(fn: () => void, delayMs: number): TimerHandle {
    return this.base.setTimeout(fn, Math.max(0, delayMs) / this.#rate);
  }
  clearTimeout(handle: TimerHandle): void {
    this.base.clearTimeout(handle);
  }
}

describe('a member whose host clock runs slow', () => {
  it('at 0.75 of the server: stops at once with CLOCK_RATE, stays out while the rate is, rejoins once it is back', async () => {
    const world = new VirtualClock(1000);
    const server = new MemoryServer({ clock: world });
    const clock = new RateClock(world, 1);
    const store = new MemoryStore({
      server,
      clock,
      requestTimeoutMs: 1000,
      faults: { request: () => ({ latencyMs: 2 }) },
    });
    const log: string[] = [];
    const errors: unknown[] = [];
    const m = new Membership(
      {
        store,
        clock,
        scope: 'test group',
        nodeId: 'n1',
        memberKey: 'members/n1',
        electionPrefix: 'coord/',
        electionValue: 'n1',
        sessionTtlMs: TTL,
        selfFenceMarginMs: TTL / 5,
        reconcileIntervalMs: 200,
        joinTimeoutMs: 3 * TTL,
        selfFencing: true,
        record: () => ({ value: '{}' }),
      },
      {
        joined: (s) => void log.push(`joined ${s.id}`),
        fenced: () => void log.push('fenced'),
        unfenced: () => void log.push('unfenced'),
        sessionLost: () => void log.push('sessionLost'),
        elected: () => undefined,
        leadershipLost: () => undefined,
        kick: () => undefined,
        tick: () => undefined,
        error: (e) => void errors.push(e),
        idTaken: () => undefined,
      },
    );
    const joined = m.join();
    await drive(world, joined);
    // Many windows at the right rate (with 2 ms round trips): nothing happens.
    await world.runFor(10 * WINDOW);
    expect(log).toEqual([expect.stringMatching(/^joined /)]);
    expect(errors).toEqual([]);

    clock.rate = 0.75;
    const slowFrom = world.now();
    while (!log.includes('sessionLost') && world.now() < slowFrom + 3 * WINDOW) await world.runFor(10);
    expect(log).toContain('sessionLost');
    // Caught within about one window (of the host's slow clock) and a beat.
    expect(world.now() - slowFrom).toBeLessThanOrEqual(WINDOW / 0.75 + TTL);
    expect(m.ownsNow()).toBe(false);
    const err = errors.find((e) => e instanceof ClockRateError) as ClockRateError | undefined;
    expect(err).toBeInstanceOf(ClockRateError);
    expect(err!.code).toBe('CLOCK_RATE');
    expect(err!.retryable).toBe(true);
    expect(err!.rateHigh).toBeLessThan(0.99);
    expect(err!.rateLow).toBeGreaterThan(0.7);

    // No rejoin while the rate stays out of the bound.
    const joins = log.filter((l) => l.startsWith('joined')).length;
    await world.runFor(4 * WINDOW);
    expect(log.filter((l) => l.startsWith('joined')).length).toBe(joins);
    expect(m.ownsNow()).toBe(false);
    expect(server.liveSessionIds()).toEqual([]);

    // Back within the bound: a new session after a full window measured right.
    clock.rate = 1;
    const fixedAt = world.now();
    while (!m.ownsNow() && world.now() < fixedAt + 4 * WINDOW) await world.runFor(10);
    expect(m.ownsNow()).toBe(true);
    expect(log.filter((l) => l.startsWith('joined')).length).toBe(joins + 1);
    await drive(world, m.close());
  });
});

describe('which stores check the clock rate', () => {
  it('memory checks it against its server; SQLite has one clock for client and server', async () => {
    expect(new MemoryStore().clockRateCheck).toBe('server');
    const dir = mkdtempSync(join(tmpdir(), 'rebalancer-rate-'));
    try {
      const s = await createSqliteStore({ path: join(dir, 'x.db') });
      expect(s.clockRateCheck).toBe('same-host');
      await s.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
