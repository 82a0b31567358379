/**
 * A replica that starts with an empty membership (a node joining a group: openGroup({ join: true })): it never
 * campaigns nor counts a quorum of nobody, answers votes by the usual rules, and takes appends and snapshots from
 * the leader that adds it.
 */
import { describe, expect, it } from 'vitest';
import { MemoryStorage } from '../../../src/raft/index.js';
import { quorumIndex, voteResult } from '../../../src/raft/quorum.js';
import { Net, bytes } from './network.js';

const ABC = ['a', 'b', 'c'];
const EMPTY = { voters: [], learners: [] };

describe('raft core: a replica with an empty membership', () => {
  it('no voters: no quorum index, and no vote result is ever won', () => {
    expect(quorumIndex([], () => 7)).toBe(0);
    expect(voteResult([], new Map([['d', true]]))).toBe('lost');
  });

  it('never campaigns, alone or asked to, and sends nothing', () => {
    const net = new Net(ABC);
    const d = net.add('d', new MemoryStorage(EMPTY));
    net.isolate('d');
    d.core.campaign();
    net.tick(100, ['d']);
    expect(d.core.role).toBe('follower');
    expect(d.core.term).toBe(0);
    expect(net.sent.filter((m) => m.from === 'd')).toEqual([]);
    // A timeout-now (a transfer aimed at it by mistake) does not make it campaign either.
    d.core.step({ type: 'timeoutNow', from: 'a', to: 'd', term: 0 });
    net.flushReadies();
    expect(d.core.role).toBe('follower');
    // Nor does losing a leader it never had.
    d.core.leaderUnreachable('a');
    net.tick(30, ['d']);
    expect(d.core.term).toBe(0);
  });

  it('answers votes by the usual rules: grants an up-to-date candidate once per term, refuses a stale log', () => {
    const net = new Net(ABC);
    const d = net.add('d', new MemoryStorage(EMPTY));
    net.elect('a');
    net.propose('a', 'x');
    net.stabilize();
    // d is empty: a candidate with any log is up to date for it.
    d.core.step({ type: 'vote', from: 'b', to: 'd', term: 5, index: 2, logTerm: 1, transfer: false });
    net.flushReadies();
    const answers = net.queue.filter((m) => m.from === 'd');
    expect(answers).toEqual([{ type: 'voteResponse', from: 'd', to: 'b', term: 5, reject: false }]);
    net.queue = [];
    // Another candidate in the same term: refused (one vote per term).
    d.core.step({ type: 'vote', from: 'c', to: 'd', term: 5, index: 2, logTerm: 1, transfer: false });
    net.flushReadies();
    expect(net.queue.filter((m) => m.from === 'd')).toMatchObject([{ type: 'voteResponse', to: 'c', reject: true }]);
    expect(d.core.vote).toBe('b');
  });

  it('is brought in by the leader: entries when the log is whole, a snapshot once it is compacted', () => {
    const net = new Net(ABC);
    net.elect('a');
    for (const v of ['x', 'y', 'z']) net.propose('a', v);
    net.stabilize();
    // The leader compacts everything applied: d can only get it through a snapshot.
    const a = net.get('a');
    a.storage.createSnapshot(
      a.core.log.applied,
      a.core.membershipAt(a.core.log.applied),
      bytes(JSON.stringify(a.state)),
    );
    const d = net.add('d', new MemoryStorage(EMPTY));
    expect(a.core.changeMembership({ type: 'addLearner', node: 'd' })).toEqual({ ok: true });
    net.stabilize();
    net.tick(3);
    expect(net.stateOf('d')).toEqual(['x', 'y', 'z']);
    expect(d.storage.snapshot().meta.index).toBeGreaterThan(0);
    expect(d.core.membership()).toEqual({ voters: ABC, learners: ['d'] });
    expect(a.core.changeMembership({ type: 'addVoter', node: 'd' })).toEqual({ ok: true });
    net.stabilize();
    net.propose('a', 'w');
    net.stabilize();
    expect(net.stateOf('d')).toEqual(['x', 'y', 'z', 'w']);
    expect(d.core.isVoter()).toBe(true);
    // Promoted, d can lead and bring in the next joiner.
    net.get('a').core.transferLeadership('d');
    net.tick(3);
    expect(d.core.role).toBe('leader');
    const e = net.add('e', new MemoryStorage(EMPTY));
    expect(d.core.changeMembership({ type: 'addLearner', node: 'e' })).toEqual({ ok: true });
    net.stabilize();
    net.tick(3);
    expect(net.stateOf('e')).toEqual(['x', 'y', 'z', 'w']);
    expect(e.core.membership().learners).toEqual(['e']);
  });
});
