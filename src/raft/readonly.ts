/**
 * ReadIndex bookkeeping on a leader. A read asked at commit index c is safe once a majority of voters has
 * answered a heartbeat broadcast after the read arrived (no other leader can have committed anything past c
 * unknown to us then). Broadcasts are numbered (rounds); each replica's progress remembers the highest round it
 * answered, so one answer confirms every earlier read.
 */
import type { NodeId } from './messages.js';

export interface PendingRead {
  readonly ctx: string;
  /** Who asked: this replica, or a follower that forwarded the request. */
  readonly from: NodeId;
  /** The commit index when the read arrived. */
  readonly index: number;
  /** The heartbeat round that confirms it. */
  readonly round: number;
}

export class ReadQueue {
  /** Reads waiting for a heartbeat quorum, in round order. */
  #pending: PendingRead[] = [];
  /** Reads that arrived before the leader committed an entry of its term (no safe index yet). */
  #beforeCommit: { ctx: string; from: NodeId }[] = [];

  add(read: PendingRead): void {
    this.#pending.push(read);
  }

  waitForCommit(ctx: string, from: NodeId): void {
    this.#beforeCommit.push({ ctx, from });
  }

  /** Take the reads waiting for the first commit of the term. */
  takeWaiting(): { ctx: string; from: NodeId }[] {
    const out = this.#beforeCommit;
    this.#beforeCommit = [];
    return out;
  }

  /** Remove and return the reads confirmed when `confirmed(round)` holds (rounds confirm in order). */
  takeConfirmed(confirmed: (round: number) => boolean): PendingRead[] {
    let n = 0;
    while (n < this.#pending.length && confirmed(this.#pending[n]!.round)) n++;
    if (n === 0) return [];
    const out = this.#pending.slice(0, n);
    this.#pending = this.#pending.slice(n);
    return out;
  }

  size(): number {
    return this.#pending.length + this.#beforeCommit.length;
  }

  /** Drop everything (leadership lost: the askers retry elsewhere). */
  clear(): void {
    this.#pending = [];
    this.#beforeCommit = [];
  }
}
