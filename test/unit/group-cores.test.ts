/** The sans-IO cores of the group protocol, as scenarios. */
import { describe, expect, it } from 'vitest';
import {
  decideCoordinator,
  newCoordinatorMemory,
  type CoordinatorConfig,
  type CoordinatorView,
} from '../../src/protocol/groups/coordinator.js';
import type { MemberRecord, StateRecord } from '../../src/protocol/groups/keys.js';
import {
  decideMember,
  type HeldView,
  type LocalResource,
  type MemberSelf,
  type MemberView,
} from '../../src/protocol/groups/member.js';

const me: MemberSelf = {
  nodeId: 'a',
  sessionId: 's1',
  protocol: 'resource-barrier',
  fenced: false,
  leaving: false,
  nowMs: 1000,
};
const running = (token: number, generation = 1): LocalResource => ({ phase: 'running', token, generation });
const state = (
  generation: number,
  phase: 'running' | 'stopping' = 'running',
  protocol: StateRecord['protocol'] = 'resource-barrier',
): StateRecord => ({
  generation,
  phase,
  protocol,
  coordinator: 'c',
  token: 7,
});
function view(p: Partial<MemberView>): MemberView {
  return { state: state(1), stateRevision: 5, grants: new Map(), held: new Map(), ackedGeneration: undefined, ...p };
}
const held = (nodeId: string, sessionId: string, token: number): HeldView => ({ nodeId, sessionId, token });

describe('member core', () => {
  it('acquires a granted free resource, and waits while somebody else holds it', () => {
    const v = view({
      grants: new Map([
        ['q1', { generation: 1 }],
        ['q2', { generation: 1 }],
      ]),
      held: new Map([['q2', held('b', 's9', 3)]]),
    });
    expect(decideMember(v, new Map(), me)).toEqual([
      { type: 'acquire', resource: 'q1', generation: 1, stateRevision: undefined, stateGeneration: 1 },
    ]);
  });

  it('stops a revoked resource and releases its lock only after the handler stopped', () => {
    const v = view({ held: new Map([['q1', held('a', 's1', 4)]]) });
    expect(decideMember(v, new Map([['q1', running(4)]]), me)).toEqual([
      { type: 'stop', resource: 'q1', reason: 'revoked' },
    ]);
    expect(decideMember(v, new Map([['q1', { phase: 'stopping', token: 4, sinceMs: 900 }]]), me)).toEqual([]);
    expect(decideMember(v, new Map([['q1', { phase: 'stopped', token: 4 }]]), me)).toEqual([
      { type: 'release', resource: 'q1', token: 4 },
    ]);
  });

  it('when fenced: stops everything, releases nothing, acquires nothing', () => {
    const v = view({
      grants: new Map([
        ['q1', { generation: 1 }],
        ['q2', { generation: 1 }],
      ]),
      held: new Map([['q1', held('a', 's1', 4)]]),
    });
    const fenced = { ...me, fenced: true };
    expect(decideMember(v, new Map([['q1', running(4)]]), fenced)).toEqual([
      { type: 'stop', resource: 'q1', reason: 'fenced' },
    ]);
    expect(decideMember(v, new Map([['q1', { phase: 'stopped', token: 4 }]]), fenced)).toEqual([]);
    // Unfenced again with the lock still ours: resume under the same lock.
    expect(decideMember(v, new Map([['q1', { phase: 'stopped', token: 4 }]]), me)).toContainEqual({
      type: 'restart',
      resource: 'q1',
      token: 4,
      generation: 1,
    });
  });

  it('forgets a resource whose lock vanished with an expired session', () => {
    expect(decideMember(view({}), new Map([['q1', { phase: 'stopped', token: 4 }]]), me)).toEqual([
      { type: 'forget', resource: 'q1' },
    ]);
  });

  it('adopts a lock it holds without knowing (lost acquire response), or releases it if not granted', () => {
    const mine = new Map([['q1', held('a', 's1', 9)]]);
    expect(decideMember(view({ grants: new Map([['q1', { generation: 1 }]]), held: mine }), new Map(), me)).toEqual([
      { type: 'adopt', resource: 'q1', token: 9, generation: 1 },
    ]);
    expect(decideMember(view({ held: mine }), new Map(), me)).toEqual([{ type: 'release', resource: 'q1', token: 9 }]);
    // A lock of an earlier session of the same node is not ours to touch: wait for its expiry.
    expect(decideMember(view({ held: new Map([['q1', held('a', 's0', 2)]]) }), new Map(), me)).toEqual([]);
  });

  it('global barrier: stops on the stop phase, acks when idle, starts only when running again', () => {
    const g = { ...me, protocol: 'global-barrier' as const };
    const grants = new Map([['q1', { generation: 2 }]]);
    const stopping = view({
      state: state(2, 'stopping', 'global-barrier'),
      grants,
      held: new Map([['q1', held('a', 's1', 4)]]),
    });
    expect(decideMember(stopping, new Map([['q1', running(4, 1)]]), g)).toEqual([
      { type: 'stop', resource: 'q1', reason: 'barrier' },
    ]);
    // Not idle while it still holds a lock.
    expect(decideMember(stopping, new Map(), g).some((a) => a.type === 'ack')).toBe(false);
    const idle = view({ state: state(2, 'stopping', 'global-barrier'), grants });
    expect(decideMember(idle, new Map(), g)).toEqual([{ type: 'ack', generation: 2 }]);
    const run = view({ state: state(2, 'running', 'global-barrier'), grants });
    expect(decideMember(run, new Map(), g)).toEqual([
      { type: 'acquire', resource: 'q1', generation: 2, stateRevision: 5, stateGeneration: 2 },
    ]);
    // A handler from an older generation stops even if this node missed the stop phase.
    expect(decideMember(run, new Map([['q1', running(4, 1)]]), g)).toEqual([
      { type: 'stop', resource: 'q1', reason: 'barrier' },
    ]);
  });
});

