import { describe, expect, it } from 'vitest';
import { Net, storageWith } from './network.js';

const ABC = ['a', 'b', 'c'];

describe('raft ReadIndex and lease reads', () => {
  it('a leader answers a read with its commit index once a majority confirms it still leads', () => {
    const net = new Net(ABC);
    net.elect('a');
    net.propose('a', 'x');
    net.stabilize();
    const a = net.get('a');
    a.core.readIndex('r1');
    net.flushReadies();
    expect(a.readStates).toEqual([]); // not before a heartbeat round is answered
    net.stabilize();
    expect(a.readStates).toEqual([{ ctx: 'r1', index: a.core.log.committed }]);
  });

  it('one answer from a majority is enough (a cut-off minority does not block reads)', () => {
    const net = new Net(ABC);
    net.elect('a');
    net.isolate('c');
    net.get('a').core.readIndex('r');
    net.stabilize();
    expect(net.get('a').readStates.map((r) => r.ctx)).toEqual(['r']);
  });

  it('a deposed leader cut off from the majority never answers', () => {
    const net = new Net(ABC);
    net.elect('a');
    net.isolate('a');
    // b and c elect b and commit a write a does not know of.
    net.tick(30, ['b', 'c']);
    const fresh = net.leaders().find((c) => c.id !== 'a')!;
    expect(fresh).toBeDefined();
    net.propose(fresh.id, 'w');
    net.stabilize();
    // a still believes it leads (it has not ticked); its read must not be answered.
    expect(net.core('a').role).toBe('leader');
    net.get('a').core.readIndex('stale');
    net.stabilize();
    net.tick(3, ['a']);
    expect(net.get('a').readStates).toEqual([]);
  });

  it('a new leader that has not committed an entry of its term holds reads until it has', () => {
    const net = new Net([]);
    for (const id of ABC) net.add(id, storageWith(ABC, [1, 1], 1));
    // Entries of the earlier term are on every replica but nobody knows whether they are committed.
    net.filter = (m) => m.type !== 'append' && m.type !== 'appendResponse';
    net.elect('a');
    const a = net.get('a');
    expect(a.core.role).toBe('leader');
    a.core.readIndex('early');
    net.stabilize();
    expect(a.readStates).toEqual([]);
    net.filter = () => true;
    net.tick(1);
    expect(a.readStates).toEqual([{ ctx: 'early', index: 3 }]);
  });

  it('a read asked on a follower is answered through the leader', () => {
    const net = new Net(ABC);
    net.elect('a');
    net.propose('a', 'x');
    net.stabilize();
    expect(net.core('b').readIndex('fr')).toEqual({ ok: true });
    net.stabilize();
    expect(net.get('b').readStates).toEqual([{ ctx: 'fr', index: net.core('a').log.committed }]);
    expect(net.core('c').readIndex('x')).toEqual({ ok: true });
    const lone = new Net(ABC);
    expect(lone.core('b').readIndex('r')).toMatchObject({ ok: false, reason: 'no-leader' });
  });

  it('lease reads: answered at once while a majority answered within leaseTicks, by ReadIndex after', () => {
    const net = new Net(ABC, { readMode: 'lease', leaseTicks: 5 });
    net.elect('a');
    net.tick(1); // a heartbeat round answered by both followers
    const a = net.get('a');
    const before = net.sent.length;
    a.core.readIndex('lease');
    net.flushReadies();
    expect(a.readStates.map((r) => r.ctx)).toEqual(['lease']);
    expect(net.sent.length).toBe(before); // no round needed
    // Cut off from the followers, the lease runs out after leaseTicks.
    net.isolate('a');
    net.tick(5, ['a']);
    a.core.readIndex('late');
    net.flushReadies();
    expect(a.readStates.map((r) => r.ctx)).toEqual(['lease']);
  });

  it('lease reads stop for good in a term where leadership was handed over', () => {
    const net = new Net(ABC, { readMode: 'lease', leaseTicks: 5 });
    net.elect('a');
    net.tick(1);
    net.filter = (m) => m.type !== 'timeoutNow'; // the transfer message is lost: a stays leader
    net.core('a').transferLeadership('b');
    net.stabilize();
    net.tick(12); // the transfer is aborted; a leads on
    expect(net.core('a').role).toBe('leader');
    expect(net.core('a').status().transferringTo).toBe('');
    const a = net.get('a');
    net.isolate('a');
    a.core.readIndex('after-transfer');
    net.flushReadies();
    expect(a.readStates).toEqual([]); // not from the lease: a heartbeat round is needed, and it cannot be had
  });
});
