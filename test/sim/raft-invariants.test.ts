/**
 * The Raft invariant checker: each property's planted violation is caught with a precise text, and runs of real
 * cores (messages lost, reordered by delivery rounds, partitions, restarts, snapshots) pass clean.
 */
import { describe, expect, it } from 'vitest';
import { MemoryStorage, type Entry, type Ready } from '../../src/raft/index.js';
import { RaftInvariants, type RaftViolation } from '../../src/sim/raft-invariants.js';
import { Random } from '../../src/sim/random.js';
import { bytes, Net } from '../unit/raft/network.js';

type Rd = Pick<Ready, 'role' | 'term' | 'hardState' | 'snapshot' | 'entries'>;

const e = (index: number, term: number, data = `e${index}t${term}`): Entry => ({
  index,
  term,
  type: 'normal',
  data: bytes(data),
});

function rd(role: Ready['role'], term: number, entries: Entry[], commit?: number): Rd {
  return {
    role,
    term,
    entries,
    snapshot: undefined,
    hardState: commit === undefined ? undefined : { term, vote: '', commit },
  };
}

const checker = (): RaftInvariants => new RaftInvariants({ now: () => 42 });
const kinds = (c: RaftInvariants): string[] => c.violations.map((v: RaftViolation) => v.kind);

