import { describe, expect, it } from 'vitest';
import { coalesceAppends } from '../../../src/raft/core.js';
import type { AppendMessage, Entry, Message } from '../../../src/raft/index.js';
import { bytes, Net, storageWith } from './network.js';

const ABC = ['a', 'b', 'c'];
const FIVE = ['s1', 's2', 's3', 's4', 's5'];

describe('raft log replication', () => {
  it('a proposal is committed and applied on every replica, in the same order', () => {
    const net = new Net(ABC);
    net.elect('a');
    for (const x of ['x', 'y', 'z']) net.propose('a', x);
    net.stabilize();
    for (const id of ABC) expect(net.stateOf(id)).toEqual(['x', 'y', 'z']);
  });

  it('a proposal made on a follower is forwarded to the leader', () => {
    const net = new Net(ABC);
    net.elect('a');
    net.propose('b', 'from-b');
    net.stabilize();
    for (const id of ABC) expect(net.stateOf(id)).toEqual(['from-b']);
    expect(net.sent.some((m) => m.type === 'propose' && m.from === 'b' && m.to === 'a')).toBe(true);
  });

  it('a proposal with no known leader, or above the size limit, is refused with a reason', () => {
    const net = new Net(ABC, { maxProposalBytes: 4 });
    expect(net.core('a').propose(bytes('x'))).toMatchObject({ ok: false, reason: 'no-leader' });
    net.elect('a');
    expect(net.core('a').propose(bytes('12345'))).toMatchObject({ ok: false, reason: 'too-large' });
  });

  it('the leader counts itself only once its own Ready is persisted', () => {
    const net = new Net(['a']);
    net.elect('a');
    const a = net.core('a');
    a.propose(bytes('x'));
    expect(a.log.committed).toBe(1);
    const rd = a.ready();
    expect(rd.entries).toHaveLength(1);
    expect(rd.committedEntries).toHaveLength(0);
    net.get('a').storage.append(rd.entries);
    a.advance();
    expect(a.log.committed).toBe(2);
  });

  it('a follower missing entries catches up; one with extra entries of an old term has them replaced', () => {
    // Figure 7 of the Raft paper, shortened: the leader (term 8) and followers that lack entries, hold extra
    // uncommitted ones of older terms, or both.
    const leaderLog = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    const followers: Record<string, number[]> = {
      a: [1, 1, 1, 4, 4, 5, 5, 6, 6], // missing one
      b: [1, 1, 1, 4], // missing many
      c: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6], // one extra of term 6
      d: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], // extra of term 7
      e: [1, 1, 1, 4, 4, 4, 4], // extra of term 4
      f: [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3], // extra of terms 2 and 3
    };
    for (const [id, log] of Object.entries(followers)) {
      // A third replica holding the leader's log gives it the majority even when the follower's log is longer.
      const voters = ['lead', 'h', id];
      const net = new Net([]);
      net.add('lead', storageWith(voters, leaderLog, 7));
      net.add('h', storageWith(voters, leaderLog, 7));
      net.add(id, storageWith(voters, log, 7));
      const lead = net.core('lead');
      lead.campaign();
      net.stabilize();
      expect(lead.role).toBe('leader');
      net.propose('lead', 'new');
      net.stabilize();
      expect(net.logTerms(id)).toEqual(net.logTerms('lead'));
      expect(net.core(id).log.committed).toBe(leaderLog.length + 2);
    }
  });

  it('figure 8: an entry of a previous term is never committed by counting replicas', () => {
    // s1 leads term 2 and put entry 2 (term 2) on s2 only; s5 led term 3 with entry 2 (term 3) on itself only.
    const net = new Net([]);
    net.add('s1', storageWith(FIVE, [1, 2], 3));
    net.add('s2', storageWith(FIVE, [1, 2], 3));
    net.add('s3', storageWith(FIVE, [1], 3));
    net.add('s4', storageWith(FIVE, [1], 3));
    net.add('s5', storageWith(FIVE, [1, 3], 3));
    for (const id of FIVE) net.get(id).storage.setHardState({ term: 3, vote: '', commit: 1 });
    for (const id of FIVE) net.restart(id);
    // s1 is elected for term 4 by s2, s3, s4 (s5 is cut off), and appends its empty entry 3 (term 4).
    net.isolate('s5');
    net.filter = (m) => m.type !== 'append';
    net.elect('s1');
    const s1 = net.core('s1');
    expect(s1.role).toBe('leader');
    expect(s1.term).toBe(4);
    // s3 acknowledges entry 2 only (it got the term-2 entry but not yet the term-4 one): entry 2 is now on s1, s2
    // and s3 — a majority — but it is of term 2, so it must not be committed by counting.
    s1.step({
      type: 'appendResponse',
      from: 's3',
      to: 's1',
      term: 4,
      index: 2,
      reject: false,
      hintIndex: 0,
      hintTerm: 0,
    });
    s1.step({
      type: 'appendResponse',
      from: 's2',
      to: 's1',
      term: 4,
      index: 2,
      reject: false,
      hintIndex: 0,
      hintTerm: 0,
    });
    net.flushReadies();
    expect(s1.log.committed).toBe(1);
    // Had s1 committed it, s5 (whose log ends in term 3) could still be elected by s2, s3, s4 and erase it.
    // Once an entry of term 4 reaches a majority, both commit.
    s1.step({
      type: 'appendResponse',
      from: 's3',
      to: 's1',
      term: 4,
      index: 3,
      reject: false,
      hintIndex: 0,
      hintTerm: 0,
    });
    net.flushReadies();
    expect(s1.log.committed).toBe(1); // s1 and s3 hold entry 3: not yet a majority
    s1.step({
      type: 'appendResponse',
      from: 's2',
      to: 's1',
      term: 4,
      index: 3,
      reject: false,
      hintIndex: 0,
      hintTerm: 0,
    });
    net.flushReadies();
    expect(s1.log.committed).toBe(3);
  });

  it('a follower that rejects an append sends a hint that skips a whole conflicting term', () => {
    const net = new Net([]);
    net.add('a', storageWith(['a', 'b'], [1, 1, 5, 5, 5, 5], 5));
    net.add('b', storageWith(['a', 'b'], [1, 1, 2, 2, 2, 2, 2, 2, 2, 2], 4));
    net.elect('a');
    expect(net.core('a').role).toBe('leader');
    net.stabilize();
    expect(net.logTerms('b')).toEqual(net.logTerms('a'));
    // The leader needed few appends to find where the logs agree, not one per conflicting entry.
    const appends = net.sent.filter((m): m is AppendMessage => m.type === 'append' && m.to === 'b');
    expect(appends.length).toBeLessThanOrEqual(4);
  });

  it('a replica restarted from its storage keeps its term, vote and log, and catches up', () => {
    const net = new Net(ABC);
    net.elect('a');
    net.propose('a', 'x');
    net.stabilize();
    net.isolate('c');
    net.propose('a', 'y');
    net.stabilize();
    const before = net.core('c').status();
    net.restart('c');
    expect(net.core('c').status()).toMatchObject({ term: before.term, vote: before.vote, lastIndex: before.lastIndex });
    net.heal();
    net.tick(3);
    expect(net.stateOf('c')).toEqual(['x', 'y']);
  });
});

