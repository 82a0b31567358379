/**
 * The replicated log as one replica sees it: what the host has made durable (read through `Storage`, which the
 * host implements) followed by what the core appended in memory and the host has not yet persisted (the unstable
 * part: entries, or a snapshot received from the leader, handed to the host by the next Ready).
 *
 * Indexes start at 1. Index 0 (term 0) is the empty prefix every log shares.
 */
import { invariant } from '../errors.js';
import { decodeMembershipEntry, type Entry, type HardState, type Membership, type Snapshot } from './messages.js';

/**
 * The durable state the host keeps (its write-ahead log and last snapshot). Read-only for the core: the host
 * writes it when it handles a Ready, then calls advance(). Every method is synchronous and cheap (an in-memory
 * index over the host's files).
 */
export interface Storage {
  /** At start: the persisted hard state, and the membership in effect at the snapshot (or bootstrap). */
  initialState(): { hardState: HardState; membership: Membership };
  /** Entries [lo, hi), in order; at most `maxBytes` of payload, but always at least the first. */
  entries(lo: number, hi: number, maxBytes: number): Entry[];
  /** The term of entry `index`, for firstIndex() − 1 ≤ index ≤ lastIndex(); undefined outside. */
  term(index: number): number | undefined;
  /** The first index still held as an entry (the snapshot's index + 1). */
  firstIndex(): number;
  /** The last index held (the snapshot's index when no entry follows it). */
  lastIndex(): number;
  /** The latest snapshot (index 0 and no bytes when none was taken). */
  snapshot(): Snapshot;
}

export class RaftLog {
  readonly storage: Storage;
  /** Highest index known to be committed (on a quorum of voters' disks). */
  committed: number;
  /** Highest index the host has applied (acknowledged through advance()). */
  applied: number;
  /** A snapshot received from the leader, not yet persisted by the host. */
  unstableSnapshot: Snapshot | undefined;
  /** Entries not yet persisted; unstableEntries[i].index === unstableOffset + i. */
  unstableEntries: Entry[];
  unstableOffset: number;
  /**
   * The memberships the log holds, in index order: the snapshot's (at its index), then one per membership entry.
   * The last one is in effect, committed or not (the dissertation's rule); a truncated entry takes its with it.
   */
  #memberships: { index: number; membership: Membership }[];

  constructor(
    storage: Storage,
    committed: number,
    applied: number,
    membership: Membership = storage.initialState().membership,
  ) {
    this.storage = storage;
    this.unstableSnapshot = undefined;
    this.unstableEntries = [];
    this.unstableOffset = storage.lastIndex() + 1;
    this.committed = committed;
    invariant(applied <= committed || applied === 0, () => `applied ${applied} is beyond committed ${committed}`);
    this.applied = Math.max(applied, storage.firstIndex() - 1);
    if (this.committed < this.applied) this.committed = this.applied;
    invariant(this.committed <= this.lastIndex(), () => `committed ${committed} is beyond the last index`);
    this.#memberships = [{ index: storage.firstIndex() - 1, membership }];
    // Once at start: the membership entries of the stored log (read in bounded batches).
    for (let lo = storage.firstIndex(); lo <= storage.lastIndex();) {
      const batch = storage.entries(lo, storage.lastIndex() + 1, 1 << 20);
      this.#noteMemberships(batch);
      lo += batch.length;
    }
  }