describe('RaftInvariants: planted violations', () => {
  it('election safety: two leaders in one term (a leader per term in turn is fine)', () => {
    const c = checker();
    c.observeStatus('g', { id: 'a', role: 'leader', term: 2 });
    c.observeStatus('g', { id: 'b', role: 'leader', term: 3 });
    c.observeStatus('g', { id: 'a', role: 'leader', term: 2 });
    c.observeStatus('other', { id: 'b', role: 'leader', term: 2 });
    expect(c.ok).toBe(true);
    c.observeReady('g', 'b', rd('leader', 2, [e(1, 2)]));
    expect(c.violations).toEqual([
      { atMs: 42, kind: 'election-safety', detail: 'group g: two leaders in term 2: a and b' },
    ]);
  });

  it('log matching: different data at one (index, term)', () => {
    const c = checker();
    c.observeReady('g', 'a', rd('follower', 2, [e(1, 1), e(2, 2, 'x')]));
    c.observeReady('g', 'b', rd('follower', 2, [e(1, 1), e(2, 2, 'x')]));
    expect(c.ok).toBe(true);
    c.observeReady('g', 'c', rd('follower', 2, [e(1, 1), e(2, 2, 'y')]));
    expect(kinds(c)).toEqual(['log-matching']);
    expect(c.violations[0]!.detail).toBe('group g: c and a hold different entries at (2, term 2)');
  });

  it('log matching: the same (index, term) on two replicas over different earlier entries', () => {
    const c = checker();
    c.observeReady('g', 'a', rd('follower', 3, [e(1, 1), e(2, 3, 'x')]));
    c.observeReady('g', 'b', rd('follower', 3, [e(1, 2), e(2, 3, 'x')]));
    expect(c.violations.map((v) => v.detail)).toEqual([
      'group g: b and a both hold (2, term 3) but differ before it: (1, term 2) on b, (1, term 1) on a',
    ]);
  });

  it('a stale entry at a committed index on a replica that missed the commit is no violation', () => {
    const c = checker();
    c.observeReady('g', 'a', rd('leader', 2, [e(1, 2), e(2, 2)], 2));
    c.observeReady('g', 'b', rd('follower', 2, [e(1, 2), e(2, 2)], 2));
    // c took (2, term 1) from the deposed leader of term 1, and keeps it until the leader of term 2 reaches it.
    c.observeReady('g', 'c', rd('follower', 1, [e(1, 1), e(2, 1)]));
    c.observeReady('g', 'c', rd('follower', 2, [e(1, 2), e(2, 2)], 2));
    expect(c.ok).toBe(true);
    // But a second replica holding (2, term 1) with other data breaks log matching, committed index or not.
    c.observeReady('g', 'd', rd('follower', 1, [e(1, 1), e(2, 1, 'other')]));
    expect(c.violations.map((v) => v.detail)).toEqual(['group g: d and c hold different entries at (2, term 1)']);
  });

  it('log matching: a replica truncating its log and appending again is fine', () => {
    const c = checker();
    c.observeReady('g', 'a', rd('follower', 2, [e(1, 1), e(2, 1), e(3, 2, 'old')]));
    c.observeReady('g', 'a', rd('follower', 3, [e(2, 3), e(3, 3)]));
    c.observeReady('g', 'b', rd('follower', 3, [e(1, 1), e(2, 3), e(3, 3)], 3));
    expect(c.ok).toBe(true);
  });

  it('leader completeness: a new leader without a committed entry, and one holding another entry there', () => {
    const c = checker();
    c.observeReady('g', 'a', rd('leader', 1, [e(1, 1), e(2, 1), e(3, 1)], 3));
    c.observeReady('g', 'b', rd('follower', 1, [e(1, 1), e(2, 1), e(3, 1)], 3));
    c.observeReady('g', 'c', rd('follower', 1, [e(1, 1), e(2, 1)], 1));
    expect(c.ok).toBe(true);
    // c leads term 2 with the log it has: entry 3 is missing.
    c.observeReady('g', 'c', rd('leader', 2, []));
    expect(c.violations.map((v) => [v.kind, v.detail])).toEqual([
      [
        'leader-completeness',
        'group g: c leads term 2 without the committed entry (3, term 1): its log ends at (2, term 1)',
      ],
    ]);
    // d leads term 3 after appending its own entry at 3.
    c.observeReady('g', 'd', rd('follower', 2, [e(1, 1), e(2, 1)]));
    c.observeReady('g', 'd', rd('leader', 3, [e(3, 3)]));
    expect(c.violations.slice(1).map((v) => v.detail)).toEqual([
      'group g: d leads term 3 holding (3, term 3) where (3, term 1) was committed',
    ]);
    // A leader that has it all: nothing more.
    c.observeReady('g', 'b', rd('leader', 4, [e(4, 4)]));
    expect(c.count).toBe(2);
  });

  it('leader completeness: entries committed in the leader’s own term or later are not required of it', () => {
    const c = checker();
    c.observeReady('g', 'a', rd('leader', 1, [e(1, 1)]));
    c.observeReady('g', 'b', rd('follower', 5, [e(1, 1), e(2, 5)], 2));
    // a's Ready of term 1 shows it as leader only now (a lagging observation): (2, term 5) was committed in term 5.
    c.observeReady('g', 'a', rd('leader', 1, [], 1));
    c.observeStatus('g', { id: 'a', role: 'leader', term: 1 });
    expect(c.ok).toBe(true);
  });

  it('state-machine safety: two different entries applied at one index', () => {
    const c = checker();
    c.observeApply('g', 'a', e(1, 1, 'x'));
    c.observeApply('g', 'b', e(1, 1, 'x'));
    expect(c.ok).toBe(true);
    c.observeApply('g', 'c', e(1, 2, 'y'));
    expect(c.violations.map((v) => [v.kind, v.detail])).toEqual([
      ['state-machine-safety', 'group g: c applied (1, term 2) where a applied (1, term 1)'],
    ]);
  });

  it('state-machine safety: an entry applied that is not the committed one', () => {
    const c = checker();
    c.observeReady('g', 'a', rd('leader', 1, [e(1, 1, 'x')], 1));
    c.observeApply('g', 'b', e(1, 1, 'y'));
    expect(c.violations.map((v) => v.detail)).toEqual([
      'group g: b applied (1, term 1) but the committed entry there is (1, term 1) with other data',
    ]);
  });

  it('state-machine safety: applied twice, out of order, or back below a snapshot; restarts from a snapshot', () => {
    const c = checker();
    c.observeApply('g', 'a', e(1, 1));
    c.observeApply('g', 'a', e(1, 1));
    c.observeApply('g', 'a', e(3, 1));
    expect(c.violations.map((v) => v.detail)).toEqual([
      'group g: a applied index 1 after 1: applied twice',
      'group g: a applied index 3 after 1: skipped 2–2',
    ]);
    // A new incarnation from a snapshot at 5 applies from 6 (indexes it applied before: a fresh state machine).
    const d = checker();
    for (let i = 1; i <= 7; i++) d.observeApply('g', 'a', e(i, 1));
    d.observeRestore('g', 'a', { index: 5, term: 1 }, 'restart');
    d.observeApply('g', 'a', e(6, 1));
    expect(d.ok).toBe(true);
    d.observeApply('g', 'a', e(6, 1));
    d.observeRestore('g', 'a', { index: 4, term: 1 }, 'install');
    expect(d.violations.map((v) => v.detail)).toEqual([
      'group g: a applied index 6 after 6: applied twice',
      'group g: a loaded a snapshot at 4 after applying up to 6 (it went back)',
    ]);
  });

  it('state-machine safety: two replicas count different entries committed at one index', () => {
    const c = checker();
    c.observeReady('g', 'a', rd('leader', 1, [e(1, 1), e(2, 1)], 2));
    c.observeReady('g', 'b', rd('follower', 2, [e(1, 1), e(2, 2)], 2));
    expect(kinds(c)).toEqual(['state-machine-safety']);
    expect(c.violations[0]!.detail).toBe('group g: b counts (2, term 2) committed, but a committed (2, term 1)');
  });
});

