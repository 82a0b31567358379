/**
 * Raft's safety properties (the dissertation's figure 3.2), checked incrementally while a simulation runs (issue
 * 13, item 5). The simulation feeds observations — each core's status, each Ready its host handles, each entry a
 * state machine applies, each restart and snapshot load — and the checker keeps just enough to judge each one in
 * bounded time (amortised O(1) per entry; a restart re-reads that replica's log once):
 *
 * - **election safety**: at most one leader per term, ever (term → leader, per group);
 * - **log matching**: per (index, term), the first entry seen fixes its data and the term of the entry before it.
 *   Every entry any replica appends must agree with that record: then two logs that share an (index, term) agree,
 *   by induction, on every entry before it, without comparing whole logs;
 * - **leader completeness**: an entry committed in term t is in the log of every leader of a term > t. Each commit
 *   is recorded with the term of the replica that saw it (≥ the term it was committed in: no false alarm), and a
 *   leader is checked when it first shows up, at the highest such entry (log matching covers the rest). An entry
 *   at a committed index that differs from the committed one (a follower overwriting it) is reported too;
 * - **state-machine safety**: no two replicas apply different entries at one index (nor one other than the
 *   committed entry), and each incarnation of a replica applies indexes in order, without gaps or repeats, from the
 *   snapshot it started from; a snapshot is never loaded below what was applied.
 *
 * Violations are collected (not thrown) with the time, a kind and a precise text, like a SeedResult's.
 */
import type { Core } from '../raft/core.js';
import type { Entry, SnapshotMeta } from '../raft/messages.js';
import type { Ready, Status } from '../raft/ready.js';

export type RaftInvariantKind = 'election-safety' | 'log-matching' | 'leader-completeness' | 'state-machine-safety';

export interface RaftViolation {
  readonly atMs: number;
  readonly kind: RaftInvariantKind;
  readonly detail: string;
}

export interface RaftInvariantsOptions {
  /** The simulation's time, stamped on violations. */
  readonly now: () => number;
  /** Violations kept (later ones are counted only; default 100). */
  readonly maxViolations?: number;
  readonly onViolation?: (v: RaftViolation) => void;
}

/** A 53-bit hash of an entry's type and data (two FNV-1a variants): equal entries, equal hashes. */
export function entryHash(e: Pick<Entry, 'type' | 'data'>): number {
  let a = 0x811c9dc5;
  let b = 0x01000193 ^ (e.type === 'normal' ? 0x5bd1e995 : 0x27d4eb2f);
  a = Math.imul(a ^ (e.type === 'normal' ? 1 : 2), 0x01000193);
  for (const byte of e.data) {
    a = Math.imul(a ^ byte, 0x01000193);
    b = Math.imul(b ^ byte, 0x5bd1e995);
    b ^= b >>> 13;
  }
  return (a >>> 0) * 2 ** 21 + ((b ^ e.data.byteLength) & 0x1fffff);
}

/** What the first replica to hold (index, term) held there. */
interface Fact {
  readonly hash: number;
  readonly prevTerm: number;
  readonly by: string;
}

interface Replica {
  readonly id: string;
  /** The entry before `terms[0]`: a snapshot's, a restart's first − 1, or a committed one (then canonical). */
  base: number;
  /** Its term; −1 when unknown (below a snapshot nobody saw committed). */
  baseTerm: number;
  /** Entries base+1 … base+terms.length: their terms and hashes. */
  terms: number[];
  hashes: number[];
  /** The highest commit index seen for it. */
  committed: number;
  /** The last term in which it was checked as a leader. */
  leaderChecked: number;
  /** The last index this incarnation applied (or the snapshot it loaded). */
  applied: number;
}

