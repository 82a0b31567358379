/**
 * Each Raft mutant (src/raft/mutants.ts) in a crafted scenario: with the correct code the scenario keeps its safety
 * property; with the mutant on, the same steps break it. The simulator must catch them on random schedules; these
 * show that each mutant really is wrong, and that the hook is where it should be.
 */
import { describe, expect, it } from 'vitest';
import {
  Core,
  MemoryStorage,
  isRaftMutantName,
  type Message,
  type NodeId,
  type RaftMutantName,
  type RaftMutants,
} from '../../../src/raft/index.js';
import { SimDisk, Wal, type GroupStorage } from '../../../src/raft/wal/index.js';
import { Net, bytes, seeded, text } from './network.js';

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));
const on = (name: RaftMutantName): RaftMutants => new Set([name]);
const NONE: RaftMutants = new Set();

/** Indexes at which two replicas applied different entries (state-machine safety), with what each applied. */
function conflictingCommits(net: Net): string[] {
  const seen = new Map<number, { id: NodeId; what: string }>();
  const out: string[] = [];
  for (const r of net.replicas.values()) {
    for (const e of r.applied) {
      const what = `term ${e.term} ${JSON.stringify(text(e.data))}`;
      const first = seen.get(e.index);
      if (first === undefined) seen.set(e.index, { id: r.id, what });
      else if (first.what !== what) out.push(`${e.index}: ${first.id} applied ${first.what}, ${r.id} ${what}`);
    }
  }
  return out;
}

