import { describe, expect, it } from 'vitest';
import type { DesiredRecord, ObservedRecord } from '../../src/protocol/fleet/keys.js';
import {
  decideReplicas,
  type GroupFacts,
  type OpenReplica,
  type ReplicaInput,
} from '../../src/protocol/fleet/replicas.js';

function desired(name: string, members: string[], version = 1, initial = members): DesiredRecord {
  return { name, generation: 1, members, leader: members[0]!, token: 1, initial, version };
}

function observed(name: string, voters: string[], membershipIndex: number, learners: string[] = []): ObservedRecord {
  return {
    name,
    generation: 1,
    reporter: voters[0]!,
    term: 2,
    leader: voters[0]!,
    voters,
    learners,
    membershipIndex,
    committed: 10,
    lag: {},
    status: 'moving',
    detail: '',
  };
}

function input(
  groups: GroupFacts[],
  open: OpenReplica[] = [],
  stored: string[] = [],
  extra: Partial<ReplicaInput> = {},
): ReplicaInput {
  return {
    nodeId: 'a',
    groups: new Map(groups.map((g) => [g.name, g])),
    open: new Map(open.map((o) => [o.id, o])),
    stored: new Set(stored),
    machines: new Set(['kv']),
    addressable: () => true,
    ...extra,
  };
}

const g = (name: string, d: DesiredRecord | undefined, o?: ObservedRecord, generation = 1): GroupFacts => ({
  name,
  generation,
  machine: 'kv',
  desired: d,
  observed: o,
});

