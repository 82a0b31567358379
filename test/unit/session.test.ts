/**
 * The self-fencing rule, deterministically: a client's `safeUntilMs` never
 * lies beyond the moment the server expires its session, whatever the
 * latencies, lost requests and clock drift within the stated bound.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MemoryServer, MemoryStore, type RequestFate } from '../../src/backends/memory/index.js';
import { ScaledClock, VirtualClock } from '../../src/store/clock.js';
import type { Session } from '../../src/store/contract.js';

/** Let promise callbacks run between virtual-clock steps. */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}

async function runUntil(clock: VirtualClock, untilMs: number, onStep: () => void): Promise<void> {
  for (;;) {
    await settle();
    onStep();
    const next = clock.nextTimerAt();
    if (next === undefined || next > untilMs) break;
    clock.fireNext();
  }
  await settle();
  onStep();
}

/** Open a session while virtual time runs (the store reads its namespace's incarnation first, ADR 0009). */
async function open(clock: VirtualClock, store: MemoryStore, ttlMs: number): Promise<Session> {
  let done = false;
  const opening = store.openSession({ ttlMs }).finally(() => (done = true));
  while (!done) await runUntil(clock, clock.now() + 10, () => undefined);
  return opening;
}

describe('session keep-alive and self-fencing', () => {
  it('stays live while keep-alives succeed, and safeUntil tracks the last acknowledged send', async () => {
    const clock = new VirtualClock();
    const server = new MemoryServer({ clock });
    const store = new MemoryStore({ server, faults: { request: () => ({ latencyMs: 20 }) } });
    const session = await open(clock, store, 3000);
    // Created by a request sent 40 ms before openSession resolved (its latency, then the incarnation's re-read).
    expect(session.safeUntilMs).toBeGreaterThanOrEqual(clock.now() - 40 + 3000 * 0.99 - 1);
    expect(session.safeUntilMs).toBeLessThanOrEqual(clock.now() + 3000 * 0.99);
    await runUntil(clock, 30_000, () => undefined);
    expect(session.state).toBe('live');
    expect(server.liveSessionIds()).toContain(session.id);
    // The last keep-alive was sent at most ttl/3 ago.
    expect(session.safeUntilMs).toBeGreaterThan(clock.now() + 3000 * 0.99 - 1000 - 1);
    const closing = session.close();
    await runUntil(clock, clock.now() + 100, () => undefined);
    await closing;
    expect(session.state).toBe('closed');
    expect(server.liveSessionIds()).not.toContain(session.id);
  });

  it('expires locally no later than the server does when cut off, and tells listeners', async () => {
    const clock = new VirtualClock();
    const server = new MemoryServer({ clock });
    const store = new MemoryStore({ server });
    const opening = store.openSession({ ttlMs: 2000 });
    await settle();
    const session = await opening;
    const states: string[] = [];
    session.onStateChange((s) => states.push(s));
    await runUntil(clock, 5000, () => undefined);
    store.faults = { request: () => ({ fail: 'before' }) };
    let localExpiry: number | undefined;
    let serverExpiry: number | undefined;
    await runUntil(clock, 20_000, () => {
      if (localExpiry === undefined && session.state === 'expired') localExpiry = clock.now();
      if (serverExpiry === undefined && !server.liveSessionIds().includes(session.id)) serverExpiry = clock.now();
    });
    expect(states).toEqual(['suspect', 'expired']);
    expect(localExpiry).toBeDefined();
    expect(serverExpiry).toBeDefined();
    expect(localExpiry!).toBeLessThanOrEqual(serverExpiry!);
    expect(await session.ended).toMatchObject({ state: 'expired' });
    // Healing does not resurrect it.
    store.faults = {};
    await expect(session.keepAlive()).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
  });

  it('endOnServer: leaves a live session alone, and ends a lost one only once the server confirms', async () => {
    const clock = new VirtualClock();
    const server = new MemoryServer({ clock });
    const store = new MemoryStore({ server });
    const session = await open(clock, store, 2000);
    expect(await session.endOnServer()).toBe(false);
    expect(server.liveSessionIds()).toContain(session.id);
    // Keep-alives reach the server, their answers do not: the deadline passes here, the lease lives on there.
    store.faults = { request: (kind) => (kind === 'keepAlive' ? { fail: 'after' } : { fail: 'before' }) };
    await runUntil(clock, clock.now() + 2500, () => undefined);
    expect(session.state).toBe('expired');
    expect(server.liveSessionIds()).toContain(session.id);
    // The server does not answer the revoke either: not confirmed.
    const first = session.endOnServer();
    await runUntil(clock, clock.now() + 100, () => undefined);
    expect(await first).toBe(false);
    store.faults = {};
    const second = session.endOnServer();
    await runUntil(clock, clock.now() + 100, () => undefined);
    expect(await second).toBe(true);
    expect(server.liveSessionIds()).not.toContain(session.id);
    expect(await session.endOnServer()).toBe(true);
  });

  it('never believes it is safe after the server expired it (random faults and drift)', async () => {
    const driftRate = 0.01;
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          ttlMs: fc.integer({ min: 1000, max: 10_000 }),
          rate: fc.double({ min: 1 - driftRate, max: 1 + driftRate, noNaN: true }),
          fates: fc.array(
            fc.record({
              latencyMs: fc.integer({ min: 0, max: 4000 }),
              fail: fc.constantFrom<RequestFate['fail']>(undefined, undefined, 'before', 'after'),
            }),
            { minLength: 1, maxLength: 60 },
          ),
        }),
        async ({ ttlMs, rate, fates }) => {
          const real = new VirtualClock();
          const server = new MemoryServer({ clock: real });
          const clientClock = new ScaledClock(real, rate, 1e6);
          let i = 0;
          const store = new MemoryStore({
            server,
            clock: clientClock,
            maxClockDriftRate: driftRate,
            requestTimeoutMs: 5000,
            // Faults on the keep-alives only: they are what the property is about.
            faults: { request: (kind) => (kind === 'keepAlive' ? (fates[i++ % fates.length] ?? {}) : {}) },
          });
          const opening = store.openSession({ ttlMs });
          await settle();
          const session: Session = await opening;
          let violation: string | undefined;
          await runUntil(real, ttlMs * 20, () => {
            const serverAlive = server.liveSessionIds().includes(session.id);
            const believesSafe = clientClock.now() < session.safeUntilMs && session.state !== 'expired';
            if (!serverAlive && believesSafe && violation === undefined) {
              violation = `server expired ${session.id} at ${real.now()} but client believes safe until ${session.safeUntilMs} (now ${clientClock.now()})`;
            }
          });
          expect(violation).toBeUndefined();
        },
      ),
      { numRuns: 150 },
    );
  });
});
