import { describe, expect, it } from 'vitest';
import { InvariantError } from '../../../src/errors.js';
import { Inflights, Progress } from '../../../src/raft/progress.js';
import { RaftLog, MemoryStorage, type Entry } from '../../../src/raft/index.js';
import { quorumIndex, voteResult } from '../../../src/raft/quorum.js';
import { bytes, storageWith } from './network.js';

const entry = (index: number, term: number, data = ''): Entry => ({ index, term, type: 'normal', data: bytes(data) });

describe('raft log', () => {
  it('appends, replaces a conflicting suffix, and never overwrites a committed entry', () => {
    const log = new RaftLog(storageWith(['a'], [1, 1, 2], 2), 0, 0);
    expect(log.maybeAppend(3, 2, 0, [entry(4, 2), entry(5, 2)])).toBe(5);
    expect(log.lastIndex()).toBe(5);
    // A conflicting leader entry at 4 (term 3) truncates 4..5 and appends.
    expect(log.maybeAppend(3, 2, 4, [entry(4, 3)])).toBe(4);
    expect(log.lastIndex()).toBe(4);
    expect(log.term(4)).toBe(3);
    expect(log.committed).toBe(4);
    // An append that does not match (index 4, term 2) is refused.
    expect(log.maybeAppend(4, 2, 4, [entry(5, 2)])).toBeUndefined();
    // Overwriting committed entry 4 is a bug.
    expect(() => log.maybeAppend(3, 2, 4, [entry(4, 5)])).toThrow(InvariantError);
    // The replacement is unstable until the host persists it; a stale stableTo does not drop it.
    log.stableTo(4, 2);
    expect(log.unstableEntries).toHaveLength(1);
    log.stableTo(4, 3);
    expect(log.unstableEntries).toHaveLength(0);
  });

  it('finds where a leader may agree, skipping whole terms', () => {
    const log = new RaftLog(storageWith(['a'], [1, 1, 2, 2, 2, 4, 4, 4, 4], 4), 0, 0);
    expect(log.findConflictByTerm(9, 3)).toEqual({ index: 5, term: 2 });
    expect(log.findConflictByTerm(9, 4)).toEqual({ index: 9, term: 4 });
    expect(log.findConflictByTerm(9, 1)).toEqual({ index: 2, term: 1 });
    expect(log.findConflictByTerm(9, 0)).toEqual({ index: 0, term: 0 });
    expect(log.findConflictByTerm(20, 5)).toEqual({ index: 9, term: 4 });
  });

  it('slices under a byte limit, always at least one entry, across stored and unstable parts', () => {
    const s = new MemoryStorage({ voters: ['a'], learners: [] });
    s.append([entry(1, 1, 'aaaa'), entry(2, 1, 'bbbb')]);
    const log = new RaftLog(s, 0, 0);
    log.append([entry(3, 1, 'cccc'), entry(4, 1, 'dddd')]);
    expect(log.slice(1, 5, 1).map((e) => e.index)).toEqual([1]);
    expect(log.slice(1, 5, 8).map((e) => e.index)).toEqual([1, 2]);
    expect(log.slice(2, 5, 8).map((e) => e.index)).toEqual([2, 3]);
    expect(log.slice(1, 5, 100).map((e) => e.index)).toEqual([1, 2, 3, 4]);
  });

  it('knows the up-to-date rule: a higher last term wins, then a longer log', () => {
    const log = new RaftLog(storageWith(['a'], [1, 2, 2], 2), 0, 0);
    expect(log.isUpToDate(1, 3)).toBe(true);
    expect(log.isUpToDate(3, 2)).toBe(true);
    expect(log.isUpToDate(2, 2)).toBe(false);
    expect(log.isUpToDate(10, 1)).toBe(false);
  });

  it('restarts above a compacted prefix: the snapshot index counts as applied and committed', () => {
    const s = storageWith(['a'], [1, 1, 1, 2], 2);
    s.createSnapshot(3, { voters: ['a'], learners: [] }, bytes('[]'));
    const log = new RaftLog(s, 0, 0);
    expect(log.firstIndex()).toBe(4);
    expect(log.applied).toBe(3);
    expect(log.committed).toBe(3);
    expect(log.term(3)).toBe(1);
    expect(log.term(2)).toBeUndefined();
    expect(() => log.slice(2, 4, 100)).toThrow(InvariantError);
  });
});

describe('raft progress and quorum', () => {
  it('the in-flight window closes on messages or bytes and reopens as acknowledgements arrive', () => {
    const inf = new Inflights(3, 100);
    inf.add(1, 10);
    inf.add(2, 10);
    expect(inf.full()).toBe(false);
    inf.add(3, 10);
    expect(inf.full()).toBe(true);
    inf.freeTo(2);
    expect(inf.count()).toBe(1);
    expect(inf.bytes()).toBe(10);
    inf.add(4, 95);
    expect(inf.full()).toBe(true); // 105 bytes
    expect(() => inf.add(5, 1)).toThrow(InvariantError);
  });

  it('a probing progress backs off on rejection and ignores stale rejections', () => {
    const pr = new Progress(11, new Inflights(4, 1000), false);
    pr.sentEntries(10, 0, 0);
    expect(pr.isPaused()).toBe(true);
    expect(pr.maybeDecrTo(10, 5)).toBe(true);
    expect(pr.next).toBe(6);
    expect(pr.maybeDecrTo(10, 3)).toBe(false); // answers an append we no longer care about
    expect(pr.maybeUpdate(5)).toBe(true);
    pr.becomeReplicate();
    expect(pr.next).toBe(6);
  });

  it('a replica that refuses an entry it acknowledged (opened again empty) is probed from what it holds', () => {
    // Acknowledged up to 69, then its replica was dropped and opened again empty under the same group id: it refuses
    // the probe at 69 and says it holds nothing. Keeping match would probe at 70 for ever.
    const pr = new Progress(70, new Inflights(4, 1000), false);
    expect(pr.maybeUpdate(69)).toBe(true);
    pr.becomeProbe();
    expect(pr.next).toBe(70);
    pr.sentEntries(69, 0, 0);
    expect(pr.maybeDecrTo(69, 0)).toBe(true);
    expect(pr.match).toBe(0);
    expect(pr.next).toBe(1);
    // A refusal of an older append (reordered on the wire) still changes nothing.
    expect(pr.maybeDecrTo(40, 0)).toBe(false);
    expect(pr.next).toBe(1);
  });

  it('majorities: the commit index is the highest a majority holds; votes are won, lost or pending', () => {
    const m = new Map([
      ['a', 5],
      ['b', 3],
      ['c', 9],
      ['d', 1],
      ['e', 7],
    ]);
    expect(quorumIndex(['a', 'b', 'c', 'd', 'e'], (id) => m.get(id)!)).toBe(5);
    expect(quorumIndex(['a', 'b'], (id) => m.get(id)!)).toBe(3);
    const votes = new Map([
      ['a', true],
      ['b', false],
    ]);
    expect(voteResult(['a', 'b', 'c'], votes)).toBe('pending');
    votes.set('c', false);
    expect(voteResult(['a', 'b', 'c'], votes)).toBe('lost');
    votes.set('c', true);
    expect(voteResult(['a', 'b', 'c'], votes)).toBe('won');
  });
});
