/**
 * groupStatus(): the operator's view of a group, on the memory store with
 * virtual time. A handler that is slow to stop makes a move visible as
 * `moving` (granted to the new node, lock still held by the old one).
 */
import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../src/backends/memory/store.js';
import { VirtualClock } from '../../src/store/clock.js';
import { joinGroup, type GroupMember } from '../../src/runtime/groups/member.js';
import { GroupAdmin } from '../../src/runtime/groups/registry.js';
import { GroupNotFoundError } from '../../src/errors.js';
import { groupStatus, type GroupStatus } from '../../src/runtime/groups/status.js';
import { renderStatus } from '../../src/cli/commands/status.js';
import { drive } from '../harness/virtual-time.js';

async function untilStatus(
  clock: VirtualClock,
  store: MemoryStore,
  pred: (s: GroupStatus) => boolean,
  maxMs = 20_000,
): Promise<GroupStatus> {
  const end = clock.now() + maxMs;
  for (;;) {
    const s = await drive(clock, groupStatus(store, 'g'));
    if (pred(s)) return s;
    if (clock.now() > end) throw new Error(`status not reached: ${JSON.stringify(s.counts)}`);
    await clock.runFor(50);
  }
}

describe('groupStatus', () => {
  it('reports an unknown group with a typed error that says what to check', async () => {
    const clock = new VirtualClock(1_000);
    const store = new MemoryStore({ clock });
    const err = await drive(clock, groupStatus(store, 'nope')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GroupNotFoundError);
    expect((err as GroupNotFoundError).code).toBe('NOT_FOUND');
    expect((err as Error).message).toMatch(/groups list/);
  });

  it('shows nodes, coordinator, owners with tokens, and a move in flight', async () => {
    const clock = new VirtualClock(1_000);
    const store = new MemoryStore({ clock });
    const names = ['r0', 'r1', 'r2', 'r3'];
    await drive(clock, new GroupAdmin(store, 'g').add(names));
    let slow = true;
    const join = (id: string, zone: string): Promise<GroupMember> =>
      drive(
        clock,
        joinGroup({
          store,
          group: 'g',
          node: { id, zone, weight: id === 'a' ? 2 : 1 },
          sessionTtlMs: 3_000,
          reconcileIntervalMs: 200,
          drainTimeoutMs: 60_000,
          clock,
          handler: (c) =>
            new Promise<void>((resolve) =>
              c.signal.addEventListener('abort', () => {
                // Node a's handlers take 2 s (virtual) to stop while `slow`: the move stays visible.
                if (id === 'a' && slow) clock.setTimeout(resolve, 2_000);
                else resolve();
              }),
            ),
        }),
      );
    const a = await join('a', 'z1');
    let s = await untilStatus(clock, store, (x) => x.counts.active === 4);
    expect(s.coordinator?.nodeId).toBe('a');
    expect(s.nodes).toEqual([
      { id: 'a', zone: 'z1', weight: 2, static: false, coordinator: true, assigned: 4, owned: 4 },
    ]);
    expect(s.resources.map((r) => [r.name, r.state, r.owner])).toEqual(names.map((n) => [n, 'active', 'a']));
    expect(s.resources.every((r) => typeof r.fencingToken === 'number')).toBe(true);
    const before = new Map(s.resources.map((r) => [r.name, r.fencingToken]));

    const b = await join('b', 'z2');
    s = await untilStatus(clock, store, (x) => x.counts.moving > 0);
    const moving = s.resources.filter((r) => r.state === 'moving');
    for (const r of moving) {
      expect(r.owner).toBe('a');
      expect(r.assignedTo).toBe('b');
      expect(r.fencingToken).toBe(before.get(r.name));
    }
    expect(s.movesInFlight).toBeGreaterThan(0);
    expect(renderStatus(s, { limit: 10 })).toMatch(/a → b/);

    slow = false;
    s = await untilStatus(clock, store, (x) => x.counts.active === 4 && x.movesInFlight === 0);
    const movedToB = s.resources.filter((r) => r.owner === 'b');
    expect(movedToB.length).toBeGreaterThan(0);
    // A new owner has a larger fencing token than the last.
    for (const r of movedToB) expect(r.fencingToken!).toBeGreaterThan(before.get(r.name)!);
    expect(s.nodes.find((n) => n.id === 'b')).toMatchObject({ zone: 'z2', owned: movedToB.length });

    // Removing a resource: visible as unregistered until its owner lets go, then gone.
    await drive(clock, new GroupAdmin(store, 'g').remove(['r0']));
    s = await untilStatus(clock, store, (x) => x.resources.every((r) => r.name !== 'r0'));
    expect(s.resources).toHaveLength(3);

    await drive(clock, b.leave());
    await drive(clock, a.leave());
    s = await drive(clock, groupStatus(store, 'g'));
    expect(s.nodes).toEqual([]);
    expect(s.coordinator).toBeUndefined();
    expect(s.counts.unassigned).toBe(3);
    expect(renderStatus(s, { limit: 10 })).toMatch(/no live nodes/);
  });
});