const member = (id: string, staticMember = false): MemberRecord => ({
  nodeId: id,
  zone: '',
  weight: 1,
  sessionId: `s-${id}`,
  static: staticMember,
});
const config: CoordinatorConfig = {
  protocol: 'resource-barrier',
  strategy: 'sticky-balanced',
  gracePeriodMs: 0,
  drainTimeoutMs: 1000,
  rebalanceDebounceMs: 0,
  minRebalanceIntervalMs: 0,
};
function cview(p: Partial<CoordinatorView>): CoordinatorView {
  return {
    members: new Map(),
    resources: [],
    grants: new Map(),
    held: new Map(),
    acks: new Map(),
    state: undefined,
    maxGeneration: 0,
    ...p,
  };
}
const self = { nodeId: 'a', token: 7 };

describe('coordinator core', () => {
  it('resource barrier: moves only what balance requires, pairing each removal with its new grant', () => {
    const members = new Map([
      ['a', member('a')],
      ['b', member('b')],
    ]);
    const resources = ['q1', 'q2', 'q3', 'q4'];
    const grants = new Map(resources.map((r) => [r, ['a']]));
    const d = decideCoordinator(
      cview({ members, resources, grants, state: state(3) }),
      config,
      newCoordinatorMemory(),
      0,
      self,
    );
    expect(d.moves).toBe(2);
    expect(d.changes.every((c) => c.remove?.nodeId === 'a' && c.add?.nodeId === 'b')).toBe(true);
    expect(d.state).toMatchObject({ generation: 4, phase: 'running', token: 7 });
  });

  it('writes nothing while a state or grant it would write is unreadable (never overwrites it), then resumes', () => {
    const members = new Map([
      ['a', member('a')],
      ['b', member('b')],
    ]);
    const resources = ['q1', 'q2', 'q3', 'q4'];
    const grants = new Map(resources.map((r) => [r, ['a']]));
    for (const unreadable of [['g/x/state'], ['g/x/grants/a/q1'], ['g/x/state', 'g/x/grants/a/q2']]) {
      // The state unreadable reads as absent: without the list the core would claim it (an overwrite).
      const d = decideCoordinator(
        cview({ members, resources, grants, unreadable }),
        config,
        newCoordinatorMemory(),
        0,
        self,
      );
      expect(d.changes).toEqual([]);
      expect(d.state).toBeUndefined();
      expect(d.halted).toEqual([...unreadable].sort());
    }
    const healed = decideCoordinator(cview({ members, resources, grants }), config, newCoordinatorMemory(), 0, self);
    expect(healed.halted).toBeUndefined();
    expect(healed.state).toMatchObject({ generation: 1, token: 7 });
    expect(healed.moves).toBe(2);
  });

  it('removes grants of removed resources and duplicate grants', () => {
    const members = new Map([
      ['a', member('a')],
      ['b', member('b')],
    ]);
    const d = decideCoordinator(
      cview({
        members,
        resources: ['q1'],
        grants: new Map([
          ['q1', ['a', 'b']],
          ['gone', ['b']],
        ]),
        state: state(1),
      }),
      config,
      newCoordinatorMemory(),
      0,
      self,
    );
    expect(d.changes).toContainEqual({ remove: { nodeId: 'b', name: 'gone' } });
    expect(d.changes.filter((c) => c.remove?.name === 'q1')).toHaveLength(1);
  });

  it('global barrier: first a stop phase, then the new grants once everyone acked and every lock is free', () => {
    const g = { ...config, protocol: 'global-barrier' as const };
    const members = new Map([
      ['a', member('a')],
      ['b', member('b')],
    ]);
    const mem = newCoordinatorMemory();
    const base = {
      members,
      resources: ['q1', 'q2'],
      grants: new Map([
        ['q1', ['a']],
        ['q2', ['a']],
      ]),
    };
    const d1 = decideCoordinator(cview({ ...base, state: state(1, 'running', 'global-barrier') }), g, mem, 0, self);
    // A decision never changes the memory it is given: it returns the next one.
    expect(mem).toEqual(newCoordinatorMemory());
    expect(d1.changes).toEqual([]);
    expect(d1.state).toMatchObject({ phase: 'stopping', generation: 2 });
    const waiting = decideCoordinator(
      cview({
        ...base,
        state: state(2, 'stopping', 'global-barrier'),
        acks: new Map([['a', 2]]),
        held: new Map([['q1', 'a']]),
      }),
      g,
      d1.memory,
      10,
      self,
    );
    expect(waiting.changes).toEqual([]);
    expect(waiting.waitingFor).toEqual({ acks: ['b'], held: ['q1'] });
    const go = decideCoordinator(
      cview({
        ...base,
        state: state(2, 'stopping', 'global-barrier'),
        acks: new Map([
          ['a', 2],
          ['b', 2],
        ]),
      }),
      g,
      waiting.memory,
      20,
      self,
    );
    expect(go.changes.length).toBeGreaterThan(0);
    expect(go.state).toMatchObject({ phase: 'running', generation: 2 });
  });

  it('static membership: keeps a departed static member’s grants for the grace period', () => {
    const cfg = { ...config, gracePeriodMs: 5000 };
    const mem = newCoordinatorMemory();
    const grants = new Map([
      ['q1', ['a']],
      ['q2', ['b']],
    ]);
    const first = decideCoordinator(
      cview({
        members: new Map([
          ['a', member('a', true)],
          ['b', member('b', true)],
        ]),
        resources: ['q1', 'q2'],
        grants,
        state: state(1),
      }),
      cfg,
      mem,
      0,
      self,
    );
    const during = decideCoordinator(
      cview({ members: new Map([['a', member('a', true)]]), resources: ['q1', 'q2'], grants, state: state(1) }),
      cfg,
      first.memory,
      1000,
      self,
    );
    expect(during.changes).toEqual([]);
    expect(during.wakeAtMs).toBe(6000);
    const after = decideCoordinator(
      cview({ members: new Map([['a', member('a', true)]]), resources: ['q1', 'q2'], grants, state: state(1) }),
      cfg,
      during.memory,
      6000,
      self,
    );
    expect(after.changes).toEqual([{ remove: { nodeId: 'b', name: 'q2' }, add: { nodeId: 'a', name: 'q2' } }]);
  });

  it('debounces balance: running resources move only once membership has been stable', () => {
    const cfg = { ...config, rebalanceDebounceMs: 500 };
    const mem = newCoordinatorMemory();
    const members = new Map([
      ['a', member('a')],
      ['b', member('b')],
    ]);
    const v = cview({
      members,
      resources: ['q1', 'q2'],
      grants: new Map([
        ['q1', ['a']],
        ['q2', ['a']],
      ]),
      state: state(1),
    });
    const d = decideCoordinator(v, cfg, mem, 100, self);
    expect(d.changes).toEqual([]);
    expect(d.wakeAtMs).toBe(600);
    expect(decideCoordinator(v, cfg, d.memory, 600, self).moves).toBe(1);
  });

  it('work nobody runs does not wait for the debounce: new resources, a failed node', () => {
    const cfg = { ...config, rebalanceDebounceMs: 500 };
    const fresh = cview({ members: new Map([['a', member('a')]]), resources: ['q1'], state: state(1) });
    expect(decideCoordinator(fresh, cfg, newCoordinatorMemory(), 100, self).changes).toEqual([
      { add: { nodeId: 'a', name: 'q1' } },
    ]);
    // b failed: its grant is on a node that is no member; the coordinator joined long ago.
    const failed = cview({
      members: new Map([['a', member('a')]]),
      resources: ['q1', 'q2'],
      grants: new Map([
        ['q1', ['a']],
        ['q2', ['b']],
      ]),
      state: state(1),
    });
    const d = decideCoordinator(failed, { ...cfg, rejoinGracePeriodMs: 2000 }, newCoordinatorMemory(), 100, {
      ...self,
      rejoinedAtMs: -5000,
    });
    expect(d.changes).toEqual([{ remove: { nodeId: 'b', name: 'q2' }, add: { nodeId: 'a', name: 'q2' } }]);
    // A coordinator on its first join (a process that just started) does not wait either.
    const first = decideCoordinator(failed, { ...cfg, rejoinGracePeriodMs: 2000 }, newCoordinatorMemory(), 100, self);
    expect(first.changes).toEqual(d.changes);
  });

  it('a coordinator that has just rejoined waits for the nodes that hold grants, until they are back or the grace period ends', () => {
    const cfg = { ...config, rebalanceDebounceMs: 500, rejoinGracePeriodMs: 2000 };
    const young = { ...self, rejoinedAtMs: 1000 };
    const grants = new Map([
      ['q1', ['a']],
      ['q2', ['b']],
      ['q3', ['c']],
    ]);
    const resources = ['q1', 'q2', 'q3'];
    const alone = cview({ members: new Map([['a', member('a')]]), resources, grants, state: state(1) });
    const d1 = decideCoordinator(alone, cfg, newCoordinatorMemory(), 1100, young);
    expect(d1.changes).toEqual([]);
    expect(d1.wakeAtMs).toBe(3000);
    // b and c are back (they take their own resources again): nothing to move.
    const back = cview({
      members: new Map(['a', 'b', 'c'].map((id) => [id, member(id)])),
      resources,
      grants,
      state: state(1),
    });
    expect(decideCoordinator(back, cfg, d1.memory, 1500, young).changes).toEqual([]);
    // c never comes back: its resource moves when the delay ends, not before.
    const twoBack = cview({
      members: new Map(['a', 'b'].map((id) => [id, member(id)])),
      resources,
      grants,
      state: state(1),
    });
    const d2 = decideCoordinator(twoBack, cfg, d1.memory, 2999, young);
    expect(d2.changes).toEqual([]);
    expect(decideCoordinator(twoBack, cfg, d2.memory, 3000, young).moves).toBe(1);
  });
});