interface Group {
  readonly id: string;
  readonly leaders: Map<number, string>;
  /** Above the commit index: (index → term → fact). At or below: the committed entry (cTerm/cHash/cBy). */
  readonly facts: Map<number, Map<number, Fact>>;
  readonly cTerm: number[];
  readonly cHash: number[];
  readonly cBy: string[];
  committedMax: number;
  /** Suffix minimum of the term each commit was seen in, as runs: increasing `last` and strictly increasing term. */
  readonly commitRuns: { last: number; term: number }[];
  readonly aTerm: number[];
  readonly aHash: number[];
  readonly aBy: string[];
  readonly replicas: Map<string, Replica>;
}

const fmt = (index: number, term: number): string => `(${index}, term ${term})`;

export class RaftInvariants {
  readonly violations: RaftViolation[] = [];
  /** Every violation found, kept or not. */
  count = 0;
  readonly #now: () => number;
  readonly #max: number;
  readonly #onViolation: ((v: RaftViolation) => void) | undefined;
  readonly #groups = new Map<string, Group>();

  constructor(o: RaftInvariantsOptions) {
    this.#now = o.now;
    this.#max = o.maxViolations ?? 100;
    this.#onViolation = o.onViolation;
  }

  get ok(): boolean {
    return this.count === 0;
  }

  /**
   * A core's status (call after every step, for every core: cheap): election safety. Commit indexes are taken from
   * Readies only, which bring them together with the entries they cover (a status may run ahead of its log's
   * Ready, over entries about to replace the ones last seen).
   */
  observeStatus(groupId: string, s: Pick<Status, 'id' | 'role' | 'term'>): void {
    if (s.role !== 'leader') return;
    const g = this.#group(groupId);
    this.#leader(g, this.#replica(g, s.id), s.term);
  }

  /** Shorthand: observeStatus(groupId, core.status()). */
  observeCore(groupId: string, core: Core): void {
    this.observeStatus(groupId, core.status());
  }

  /**
   * A Ready its host takes (call before applying its committed entries): the snapshot and entries it appends
   * (every entry a log ever holds passes here once), its commit index, and a new leader's log.
   */
  observeReady(
    groupId: string,
    replicaId: string,
    rd: Pick<Ready, 'role' | 'term' | 'hardState' | 'snapshot' | 'entries'>,
  ): void {
    const g = this.#group(groupId);
    const r = this.#replica(g, replicaId);
    if (rd.snapshot !== undefined) this.#snapshot(g, r, rd.snapshot.meta);
    if (rd.entries.length > 0) this.#append(g, r, rd.entries);
    if (rd.hardState !== undefined) this.#commit(g, r, rd.hardState.commit, rd.term);
    if (rd.role === 'leader') {
      this.#leader(g, r, rd.term);
      if (r.leaderChecked !== rd.term) {
        r.leaderChecked = rd.term;
        this.#completeness(g, r, rd.term);
      }
    }
  }

  /** A replica restarted: its log is what its disk recovered (read once, in batches). Call before any Ready. */
  observeRestart(groupId: string, core: Core): void {
    const g = this.#group(groupId);
    const log = core.log;
    const base = log.firstIndex() - 1;
    const r = this.#fresh(core.id, base, log.term(base) ?? -1);
    g.replicas.set(core.id, r);
    if (base > 0 && base <= g.committedMax) this.#checkSnapshot(g, r, base, r.baseTerm, 'restarted from');
    for (let lo = base + 1; lo <= log.lastIndex();) {
      const batch = log.slice(lo, log.lastIndex() + 1, 1 << 20);
      this.#append(g, r, batch);
      lo += batch.length;
    }
    this.#commit(g, r, log.committed, core.term);
  }