  #noteMemberships(entries: readonly Entry[]): void {
    for (const e of entries) {
      if (e.type === 'membership') {
        this.#memberships.push({ index: e.index, membership: decodeMembershipEntry(e.data).membership });
      }
    }
  }

  /** The membership in effect: the last one in the log, committed or not. */
  membership(): Membership {
    return this.#memberships[this.#memberships.length - 1]!.membership;
  }

  /** The index of the entry that set the membership in effect (the snapshot's index when none since). */
  membershipIndex(): number {
    return this.#memberships[this.#memberships.length - 1]!.index;
  }

  /** The membership in effect after entry `index` (for the host's snapshots: pass the applied index). */
  membershipAt(index: number): Membership {
    let m = this.#memberships[0]!.membership;
    for (const c of this.#memberships) if (c.index <= index) m = c.membership;
    return m;
  }

  firstIndex(): number {
    if (this.unstableSnapshot) return this.unstableSnapshot.meta.index + 1;
    return this.storage.firstIndex();
  }

  lastIndex(): number {
    if (this.unstableEntries.length > 0) return this.unstableOffset + this.unstableEntries.length - 1;
    if (this.unstableSnapshot) return this.unstableSnapshot.meta.index;
    return this.storage.lastIndex();
  }

  /** The term of entry `index`; undefined when compacted away or beyond the end. */
  term(index: number): number | undefined {
    if (index === 0) return 0;
    const snap = this.unstableSnapshot;
    if (snap && index === snap.meta.index) return snap.meta.term;
    if (index > this.lastIndex()) return undefined;
    if (index >= this.unstableOffset && this.unstableEntries.length > 0) {
      return this.unstableEntries[index - this.unstableOffset]!.term;
    }
    if (snap) return undefined; // below a pending snapshot: gone
    if (index < this.storage.firstIndex() - 1) return undefined;
    return this.storage.term(index);
  }

  lastTerm(): number {
    const t = this.term(this.lastIndex());
    invariant(t !== undefined, 'the last entry has no term');
    return t;
  }

  matchTerm(index: number, term: number): boolean {
    return this.term(index) === term;
  }

  /** Whether a log ending at (index, term) is at least as up to date as this one (§5.4.1). */
  isUpToDate(index: number, term: number): boolean {
    const lastTerm = this.lastTerm();
    return term > lastTerm || (term === lastTerm && index >= this.lastIndex());
  }

  /** The index of the first entry of `entries` that this log lacks or holds with another term; 0 when none. */
  findConflict(entries: readonly Entry[]): number {
    for (const e of entries) {
      if (!this.matchTerm(e.index, e.term)) return e.index;
    }
    return 0;
  }

  /**
   * The last index ≤ `index` whose term is ≤ `term`, with that term: where a leader whose entry at `index` has
   * `term` may find agreement (every entry of ours above it has a greater term, so cannot match). Compacted
   * entries count as agreeing (they are committed).
   */
  findConflictByTerm(index: number, term: number): { index: number; term: number } {
    // Terms never decrease along a log: binary search, so that a long run of a stale term costs log(n) lookups.
    let hi = Math.min(index, this.lastIndex());
    const t = this.term(hi);
    if (t === undefined || t <= term) return { index: hi, term: t ?? 0 };
    let lo = this.firstIndex() - 1; // the snapshot's index: its term is known
    const loTerm = this.term(lo);
    if (loTerm === undefined || loTerm > term) return { index: lo, term: 0 };
    // Invariant: term(lo) <= term < term(hi).
    while (hi - lo > 1) {
      const mid = lo + Math.floor((hi - lo) / 2);
      if (this.term(mid)! <= term) lo = mid;
      else hi = mid;
    }
    return { index: lo, term: this.term(lo)! };
  }

  /**
   * A leader's append: entries following (index, logTerm). Returns the last index now known to match the
   * leader, or undefined when our log does not hold (index, logTerm).
   */
  maybeAppend(index: number, logTerm: number, commit: number, entries: readonly Entry[]): number | undefined {
    if (!this.matchTerm(index, logTerm)) return undefined;
    const lastNew = index + entries.length;
    const conflict = this.findConflict(entries);
    if (conflict !== 0) {
      invariant(conflict > this.committed, () => `entry ${conflict} conflicts with the committed prefix`);
      this.append(entries.slice(conflict - index - 1));
    }
    this.commitTo(Math.min(commit, lastNew));
    return lastNew;
  }

  /** Append entries (the first may replace a conflicting suffix, never a committed entry). */
  append(entries: readonly Entry[]): void {
    if (entries.length === 0) return;
    const after = entries[0]!.index;
    invariant(after > this.committed, () => `append at ${after} would overwrite committed ${this.committed}`);
    invariant(after <= this.lastIndex() + 1, () => `append at ${after} leaves a gap after ${this.lastIndex()}`);
    const end = this.unstableOffset + this.unstableEntries.length;
    if (after === end) {
      this.unstableEntries.push(...entries);
    } else if (after <= this.unstableOffset) {
      // Replaces part of the durable log too: the host truncates its log at `after` when it persists these.
      this.unstableOffset = after;
      this.unstableEntries = [...entries];
    } else {
      this.unstableEntries = [...this.unstableEntries.slice(0, after - this.unstableOffset), ...entries];
    }
    // A replaced suffix takes its memberships with it (never the base one: it is at or below the commit index).
    while (this.#memberships.length > 1 && this.#memberships[this.#memberships.length - 1]!.index >= after) {
      this.#memberships.pop();
    }
    this.#noteMemberships(entries);
  }

  /** Entries [lo, hi) with at most `maxBytes` of payload (at least one entry). */
  slice(lo: number, hi: number, maxBytes: number): Entry[] {
    if (lo >= hi) return [];
    invariant(lo >= this.firstIndex(), () => `entries from ${lo} are compacted (first ${this.firstIndex()})`);
    invariant(hi <= this.lastIndex() + 1, () => `entries up to ${hi - 1} are beyond the last index`);
    const out: Entry[] = [];
    let bytes = 0;
    if (lo < this.unstableOffset) {
      const stored = this.storage.entries(lo, Math.min(hi, this.unstableOffset), maxBytes);
      for (const e of stored) {
        out.push(e);
        bytes += e.data.byteLength;
      }
      const wanted = Math.min(hi, this.unstableOffset) - lo;
      if (stored.length < wanted) return out; // the byte limit cut the stored part
    }
    const from = Math.max(lo, this.unstableOffset);
    for (let i = from; i < hi; i++) {
      const e = this.unstableEntries[i - this.unstableOffset]!;
      if (out.length > 0 && bytes + e.data.byteLength > maxBytes) break;
      out.push(e);
      bytes += e.data.byteLength;
    }
    return out;
  }

  commitTo(index: number): void {
    if (index <= this.committed) return;
    invariant(index <= this.lastIndex(), () => `commit ${index} is beyond the last index ${this.lastIndex()}`);
    this.committed = index;
  }

  /** Commit up to `index` if that entry is from `term` (the leader's current term: §5.4.2). */
  maybeCommit(index: number, term: number): boolean {
    if (index > this.committed && this.term(index) === term) {
      this.commitTo(index);
      return true;
    }
    return false;
  }

  appliedTo(index: number): void {
    if (index === 0) return;
    invariant(index <= this.committed, () => `applied ${index} beyond committed ${this.committed}`);
    invariant(index >= this.applied, () => `applied went back from ${this.applied} to ${index}`);
    this.applied = index;
  }

  /** Committed entries not yet applied, at most `maxBytes` (at least one). */
  nextCommitted(maxBytes: number): Entry[] {
    const lo = Math.max(this.applied + 1, this.firstIndex());
    if (lo > this.committed) return [];
    return this.slice(lo, this.committed + 1, maxBytes);
  }

  /** The host persisted entries up to (index, term): they are no longer unstable. */
  stableTo(index: number, term: number): void {
    if (index < this.unstableOffset) return;
    const e = this.unstableEntries[index - this.unstableOffset];
    if (e === undefined || e.term !== term) return; // replaced since: the new ones are still unstable
    this.unstableEntries = this.unstableEntries.slice(index + 1 - this.unstableOffset);
    this.unstableOffset = index + 1;
  }

  stableSnapshotTo(index: number): void {
    if (this.unstableSnapshot && this.unstableSnapshot.meta.index === index) this.unstableSnapshot = undefined;
  }

  /** Replace the whole log by a snapshot from the leader. */
  restore(snapshot: Snapshot): void {
    invariant(snapshot.meta.index > this.committed, 'restoring a snapshot behind the commit index');
    this.committed = snapshot.meta.index;
    this.unstableSnapshot = snapshot;
    this.unstableOffset = snapshot.meta.index + 1;
    this.unstableEntries = [];
    this.#memberships = [{ index: snapshot.meta.index, membership: snapshot.meta.membership }];
  }
}