describe('decideReplicas', () => {
  it('bootstraps only from the first desired record and only its initial members; joins otherwise', () => {
    const d = decideReplicas(
      input([
        g('first', desired('first', ['a', 'b', 'c'])),
        g('rewritten', desired('rewritten', ['a', 'b', 'c'], 2, ['b', 'c', 'd'])),
        g('not-initial', desired('not-initial', ['a', 'b'], 1, ['b', 'c'])),
        g('elsewhere', desired('elsewhere', ['b', 'c'])),
        g('unplaced', undefined),
      ]),
    );
    expect(d.actions).toEqual([
      { type: 'open', id: 'first:1', name: 'first', machine: 'kv', mode: 'bootstrap', members: ['a', 'b', 'c'] },
      { type: 'open', id: 'not-initial:1', name: 'not-initial', machine: 'kv', mode: 'join', members: ['b', 'c'] },
      { type: 'open', id: 'rewritten:1', name: 'rewritten', machine: 'kv', mode: 'join', members: ['b', 'c', 'd'] },
    ]);
  });

  it('waits for the addresses of bootstrap members, and for a state machine it does not have', () => {
    const d = decideReplicas(
      input([g('x', desired('x', ['a', 'b', 'c'])), { ...g('y', desired('y', ['a'])), machine: 'other' }], [], [], {
        addressable: (n) => n !== 'c',
      }),
    );
    expect(d.actions).toEqual([]);
    expect(d.waits.map((w) => [w.name, w.reason])).toEqual([
      ['x', 'unknown-address'],
      ['y', 'unknown-machine'],
    ]);
  });

  it('recovers stored replicas of live generations and drops those of removed or re-added groups', () => {
    const d = decideReplicas(
      input(
        [
          g('kept', desired('kept', ['b', 'c'])),
          g('readded', { ...desired('readded', ['a']), generation: 2 }, undefined, 2),
        ],
        [],
        ['kept:1', 'gone:1', 'readded:1', 'not-a-raft-id'],
      ),
    );
    expect(d.actions).toEqual([
      { type: 'drop', id: 'gone:1', reason: 'group-removed' },
      { type: 'drop', id: 'readded:1', reason: 'group-removed' },
      { type: 'drop', id: 'not-a-raft-id', reason: 'group-removed' },
      { type: 'open', id: 'kept:1', name: 'kept', machine: 'kv', mode: 'recover', members: ['b', 'c'] },
      { type: 'open', id: 'readded:2', name: 'readded', machine: 'kv', mode: 'bootstrap', members: ['a'] },
    ]);
  });

  it('drops a replica no longer desired only once it is no longer a member', () => {
    const member: OpenReplica = { id: 'x:1', voters: ['a', 'b', 'c'], learners: [], membershipIndex: 5 };
    const notDesired = desired('x', ['b', 'c', 'd'], 3);
    // Still a voter, and no report says otherwise: stays (its leader removes it first).
    expect(decideReplicas(input([g('x', notDesired)], [member])).actions).toEqual([]);
    // A report from before the membership it knows does not count.
    expect(decideReplicas(input([g('x', notDesired, observed('x', ['b', 'c', 'd'], 4))], [member])).actions).toEqual(
      [],
    );
    // A report at least as recent that excludes it: removed, drop.
    expect(decideReplicas(input([g('x', notDesired, observed('x', ['b', 'c', 'd'], 9))], [member])).actions).toEqual([
      { type: 'drop', id: 'x:1', reason: 'moved-away' },
    ]);
    // Still desired: never dropped, whatever a report says.
    expect(
      decideReplicas(input([g('x', desired('x', ['a', 'b'], 2), observed('x', ['b', 'c'], 9))], [member])).actions,
    ).toEqual([]);
    // Its own membership no longer names it (it applied its removal, or was never added): drop.
    const out: OpenReplica = { id: 'x:1', voters: ['b', 'c'], learners: [], membershipIndex: 7 };
    expect(decideReplicas(input([g('x', notDesired)], [out])).actions).toEqual([
      { type: 'drop', id: 'x:1', reason: 'moved-away' },
    ]);
    // Its removal merely appended (not committed here): it stays, the entry may yet be overwritten by a new leader
    // under which it is still a voter; once committed, or once a report at least as recent excludes it, it goes.
    const appended: OpenReplica = { ...out, committed: 6 };
    expect(decideReplicas(input([g('x', notDesired)], [appended])).actions).toEqual([]);
    expect(decideReplicas(input([g('x', notDesired)], [{ ...out, committed: 7 }])).actions).toEqual([
      { type: 'drop', id: 'x:1', reason: 'moved-away' },
    ]);
    expect(decideReplicas(input([g('x', notDesired, observed('x', ['b', 'c'], 7))], [appended])).actions).toEqual([
      { type: 'drop', id: 'x:1', reason: 'moved-away' },
    ]);
  });
  it('a seeded generation: the seed node bootstraps from its old replica, kept until then; never from nothing', () => {
    const seed = { node: 'a', generation: 1, initial: ['a', 'x', 'y'] };
    const d2 = { ...desired('r', ['a']), generation: 2 };
    const facts: GroupFacts = { ...g('r', d2, undefined, 2), seed };
    const old: OpenReplica = { id: 'r:1', voters: ['a', 'x', 'y'], learners: [], membershipIndex: 0 };
    // The old replica is open: seed from it; it is not dropped yet.
    expect(decideReplicas(input([facts], [old])).actions).toEqual([
      { type: 'open', id: 'r:2', name: 'r', machine: 'kv', mode: 'bootstrap', members: ['a'], seedFrom: 'r:1' },
    ]);
    // Only stored (the node restarted): recover it first, with the old founders.
    expect(decideReplicas(input([facts], [], ['r:1'])).actions).toEqual([
      { type: 'open', id: 'r:1', name: 'r', machine: 'kv', mode: 'recover', members: ['a', 'x', 'y'] },
    ]);
    // The new generation is here: the old replica goes.
    const now: OpenReplica = { id: 'r:2', voters: ['a'], learners: [], membershipIndex: 0 };
    expect(decideReplicas(input([facts], [old, now])).actions).toEqual([
      { type: 'drop', id: 'r:1', reason: 'group-removed' },
    ]);
    // No old replica: wait (an empty bootstrap would silently lose the state).
    const missing = decideReplicas(input([facts]));
    expect(missing.actions).toEqual([]);
    expect(missing.waits.map((w) => w.reason)).toEqual(['seed-missing']);
    // Another node holding an old replica drops it; a node placed later joins.
    const other = decideReplicas(
      input([{ ...facts, desired: { ...d2, members: ['a', 'b'], version: 2 } }], [], ['r:1'], { nodeId: 'b' }),
    );
    expect(other.actions).toEqual([
      { type: 'drop', id: 'r:1', reason: 'group-removed' },
      { type: 'open', id: 'r:2', name: 'r', machine: 'kv', mode: 'join', members: ['a'] },
    ]);
  });
  it('leaves orphans alone: never dropped when their group is gone, never taken for a group of the same id', () => {
    const open: OpenReplica = { id: 'gone:1', voters: ['a', 'b'], learners: [], membershipIndex: 0 };
    const orphans = new Set(['gone:1', 'again:1', 'stored:3']);
    // Without orphans, a replica whose group record is gone is dropped (the group was removed)…
    expect(decideReplicas(input([], [open], ['stored:3'])).actions).toEqual([
      { type: 'drop', id: 'gone:1', reason: 'group-removed' },
      { type: 'drop', id: 'stored:3', reason: 'group-removed' },
    ]);
    // …but not once the records it was placed by were lost: then nothing says it was removed.
    const d = decideReplicas(
      input([g('again', desired('again', ['a', 'b', 'c'])), g('new', desired('new', ['a']))], [open], ['stored:3'], {
        orphans,
      }),
    );
    // A name added again after the loss may get the same generation: its id is an orphan's here, so it is not
    // opened (it would be the orphan's old log); a group with another id opens as usual.
    expect(d.actions).toEqual([
      { type: 'open', id: 'new:1', name: 'new', machine: 'kv', mode: 'bootstrap', members: ['a'] },
    ]);
    expect(d.waits.map((w) => [w.name, w.reason])).toEqual([['again', 'orphan']]);
  });

  it("takes a held replica for its record's group only when the incarnations match (unknown matches any)", () => {
    const open = (id: string): OpenReplica => ({ id, voters: ['a'], learners: [], membershipIndex: 0 });
    const rec = (name: string, incarnation: string | undefined): GroupFacts => ({
      ...g(name, desired(name, ['a'], 2)),
      incarnation,
    });
    const d = decideReplicas(
      input(
        [
          rec('same', 'inc-aaaaaaaa'),
          rec('other', 'inc-bbbbbbbb'),
          rec('old-record', undefined),
          rec('old-node', 'inc-cccccccc'),
          rec('stored', 'inc-dddddddd'),
        ],
        [open('same:1'), open('other:1'), open('old-record:1'), open('old-node:1')],
        ['stored:1'],
        {
          incarnations: new Map([
            ['same:1', 'inc-aaaaaaaa'],
            ['other:1', 'inc-xxxxxxxx'],
            ['old-record:1', 'inc-yyyyyyyy'],
            ['stored:1', 'inc-zzzzzzzz'],
          ]),
        },
      ),
    );
    // Another incarnation under its id: a group that is gone (removed, another written back since); the record's
    // group is not opened over it (the next decision joins it, once the old one is dropped).
    expect(d.actions).toEqual([
      { type: 'drop', id: 'other:1', reason: 'group-removed' },
      { type: 'drop', id: 'stored:1', reason: 'group-removed' },
    ]);
    // An orphan meeting another incarnation of its id stays one (never dropped, the group not opened over it).
    const o = decideReplicas(
      input([rec('other', 'inc-bbbbbbbb')], [open('other:1')], [], {
        orphans: new Set(['other:1']),
        incarnations: new Map([['other:1', 'inc-xxxxxxxx']]),
      }),
    );
    expect(o.actions).toEqual([]);
    expect(o.waits.map((w) => [w.name, w.reason])).toEqual([['other', 'orphan']]);
  });

  it('tells two groups of one name and generation apart by their Raft id tag: an orphan and the group added again', () => {
    const open = (id: string): OpenReplica => ({ id, voters: ['a', 'b', 'c'], learners: [], membershipIndex: 0 });
    const again: GroupFacts = { ...g('again', desired('again', ['a', 'b', 'c'])), tag: 'NEWtag01' };
    // The orphan (its group from before the loss) is `again:1.OLDtag01`; the name added since got generation 1 too.
    const d = decideReplicas(
      input([again], [open('again:1.OLDtag01')], [], { orphans: new Set(['again:1.OLDtag01']) }),
    );
    // Another Raft group: opened beside the orphan (which is kept), never over it; the two never exchange a message.
    const openNew = {
      type: 'open',
      id: 'again:1.NEWtag01',
      name: 'again',
      machine: 'kv',
      mode: 'bootstrap',
      members: ['a', 'b', 'c'],
    };
    expect(d.actions).toEqual([openNew]);
    expect(d.waits).toEqual([]);
    // A replica that is not an orphan, of the record's generation but another tag (or none): a group that is gone.
    const gone = decideReplicas(input([again], [open('again:1.OLDtag01'), open('again:1')], []));
    expect(gone.actions).toEqual([
      { type: 'drop', id: 'again:1.OLDtag01', reason: 'group-removed' },
      { type: 'drop', id: 'again:1', reason: 'group-removed' },
      openNew,
    ]);
    // The replica of the record's own id stays.
    expect(decideReplicas(input([again], [open('again:1.NEWtag01')], [])).actions).toEqual([]);
  });
});
