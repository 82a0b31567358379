import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, InvariantError } from '../../../src/errors.js';
import { Core, MemoryStorage } from '../../../src/raft/index.js';
import { Net, seeded, storageWith } from './network.js';

const ABC = ['a', 'b', 'c'];

describe('raft election', () => {
  it('a single voter elects itself when its election timeout passes', () => {
    const net = new Net(['a']);
    net.tick(19);
    const a = net.core('a');
    expect(a.role).toBe('leader');
    expect(a.term).toBe(1);
    // Its first entry (empty, of its term) commits once persisted.
    expect(a.log.committed).toBe(1);
  });

  it('three replicas elect exactly one leader, and everyone follows it', () => {
    const net = new Net(ABC);
    net.tick(25);
    const leaders = net.leaders();
    expect(leaders).toHaveLength(1);
    for (const id of ABC) {
      expect(net.core(id).lead).toBe(leaders[0]!.id);
      expect(net.core(id).term).toBe(leaders[0]!.term);
    }
  });

  it('a replica votes at most once per term', () => {
    const net = new Net(ABC, { preVote: false });
    const c = net.core('c');
    c.step({ type: 'vote', from: 'a', to: 'c', term: 1, index: 0, logTerm: 0, transfer: false });
    c.step({ type: 'vote', from: 'b', to: 'c', term: 1, index: 0, logTerm: 0, transfer: false });
    net.flushReadies();
    const answers = net.sent.filter((m) => m.type === 'voteResponse');
    expect(answers.map((m) => [m.to, m.type === 'voteResponse' && m.reject])).toEqual([
      ['a', false],
      ['b', true],
    ]);
    // The vote is in the hard state handed to the host before the answer.
    expect(net.get('c').storage.hardState()).toMatchObject({ term: 1, vote: 'a' });
    // Asking again (a retry) gets the same answer.
    c.step({ type: 'vote', from: 'a', to: 'c', term: 1, index: 0, logTerm: 0, transfer: false });
    net.flushReadies();
    const last = net.sent.at(-1)!;
    expect(last).toMatchObject({ type: 'voteResponse', to: 'a', reject: false });
  });

  it('with lease reads, replicas restarted together and pre-voting in step still elect a leader', () => {
    // A restarted replica ignores votes for one election timeout (a leader it does not know may hold a lease); that
    // must end once it campaigns itself, or pre-candidates whose timers run in step never answer each other.
    // Every replica draws the same first election timeout (12 ticks): their timers run in step from the start.
    let draws = 0;
    const random = (): number => (++draws <= ABC.length ? 0.2 : (draws * 0.377) % 1);
    const net = new Net(ABC, { readMode: 'lease', leaseTicks: 5, random });
    net.tick(12);
    net.stabilize();
    for (let i = 0; i < 30 && net.leaders().length === 0; i++) {
      net.tick(1);
      net.stabilize();
    }
    expect(net.leaders()).toHaveLength(1);
  });

  it('a candidate whose log is behind loses (the election restriction)', () => {
    const net = new Net([]);
    net.add('a', storageWith(ABC, [1], 1));
    net.add('b', storageWith(ABC, [1, 1], 1));
    net.add('c', storageWith(ABC, [1, 1], 1));
    net.core('a').campaign();
    net.stabilize();
    expect(net.core('a').role).not.toBe('leader');
    net.core('b').campaign();
    net.stabilize();
    expect(net.core('b').role).toBe('leader');
  });

  it('split votes: nobody wins a term with two candidates, a later term elects one', () => {
    const net = new Net(['a', 'b', 'c', 'd'], { preVote: false });
    // a and b campaign at once; c votes a, d votes b.
    net.filter = (m) => !((m.from === 'a' && m.to === 'd') || (m.from === 'b' && m.to === 'c'));
    net.core('a').campaign();
    net.core('b').campaign();
    net.stabilize();
    expect(net.leaders()).toHaveLength(0);
    expect(net.core('a').role).toBe('candidate');
    expect(net.core('b').role).toBe('candidate');
    net.filter = () => true;
    net.tick(40);
    expect(net.leaders()).toHaveLength(1);
    expect(net.leaders()[0]!.term).toBeGreaterThan(1);
  });

  it('election timeouts are drawn from the injected source, in [electionTicks, 2 × electionTicks)', () => {
    const timeouts = new Set<number>();
    for (let seed = 1; seed <= 40; seed++) {
      const core = new Core({
        id: 'a',
        storage: new MemoryStorage({ voters: ['a', 'b'], learners: [] }),
        random: seeded(seed),
      });
      let ticks = 0;
      while (core.role === 'follower') {
        core.tick();
        ticks++;
      }
      timeouts.add(ticks);
      expect(ticks).toBeGreaterThanOrEqual(10);
      expect(ticks).toBeLessThan(20);
    }
    expect(timeouts.size).toBeGreaterThan(4); // spread, so that replicas and groups do not campaign in step
    // The same source gives the same timeout: the core has no randomness of its own.
    const run = (): number => {
      const core = new Core({
        id: 'a',
        storage: new MemoryStorage({ voters: ['a', 'b'], learners: [] }),
        random: seeded(9),
      });
      let n = 0;
      while (core.role === 'follower') {
        core.tick();
        n++;
      }
      return n;
    };
    expect(run()).toBe(run());
  });

  it('pre-vote: a partitioned replica does not raise its term, and does not depose the leader when it returns', () => {
    const net = new Net(ABC);
    net.elect('a');
    const term = net.core('a').term;
    net.isolate('c');
    net.tick(100);
    expect(net.core('c').term).toBe(term);
    expect(net.core('c').role).toBe('preCandidate');
    net.heal();
    net.tick(5);
    expect(net.core('a').role).toBe('leader');
    expect(net.core('a').term).toBe(term);
    expect(net.core('c').lead).toBe('a');
  });

  it('without pre-vote the same partitioned replica disrupts the leader when it returns', () => {
    const net = new Net(ABC, { preVote: false, checkQuorum: false });
    net.elect('a');
    const term = net.core('a').term;
    net.isolate('c');
    net.tick(100);
    expect(net.core('c').term).toBeGreaterThan(term);
    net.heal();
    net.tick(1);
    expect(net.core('a').term).toBeGreaterThan(term); // deposed by a replica with a shorter log
  });

  it('check-quorum: a leader cut off from the majority steps down within two election timeouts', () => {
    const net = new Net(ABC);
    net.elect('a');
    net.isolate('a');
    net.tick(20, ['a']);
    expect(net.core('a').role).toBe('follower');
    expect(net.core('a').lead).toBe('');
  });

  it('a follower that hears from its leader ignores vote requests (leader stickiness)', () => {
    const net = new Net(ABC);
    net.elect('a');
    const b = net.core('b');
    const term = b.term;
    b.step({ type: 'vote', from: 'c', to: 'b', term: term + 5, index: 100, logTerm: 100, transfer: false });
    expect(b.term).toBe(term);
    expect(b.hasReady()).toBe(false);
  });

  it('a leader whose disk stalls steps down', () => {
    const net = new Net(ABC);
    net.elect('a');
    const a = net.get('a');
    a.stalled = true;
    net.propose('a', 'x');
    a.core.ready(); // taken, never advanced: the fsync hangs
    for (let i = 0; i < 9; i++) a.core.tick();
    expect(a.core.role).toBe('leader');
    a.core.tick();
    expect(a.core.role).toBe('follower');
    // The others elect a new leader without it.
    net.tick(30, ['b', 'c']);
    expect(net.leaders().map((c) => c.id)).toHaveLength(1);
    expect(net.leaders()[0]!.id).not.toBe('a');
  });

  it('a vote survives a crash: after a restart the replica refuses a second candidate of the same term', () => {
    const net = new Net(ABC, { preVote: false });
    const vote = (from: string) =>
      net.core('c').step({ type: 'vote', from, to: 'c', term: 1, index: 0, logTerm: 0, transfer: false });
    vote('a');
    net.flushReadies();
    net.restart('c');
    vote('b');
    net.flushReadies();
    const grants = net.sent.filter((m) => m.type === 'voteResponse' && !m.reject).map((m) => m.to);
    expect(grants).toEqual(['a']);
  });

  it('a vote is not sent before it is durable: a crash before the disk write loses both', () => {
    const net = new Net(ABC, { preVote: false });
    const vote = (from: string) =>
      net.core('c').step({ type: 'vote', from, to: 'c', term: 1, index: 0, logTerm: 0, transfer: false });
    vote('a');
    const rd = net.core('c').ready();
    // The host may send rd.messages before persisting, then crashes before the write.
    const early = rd.messages;
    net.restart('c');
    vote('b');
    net.flushReadies();
    const grants = [...early, ...net.sent].filter((m) => m.type === 'voteResponse' && !m.reject).map((m) => m.to);
    expect(grants).toEqual(['b']); // never both a and b
  });

  it('illegal calls fail loudly', () => {
    const net = new Net(ABC);
    const a = net.core('a');
    a.campaign();
    a.ready();
    expect(() => a.ready()).toThrow(InvariantError);
    a.advance();
    expect(() => a.advance()).toThrow(InvariantError);
    expect(() =>
      a.step({ type: 'heartbeat', from: 'b', to: 'c', term: 1, commit: 0, round: 1, quiesce: false }),
    ).toThrow(InvariantError);
    expect(() => a.transferLeadership('z')).toThrow(InvalidArgumentError);
    expect(
      () => new Core({ id: 'a', storage: new MemoryStorage(), random: Math.random, electionTicks: 10, leaseTicks: 9 }),
    ).toThrow(/leaseTicks/);
    expect(
      () => new Core({ id: 'a', storage: new MemoryStorage(), random: Math.random, electionTick: 3 } as never),
    ).toThrow(/electionTicks/);
  });

  it('leader unreachable: followers that lost the leader elect another within a few ticks, not an election timeout', () => {
    const net = new Net(ABC);
    net.tick(25);
    const old = net.leaders()[0]!;
    const followers = ABC.filter((id) => id !== old.id);
    net.isolate(old.id);
    for (const id of followers) net.core(id).leaderUnreachable(old.id);
    net.tick(6, followers); // an election timeout is 10–19 ticks
    const now = net.leaders().filter((l) => l.id !== old.id);
    expect(now).toHaveLength(1);
    expect(now[0]!.term).toBeGreaterThan(old.term);
  });

  it('leader unreachable from one follower only: the live leader is not deposed (pre-vote refused)', () => {
    const net = new Net(ABC);
    net.tick(25);
    const leader = net.leaders()[0]!;
    const [f1] = ABC.filter((id) => id !== leader.id) as [string];
    net.core(f1).leaderUnreachable(leader.id);
    net.tick(6);
    expect(net.leaders().map((l) => [l.id, l.term])).toEqual([[leader.id, leader.term]]);
  });

  it('leader unreachable changes nothing with lease reads (their safety rests on the vote refusal)', () => {
    const net = new Net(ABC, { readMode: 'lease' });
    net.tick(25);
    const leader = net.leaders()[0]!;
    const [f1] = ABC.filter((id) => id !== leader.id) as [string];
    net.core(f1).leaderUnreachable(leader.id);
    expect(net.core(f1).lead).toBe(leader.id);
  });
});
