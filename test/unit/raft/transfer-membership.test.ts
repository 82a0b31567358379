import { describe, expect, it } from 'vitest';
import { MemoryStorage } from '../../../src/raft/index.js';
import { bytes, Net } from './network.js';

const ABC = ['a', 'b', 'c'];

describe('raft leadership transfer', () => {
  it('hands leadership to an up-to-date follower at once, without waiting for a timeout', () => {
    const net = new Net(ABC);
    net.elect('a');
    const term = net.core('a').term;
    net.core('a').transferLeadership('b');
    net.stabilize();
    expect(net.core('b').role).toBe('leader');
    expect(net.core('b').term).toBe(term + 1);
    expect(net.core('a').role).toBe('follower');
  });

  it('brings a lagging follower up to date first, then hands over', () => {
    const net = new Net(ABC);
    net.elect('a');
    net.isolate('c');
    for (const x of ['1', '2', '3']) net.propose('a', x);
    net.stabilize();
    net.heal();
    net.core('a').transferLeadership('c');
    expect(net.core('a').propose(bytes('during'))).toMatchObject({ ok: false, reason: 'transferring' });
    net.stabilize();
    expect(net.core('c').role).toBe('leader');
    expect(net.stateOf('c')).toEqual(['1', '2', '3']);
  });

  it('is aborted after an election timeout when the target does not take over', () => {
    const net = new Net(ABC);
    net.elect('a');
    net.isolate('c');
    net.core('a').transferLeadership('c');
    net.stabilize();
    expect(net.core('a').status().transferringTo).toBe('c');
    net.tick(10, ['a', 'b']);
    expect(net.core('a').role).toBe('leader');
    expect(net.core('a').status().transferringTo).toBe('');
    net.propose('a', 'after');
    net.stabilize();
    expect(net.stateOf('b')).toEqual(['after']);
  });

  it('can be asked on a follower (forwarded to the leader)', () => {
    const net = new Net(ABC);
    net.elect('a');
    net.core('b').transferLeadership('c');
    net.stabilize();
    expect(net.core('c').role).toBe('leader');
  });
});

