/**
 * The coordinator's incremental reader must see what a full read sees: registry changes (through the catalog
 * key), its own grant writes, locks taken and released, and anything else after a resync.
 */
import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../src/backends/memory/store.js';
import { CoordinatorReader, readGroupView, writeCoordinatorDecision } from '../../src/protocol/groups/io.js';
import { GroupKeys, encode } from '../../src/protocol/groups/keys.js';
import { GroupAdmin } from '../../src/runtime/groups/registry.js';
import type { CoordinatorView } from '../../src/protocol/groups/coordinator.js';

const noReport = (): void => undefined;

function sorted(v: CoordinatorView): unknown {
  return {
    resources: [...v.resources].sort(),
    grants: [...v.grants].map(([r, ns]) => [r, [...ns].sort()]).sort(),
    held: [...v.held].sort(),
    members: [...v.members.keys()].sort(),
  };
}

describe('writeCoordinatorDecision', () => {
  it('never overwrites a state that changed after the read: stale when only the state moved, deposed on the guard', async () => {
    const store = new MemoryStore();
    const keys = new GroupKeys('g');
    const leader = await store.txn({ compare: [], then: [{ op: 'put', key: `${keys.coordinator}x`, value: 'me' }] });
    const guard = {
      key: `${keys.coordinator}x`,
      target: 'createRevision' as const,
      op: '=' as const,
      value: leader.revision,
    };
    const state = {
      generation: 1,
      protocol: 'resource-barrier' as const,
      phase: 'running' as const,
      coordinator: 'x',
      token: leader.revision,
    };
    const read = await readGroupView(store, keys, noReport);
    expect(read.stateRevision).toBe(0);
    // Junk lands between the read and the write: the write is refused, the junk stays.
    await store.txn({ compare: [], then: [{ op: 'put', key: keys.state, value: 'junk' }] });
    const change = [{ add: { nodeId: 'a', name: 'r1' } }];
    expect(await writeCoordinatorDecision(store, keys, guard, change, 1, state, undefined, read.stateRevision)).toBe(
      'stale',
    );
    expect((await store.get(keys.state))?.value).toBe('junk');
    expect(await store.get(keys.grant('a', 'r1'))).toBeUndefined();
    // Read again: written.
    await store.txn({ compare: [], then: [{ op: 'delete', key: keys.state }] });
    const again = await readGroupView(store, keys, noReport);
    expect(await writeCoordinatorDecision(store, keys, guard, change, 1, state, undefined, again.stateRevision)).toBe(
      'written',
    );
    // Another leader: deposed, whatever the state.
    await store.txn({ compare: [], then: [{ op: 'delete', key: `${keys.coordinator}x` }] });
    expect(await writeCoordinatorDecision(store, keys, guard, [], 2, state, undefined, 0)).toBe('deposed');
  });
});

describe('CoordinatorReader', () => {
  it('stays equal to a full read through registry changes, own grant writes and lock changes', async () => {
    const store = new MemoryStore();
    const keys = new GroupKeys('g');
    const admin = new GroupAdmin(store, 'g');
    const reader = new CoordinatorReader(store, keys, noReport, 60_000);
    const session = await store.openSession({ ttlMs: 10_000 });
    await store.txn({
      compare: [],
      then: [
        {
          op: 'put',
          key: keys.member('a'),
          value: encode({ nodeId: 'a', zone: '', weight: 1, sessionId: session.id, static: false }),
          session,
        },
      ],
    });
    const same = async (now: number): Promise<void> =>
      expect(sorted(await reader.read(now))).toEqual(sorted(await readGroupView(store, keys, noReport)));

    await admin.add(['r1', 'r2']);
    await same(0);
    await admin.add(['r3']);
    await admin.remove(['r1']);
    await same(1);
    // Own writes are applied to the cache, not re-read.
    const before = await reader.read(1);
    const beforeGrants = JSON.stringify([...before.grants]);
    const beforeHeld = JSON.stringify([...before.held]);
    const changes = [{ add: { nodeId: 'a', name: 'r2' } }, { add: { nodeId: 'a', name: 'r3' } }];
    const guard = { key: keys.state, target: 'version' as const, op: '=' as const, value: 0 };
    expect(await writeCoordinatorDecision(store, keys, guard, changes, 1, undefined)).toBe('written');
    reader.applied(changes, 1);
    await same(2);
    // A view handed out earlier is never changed afterwards (copy on write).
    expect(JSON.stringify([...before.grants])).toBe(beforeGrants);
    expect(JSON.stringify([...before.held])).toBe(beforeHeld);
    // Locks taken by the grantee are seen (they were unconfirmed), then released.
    await store.txn({
      compare: [],
      then: [{ op: 'put', key: keys.heldKey('r2'), value: encode({ nodeId: 'a', generation: 1 }), session }],
    });
    await same(3);
    await store.txn({ compare: [], then: [{ op: 'delete', key: keys.heldKey('r2') }] });
    // A confirmed lock is not read again while its holder is a member (only its departure or a grant change can
    // end it, short of a hand edit): the stale entry only affects the "rebalance completed" report.
    expect((await reader.read(4)).held.get('r2')).toBe('a');
    await store.txn({ compare: [], then: [{ op: 'delete', key: keys.member('a') }] });
    await same(5);
    // A grant written behind the reader's back is seen after a resync, not before.
    await store.txn({
      compare: [],
      then: [{ op: 'put', key: keys.grant('b', 'r3'), value: encode({ generation: 1 }) }],
    });
    expect((await reader.read(6)).grants.get('r3')).toEqual(['a']);
    await same(60_005);
    // After a write with an unknown outcome the reader reads everything again.
    await store.txn({ compare: [], then: [{ op: 'delete', key: keys.grant('b', 'r3') }] });
    reader.invalidate();
    await same(60_006);
    await session.close();
    await store.close();
  });
});
