/**
 * The group runtime on the memory store with virtual time: behaviour that
 * depends on timing between the runtime's own loops, which the simulator
 * covers only statistically.
 */
import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../src/backends/memory/store.js';
import { VirtualClock } from '../../src/store/clock.js';
import { joinGroup, type GroupMember } from '../../src/runtime/groups/member.js';
import { GroupAdmin } from '../../src/runtime/groups/registry.js';
import type { ResourceContext } from '../../src/runtime/groups/options.js';

/** Await a promise while virtual time runs (store calls wait on the virtual clock). */
async function drive<T>(clock: VirtualClock, p: Promise<T>): Promise<T> {
  let done = false;
  const q = p.finally(() => (done = true));
  while (!done) await clock.runFor(10);
  return q;
}

async function until(clock: VirtualClock, pred: () => boolean, maxMs = 10_000): Promise<void> {
  const end = clock.now() + maxMs;
  while (!pred()) {
    if (clock.now() > end) throw new Error('condition not reached in virtual time');
    await clock.runFor(10);
  }
}

describe('group member runtime', () => {
  it('aborts handlers at the self-fencing deadline even while a store request hangs', async () => {
    const clock = new VirtualClock(1_000);
    const store = new MemoryStore({ clock, requestTimeoutMs: 30_000 });
    await drive(clock, new GroupAdmin(store, 'g').add(['r0']));
    let ctx: ResourceContext | undefined;
    let abortedAtMs: number | undefined;
    const member: GroupMember = await drive(
      clock,
      joinGroup({
        store,
        group: 'g',
        node: { id: 'a' },
        sessionTtlMs: 3_000,
        selfFenceMarginMs: 600,
        reconcileIntervalMs: 200,
        clock,
        handler: async (c) => {
          ctx = c;
          await new Promise<void>((resolve) =>
            c.signal.addEventListener('abort', () => {
              abortedAtMs = clock.now();
              resolve();
            }),
          );
        },
      }),
    );
    await until(clock, () => ctx !== undefined);
    expect(ctx!.stillOwner()).toBe(true);
    // From now on every request hangs far longer than the TTL (a black-holed connection): keep-alives go
    // unanswered, and the member's periodic reconcile blocks on its read.
    const cutAtMs = clock.now();
    store.faults = { request: () => ({ latencyMs: 60_000 }) };
    expect(member.leaseDeadlineMs).toBeGreaterThan(cutAtMs);
    await until(clock, () => abortedAtMs !== undefined, 5_000);
    // The last acknowledged keep-alive went out at most TTL/3 before the cut, so the fencing deadline
    // (send time + TTL×(1−drift) − margin) lies before cut + TTL − margin; the server expires no earlier
    // than send time + TTL. The abort must come at the deadline, not after the hanging read.
    expect(abortedAtMs!).toBeLessThanOrEqual(cutAtMs + 3_000 - 600 + 1);
    expect(abortedAtMs!).toBeLessThan(cutAtMs + 30_000);
    expect(ctx!.stillOwner()).toBe(false);
    store.faults = {};
    await drive(
      clock,
      member.leave().catch(() => undefined),
    );
    await drive(clock, store.close());
  });

  it('a handler of a lost session never becomes an owner again through the rejoined session', async () => {
    const clock = new VirtualClock(1_000);
    const store = new MemoryStore({ clock });
    await drive(clock, new GroupAdmin(store, 'g').add(['r0']));
    const contexts: ResourceContext[] = [];
    const member = await drive(
      clock,
      joinGroup({
        store,
        group: 'g',
        node: { id: 'a' },
        sessionTtlMs: 2_000,
        reconcileIntervalMs: 100,
        clock,
        handler: async (c) => {
          contexts.push(c);
          await new Promise<void>((resolve) => c.signal.addEventListener('abort', () => resolve()));
        },
      }),
    );
    await until(clock, () => contexts.length === 1);
    // Partition long enough for the server to expire the session, then heal: the member rejoins.
    store.faults = { request: () => ({ fail: 'before' }) };
    await clock.runFor(4_000);
    store.faults = {};
    await until(clock, () => contexts.length === 2, 20_000);
    expect(contexts[0]!.stillOwner()).toBe(false);
    expect(contexts[1]!.stillOwner()).toBe(true);
    expect(contexts[1]!.fencingToken).toBeGreaterThan(contexts[0]!.fencingToken);
    await drive(clock, member.leave());
    await drive(clock, store.close());
  });
});
