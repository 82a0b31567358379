/**
 * A replica that lost its durable state holds its votes (Core.holdVotes, docs/raft.md "A node that lost its
 * data"): without the hold it votes twice in one term and two leaders of that term can exist; with it, it waits
 * for a leader, catches up, persists, and one more maximum election timeout before voting again.
 */
import { describe, expect, it } from 'vitest';
import { MemoryStorage, type Message } from '../../../src/raft/index.js';
import { Net } from './network.js';

const ABC = ['a', 'b', 'c'];
const vote = (from: string, term: number, index = 0, logTerm = 0): Message => ({
  type: 'vote',
  from,
  to: 'c',
  term,
  index,
  logTerm,
  transfer: false,
});

/** c votes for a in term 5 (durably), then loses its data directory and comes back empty. */
function wipedAfterVoting(hold: boolean): Net {
  const net = new Net(ABC, { preVote: false });
  net.core('c').step(vote('a', 5));
  net.flushReadies();
  expect(net.get('c').storage.hardState()).toMatchObject({ term: 5, vote: 'a' });
  net.queue = [];
  const fresh = net.restart('c');
  // The restart reads the same storage; a wipe gives it an empty one.
  const wiped = net.add('c', new MemoryStorage({ voters: ABC, learners: [] }));
  expect(fresh).not.toBe(wiped);
  if (hold) wiped.core.holdVotes('leader-seen');
  return net;
}

function grants(net: Net, to: string): boolean[] {
  return net.sent.flatMap((m) => (m.type === 'voteResponse' && m.from === 'c' && m.to === to ? [!m.reject] : []));
}

describe('raft vote hold after data loss', () => {
  it('without the hold, a wiped replica votes a second time in the same term (two leaders possible)', () => {
    const net = wipedAfterVoting(false);
    net.core('c').step(vote('b', 5));
    net.flushReadies();
    expect(grants(net, 'a')).toEqual([true]);
    expect(grants(net, 'b')).toEqual([true]); // a ∪ {c} and b ∪ {c}: both majorities of term 5
  });

  it('with the hold, it refuses votes and pre-votes and does not campaign', () => {
    const net = wipedAfterVoting(true);
    const c = net.core('c');
    c.step(vote('b', 5));
    c.step({ type: 'preVote', from: 'b', to: 'c', term: 6, index: 0, logTerm: 0, transfer: false });
    net.flushReadies();
    expect(grants(net, 'b')).toEqual([false]);
    expect(net.sent.flatMap((m) => (m.type === 'preVoteResponse' && m.from === 'c' ? [m.reject] : []))).toEqual([true]);
    expect(c.votesHeld()).toBe('leader-seen');
    for (let i = 0; i < 100; i++) c.tick();
    c.campaign();
    c.step({ type: 'timeoutNow', from: 'a', to: 'c', term: c.term });
    net.flushReadies();
    expect(c.role).toBe('follower');
    expect(net.sent.filter((m) => m.from === 'c' && (m.type === 'vote' || m.type === 'preVote'))).toEqual([]);
    expect(c.status().votesHeld).toBe('leader-seen');
  });

  it('it votes again only after hearing a leader, catching up, persisting, and 2 × electionTicks more ticks', () => {
    const net = wipedAfterVoting(true);
    net.queue = [];
    net.isolate('c');
    // a and b elect a leader of a higher term and commit entries c does not have.
    net.elect('a');
    net.propose('a', 'x');
    net.propose('a', 'y');
    net.stabilize();
    const a = net.core('a');
    expect(a.role).toBe('leader');
    expect(a.log.committed).toBeGreaterThanOrEqual(3);
    const c = net.core('c');
    expect(c.votesHeld()).toBe('leader-seen');
    // c hears the leader and catches up; its disk is slow at first: nothing counts before it is durable.
    net.heal();
    net.get('c').stalled = true;
    net.propose('a', 'z');
    for (let i = 0; i < 5; i++) {
      a.tick();
      net.deliverOnce();
      for (const id of ['a', 'b']) if (net.get(id).core.hasReady()) net.handleReady(net.get(id));
    }
    expect(c.lead).toBe('a');
    for (let i = 0; i < 40; i++) c.tick();
    expect(c.votesHeld()).toBe('leader-seen');
    net.get('c').stalled = false;
    net.stabilize();
    expect(net.stateOf('c')).toEqual(['x', 'y', 'z']);
    // Durable and caught up: one more maximum election timeout (electionTicks = 10 in Net) to go.
    for (let i = 0; i < 19; i++) c.tick();
    expect(c.votesHeld()).toBe('leader-seen');
    c.tick();
    expect(c.votesHeld()).toBeUndefined();
    // Now it votes normally: for a candidate with an up-to-date log in a new term (c, ticked alone, may have
    // started an election of its own by now: it is free to).
    const before = grants(net, 'b').length;
    c.step(vote('b', Math.max(a.term, c.term) + 1, a.log.lastIndex(), a.log.lastTerm()));
    net.flushReadies();
    expect(grants(net, 'b').slice(before)).toEqual([true]);
  });

  it('a heartbeat alone does not end the hold: the leader must show its commit index in an append', () => {
    const net = wipedAfterVoting(true);
    const c = net.core('c');
    c.step({ type: 'heartbeat', from: 'a', to: 'c', term: 7, commit: 0, round: 1, quiesce: false });
    net.flushReadies();
    for (let i = 0; i < 50; i++) c.tick();
    expect(c.votesHeld()).toBe('leader-seen');
  });

  it("a 'released' hold ends with releaseVotes(); a leader or candidate that is held steps down", () => {
    const net = new Net(ABC);
    net.elect('a');
    const a = net.core('a');
    a.holdVotes('released');
    expect(a.role).toBe('follower');
    expect(a.votesHeld()).toBe('released');
    a.campaign();
    expect(a.role).toBe('follower');
    a.releaseVotes();
    expect(a.votesHeld()).toBeUndefined();
    // The others heard a leader a moment ago and refuse pre-votes for a while; then one of them is elected.
    net.tick(30);
    expect(net.leaders()).toHaveLength(1);
  });
});

describe('raft leader and a follower that lost its data', () => {
  it('catches the wiped follower up once told (peerLostData); without it, it would probe above its empty log', () => {
    const net = new Net(ABC);
    net.elect('a');
    net.propose('a', 'x');
    net.stabilize();
    const c = net.add('c', new MemoryStorage({ voters: ABC, learners: [] }));
    c.core.holdVotes('leader-seen');
    net.core('a').peerLostData('c');
    net.core('b').peerLostData('c'); // a follower has nothing to forget
    net.propose('a', 'y');
    net.tick(5);
    expect(net.stateOf('c')).toEqual(['x', 'y']);
    expect(net.core('a').leader!.progress.get('c')!.match).toBe(net.core('a').log.lastIndex());
    net.tick(2 * 10);
    expect(c.core.votesHeld()).toBeUndefined();
  });
});
