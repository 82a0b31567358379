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

  it('reads asked before the Ready is taken share one heartbeat round', () => {
    const net = new Net(ABC);
    net.elect('a');
    const a = net.get('a');
    const before = net.sent.length;
    for (let i = 0; i < 10; i++) a.core.readIndex(`r${i}`);
    net.stabilize();
    expect(a.readStates).toHaveLength(10);
    expect(net.sent.slice(before).filter((m) => m.type === 'heartbeat')).toHaveLength(2); // one per follower
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

  /** Lease mode: replicas refuse votes for an election timeout after start, so let the election happen by ticks. */
  function leaseNet(preVote = true): { net: Net; lead: string; f1: string; f2: string } {
    const net = new Net(ABC, { readMode: 'lease', leaseTicks: 5, preVote });
    net.tick(30);
    const lead = net.leaders()[0]!.id;
    const [f1, f2] = ABC.filter((id) => id !== lead) as [string, string];
    return { net, lead, f1, f2 };
  }

  it('lease reads: answered at once while a majority answered within leaseTicks, by ReadIndex after', () => {
    const { net, lead } = leaseNet();
    net.tick(1); // a heartbeat round answered by both followers
    const a = net.get(lead);
    const before = net.sent.length;
    a.core.readIndex('lease', true);
    net.flushReadies();
    expect(a.readStates.map((r) => r.ctx)).toEqual(['lease']);
    expect(net.sent.length).toBe(before); // no round needed
    // Cut off from the followers, the lease runs out after leaseTicks.
    net.isolate(lead);
    net.tick(5, [lead]);
    a.core.readIndex('late', true);
    net.flushReadies();
    expect(a.readStates.map((r) => r.ctx)).toEqual(['lease']);
  });

  it('lease reads stop for good in a term where leadership was handed over', () => {
    const { net, lead, f1 } = leaseNet();
    net.tick(1);
    net.filter = (m) => m.type !== 'timeoutNow'; // the transfer message is lost: the leader stays
    net.core(lead).transferLeadership(f1);
    net.stabilize();
    net.tick(12); // the transfer is aborted; it leads on
    expect(net.core(lead).role).toBe('leader');
    expect(net.core(lead).status().transferringTo).toBe('');
    const a = net.get(lead);
    net.isolate(lead);
    a.core.readIndex('after-transfer', true);
    net.flushReadies();
    expect(a.readStates).toEqual([]); // not from the lease: a heartbeat round is needed, and it cannot be had
  });

  it('lease reads: a replica restarted after answering a heartbeat refuses votes for an election timeout', () => {
    const { net, lead, f1, f2 } = leaseNet(false);
    net.tick(1);
    net.restart(f1); // it answered the leader's round, then crashed and came back at once
    net.isolate(lead);
    const b = net.core(f1);
    const term = b.term + 5;
    b.step({ type: 'vote', from: f2, to: f1, term, index: 99, logTerm: 99, transfer: false });
    expect(b.term).not.toBe(term); // ignored while the leader's lease may still run
    for (let i = 0; i < 10; i++) b.tick();
    b.step({ type: 'vote', from: f2, to: f1, term, index: 99, logTerm: 99, transfer: false });
    expect(b.term).toBe(term);
  });
});