describe('raft membership changes', () => {
  it('adds a learner that receives the log without voting, then promotes it to voter', () => {
    const net = new Net(ABC);
    net.elect('a');
    net.propose('a', 'x');
    net.stabilize();
    net.add('d', new MemoryStorage());
    expect(net.core('a').changeMembership({ type: 'addLearner', node: 'd' })).toEqual({ ok: true });
    net.stabilize();
    expect(net.core('a').membership()).toEqual({ voters: ABC, learners: ['d'] });
    net.tick(2);
    expect(net.stateOf('d')).toEqual(['x']);
    expect(net.core('d').membership()).toEqual({ voters: ABC, learners: ['d'] });
    // A learner never campaigns.
    net.isolate('d');
    net.tick(50, ['d']);
    expect(net.core('d').role).toBe('follower');
    net.heal();
    expect(net.core('a').changeMembership({ type: 'addVoter', node: 'd' })).toEqual({ ok: true });
    net.stabilize();
    expect(net.core('a').membership()).toEqual({ voters: ['a', 'b', 'c', 'd'], learners: [] });
    // Now d counts: with b and c down, a and d are not a majority of four.
    net.isolate('b');
    net.isolate('c');
    net.propose('a', 'y');
    net.stabilize();
    expect(net.stateOf('d')).toEqual(['x']);
  });

  it('accepts one change at a time: the next only once the previous is applied', () => {
    const net = new Net(ABC);
    net.elect('a');
    net.add('d', new MemoryStorage());
    net.add('e', new MemoryStorage());
    const a = net.core('a');
    expect(a.changeMembership({ type: 'addLearner', node: 'd' })).toEqual({ ok: true });
    expect(a.changeMembership({ type: 'addLearner', node: 'e' })).toMatchObject({
      ok: false,
      reason: 'membership-pending',
    });
    net.stabilize();
    expect(a.changeMembership({ type: 'addLearner', node: 'e' })).toEqual({ ok: true });
    expect(a.changeMembership({ type: 'addLearner', node: 'e' })).toMatchObject({ ok: false });
    expect(a.changeMembership({ type: 'remove', node: 'zz' })).toMatchObject({ reason: 'invalid-membership-change' });
  });

  it('a new leader changes membership only after committing an entry of its term', () => {
    const net = new Net(ABC);
    net.filter = (m) => m.type !== 'appendResponse';
    net.elect('a');
    expect(net.core('a').role).toBe('leader');
    expect(net.core('a').changeMembership({ type: 'remove', node: 'c' })).toMatchObject({
      ok: false,
      reason: 'membership-pending',
    });
    net.filter = () => true;
    net.tick(1);
    expect(net.core('a').changeMembership({ type: 'remove', node: 'c' })).toEqual({ ok: true });
  });

  it('removes a voter: the rest commit without it', () => {
    const net = new Net(ABC);
    net.elect('a');
    net.core('a').changeMembership({ type: 'remove', node: 'c' });
    net.stabilize();
    expect(net.core('a').membership().voters).toEqual(['a', 'b']);
    net.isolate('c');
    net.propose('a', 'x');
    net.stabilize();
    expect(net.stateOf('b')).toEqual(['x']);
    // The removed replica, cut off, never disturbs the group: it is not a voter in its own eyes either.
    net.tick(50, ['c']);
    expect(net.core('c').role).toBe('follower');
  });

  it('removing the leader: it hands leadership to the most up-to-date remaining voter, then steps down', () => {
    const net = new Net(ABC);
    net.elect('a');
    net.core('a').changeMembership({ type: 'remove', node: 'a' });
    net.stabilize();
    const leaders = net.leaders().filter((c) => c.id !== 'a');
    expect(leaders).toHaveLength(1); // at once, without waiting for an election timeout
    net.tick(1);
    expect(net.core('a').role).toBe('follower'); // its heartbeat is answered with the new term
    const lead = leaders[0]!.id;
    net.propose(lead, 'x');
    net.stabilize();
    expect(net.stateOf('b')).toEqual(['x']);
    expect(net.stateOf('c')).toEqual(['x']);
    expect(net.stateOf('a')).toEqual([]);
  });

  it('a removed leader whose successor does not know the change is committed still hands over', () => {
    // b and c hear of the commit only through the handover: a's commit index reaches them late.
    const net = new Net(ABC);
    net.elect('a');
    net.core('a').changeMembership({ type: 'remove', node: 'a' });
    net.flushReadies();
    // Deliver a's appends, then the acknowledgements, but hold every message that would tell b and c the commit.
    net.deliverOnce();
    net.flushReadies();
    net.deliverOnce(); // acks reach a: a commits and applies its removal
    net.flushReadies();
    expect(net.core('a').membership().voters).toEqual(['b', 'c']);
    expect(net.core('b').log.committed).toBeLessThan(net.core('a').log.committed);
    net.stabilize();
    expect(net.leaders().filter((c) => c.id !== 'a')).toHaveLength(1);
  });

  it('a new voter added while behind catches up, and the group keeps a majority throughout', () => {
    const net = new Net(['a']);
    net.elect('a');
    for (const x of ['1', '2']) net.propose('a', x);
    net.stabilize();
    net.add('b', new MemoryStorage());
    net.core('a').changeMembership({ type: 'addVoter', node: 'b' });
    net.stabilize();
    net.add('c', new MemoryStorage());
    net.core('a').changeMembership({ type: 'addVoter', node: 'c' });
    net.stabilize();
    for (const id of ABC) expect(net.core(id).membership()).toEqual({ voters: ABC, learners: [] });
    expect(net.stateOf('c')).toEqual(['1', '2']);
  });

  it('a learner that does not yet know it was promoted still votes (else the new majority could be stuck)', () => {
    const net = new Net(['a', 'b']);
    net.elect('a');
    net.add('c', new MemoryStorage());
    net.core('a').changeMembership({ type: 'addLearner', node: 'c' });
    net.stabilize();
    net.tick(2);
    // Promote c, but c never hears of it.
    net.cut('a', 'c');
    net.core('a').changeMembership({ type: 'addVoter', node: 'c' });
    net.stabilize();
    net.tick(1);
    expect(net.core('b').membership().voters).toEqual(['a', 'b', 'c']);
    expect(net.core('c').membership().learners).toEqual(['c']);
    // a dies; b needs c's vote to make a majority of {a, b, c}.
    net.isolate('a');
    net.tick(40, ['b', 'c']);
    expect(net.core('b').role).toBe('leader');
    net.tick(2, ['b', 'c']);
    expect(net.core('c').membership().voters).toEqual(['a', 'b', 'c']);
  });

  it('a replica removed by an entry not known to be committed may still campaign: it may hold the longest log', () => {
    const net = new Net(['a', 'b'], { preVote: false });
    net.elect('a');
    net.propose('a', 'x');
    net.stabilize();
    // a removes itself; the entry stays on a alone (its appends to b are lost).
    net.filter = (m) => !(m.type === 'append' && m.to === 'b');
    net.core('a').changeMembership({ type: 'remove', node: 'a' });
    net.stabilize();
    expect(net.core('a').membership().voters).toEqual(['b']);
    expect(net.core('b').membership().voters).toEqual(['a', 'b']);
    // a loses its leadership to b's campaigns, but b needs a's vote, and a's log is longer.
    net.isolate('a');
    net.tick(30, ['b']);
    net.heal();
    net.filter = () => true;
    net.tick(60);
    // a campaigned (not counting itself), won b's vote, committed its removal, and handed over to b.
    expect(net.core('b').role).toBe('leader');
    expect(net.core('b').membership().voters).toEqual(['b']);
    net.propose('b', 'y');
    net.stabilize();
    expect(net.stateOf('b')).toEqual(['x', 'y']);
  });

  it('a Ready that changes the term or vote sends nothing before it is durable (a single voter elects itself)', () => {
    const net = new Net(['a']);
    net.add('l', new MemoryStorage());
    net.elect('a');
    net.core('a').changeMembership({ type: 'addLearner', node: 'l' });
    net.stabilize();
    net.restart('a'); // it campaigns again: a single voter wins in one step
    const c = net.core('a');
    c.campaign();
    expect(c.role).toBe('leader');
    const rd = c.ready();
    expect(rd.hardState?.vote).toBe('a');
    expect(rd.messages).toEqual([]);
    expect(rd.messagesAfterPersist.some((m) => m.type === 'append' && m.to === 'l')).toBe(true);
  });
});