describe('coalesceAppends (one Ready, one append per follower)', () => {
  const entry = (index: number, term: number, data = 'x'): Entry => ({
    index,
    term,
    type: 'normal',
    data: bytes(data),
  });
  const append = (to: string, index: number, logTerm: number, entries: Entry[], commit: number): AppendMessage => ({
    type: 'append',
    from: 'a',
    to,
    term: 2,
    index,
    logTerm,
    entries,
    commit,
  });

  it('merges an append that continues the previous one to the same peer, keeping the later commit', () => {
    const out = coalesceAppends(
      [
        append('b', 4, 2, [entry(5, 2)], 4),
        append('c', 4, 2, [entry(5, 2)], 4),
        append('b', 5, 2, [], 5), // the commit advance
        append('b', 5, 2, [entry(6, 2)], 5), // the next proposal
      ],
      1 << 20,
    );
    expect(out).toEqual([append('b', 4, 2, [entry(5, 2), entry(6, 2)], 5), append('c', 4, 2, [entry(5, 2)], 4)]);
  });

  it('keeps apart what does not continue, what another kind of message separates, and what would not fit', () => {
    const gap = [append('b', 4, 2, [entry(5, 2)], 4), append('b', 6, 2, [entry(7, 2)], 4)];
    expect(coalesceAppends(gap, 1 << 20)).toEqual(gap);
    const otherTerm = [append('b', 4, 2, [entry(5, 2)], 4), append('b', 5, 1, [entry(6, 2)], 4)];
    expect(coalesceAppends(otherTerm, 1 << 20)).toEqual(otherTerm);
    const between: Message[] = [
      append('b', 4, 2, [entry(5, 2)], 4),
      { type: 'timeoutNow', from: 'a', to: 'b', term: 2 },
      append('b', 5, 2, [entry(6, 2)], 4),
    ];
    expect(coalesceAppends(between, 1 << 20)).toEqual(between);
    const big = [append('b', 4, 2, [entry(5, 2, 'xxxx')], 4), append('b', 5, 2, [entry(6, 2, 'yyyy')], 4)];
    expect(coalesceAppends(big, 6)).toEqual(big);
  });

  it('a leader whose Ready waited hands each follower one append carrying every entry', () => {
    const net = new Net(ABC);
    net.elect('a');
    for (const x of ['x', 'y', 'z']) net.core('a').propose(bytes(x));
    const rd = net.core('a').ready();
    const toB = rd.messages.filter((m) => m.type === 'append' && m.to === 'b');
    expect(toB).toHaveLength(1);
    expect(toB[0]!.type === 'append' && toB[0]!.entries.map((e) => e.index)).toEqual([2, 3, 4]);
    net.core('a').advance();
  });
});
