/**
 * A Storage kept in memory: for tests, the simulator, and as the reference behaviour of a durable one. The host
 * writes to it when handling a Ready (setHardState, applySnapshot, append), and compacts it after snapshotting.
 */
import { InvalidArgumentError, invariant } from '../errors.js';
import type { Storage } from './log.js';
import type { Entry, HardState, Membership, Snapshot } from './messages.js';

export class MemoryStorage implements Storage {
  #hardState: HardState = { term: 0, vote: '', commit: 0 };
  #snapshot: Snapshot;
  /** Entries after the snapshot: #entries[i].index === snapshot index + 1 + i. */
  #entries: Entry[] = [];

  /** A new replica's storage; `membership` is the bootstrap membership (empty for a replica added later). */
  constructor(membership: Membership = { voters: [], learners: [] }) {
    this.#snapshot = { meta: { index: 0, term: 0, membership }, data: new Uint8Array(0) };
  }

  initialState(): { hardState: HardState; membership: Membership } {
    return { hardState: this.#hardState, membership: this.#snapshot.meta.membership };
  }

  hardState(): HardState {
    return this.#hardState;
  }

  setHardState(hs: HardState): void {
    this.#hardState = hs;
  }

  #offset(): number {
    return this.#snapshot.meta.index + 1;
  }

  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    invariant(lo >= this.firstIndex(), () => `entries from ${lo} are compacted`);
    invariant(hi <= this.lastIndex() + 1, () => `entries up to ${hi - 1} are not stored`);
    const out: Entry[] = [];
    let bytes = 0;
    for (let i = lo; i < hi; i++) {
      const e = this.#entries[i - this.#offset()]!;
      if (out.length > 0 && bytes + e.data.byteLength > maxBytes) break;
      out.push(e);
      bytes += e.data.byteLength;
    }
    return out;
  }

  term(index: number): number | undefined {
    if (index === this.#snapshot.meta.index) return this.#snapshot.meta.term;
    if (index < this.#offset() || index > this.lastIndex()) return undefined;
    return this.#entries[index - this.#offset()]!.term;
  }

  firstIndex(): number {
    return this.#offset();
  }

  lastIndex(): number {
    return this.#snapshot.meta.index + this.#entries.length;
  }

  snapshot(): Snapshot {
    return this.#snapshot;
  }

  /** Persist entries from a Ready: the first one's index truncates whatever followed (a replaced suffix). */
  append(entries: readonly Entry[]): void {
    if (entries.length === 0) return;
    const first = entries[0]!.index;
    invariant(first >= this.firstIndex(), () => `append at ${first} is below the snapshot`);
    invariant(first <= this.lastIndex() + 1, () => `append at ${first} leaves a gap after ${this.lastIndex()}`);
    const keep = first - this.#offset();
    if (keep < this.#entries.length) this.#entries.length = keep; // a replaced suffix
    for (const e of entries) this.#entries.push(e);
  }

  /** Persist a snapshot from a Ready: it replaces the whole log. */
  applySnapshot(snapshot: Snapshot): void {
    if (snapshot.meta.index <= this.#snapshot.meta.index) return;
    this.#snapshot = snapshot;
    this.#entries = [];
  }

  /**
   * Record a snapshot of the state machine at `index` (applied by the host) and drop the entries it covers.
   * `membership` is the core's membership after applying `index` (Core.membership()).
   */
  createSnapshot(index: number, membership: Membership, data: Uint8Array): Snapshot {
    if (index <= this.#snapshot.meta.index) {
      throw new InvalidArgumentError(`a snapshot at ${index} is not newer than ${this.#snapshot.meta.index}`);
    }
    const term = this.term(index);
    if (term === undefined) throw new InvalidArgumentError(`no entry ${index} to snapshot at`);
    this.#entries = this.#entries.slice(index + 1 - this.#offset());
    this.#snapshot = { meta: { index, term, membership }, data };
    return this.#snapshot;
  }
}
