/**
 * The log side of the Raft invariant checker (raft-invariants.ts): a bounded model of each replica's log (the
 * entries above what it knows committed: their terms and data hashes), the committed entries of each group, and the
 * checks made as entries are appended, commits advance, snapshots replace logs and leaders take over — log
 * matching and leader completeness, and the committed-entry half of state-machine safety.
 */
import type { Entry, SnapshotMeta } from '../raft/messages.js';

export type RaftInvariantKind = 'election-safety' | 'log-matching' | 'leader-completeness' | 'state-machine-safety';

export type Violate = (kind: RaftInvariantKind, detail: string) => void;

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
export interface Fact {
  readonly hash: number;
  readonly prevTerm: number;
  readonly by: string;
}

export interface Replica {
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

export interface Group {
  readonly id: string;
  readonly leaders: Map<number, string>;
  /** (index → term → fact), but for committed entries: those are in cTerm/cHash/cBy. */
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

export const fmt = (index: number, term: number): string => `(${index}, term ${term})`;

export function newGroup(id: string): Group {
  return {
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
}

/** A replica model whose log starts after (base, baseTerm); applied from base. */
export function newReplica(id: string, base: number, baseTerm: number): Replica {
  return { id, base, baseTerm, terms: [], hashes: [], committed: base, leaderChecked: 0, applied: base };
}

export class LogChecker {
  readonly #violate: Violate;

  constructor(violate: Violate) {
    this.#violate = violate;
  }

  last(r: Replica): number {
    return r.base + r.terms.length;
  }

  /** The term of a replica's entry at `i` (base ≤ i ≤ last); −1 when unknown. */
  termAt(r: Replica, i: number): number {
    return i === r.base ? r.baseTerm : r.terms[i - r.base - 1]!;
  }

  checkSnapshot(g: Group, r: Replica, index: number, term: number, what: string): void {
    const ct = g.cTerm[index];
    if (ct !== undefined && term !== -1 && ct !== term) {
      this.#violate(
        'state-machine-safety',
        `group ${g.id}: ${r.id} ${what} ${fmt(index, term)}, but the committed entry there is ${fmt(index, ct)}`,
      );
    }
  }

  snapshot(g: Group, r: Replica, meta: Pick<SnapshotMeta, 'index' | 'term'>): void {
    this.checkSnapshot(g, r, meta.index, meta.term, 'installed a snapshot at');
    // The snapshot replaces the whole log (the core keeps its log when it already holds the entry: no snapshot then).
    r.base = meta.index;
    r.baseTerm = meta.term;
    r.terms = [];
    r.hashes = [];
    r.committed = Math.max(r.committed, meta.index);
  }

  /** Entries appended from entries[0].index on (replacing whatever the replica held from there). */
  append(g: Group, r: Replica, entries: readonly Entry[]): void {
    const first = entries[0]!.index;
    if (first - 1 > this.last(r)) {
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
      const prevTerm = this.termAt(r, e.index - 1);
      const h = entryHash(e);
      this.checkEntry(g, r, e.index, e.term, h, prevTerm);
      r.terms.push(e.term);
      r.hashes.push(h);
    }
  }

  checkEntry(g: Group, r: Replica, i: number, term: number, hash: number, prevTerm: number): void {
    // At a committed index, another term is no violation: a replica that missed the commit may still hold, or even
    // take from a deposed leader, an older entry there (it may not count it committed, apply it, or lead with it).
    const ct = g.cTerm[i];
    if (ct === term) {
      if (g.cHash[i] !== hash) {
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
  commit(g: Group, r: Replica, c: number, term: number): void {
    if (c <= r.committed) return;
    if (c > this.last(r)) {
      this.#violate(
        'state-machine-safety',
        `group ${g.id}: ${r.id} counts ${c} committed but its log ends at ${this.last(r)}`,
      );
      c = this.last(r);
      if (c <= r.committed) return;
    }
    const before = g.committedMax;
    // Already committed below: its entry at the highest such index must be the committed one (log matching does
    // the rest of the prefix).
    const k = Math.min(c, before);
    if (k > r.base && g.cTerm[k] !== undefined) {
      const t = this.termAt(r, k);
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
      // The committed entry's fact now lives in cTerm/cHash; other terms' stay (stale entries are still checked).
      for (let j = before + 1; j <= c; j++) {
        const byTerm = g.facts.get(j);
        byTerm?.delete(g.cTerm[j]!);
        if (byTerm?.size === 0) g.facts.delete(j);
      }
      const runs = g.commitRuns;
      while (runs.length > 0 && runs[runs.length - 1]!.term >= term) runs.pop();
      runs.push({ last: c, term });
      g.committedMax = c;
    }
    r.committed = c;
    // What it holds up to c is the committed log now: keep only the term at c (the next entry's predecessor).
    if (c > r.base) {
      r.baseTerm = this.termAt(r, c);
      r.terms.splice(0, c - r.base);
      r.hashes.splice(0, c - r.base);
      r.base = c;
    }
  }

  /** A leader of `term` must hold every entry committed in an earlier term. */
  completeness(g: Group, r: Replica, term: number): void {
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
    const last = this.last(r);
    if (last < k) {
      this.#violate(
        'leader-completeness',
        `group ${g.id}: ${r.id} leads term ${term} without the committed entry ${fmt(k, ct)}: its log ends at ` +
          `${fmt(last, this.termAt(r, last))}`,
      );
      return;
    }
    if (k <= r.base) return; // its base is a committed or snapshot entry, checked when it was set
    const t = this.termAt(r, k);
    if (t !== ct || r.hashes[k - r.base - 1] !== g.cHash[k]) {
      this.#violate(
        'leader-completeness',
        `group ${g.id}: ${r.id} leads term ${term} holding ${fmt(k, t)} where ${fmt(k, ct)} was committed`,
      );
    }
  }
}