describe('raft mutants', () => {
  it('names and the option check', async () => {
    expect(isRaftMutantName('raft-commit-by-counting')).toBe(true);
    expect(isRaftMutantName('commit-by-counting')).toBe(false);
    const storage = new MemoryStorage({ voters: ['a'], learners: [] });
    expect(
      () => new Core({ id: 'a', storage, random: () => 0, mutants: new Set(['nope']) as unknown as RaftMutants }),
    ).toThrow(/mutants holds "nope"/);
    await expect(Wal.open(new SimDisk(() => 0), { mutants: ['x'] as unknown as RaftMutants })).rejects.toThrow(
      /mutants must be a Set/,
    );
  });

  describe('raft-commit-by-counting (figure 8 of the Raft paper)', () => {
    /**
     * s1 (term 1) leaves entry A at index 2 on s2 only; s5 (term 2) writes its own index 2 alone; s1 comes back in
     * term 3 and brings index 2 to s3 and s4, but never its term-3 entry (those appends are lost). Counting replicas,
     * it commits A. Then s5 comes back in term 4 (its last term, 2, beats everyone's 1) and overwrites index 2.
     */
    function figure8(mutants: RaftMutants): Net {
      const ids = ['s1', 's2', 's3', 's4', 's5'];
      // maxMessageBytes 1 and a 2-byte A: an append carrying A carries nothing else, so that index 2 can arrive
      // without index 3.
      const net = new Net(ids, { preVote: false, checkQuorum: false, maxMessageBytes: 1, mutants });
      net.elect('s1');
      expect(net.core('s1').role).toBe('leader');
      // (a) A reaches s2 only.
      for (const id of ['s3', 's4', 's5']) net.cut('s1', id);
      net.propose('s1', 'AA');
      net.stabilize();
      // (b) s1 crashes; s5 is elected by s3, s4 and writes index 2 (its term's first entry) and B, all alone.
      net.isolate('s1');
      net.filter = (m) => !(m.from === 's5' && m.type === 'append');
      net.elect('s5');
      expect(net.core('s5').status().term).toBe(2);
      net.propose('s5', 'B');
      net.stabilize();
      // (c) s5 crashes; s1 restarts and is elected (term 3: s3 and s4 refuse term 2, they voted for s5 in it). The
      // appends that would give anyone its own term's entry (index 3) are lost; those refused still arrive.
      net.heal();
      net.isolate('s5');
      net.restart('s1');
      net.filter = (m) =>
        !(
          m.from === 's1' &&
          m.type === 'append' &&
          m.entries.some((e) => e.index >= 3) &&
          net.core(m.to).log.matchTerm(m.index, m.logTerm)
        );
      net.elect('s1');
      net.elect('s1');
      expect(net.core('s1').role).toBe('leader');
      expect(net.core('s1').status().term).toBe(3);
      // (d) s1 crashes; s5 restarts, is elected in term 4 by s2, s3, s4 and replicates its log over theirs.
      net.filter = () => true;
      net.heal();
      net.isolate('s1');
      net.restart('s5');
      net.elect('s5');
      net.elect('s5');
      expect(net.core('s5').role).toBe('leader');
      net.tick(3, ['s2', 's3', 's4', 's5']);
      return net;
    }

    it('correct: the previous-term entry waits for one of the current term, so it is never committed and lost', () => {
      const net = figure8(NONE);
      expect(net.get('s1').applied.map((e) => e.index)).toEqual([1]);
      expect(net.stateOf('s5')).toEqual(['B']);
      expect(conflictingCommits(net)).toEqual([]);
    });

    it('mutant: A is committed (and applied) by s1, then overwritten: two entries committed at index 2', () => {
      const net = figure8(on('raft-commit-by-counting'));
      expect(net.stateOf('s1')).toEqual(['AA']);
      // s1 applied AA at index 2; everyone else applied s5's term-2 entry there.
      expect(conflictingCommits(net)).toEqual(
        ['s2', 's3', 's4', 's5'].map((id) => `2: s1 applied term 1 "AA", ${id} term 2 ""`),
      );
    });
  });

  describe('raft-read-without-readindex', () => {
    /** a leads, then is cut off; b and c elect a new leader and commit y; a read then asked of a. */
    function staleRead(mutants: RaftMutants): { served: { ctx: string; index: number }[]; committedBefore: number } {
      const net = new Net(['a', 'b', 'c'], { mutants });
      net.elect('a');
      net.propose('a', 'x');
      net.stabilize();
      net.isolate('a');
      net.tick(40, ['b', 'c']);
      const leader = ['b', 'c'].find((id) => net.core(id).role === 'leader');
      expect(leader).toBeDefined();
      net.propose(leader!, 'y');
      net.stabilize();
      const committedBefore = net.core(leader!).status().committed;
      expect(net.core('a').role).toBe('leader'); // it has not ticked: it does not know yet
      expect(net.core('a').readIndex('r1')).toEqual({ ok: true });
      net.stabilize();
      return { served: net.get('a').readStates, committedBefore };
    }

    it('correct: the deposed leader cannot confirm its leadership, so it serves nothing', () => {
      expect(staleRead(NONE).served).toEqual([]);
    });

    it('mutant: the deposed leader serves a read index that misses a write committed before the read began', () => {
      const { served, committedBefore } = staleRead(on('raft-read-without-readindex'));
      expect(served).toHaveLength(1);
      expect(served[0]!.index).toBeLessThan(committedBefore);
    });
  });

  describe('raft-membership-before-safe', () => {
    /**
     * {a, b, c}, a leads; a partition leaves {a, d, e} | {b, c}. a adds d (uncommitted: a and d are not 3 of 4), then
     * tries to add e: that would make {a, d, e} a majority of five, disjoint from {b, c}, a majority of the three.
     */
    function twoChanges(mutants: RaftMutants): { net: Net; second: { ok: boolean } } {
      const net = new Net(['a', 'b', 'c'], { mutants });
      net.elect('a');
      net.propose('a', 'x');
      net.stabilize();
      net.add('d', new MemoryStorage());
      net.add('e', new MemoryStorage());
      for (const x of ['a', 'd', 'e']) for (const y of ['b', 'c']) net.cut(x, y);
      expect(net.core('a').changeMembership({ type: 'addVoter', node: 'd' })).toEqual({ ok: true });
      net.stabilize();
      const second = net.core('a').changeMembership({ type: 'addVoter', node: 'e' });
      net.stabilize();
      if (second.ok) net.propose('a', 'from-a');
      net.stabilize();
      // Meanwhile b and c, still on {a, b, c}, elect a leader and commit a write.
      net.tick(40, ['b', 'c']);
      const other = ['b', 'c'].find((id) => net.core(id).role === 'leader');
      expect(other).toBeDefined();
      net.propose(other!, 'from-bc');
      net.stabilize();
      return { net, second };
    }

    it('correct: the second change is refused while the first is uncommitted; no divergence', () => {
      const { net, second } = twoChanges(NONE);
      expect(second).toMatchObject({ ok: false, reason: 'membership-pending' });
      expect(net.stateOf('a')).toEqual(['x']);
      expect(conflictingCommits(net)).toEqual([]);
    });

    it('mutant: both changes are in flight, {a, d, e} and {b, c} each commit: divergent commits', () => {
      const { net, second } = twoChanges(on('raft-membership-before-safe'));
      expect(second).toEqual({ ok: true });
      expect(net.stateOf('a')).toEqual(['x', 'from-a']);
      expect(net.stateOf('b')).toEqual(['x', 'from-bc']);
      expect(conflictingCommits(net).length).toBeGreaterThan(0);
    });
  });

  describe('raft-ack-before-fsync', () => {
    const membership = { voters: ['a', 'b', 'c'], learners: [] };
    const entry = (index: number): { term: number; index: number; type: 'normal'; data: Uint8Array } => ({
      term: 1,
      index,
      type: 'normal',
      data: bytes(`cmd-${index}`),
    });

    /** Entry 1 is synced; entries 2 and 3 are written, their fsync hangs, and the power fails. */
    async function ackThenCrash(mutants: RaftMutants): Promise<{ acked: boolean; recovered: number }> {
      const disk = new SimDisk(() => 0); // a crash keeps none of the unsynced writes
      const wal = await Wal.open(disk.view(), { mutants });
      const g = wal.group('g', membership);
      await g.persist({ hardState: { term: 1, vote: 'a', commit: 0 }, entries: [entry(1)] });
      disk.holdSyncs = true;
      let acked = false;
      void g.persist({ entries: [entry(2), entry(3)] }).then(
        () => (acked = true),
        () => undefined,
      );
      for (let i = 0; i < 10; i++) await turn();
      expect(disk.heldSyncs).toBe(1); // the batch's fsync has not returned
      disk.crash();
      const after = await Wal.open(disk.view());
      return { acked, recovered: after.group('g', membership).lastIndex() };
    }

    it('correct: persist() resolves only after the fsync, so nothing acknowledged is lost', async () => {
      const { acked, recovered } = await ackThenCrash(NONE);
      expect(acked).toBe(false);
      expect(recovered).toBe(1);
    });

    it('mutant: entries 2 and 3 were acknowledged, and the crash lost them', async () => {
      const { acked, recovered } = await ackThenCrash(on('raft-ack-before-fsync'));
      expect(acked).toBe(true);
      expect(recovered).toBe(1);
    });
  });

  describe('raft-vote-not-persisted', () => {
    const membership = { voters: ['a', 'b', 'c'], learners: [] };
    const opts = { preVote: false, checkQuorum: false, electionTicks: 10, heartbeatTicks: 1 };

    /**
     * a and b keep their logs in memory; c's is a write-ahead log on a simulated disk. c votes for a in term 1 (a
     * wins), crashes after its Ready was persisted, restarts from its log, and is asked by b, also in term 1.
     */
    async function voteTwice(mutants: RaftMutants): Promise<{ grants: Message[]; leaders: NodeId[] }> {
      const sent: Message[] = [];
      const mem = (id: NodeId): { core: Core; storage: MemoryStorage } => {
        const storage = new MemoryStorage(membership);
        return { core: new Core({ id, storage, random: seeded(id.charCodeAt(0)), ...opts }), storage };
      };
      const a = mem('a');
      const b = mem('b');
      const flushMem = (n: { core: Core; storage: MemoryStorage }): void => {
        while (n.core.hasReady()) {
          const rd = n.core.ready();
          n.storage.append(rd.entries);
          if (rd.hardState) n.storage.setHardState(rd.hardState);
          sent.push(...rd.messages, ...rd.messagesAfterPersist);
          n.core.advance();
        }
      };
      const disk = new SimDisk(seeded(7));
      const startC = async (): Promise<{ core: Core; storage: GroupStorage }> => {
        const storage = (await Wal.open(disk.view(), { mutants })).group('g', membership);
        return { core: new Core({ id: 'c', storage, random: seeded(3), ...opts }), storage };
      };
      let c = await startC();
      const flushC = async (): Promise<void> => {
        while (c.core.hasReady()) {
          const rd = c.core.ready();
          sent.push(...rd.messages);
          await c.storage.persist({ snapshot: rd.snapshot, entries: rd.entries, hardState: rd.hardState });
          sent.push(...rd.messagesAfterPersist); // only now: the vote is durable (or should be)
          c.core.advance();
        }
      };
      /** Deliver what `from` sent `to` (and forget the rest). */
      const pass = (from: NodeId, to: { core: Core }): void => {
        for (const m of sent.filter((x) => x.from === from && x.to === to.core.id)) to.core.step(m);
      };
      a.core.campaign();
      flushMem(a);
      pass('a', c);
      await flushC();
      pass('c', a);
      flushMem(a);
      expect(a.core.role).toBe('leader');
      // Power loss at c after its vote was acknowledged; a restart from its log.
      disk.crash();
      c = await startC();
      b.core.campaign();
      flushMem(b);
      pass('b', c);
      await flushC();
      pass('c', b);
      flushMem(b);
      const grants = sent.filter((m) => m.type === 'voteResponse' && m.from === 'c' && !m.reject && m.term === 1);
      const leaders = [a, b].filter((n) => n.core.role === 'leader' && n.core.term === 1).map((n) => n.core.id);
      return { grants, leaders };
    }

    it('correct: after the restart c remembers its vote and refuses b; one leader in term 1', async () => {
      const { grants, leaders } = await voteTwice(NONE);
      expect(grants.map((m) => m.to)).toEqual(['a']);
      expect(leaders).toEqual(['a']);
    });

    it('mutant: c forgets its vote, votes for b in the same term: two leaders in term 1', async () => {
      const { grants, leaders } = await voteTwice(on('raft-vote-not-persisted'));
      expect(grants.map((m) => m.to)).toEqual(['a', 'b']);
      expect(leaders).toEqual(['a', 'b']);
    });
  });
});