  /** The state machine applied `entry` (every committed entry, empty and membership ones included). */
  observeApply(groupId: string, replicaId: string, entry: Pick<Entry, 'index' | 'term' | 'type' | 'data'>): void {
    const g = this.#group(groupId);
    const r = this.#replica(g, replicaId);
    const i = entry.index;
    if (i !== r.applied + 1) {
      this.#violate(
        'state-machine-safety',
        `group ${g.id}: ${r.id} applied index ${i} after ${r.applied}: ${i <= r.applied ? 'applied twice' : `skipped ${r.applied + 1}–${i - 1}`}`,
      );
    }
    r.applied = Math.max(r.applied, i);
    const h = entryHash(entry);
    const t = g.aTerm[i];
    if (t === undefined) {
      g.aTerm[i] = entry.term;
      g.aHash[i] = h;
      g.aBy[i] = r.id;
    } else if (t !== entry.term || g.aHash[i] !== h) {
      this.#violate(
        'state-machine-safety',
        `group ${g.id}: ${r.id} applied ${fmt(i, entry.term)}${t === entry.term ? ' with other data' : ''} ` +
          `where ${g.aBy[i]} applied ${fmt(i, t)}`,
      );
    }
    const ct = g.cTerm[i];
    if (ct !== undefined && (ct !== entry.term || g.cHash[i] !== h)) {
      this.#violate(
        'state-machine-safety',
        `group ${g.id}: ${r.id} applied ${fmt(i, entry.term)} but the committed entry there is ${fmt(i, ct)}` +
          (ct === entry.term ? ' with other data' : ''),
      );
    }
  }

  /**
   * The state machine was loaded from a snapshot: at start (`restart`: a new incarnation, applying from there) or
   * from the leader (`install`: never below what it applied).
   */
  observeRestore(
    groupId: string,
    replicaId: string,
    meta: Pick<SnapshotMeta, 'index' | 'term'>,
    how: 'restart' | 'install',
  ): void {
    const g = this.#group(groupId);
    const r = this.#replica(g, replicaId);
    if (how === 'install' && meta.index < r.applied) {
      this.#violate(
        'state-machine-safety',
        `group ${g.id}: ${r.id} loaded a snapshot at ${meta.index} after applying up to ${r.applied} (it went back)`,
      );
    }
    if (meta.index > 0) this.#checkSnapshot(g, r, meta.index, meta.term, 'loaded a snapshot at');
    r.applied = meta.index;
  }

  // ---- internals ----

  #violate(kind: RaftInvariantKind, detail: string): void {
    this.count++;
    const v: RaftViolation = { atMs: this.#now(), kind, detail };
    if (this.violations.length < this.#max) this.violations.push(v);
    this.#onViolation?.(v);
  }

  #group(id: string): Group {
    let g = this.#groups.get(id);
    if (g === undefined) {
      g = {
        id,
        leaders: new Map(),
        facts: new Map(),
        cTerm: [],
        cHash: [],
        cBy: [],
        committedMax: 0,
        commitRuns: [],
        aTerm: [],
        aHash: [],
        aBy: [],
        replicas: new Map(),
      };
      this.#groups.set(id, g);
    }
    return g;
  }

  #fresh(id: string, base: number, baseTerm: number): Replica {
    return {
      id,
      base,
      baseTerm,
      terms: [],
      hashes: [],
      committed: base,
      leaderChecked: 0,
      applied: base,
    };
  }

  #replica(g: Group, id: string): Replica {
    let r = g.replicas.get(id);
    if (r === undefined) {
      r = this.#fresh(id, 0, 0);
      g.replicas.set(id, r);
    }
    return r;
  }

  #last(r: Replica): number {
    return r.base + r.terms.length;
  }

  /** The term of a replica's entry at `i` (base ≤ i ≤ last); −1 when unknown. */
  #termAt(r: Replica, i: number): number {
    return i === r.base ? r.baseTerm : r.terms[i - r.base - 1]!;
  }

  #leader(g: Group, r: Replica, term: number): void {
    const known = g.leaders.get(term);
    if (known === undefined) g.leaders.set(term, r.id);
    else if (known !== r.id) {
      this.#violate('election-safety', `group ${g.id}: two leaders in term ${term}: ${known} and ${r.id}`);
    }
  }

  /** A snapshot (index, term) must be of the committed history when that index is known committed. */
  #checkSnapshot(g: Group, r: Replica, index: number, term: number, what: string): void {
    const ct = g.cTerm[index];
    if (ct !== undefined && term !== -1 && ct !== term) {
      this.#violate(
        'state-machine-safety',
        `group ${g.id}: ${r.id} ${what} ${fmt(index, term)}, but the committed entry there is ${fmt(index, ct)}`,
      );
    }
  }

  #snapshot(g: Group, r: Replica, meta: Pick<SnapshotMeta, 'index' | 'term'>): void {
    this.#checkSnapshot(g, r, meta.index, meta.term, 'installed a snapshot at');
    // The snapshot replaces the whole log (the core keeps its log when it already holds the entry: no snapshot then).
    r.base = meta.index;
    r.baseTerm = meta.term;
    r.terms = [];
    r.hashes = [];
    r.committed = Math.max(r.committed, meta.index);
  }

  /** Entries appended from entries[0].index on (replacing whatever the replica held from there). */
  #append(g: Group, r: Replica, entries: readonly Entry[]): void {
    const first = entries[0]!.index;
    if (first - 1 > this.#last(r)) {
      // A gap: we missed entries (an observation was skipped); restart the model here, unknown below.
      r.base = first - 1;
      r.baseTerm = -1;
      r.terms = [];
      r.hashes = [];
    } else if (first - 1 < r.base) {
      // Rewriting below our base: that prefix was committed (or a snapshot's); the committed record says what it is.
      r.base = first - 1;
      r.baseTerm = first - 1 === 0 ? 0 : (g.cTerm[first - 1] ?? -1);
      r.terms = [];
      r.hashes = [];
    } else {
      r.terms.length = first - 1 - r.base;
      r.hashes.length = first - 1 - r.base;
    }
    for (const e of entries) {
      const prevTerm = this.#termAt(r, e.index - 1);
      const h = entryHash(e);
      this.#checkEntry(g, r, e.index, e.term, h, prevTerm);
      r.terms.push(e.term);
      r.hashes.push(h);
    }
  }

  #checkEntry(g: Group, r: Replica, i: number, term: number, hash: number, prevTerm: number): void {
    const ct = g.cTerm[i];
    if (ct !== undefined) {
      // An entry of a term below the one its index was known committed in is a deposed leader's (its own
      // proposals, or what a crash brought back of an unacknowledged suffix): stale, not a violation. A leader of
      // that term or a later one cannot lack the committed entry.
      if (ct !== term && term < this.#committedInTerm(g, i)) return;
      if (ct !== term) {
        this.#violate(
          'leader-completeness',
          `group ${g.id}: ${r.id} replaced the committed entry ${fmt(i, ct)} with ${fmt(i, term)}: the leader of ` +
            `term ${term} lacked a committed entry`,
        );
      } else if (g.cHash[i] !== hash) {
        this.#violate(
          'log-matching',
          `group ${g.id}: ${r.id} holds ${fmt(i, term)} with other data than the committed entry (from ${g.cBy[i]})`,
        );
      } else if (i > 1 && prevTerm !== -1 && g.cTerm[i - 1] !== undefined && g.cTerm[i - 1] !== prevTerm) {
        this.#violate(
          'log-matching',
          `group ${g.id}: ${r.id} holds the committed entry ${fmt(i, term)} but ${fmt(i - 1, prevTerm)} before ` +
            `it, where the committed log has ${fmt(i - 1, g.cTerm[i - 1]!)}`,
        );
      }
      return;
    }
    let byTerm = g.facts.get(i);
    if (byTerm === undefined) {
      byTerm = new Map();
      g.facts.set(i, byTerm);
    }
    const f = byTerm.get(term);
    if (f === undefined) {
      byTerm.set(term, { hash, prevTerm, by: r.id });
      return;
    }
    if (f.hash !== hash) {
      this.#violate('log-matching', `group ${g.id}: ${r.id} and ${f.by} hold different entries at ${fmt(i, term)}`);
    } else if (f.prevTerm !== prevTerm && f.prevTerm !== -1 && prevTerm !== -1) {
      this.#violate(
        'log-matching',
        `group ${g.id}: ${r.id} and ${f.by} both hold ${fmt(i, term)} but differ before it: ${fmt(i - 1, prevTerm)} ` +
          `on ${r.id}, ${fmt(i - 1, f.prevTerm)} on ${f.by}`,
      );
    }
  }

  /** Replica `r` counts its log committed up to `c`, seen while in `term`. */
  #commit(g: Group, r: Replica, c: number, term: number): void {
    if (c <= r.committed) return;
    if (c > this.#last(r)) {
      this.#violate(
        'log-matching',
        `group ${g.id}: ${r.id} counts ${c} committed but its log ends at ${this.#last(r)}`,
      );
      c = this.#last(r);
      if (c <= r.committed) return;
    }
    const before = g.committedMax;
    // Already committed below: its entry at the highest such index must be the committed one (log matching does
    // the rest of the prefix).
    const k = Math.min(c, before);
    if (k > r.base && g.cTerm[k] !== undefined) {
      const t = this.#termAt(r, k);
      if (t !== g.cTerm[k] || r.hashes[k - r.base - 1] !== g.cHash[k]) {
        this.#violate(
          'state-machine-safety',
          `group ${g.id}: ${r.id} counts ${fmt(k, t)} committed, but ${g.cBy[k]} committed ${fmt(k, g.cTerm[k]!)}`,
        );
      }
    }
    if (c > before) {
      for (let j = Math.max(before, r.base) + 1; j <= c; j++) {
        g.cTerm[j] = r.terms[j - r.base - 1]!;
        g.cHash[j] = r.hashes[j - r.base - 1]!;
        g.cBy[j] = r.id;
      }
      for (let j = before + 1; j <= c; j++) g.facts.delete(j);
      const runs = g.commitRuns;
      while (runs.length > 0 && runs[runs.length - 1]!.term >= term) runs.pop();
      runs.push({ last: c, term });
      g.committedMax = c;
    }
    r.committed = c;
    // What it holds up to c is the committed log now: keep only the term at c (the next entry's predecessor).
    if (c > r.base) {
      r.baseTerm = this.#termAt(r, c);
      r.terms.splice(0, c - r.base);
      r.hashes.splice(0, c - r.base);
      r.base = c;
    }
  }

  /** The lowest term in which index `i` was seen committed (commitRuns: increasing `last`, increasing term). */
  #committedInTerm(g: Group, i: number): number {
    const runs = g.commitRuns;
    let lo = 0;
    let hi = runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (runs[mid]!.last < i) lo = mid + 1;
      else hi = mid;
    }
    return runs[lo]?.term ?? Infinity;
  }

  /** A leader of `term` must hold every entry committed in an earlier term. */
  #completeness(g: Group, r: Replica, term: number): void {
    const runs = g.commitRuns;
    let lo = 0;
    let hi = runs.length; // runs[lo..hi) have term < `term` in a prefix: find its end
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (runs[mid]!.term < term) lo = mid + 1;
      else hi = mid;
    }
    if (lo === 0) return;
    const k = runs[lo - 1]!.last;
    const ct = g.cTerm[k];
    if (ct === undefined) return; // below a snapshot nobody saw the entries of
    const last = this.#last(r);
    if (last < k) {
      this.#violate(
        'leader-completeness',
        `group ${g.id}: ${r.id} leads term ${term} without the committed entry ${fmt(k, ct)}: its log ends at ` +
          `${fmt(last, this.#termAt(r, last))}`,
      );
      return;
    }
    if (k <= r.base) return; // its base is a committed or snapshot entry, checked when it was set
    const t = this.#termAt(r, k);
    if (t !== ct || r.hashes[k - r.base - 1] !== g.cHash[k]) {
      this.#violate(
        'leader-completeness',
        `group ${g.id}: ${r.id} leads term ${term} holding ${fmt(k, t)} where ${fmt(k, ct)} was committed`,
      );
    }
  }
}
