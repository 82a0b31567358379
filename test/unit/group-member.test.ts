/**
 * The group runtime on the memory store with virtual time: behaviour that
 * depends on timing between the runtime's own loops, which the simulator
 * covers only statistically.
 */
import { describe, expect, it } from 'vitest';
import { MemoryServer } from '../../src/backends/memory/server.js';
import { MemoryStore } from '../../src/backends/memory/store.js';
import { VirtualClock } from '../../src/store/clock.js';
import { joinGroup, type GroupMember } from '../../src/runtime/groups/member.js';
import { GroupAdmin } from '../../src/runtime/groups/registry.js';
import type { ResourceContext } from '../../src/runtime/groups/options.js';
import { drive } from '../harness/virtual-time.js';

/** Await a promise while virtual time runs (store calls wait on the virtual clock). */

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
    // The last acknowledged keep-alive went out at most TTL/5 before the cut, so the fencing deadline
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

describe('rebalance storms', () => {
  /**
   * Every session is lost at once (the store unreachable past the TTL, like a store restart), then the members
   * come back one by one. The first one back becomes coordinator; if it gave the others' resources away at once,
   * each rejoin would move them again. With the rejoin grace period each resource starts once: on its owner.
   */
  async function storm(extra: Record<string, unknown>): Promise<Map<string, number>> {
    const clock = new VirtualClock(1_000);
    const server = new MemoryServer({ clock });
    const resources = Array.from({ length: 20 }, (_, i) => `r${i}`);
    const admin = new MemoryStore({ clock, server });
    await drive(clock, new GroupAdmin(admin, 'g').add(resources));
    const running = new Map<string, string>();
    let starts = new Map<string, number>();
    const stores: MemoryStore[] = [];
    const members: GroupMember[] = [];
    for (let i = 0; i < 5; i++) {
      const store = new MemoryStore({ clock, server });
      stores.push(store);
      const id = `n${i}`;
      members.push(
        await drive(
          clock,
          joinGroup({
            store,
            group: 'g',
            node: { id },
            sessionTtlMs: 2_000,
            reconcileIntervalMs: 100,
            clock,
            ...extra,
            handler: async (c) => {
              running.set(c.resource, id);
              starts.set(c.resource, (starts.get(c.resource) ?? 0) + 1);
              await new Promise<void>((resolve) => c.signal.addEventListener('abort', () => resolve()));
              if (running.get(c.resource) === id) running.delete(c.resource);
            },
          }),
        ),
      );
    }
    const balanced = (): boolean => {
      if (running.size !== resources.length) return false;
      const counts = new Map<string, number>();
      for (const n of running.values()) counts.set(n, (counts.get(n) ?? 0) + 1);
      return counts.size === 5 && [...counts.values()].every((c) => c === 4);
    };
    await until(clock, balanced, 20_000);
    // The store is gone for twice the TTL: every session expires on the server, every handler stops.
    for (const s of stores) s.faults = { request: () => ({ fail: 'before' }) };
    await clock.runFor(4_000);
    expect(running.size).toBe(0);
    starts = new Map();
    // The members find it again one by one, 150 ms apart (their keep-alives are not in step).
    for (const i of [3, 0, 4, 1, 2]) {
      stores[i]!.faults = {};
      await clock.runFor(150);
    }
    await until(clock, balanced, 20_000);
    await clock.runFor(3_000); // nothing more moves afterwards
    expect(balanced()).toBe(true);
    const result = new Map(starts);
    for (const m of members) await drive(clock, m.leave());
    for (const s of [...stores, admin]) await drive(clock, s.close());
    return result;
  }

  it('after every session was lost, members that come back one by one move each resource once', async () => {
    const starts = await storm({});
    expect([...starts.keys()].sort()).toEqual(Array.from({ length: 20 }, (_, i) => `r${i}`).sort());
    expect(Math.max(...starts.values())).toBe(1);
  });
});