/** A storage that lost its last three entries (written, acknowledged, never synced): a host's bug. */
function lossy(s: MemoryStorage): MemoryStorage {
  const out = new MemoryStorage(s.initialState().membership);
  const snap = s.snapshot();
  if (snap.meta.index > 0) out.applySnapshot(snap);
  const last = Math.max(snap.meta.index, s.lastIndex() - 3);
  if (last >= s.firstIndex()) out.append(s.entries(s.firstIndex(), last + 1, 1 << 30));
  const hs = s.hardState();
  out.setHardState({ ...hs, commit: Math.min(hs.commit, last) });
  return out;
}

/** Observe every Ready a replica's core hands out (and what it applies from it). */
function watch(net: Net, c: RaftInvariants, id: string): void {
  const core = net.core(id);
  const ready = core.ready.bind(core);
  core.ready = () => {
    const r = ready();
    c.observeReady('g', id, r);
    if (r.snapshot !== undefined) c.observeRestore('g', id, r.snapshot.meta, 'install');
    for (const entry of r.committedEntries) c.observeApply('g', id, entry);
    return r;
  };
}

/** Random ticks, proposals, lost messages, partitions, restarts and snapshots on real cores, checked as they go. */
function run(seed: number, c: RaftInvariants, loseTail = false): { applied: number; terms: number } {
  const ids = ['a', 'b', 'c'];
  const net = new Net(ids, { preVote: true, checkQuorum: true }, seed);
  const rng = new Random(seed);
  for (const id of ids) watch(net, c, id);
  let cmd = 0;
  let maxTerm = 0;
  for (let step = 0; step < 400; step++) {
    const dropRate = rng.chance(0.2) ? rng.range(0.1, 0.5) : 0;
    net.filter = () => !rng.chance(dropRate);
    const x = rng.next();
    if (x < 0.03) {
      net.cut(rng.pick(ids), rng.pick(ids));
    } else if (x < 0.08) {
      net.heal();
    } else if (x < 0.1) {
      // A crash and restart from its storage (every handled Ready is durable there).
      const id = rng.pick(ids);
      if (loseTail) net.get(id).storage = lossy(net.get(id).storage);
      const r = net.restart(id);
      watch(net, c, id);
      c.observeRestart('g', r.core);
      c.observeRestore('g', id, r.storage.snapshot().meta, 'restart');
    } else if (x < 0.13) {
      const r = net.get(rng.pick(ids));
      if (r.core.log.applied > r.storage.firstIndex()) {
        r.storage.createSnapshot(
          r.core.log.applied,
          r.core.membershipAt(r.core.log.applied),
          bytes(JSON.stringify(r.state)),
        );
      }
    }
    for (const l of net.leaders()) l.propose(bytes(`cmd-${cmd++}`));
    for (const id of ids) if (rng.chance(0.8)) net.core(id).tick();
    net.flushReadies();
    // Deliver a random part of what is queued (the rest waits: reordering between rounds).
    const queued = net.queue;
    net.queue = [];
    for (const m of queued) {
      if (rng.chance(0.7)) net.deliver(m);
      else net.queue.push(m);
    }
    net.flushReadies();
    for (const id of ids) {
      c.observeCore('g', net.core(id));
      maxTerm = Math.max(maxTerm, net.core(id).term);
    }
  }
  const applied = Math.max(...ids.map((id) => net.get(id).applied.length));
  // The state machines agree on what they share.
  const states = ids.map((id) => net.stateOf(id).join(','));
  expect(states.every((s, _i, all) => all.some((o) => o.startsWith(s) || s.startsWith(o)))).toBe(true);
  return { applied, terms: maxTerm };
}

describe('RaftInvariants on real cores', () => {
  it('30 seeds of lost and held messages, partitions, restarts and snapshots: no violation', () => {
    let applied = 0;
    let terms = 0;
    for (let seed = 1; seed <= 30; seed++) {
      const c = checker();
      const r = run(seed, c);
      expect(c.violations, `seed ${seed}`).toEqual([]);
      applied += r.applied;
      terms += r.terms;
    }
    // The runs did something: commands applied, leaders changed.
    expect(applied).toBeGreaterThan(30 * 50);
    expect(terms).toBeGreaterThan(30 * 2);
  });
  it('catches a host that loses acknowledged entries in a crash (it acknowledged before they were durable)', () => {
    const caught: string[] = [];
    for (let seed = 1; seed <= 30; seed++) {
      const c = checker();
      run(seed, c, true);
      // The first one found (later ones follow from it).
      if (!c.ok) caught.push(c.violations[0]!.kind);
    }
    expect(caught.length).toBeGreaterThan(2);
    expect(new Set(caught)).toEqual(new Set(['leader-completeness']));
  });
});
