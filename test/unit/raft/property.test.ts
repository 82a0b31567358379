/**
 * Random schedules over 3–5 cores: messages delivered out of order, duplicated or dropped, partitions, ticks at
 * each replica's own pace (unbounded clock drift), crashes and restarts from storage, snapshots with compaction,
 * proposals, reads and transfers. After every step: election safety, log matching, leader completeness, state
 * machine safety, and ReadIndex safety (a read's index covers every entry committed before it was asked). At the
 * end, with the network healed, the group must elect a leader and commit again (liveness).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MemoryStorage, type Core, type Entry, type NodeId } from '../../../src/raft/index.js';
import { bytes, Net } from './network.js';

type Action =
  | { t: 'tick'; n: number; times: number }
  | { t: 'deliver'; k: number }
  | { t: 'flush' }
  | { t: 'campaign'; n: number }
  | { t: 'dup'; k: number }
  | { t: 'drop'; k: number }
  | { t: 'ready'; n: number }
  | { t: 'propose'; n: number }
  | { t: 'read'; n: number }
  | { t: 'partition'; mask: number }
  | { t: 'heal' }
  | { t: 'restart'; n: number }
  | { t: 'crash'; n: number }
  | { t: 'snapshot'; n: number }
  | { t: 'transfer'; n: number; to: number }
  | { t: 'member'; n: number; target: number; kind: 'addVoter' | 'addLearner' | 'remove' };

const memberAction: fc.Arbitrary<Action> = fc.record({
  t: fc.constant('member' as const),
  n: fc.nat(),
  target: fc.nat(),
  kind: fc.constantFrom('addVoter' as const, 'addLearner' as const, 'remove' as const),
});

const action: fc.Arbitrary<Action> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({ t: fc.constant('tick' as const), n: fc.nat(), times: fc.integer({ min: 1, max: 12 }) }),
  },
  { weight: 15, arbitrary: fc.record({ t: fc.constant('deliver' as const), k: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('dup' as const), k: fc.nat() }) },
  { weight: 10, arbitrary: fc.record({ t: fc.constant('flush' as const) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('campaign' as const), n: fc.nat() }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('drop' as const), k: fc.nat() }) },
  { weight: 8, arbitrary: fc.record({ t: fc.constant('ready' as const), n: fc.nat() }) },
  { weight: 8, arbitrary: fc.record({ t: fc.constant('propose' as const), n: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('read' as const), n: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('partition' as const), mask: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('heal' as const) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('restart' as const), n: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('snapshot' as const), n: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('crash' as const), n: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('transfer' as const), n: fc.nat(), to: fc.nat() }) },
);

class Checker {
  /** term → the replica that led it. */
  readonly leaderOf = new Map<number, NodeId>();
  /** index → the entry applied there by anyone, and the lowest term an observer had when it was applied. */
  readonly committed = new Map<number, { term: number; data: string; seenAt: number }>();
  /** Highest index known committed anywhere, for read checks. */
  maxCommitted = 0;
  /** ctx → the highest committed index when the read was asked. */
  readonly reads = new Map<string, number>();

  check(net: Net): void {
    const cores = [...net.replicas.values()].map((r) => r.core);
    for (const r of net.replicas.values()) {
      const c = r.core;
      // A leader exists for the others once its term and vote are on its disk: until then it sends nothing, and a
      // crash makes it as if it had never campaigned.
      const hs = r.storage.hardState();
      if (c.role !== 'leader' || hs.term !== c.term || hs.vote !== c.id) continue;
      const prev = this.leaderOf.get(c.term);
      if (prev !== undefined && prev !== c.id)
        throw new Error(`election safety: ${prev} and ${c.id} led term ${c.term}`);
      this.leaderOf.set(c.term, c.id);
    }
    for (const r of net.replicas.values()) {
      for (const e of r.applied) this.#committed(e, r.core.term);
      for (const rs of r.readStates) {
        const floor = this.reads.get(rs.ctx);
        if (floor !== undefined && rs.index < floor) {
          throw new Error(`read ${rs.ctx} got index ${rs.index} but ${floor} was committed before it was asked`);
        }
      }
      r.readStates = [];
    }
    this.#logMatching(cores);
    for (const c of cores) {
      if (c.role !== 'leader') continue;
      for (const [index, e] of this.committed) {
        if (e.seenAt >= c.term || index < c.log.firstIndex()) continue;
        const t = c.log.term(index);
        if (t !== e.term) {
          throw new Error(`leader completeness: leader ${c.id} of term ${c.term} lacks committed entry ${index}`);
        }
      }
    }
  }

  #committed(e: Entry, observerTerm: number): void {
    const data = new TextDecoder().decode(e.data);
    const known = this.committed.get(e.index);
    if (known === undefined) {
      this.committed.set(e.index, { term: e.term, data, seenAt: observerTerm });
      if (e.index > this.maxCommitted) this.maxCommitted = e.index;
    } else if (known.term !== e.term || known.data !== data) {
      throw new Error(`state machine safety: two entries applied at index ${e.index}`);
    }
  }

  #logMatching(cores: readonly Core[]): void {
    for (let i = 0; i < cores.length; i++) {
      for (let j = i + 1; j < cores.length; j++) {
        const a = cores[i]!.log;
        const b = cores[j]!.log;
        const lo = Math.max(a.firstIndex(), b.firstIndex());
        const hi = Math.min(a.lastIndex(), b.lastIndex());
        // Find the highest index where both agree on the term; everything from lo up to it must agree.
        let top = 0;
        for (let k = hi; k >= lo; k--) {
          if (a.term(k) === b.term(k)) {
            top = k;
            break;
          }
        }
        if (top === 0) continue;
        const ea = a.slice(lo, top + 1, Infinity);
        const eb = b.slice(lo, top + 1, Infinity);
        for (let k = 0; k < ea.length; k++) {
          const x = ea[k]!;
          const y = eb[k]!;
          if (x.term !== y.term || new TextDecoder().decode(x.data) !== new TextDecoder().decode(y.data)) {
            throw new Error(
              `log matching: ${cores[i]!.id} and ${cores[j]!.id} agree at ${top} but differ at ${x.index}`,
            );
          }
        }
      }
    }
  }
}

