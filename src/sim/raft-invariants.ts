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
 *   leader is checked when it first shows up, at the highest such entry (log matching covers the rest);
 * - **state-machine safety**: no two replicas apply different entries at one index (nor one other than the
 *   committed entry), and each incarnation of a replica applies indexes in order, without gaps or repeats, from the
 *   snapshot it started from; a snapshot is never loaded below what was applied.
 *
 * Violations are collected (not thrown) with the time, a kind and a precise text, like a SeedResult's.
 */
import type { Core } from '../raft/core.js';
import type { Entry, SnapshotMeta } from '../raft/messages.js';
import type { Ready, Status } from '../raft/ready.js';
import {
  LogChecker,
  entryHash,
  fmt,
  newGroup,
  newReplica,
  type Group,
  type RaftInvariantKind,
  type Replica,
} from './raft-invariant-log.js';

export { entryHash, type RaftInvariantKind } from './raft-invariant-log.js';

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

export class RaftInvariants {
  readonly violations: RaftViolation[] = [];
  /** Every violation found, kept or not. */
  count = 0;
  readonly #now: () => number;
  readonly #max: number;
  readonly #onViolation: ((v: RaftViolation) => void) | undefined;
  readonly #groups = new Map<string, Group>();
  readonly #log = new LogChecker((kind, detail) => this.#violate(kind, detail));

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
    if (rd.snapshot !== undefined) this.#log.snapshot(g, r, rd.snapshot.meta);
    if (rd.entries.length > 0) this.#log.append(g, r, rd.entries);
    if (rd.hardState !== undefined) this.#log.commit(g, r, rd.hardState.commit, rd.term);
    if (rd.role === 'leader') {
      this.#leader(g, r, rd.term);
      if (r.leaderChecked !== rd.term) {
        r.leaderChecked = rd.term;
        this.#log.completeness(g, r, rd.term);
      }
    }
  }

  /** A replica restarted: its log is what its disk recovered (read once, in batches). Call before any Ready. */
  observeRestart(groupId: string, core: Core): void {
    const g = this.#group(groupId);
    const log = core.log;
    const base = log.firstIndex() - 1;
    const r = newReplica(core.id, base, log.term(base) ?? -1);
    g.replicas.set(core.id, r);
    if (base > 0 && base <= g.committedMax) this.#log.checkSnapshot(g, r, base, r.baseTerm, 'restarted from');
    for (let lo = base + 1; lo <= log.lastIndex();) {
      const batch = log.slice(lo, log.lastIndex() + 1, 1 << 20);
      this.#log.append(g, r, batch);
      lo += batch.length;
    }
    this.#log.commit(g, r, log.committed, core.term);
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
    if (meta.index > 0) this.#log.checkSnapshot(g, r, meta.index, meta.term, 'loaded a snapshot at');
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
      g = newGroup(id);
      this.#groups.set(id, g);
    }
    return g;
  }

  #replica(g: Group, id: string): Replica {
    let r = g.replicas.get(id);
    if (r === undefined) {
      r = newReplica(id, 0, 0);
      g.replicas.set(id, r);
    }
    return r;
  }

  #leader(g: Group, r: Replica, term: number): void {
    const known = g.leaders.get(term);
    if (known === undefined) g.leaders.set(term, r.id);
    else if (known !== r.id) {
      this.#violate('election-safety', `group ${g.id}: two leaders in term ${term}: ${known} and ${r.id}`);
    }
  }

  /** A snapshot (index, term) must be of the committed history when that index is known committed. */
}
