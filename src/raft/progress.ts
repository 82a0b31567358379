/**
 * What a leader knows of each replica's log, and how it sends to it:
 *
 *  - probe: the leader does not know where the logs agree. One append at a time (the next after an answer, or
 *    after a heartbeat interval), moving `next` back on each rejection.
 *  - replicate: the logs agree up to `match`. Appends are pipelined: `next` moves ahead optimistically, bounded by
 *    the in-flight window (messages and bytes).
 *  - snapshot: the entries it needs are compacted; a snapshot is streamed in chunks, one in flight at a time.
 */
import { invariant } from '../errors.js';

export type ProgressState = 'probe' | 'replicate' | 'snapshot';

/** The appends sent and not yet acknowledged, by their last index, with their payload sizes. */
export class Inflights {
  readonly maxCount: number;
  readonly maxBytes: number;
  #last: number[] = [];
  #sizes: number[] = [];
  #bytes = 0;

  constructor(maxCount: number, maxBytes: number) {
    this.maxCount = maxCount;
    this.maxBytes = maxBytes;
  }

  add(lastIndex: number, bytes: number): void {
    invariant(!this.full(), 'an append was sent with the in-flight window full');
    const prev = this.#last[this.#last.length - 1];
    invariant(prev === undefined || lastIndex > prev, () => `in-flight append ${lastIndex} is not after ${prev}`);
    this.#last.push(lastIndex);
    this.#sizes.push(bytes);
    this.#bytes += bytes;
  }

  /** Forget every append whose last index is ≤ `index` (acknowledged). */
  freeTo(index: number): void {
    let n = 0;
    while (n < this.#last.length && this.#last[n]! <= index) {
      this.#bytes -= this.#sizes[n]!;
      n++;
    }
    if (n === 0) return;
    this.#last = this.#last.slice(n);
    this.#sizes = this.#sizes.slice(n);
  }

  /** Forget the oldest append (a heartbeat answer shows the replica alive: let one probe through). */
  freeFirst(): void {
    if (this.#last.length > 0) this.freeTo(this.#last[0]!);
  }

  full(): boolean {
    return this.#last.length >= this.maxCount || (this.#last.length > 0 && this.#bytes >= this.maxBytes);
  }

  count(): number {
    return this.#last.length;
  }

  bytes(): number {
    return this.#bytes;
  }

  reset(): void {
    this.#last = [];
    this.#sizes = [];
    this.#bytes = 0;
  }
}

export class Progress {
  /** Highest index known to match the leader's log. */
  match = 0;
  /** Next index to send. */
  next: number;
  state: ProgressState = 'probe';
  /** Probe: an append was sent since the last heartbeat answer (wait before sending another). */
  probeSent = false;
  /** Snapshot: the index of the snapshot being sent, and how many of its bytes the replica has acknowledged. */
  snapshotIndex = 0;
  snapshotOffset = 0;
  /** Snapshot: a chunk is in flight. */
  snapshotChunkSent = false;
  /** Heard from in the current check-quorum period. */
  recentActive = false;
  /** The last heartbeat round this replica answered. */
  ackedRound = 0;
  readonly inflights: Inflights;
  isLearner: boolean;

  constructor(next: number, inflights: Inflights, isLearner: boolean) {
    this.next = next;
    this.inflights = inflights;
    this.isLearner = isLearner;
  }

  #reset(state: ProgressState): void {
    this.state = state;
    this.probeSent = false;
    this.snapshotIndex = 0;
    this.snapshotOffset = 0;
    this.snapshotChunkSent = false;
    this.inflights.reset();
  }

  becomeProbe(): void {
    if (this.state === 'snapshot') {
      const snapIndex = this.snapshotIndex;
      this.#reset('probe');
      this.next = Math.max(this.match + 1, snapIndex + 1);
    } else {
      this.#reset('probe');
      this.next = this.match + 1;
    }
  }

  becomeReplicate(): void {
    this.#reset('replicate');
    this.next = this.match + 1;
  }

  becomeSnapshot(snapshotIndex: number): void {
    this.#reset('snapshot');
    this.snapshotIndex = snapshotIndex;
  }

  /** An acknowledgement up to `index`: returns whether it told us something new. */
  maybeUpdate(index: number): boolean {
    let updated = false;
    if (index > this.match) {
      this.match = index;
      updated = true;
      this.probeSent = false;
    }
    this.next = Math.max(this.next, index + 1);
    return updated;
  }

  /** An append ending at `lastIndex` was sent with `bytes` of payload. */
  sentEntries(lastIndex: number, count: number, bytes: number): void {
    if (this.state === 'replicate') {
      if (count > 0) {
        this.next = lastIndex + 1;
        this.inflights.add(lastIndex, bytes);
      }
    } else if (this.state === 'probe') {
      this.probeSent = true;
    } else {
      invariant(false, 'an append was sent to a replica receiving a snapshot');
    }
  }

  /**
   * A rejection of the append after `rejected`; `hint` is where the replica guesses the logs agree. Returns false
   * when the rejection is stale (answers an append we no longer care about).
   */
  maybeDecrTo(rejected: number, hint: number): boolean {
    if (this.state === 'replicate') {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    if (rejected === this.match && hint < this.match) {
      // The replica refuses an entry it acknowledged: its log is no longer what it was (a fleet replica dropped and
      // opened again empty under the same group id, a disk that lost what it had synced). With `match` kept, the
      // probe would stay at match + 1 and be refused for ever (found by the fleet process test d): a flood of appends
      // and a learner that never caught up). Forget it and probe down from what the replica says it holds.
      this.match = 0;
    }
    this.next = Math.max(Math.min(rejected, hint + 1), this.match + 1, 1);
    this.probeSent = false;
    return true;
  }

  /** Whether the leader must hold appends to this replica for now. */
  isPaused(): boolean {
    switch (this.state) {
      case 'probe':
        return this.probeSent;
      case 'replicate':
        return this.inflights.full();
      case 'snapshot':
        return true;
    }
  }
}
