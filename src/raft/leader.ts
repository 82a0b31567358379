/**
 * The leader's half of the core: per-replica progress and flow control, the commit rule, snapshots sent in
 * chunks, ReadIndex and lease reads, leadership transfer, membership changes, quiescence. One Leader exists per
 * term a replica leads; it is dropped when the replica steps down.
 */
import { invariant } from '../errors.js';
import type { Core } from './core.js';
import type { Outcome } from './ready.js';
import {
  applyChange,
  encodeMembershipEntry,
  payloadBytes,
  type AppendResponseMessage,
  type Entry,
  type EntryType,
  type HeartbeatResponseMessage,
  type Message,
  type MembershipChange,
  type NodeId,
  type SnapshotResponseMessage,
} from './messages.js';
import { Inflights, Progress } from './progress.js';
import { isQuorum, quorumIndex } from './quorum.js';
import { ReadQueue } from './readonly.js';

const EMPTY = new Uint8Array(0);
const decoder = new TextDecoder();

export class Leader {
  readonly #core: Core;
  readonly progress = new Map<NodeId, Progress>();
  /** The voter leadership is being handed to ('' when none), and for how many ticks. */
  transferee: NodeId = '';
  #transferElapsed = 0;
  /** A timeoutNow went out this term: lease reads are off until the term ends (see docs/raft.md). */
  #transferStarted = false;
  /** The membership no longer has us as a voter: leadership is being handed over. */
  #leaving = false;
  #heartbeatElapsed = 0;
  /** The index of the last membership entry proposed; no other until it is applied. */
  #pendingMembershipIndex: number;
  /** Payload bytes proposed in this term and not yet handed out as committed. */
  #uncommittedBytes = 0;
  /** Heartbeat rounds: the last one broadcast, and when (core.now) each still useful one left. */
  #round = 0;
  /**
   * A round broadcast since the last Ready was taken: its heartbeats have not left yet, so a read arriving now can
   * join it (they will leave after the read arrived). Many reads per Ready cost one round.
   */
  #unsentRound = 0;
  readonly #roundSentAt = new Map<number, number>();
  readonly #reads = new ReadQueue();

  constructor(core: Core) {
    this.#core = core;
    const log = core.log;
    this.#pendingMembershipIndex = log.lastIndex();
    const m = core.membership();
    for (const id of [...m.voters, ...m.learners]) this.#addProgress(id, m.learners.includes(id));
    const self = this.progress.get(core.id);
    if (self) {
      self.match = core.persistedIndex();
      self.becomeReplicate();
    }
  }