function run(
  size: number,
  seed: number,
  preVote: boolean,
  checkQuorum: boolean,
  oneEntryPerAppend: boolean,
  actions: readonly Action[],
  spares: readonly NodeId[] = [],
): void {
  const voters = ['a', 'b', 'c', 'd', 'e'].slice(0, size);
  const ids = [...voters, ...spares];
  // One entry per append makes the paper's figure 8 reachable: a majority holds an old-term entry without the
  // leader's newer one.
  const net = new Net(
    voters,
    { preVote, checkQuorum, electionTicks: 4, maxMessageBytes: oneEntryPerAppend ? 1 : 1 << 20 },
    seed,
  );
  for (const id of spares) net.add(id, new MemoryStorage()); // replicas that may be added later
  const checker = new Checker();
  let proposals = 0;
  let reads = 0;
  const pick = (n: number): NodeId => ids[n % ids.length]!;
  for (const a of actions) {
    switch (a.t) {
      case 'tick':
        for (let i = 0; i < a.times; i++) net.core(pick(a.n)).tick();
        break;
      case 'deliver':
      case 'dup':
      case 'drop': {
        if (net.queue.length === 0) break;
        // Mostly in order, with reordering among the oldest few (a network, not a shuffle).
        const k = a.k % Math.min(net.queue.length, 6);
        const m = net.queue[k]!;
        if (a.t !== 'dup') net.queue.splice(k, 1);
        if (a.t !== 'drop') net.deliver(m);
        break;
      }
      case 'flush':
        // Every replica persists, and every message in flight arrives (the network catches up).
        net.flushReadies();
        net.deliverOnce();
        break;
      case 'campaign':
        net.core(pick(a.n)).campaign(); // as if its election timeout passed now
        break;
      case 'ready': {
        const r = net.get(pick(a.n));
        if (r.core.hasReady()) net.handleReady(r);
        break;
      }
      case 'propose':
        net.core(pick(a.n)).propose(bytes(`p${proposals++}`));
        break;
      case 'read': {
        const ctx = `r${reads++}`;
        checker.reads.set(ctx, checker.maxCommitted);
        net.core(pick(a.n)).readIndex(ctx);
        break;
      }
      case 'partition': {
        net.heal();
        const side = ids.filter((_, i) => (a.mask >> i) & 1);
        for (const x of side) for (const y of ids) if (!side.includes(y)) net.cut(x, y);
        break;
      }
      case 'heal':
        net.heal();
        break;
      case 'restart': {
        net.restart(pick(a.n)); // between Readies: everything handled is on disk
        break;
      }
      case 'crash': {
        // The host took a Ready, sent what it may send before persisting, and crashed before the disk write.
        const id = pick(a.n);
        const r = net.get(id);
        if (r.core.hasReady()) {
          const rd = r.core.ready();
          net.queue.push(...rd.messages);
        }
        net.restart(id);
        break;
      }
      case 'snapshot': {
        const r = net.get(pick(a.n));
        const applied = r.core.log.applied;
        if (applied > r.storage.snapshot().meta.index && applied <= r.storage.lastIndex()) {
          r.storage.createSnapshot(applied, r.core.membershipAt(applied), bytes(JSON.stringify(r.state)));
        }
        break;
      }
      case 'transfer': {
        const c = net.core(pick(a.n));
        const to = pick(a.to);
        if (c.membership().voters.includes(to)) c.transferLeadership(to);
        break;
      }
      case 'member':
        net.core(pick(a.n)).changeMembership({ type: a.kind, node: pick(a.target) });
        break;
    }
    checker.check(net);
  }
  // Liveness: heal, and the group must commit a new entry on every member. Replicas removed from the group are
  // shut down by their host (they no longer tick): one that missed its removal would otherwise keep campaigning.
  net.heal();
  net.queue = [];
  let done = false;
  const isIn = (m: { voters: readonly NodeId[]; learners: readonly NodeId[] }, id: NodeId): boolean =>
    m.voters.includes(id) || m.learners.includes(id);
  for (let round = 0; round < 400 && !done; round++) {
    // A host runs a replica while some membership in the group names it (a spare never added runs idle); one
    // whose removal every replica has seen is shut down.
    const cores = ids.map((id) => net.core(id));
    const running = ids.filter((id) => {
      const c = net.core(id);
      if (c.membership().voters.length === 0 || isIn(c.membershipAt(c.log.applied), id)) return true;
      return cores.some((o) => isIn(o.membership(), id));
    });
    net.tick(1, running);
    checker.check(net);
    const leader = net.leaders().sort((x, y) => y.term - x.term)[0];
    if (leader && round % 20 === 0) leader.propose(bytes('final'));
    const m = leader?.membership();
    done = m !== undefined && [...m.voters, ...m.learners].every((id) => net.get(id).state.includes('final'));
  }
  expect(done, 'the healed group commits a new entry on every member').toBe(true);
}

describe('raft safety under random schedules', () => {
  it('holds the Raft invariants with 3 to 5 replicas', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 3, max: 5 }),
        fc.integer({ min: 1, max: 1_000_000 }),
        fc.boolean(),
        fc.boolean(),
        fc.boolean(),
        fc.array(action, { minLength: 100, maxLength: 800, size: 'max' }),
        (size, seed, preVote, checkQuorum, oneEntryPerAppend, actions) =>
          run(size, seed, preVote, checkQuorum, oneEntryPerAppend, actions),
      ),
      { numRuns: 150 },
    );
  });

  it('holds them through membership changes (voters and learners added, promoted, demoted, removed)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3 }),
        fc.integer({ min: 1, max: 1_000_000 }),
        fc.boolean(),
        fc.boolean(),
        fc.array(fc.oneof({ weight: 10, arbitrary: action }, { weight: 3, arbitrary: memberAction }), {
          minLength: 100,
          maxLength: 800,
          size: 'max',
        }),
        (size, seed, preVote, checkQuorum, actions) =>
          run(size, seed, preVote, checkQuorum, false, actions, ['x', 'y']),
      ),
      { numRuns: 100 },
    );
  });
});