  #addProgress(id: NodeId, isLearner: boolean): void {
    const o = this.#core.opts;
    const pr = new Progress(
      this.#core.log.lastIndex() + 1,
      new Inflights(o.maxInflightMessages, o.maxInflightBytes),
      isLearner,
    );
    pr.recentActive = true; // give every replica one check-quorum period
    this.progress.set(id, pr);
  }

  /** Called once the core holds this Leader: commit an empty entry of the new term (§5.4.2, §8). */
  start(): void {
    this.#append([{ type: 'normal', data: EMPTY }]);
  }

  tick(): void {
    const core = this.#core;
    this.#heartbeatElapsed++;
    core.electionElapsed++;
    if (this.transferee !== '' && ++this.#transferElapsed >= core.opts.electionTicks) {
      this.#abortTransfer();
      if (this.#leaving) this.#handOver();
    }
    if (core.electionElapsed >= core.opts.electionTicks) {
      core.electionElapsed = 0;
      if (core.opts.checkQuorum) {
        const voters = core.membership().voters;
        if (!isQuorum(voters, (id) => id === core.id || this.progress.get(id)?.recentActive === true)) {
          core.stepDown(); // a majority has not answered for an election timeout: another leader may exist
          return;
        }
        for (const [id, pr] of this.progress) if (id !== core.id) pr.recentActive = false;
      }
    }
    if (this.#heartbeatElapsed >= core.opts.heartbeatTicks) {
      this.#heartbeatElapsed = 0;
      this.broadcastHeartbeat(false);
    }
  }

  step(m: Message): void {
    switch (m.type) {
      case 'propose':
        this.propose(m.entries);
        return;
      case 'readIndex':
        this.readIndex(m.from, m.ctx);
        return;
      case 'transfer':
        if (this.#core.membership().voters.includes(m.target)) this.transfer(m.target);
        return;
      case 'appendResponse':
        this.#handleAppendResponse(m);
        return;
      case 'heartbeatResponse':
        this.#handleHeartbeatResponse(m);
        return;
      case 'snapshotResponse':
        this.#handleSnapshotResponse(m);
        return;
      default:
        return; // votes of a past election, messages of other roles
    }
  }

  // ---- proposals and commit --------------------------------------------------------------------------------

  propose(entries: readonly { readonly type: EntryType; readonly data: Uint8Array }[]): Outcome {
    const core = this.#core;
    if (this.transferee !== '') {
      return { ok: false, reason: 'transferring', detail: `leadership is moving to ${this.transferee}; retry there` };
    }
    const bytes = payloadBytes(entries);
    if (this.#uncommittedBytes > 0 && this.#uncommittedBytes + bytes > core.opts.maxUncommittedBytes) {
      return {
        ok: false,
        reason: 'uncommitted-limit',
        detail: `${this.#uncommittedBytes} bytes are proposed and not yet committed (maxUncommittedBytes); retry later`,
      };
    }
    const out: { type: EntryType; data: Uint8Array }[] = [];
    for (const e of entries) {
      if (e.type !== 'membership') {
        out.push(e);
        continue;
      }
      const log = core.log;
      // Mutant: a second change while the first is uncommitted (two changes apart: disjoint majorities).
      if (this.#pendingMembershipIndex > log.committed && !core.opts.mutants.has('raft-membership-before-safe')) {
        return {
          ok: false,
          reason: 'membership-pending',
          detail: 'the previous membership change is not committed yet',
        };
      }
      if (log.term(log.committed) !== core.term) {
        return { ok: false, reason: 'membership-pending', detail: 'the new leader has not committed its first entry' };
      }
      const change = JSON.parse(decoder.decode(e.data)) as MembershipChange;
      const next = applyChange(core.membership(), change);
      if (typeof next === 'string') return { ok: false, reason: 'invalid-membership-change', detail: next };
      out.push({ type: 'membership', data: encodeMembershipEntry({ change, membership: next }) });
      this.#pendingMembershipIndex = log.lastIndex() + out.length;
    }
    this.#uncommittedBytes += bytes;
    this.#append(out);
    return { ok: true };
  }

  #append(entries: readonly { readonly type: EntryType; readonly data: Uint8Array }[]): void {
    const core = this.#core;
    const first = core.log.lastIndex() + 1;
    core.log.append(entries.map((e, i): Entry => ({ term: core.term, index: first + i, type: e.type, data: e.data })));
    if (entries.some((e) => e.type === 'membership')) this.#followMembership();
    this.#broadcastAppend();
  }

  /** Committed entries went to the host to apply: they no longer count as uncommitted. */
  handedOut(entries: readonly Entry[]): void {
    this.#unsentRound = 0;
    for (const e of entries) if (e.term === this.#core.term) this.#uncommittedBytes -= e.data.byteLength;
    if (this.#uncommittedBytes < 0) this.#uncommittedBytes = 0;
  }

  /** Our own log is durable up to `index`: the leader counts itself only for what it has persisted. */
  persisted(index: number): void {
    const self = this.progress.get(this.#core.id);
    if (self?.maybeUpdate(index)) this.#maybeCommit();
  }

  #maybeCommit(): void {
    const core = this.#core;
    const index = quorumIndex(core.membership().voters, (id) => this.progress.get(id)?.match ?? 0);
    // Only an entry of the current term is committed by counting replicas; earlier ones follow it (§5.4.2).
    // Mutant: any entry a majority holds is committed (figure 8 of the Raft paper: it can then be overwritten).
    const term = core.opts.mutants.has('raft-commit-by-counting') ? (core.log.term(index) ?? core.term) : core.term;
    if (!core.log.maybeCommit(index, term)) return;
    for (const r of this.#reads.takeWaiting()) this.readIndex(r.from, r.ctx);
    this.#broadcastAppend();
    if (core.log.committed >= core.log.membershipIndex()) {
      this.#dropRemoved();
      if (!this.#leaving && !core.membership().voters.includes(core.id)) this.#handOver();
    }
  }

  // ---- replication -----------------------------------------------------------------------------------------

  #broadcastAppend(): void {
    for (const id of this.progress.keys()) if (id !== this.#core.id) this.#sendAppend(id, true);
  }

  /** Send `id` what it lacks (or an empty append when `sendIfEmpty`); false when nothing was sent. */
  #sendAppend(id: NodeId, sendIfEmpty: boolean): boolean {
    const core = this.#core;
    const pr = this.progress.get(id);
    if (pr === undefined || pr.isPaused()) return false;
    const log = core.log;
    const prev = pr.next - 1;
    const prevTerm = log.term(prev);
    if (prevTerm === undefined || pr.next < log.firstIndex()) {
      this.#startSnapshot(id, pr);
      return true;
    }
    const last = log.lastIndex();
    const entries = pr.next <= last ? log.slice(pr.next, last + 1, core.opts.maxMessageBytes) : [];
    if (entries.length === 0 && !sendIfEmpty) return false;
    core.send({
      type: 'append',
      from: core.id,
      to: id,
      term: core.term,
      index: prev,
      logTerm: prevTerm,
      entries,
      commit: log.committed,
    });
    pr.sentEntries(prev + entries.length, entries.length, payloadBytes(entries));
    return true;
  }

  #handleAppendResponse(m: AppendResponseMessage): void {
    const core = this.#core;
    const pr = this.progress.get(m.from);
    if (pr === undefined) return;
    pr.recentActive = true;
    if (m.reject) {
      let hint = m.hintIndex;
      if (m.hintTerm > 0) hint = core.log.findConflictByTerm(m.hintIndex, m.hintTerm).index;
      if (pr.maybeDecrTo(m.index, hint)) {
        if (pr.state === 'replicate') pr.becomeProbe();
        this.#sendAppend(m.from, true);
      }
      return;
    }
    if (!pr.maybeUpdate(m.index)) return;
    if (pr.state === 'probe') pr.becomeReplicate();
    else if (pr.state === 'snapshot' && pr.match >= pr.snapshotIndex) pr.becomeReplicate();
    else if (pr.state === 'replicate') pr.inflights.freeTo(m.index);
    this.#maybeCommit();
    while (this.#sendAppend(m.from, false)) {
      // keep the pipeline full
    }
    if (this.transferee === m.from && pr.match === core.log.lastIndex()) this.#sendTimeoutNow(m.from);
  }

  #handleHeartbeatResponse(m: HeartbeatResponseMessage): void {
    const core = this.#core;
    const pr = this.progress.get(m.from);
    if (pr === undefined) return;
    pr.recentActive = true;
    pr.probeSent = false;
    if (m.round > pr.ackedRound) pr.ackedRound = m.round;
    if (pr.state === 'snapshot') {
      this.#sendSnapshotChunk(m.from, pr); // the last chunk or its answer may be lost
    } else if (pr.match < core.log.lastIndex()) {
      if (pr.state === 'replicate' && pr.inflights.full()) pr.inflights.freeFirst();
      this.#sendAppend(m.from, true);
    }
    const voters = core.membership().voters;
    const confirmed = this.#reads.takeConfirmed((round) =>
      isQuorum(voters, (id) => id === core.id || (this.progress.get(id)?.ackedRound ?? 0) >= round),
    );
    for (const r of confirmed) this.#answerRead(r.from, r.ctx, r.index);
  }

  // ---- snapshots -------------------------------------------------------------------------------------------

  #startSnapshot(id: NodeId, pr: Progress): void {
    const snap = this.#core.log.storage.snapshot();
    invariant(snap.meta.index > 0, () => `${id} needs compacted entries but the storage has no snapshot`);
    pr.becomeSnapshot(snap.meta.index);
    this.#sendSnapshotChunk(id, pr);
  }

  #sendSnapshotChunk(id: NodeId, pr: Progress): void {
    const core = this.#core;
    const snap = core.log.storage.snapshot();
    if (snap.meta.index !== pr.snapshotIndex) pr.becomeSnapshot(snap.meta.index); // a newer one: start again
    const offset = pr.snapshotOffset;
    const data = snap.data.subarray(offset, offset + core.opts.snapshotChunkBytes);
    core.send({
      type: 'snapshot',
      from: core.id,
      to: id,
      term: core.term,
      meta: snap.meta,
      offset,
      data,
      totalBytes: snap.data.byteLength,
    });
    pr.snapshotChunkSent = true;
  }

  #handleSnapshotResponse(m: SnapshotResponseMessage): void {
    const pr = this.progress.get(m.from);
    if (pr === undefined) return;
    pr.recentActive = true;
    if (pr.state !== 'snapshot' || m.index !== pr.snapshotIndex) return;
    if (m.reject) {
      pr.becomeProbe();
      this.#sendAppend(m.from, true);
      return;
    }
    pr.snapshotOffset = m.offset;
    pr.snapshotChunkSent = false;
    this.#sendSnapshotChunk(m.from, pr);
  }

  // ---- reads -----------------------------------------------------------------------------------------------

  /** `lease`: the asker accepts a lease read (only this replica's own requests; forwarded ones are confirmed). */
  readIndex(from: NodeId, ctx: string, lease = false): void {
    const core = this.#core;
    const log = core.log;
    if (log.term(log.committed) !== core.term) {
      // Until an entry of this term commits, we do not know the commit index of the terms before.
      this.#reads.waitForCommit(ctx, from);
      return;
    }
    const voters = core.membership().voters;
    if (voters.length === 1 && voters[0] === core.id) {
      this.#answerRead(from, ctx, log.committed);
      return;
    }
    // Mutant: answered at once, as if leadership were confirmed (a deposed leader serves stale reads).
    if ((lease && this.#leaseValid()) || core.opts.mutants.has('raft-read-without-readindex')) {
      this.#answerRead(from, ctx, log.committed);
      return;
    }
    const round = this.#unsentRound || this.broadcastHeartbeat(false);
    this.#reads.add({ ctx, from, index: log.committed, round });
  }

  #answerRead(from: NodeId, ctx: string, index: number): void {
    const core = this.#core;
    if (from === core.id) core.readStates.push({ ctx, index });
    else core.send({ type: 'readIndexResponse', from: core.id, to: from, term: core.term, ctx, index });
  }

  /** Whether a majority answered a heartbeat sent less than leaseTicks ago (and nothing can bypass their lease). */
  #leaseValid(): boolean {
    const core = this.#core;
    if (core.opts.readMode !== 'lease' || this.#transferStarted || core.quiesced) return false;
    const round = quorumIndex(core.membership().voters, (id) =>
      id === core.id ? this.#round : (this.progress.get(id)?.ackedRound ?? 0),
    );
    const sentAt = this.#roundSentAt.get(round);
    for (const r of this.#roundSentAt.keys()) if (r < round) this.#roundSentAt.delete(r);
    return sentAt !== undefined && core.now < sentAt + core.opts.leaseTicks;
  }

  /** Send every replica a heartbeat of a new round; returns the round. */
  broadcastHeartbeat(quiesce: boolean): number {
    const core = this.#core;
    const round = ++this.#round;
    this.#unsentRound = round;
    this.#roundSentAt.set(round, core.now);
    for (const [id, pr] of this.progress) {
      if (id === core.id) continue;
      const commit = Math.min(pr.match, core.log.committed);
      core.send({ type: 'heartbeat', from: core.id, to: id, term: core.term, commit, round, quiesce });
    }
    return round;
  }

  /**
   * Replica `id` lost its log (its node's data directory was lost): what we knew of it is wrong, and since a
   * follower's acknowledged index can otherwise only grow, it would be probed above its empty log forever. Forget
   * it and probe from the start (the replica's rejections and the snapshot path take it from there). Lowering a
   * match can only delay commits, never advance one.
   */
  forgetLog(id: NodeId): void {
    const pr = this.progress.get(id);
    if (pr === undefined || id === this.#core.id) return;
    // Probe where we believed it was: a replica that still holds that much accepts at once (no snapshot is sent
    // for a mere reconnect); one that lost it rejects with a hint, and with match forgotten the probe may go below.
    const believed = pr.match;
    pr.match = 0;
    pr.becomeProbe();
    pr.next = Math.max(1, believed + 1);
    this.#sendAppend(id, true);
  }

  // ---- transfer, membership, quiescence --------------------------------------------------------------------

  transfer(target: NodeId): void {
    const core = this.#core;
    if (target === core.id || target === this.transferee) return;
    this.transferee = target;
    this.#transferElapsed = 0;
    const pr = this.progress.get(target);
    if (pr === undefined) return;
    if (pr.match === core.log.lastIndex()) this.#sendTimeoutNow(target);
    else this.#sendAppend(target, true);
  }

  #sendTimeoutNow(target: NodeId): void {
    const core = this.#core;
    this.#transferStarted = true;
    core.send({ type: 'timeoutNow', from: core.id, to: target, term: core.term });
  }

  #abortTransfer(): void {
    this.transferee = '';
    this.#transferElapsed = 0;
  }

  /** A membership entry was appended: follow it at once (new replicas get a progress, removed ones lose it). */
  #followMembership(): void {
    const core = this.#core;
    const m = core.membership();
    // A removed replica keeps receiving the log until its removal commits (so that it learns of it and stays
    // quiet); it counts for nothing meanwhile (majorities are over the voters only).
    for (const id of [...m.voters, ...m.learners]) {
      const pr = this.progress.get(id);
      if (pr === undefined) this.#addProgress(id, m.learners.includes(id));
      else pr.isLearner = m.learners.includes(id);
    }
    if (this.transferee !== '' && !m.voters.includes(this.transferee)) this.#abortTransfer();
  }

  /** The membership in effect is committed: forget the replicas it removed. */
  #dropRemoved(): void {
    const m = this.#core.membership();
    const members = new Set([...m.voters, ...m.learners]);
    for (const id of [...this.progress.keys()]) if (!members.has(id)) this.progress.delete(id);
  }

  /**
   * Removed or demoted, and the change is committed: hand leadership to the most up-to-date voter rather than just
   * stepping down (the transfer brings it up to our log first, so no election timeout is lost). Until it happens
   * we lead on, refusing proposals; an aborted transfer is tried again.
   */
  #handOver(): void {
    const core = this.#core;
    let best: NodeId = '';
    let bestMatch = -1;
    for (const id of core.membership().voters) {
      const match = this.progress.get(id)?.match ?? -1;
      if (id !== core.id && match > bestMatch) {
        best = id;
        bestMatch = match;
      }
    }
    this.#leaving = true;
    if (best === '') core.stepDown();
    else this.transfer(best);
  }

  /** Idle: everything committed, persisted and held by every member, nothing pending. */
  canQuiesce(): boolean {
    const log = this.#core.log;
    const last = log.lastIndex();
    if (this.transferee !== '' || this.#reads.size() > 0 || log.committed !== last) return false;
    for (const pr of this.progress.values()) if (pr.match !== last) return false;
    return true;
  }
}
