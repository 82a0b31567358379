/**
 * One replica of one Raft group, as a pure state machine (in the shape of etcd-io/raft). The host calls tick() on
 * a fixed interval, step() for every message received, propose()/readIndex()/transferLeadership()/
 * changeMembership() for its users; then, when hasReady(), takes ready(), does what it says (persist, send, apply)
 * and calls advance(). No clock, no IO, no randomness of its own. docs/raft.md states the contract.
 *
 * Replication, snapshots and reads on the leader are in leader.ts; this file holds the roles, elections, the
 * follower side and the Ready/advance contract.
 */
import { InvalidArgumentError, invariant } from '../errors.js';
import { RaftLog } from './log.js';
import {
  applyChange,
  checkMembership,
  payloadBytes,
  type AppendMessage,
  type Entry,
  type EntryType,
  type HardState,
  type HeartbeatMessage,
  type Membership,
  type MembershipChange,
  type Message,
  type NodeId,
  type ReadState,
  type Snapshot,
  type SnapshotMessage,
  type VoteMessage,
} from './messages.js';
import { readCoreOptions, type CoreOptions, type ResolvedOptions } from './options.js';
import { Leader } from './leader.js';
import { voteResult } from './quorum.js';
import { SEND_AT_ONCE, type Outcome, type Ready, type Role, type Status } from './ready.js';
import { SnapshotReceiver } from './snapshot.js';

export type { DropReason, Outcome, Ready, Role, Status } from './ready.js';

/**
 * Why this replica may not vote, pre-vote-grant nor campaign (docs/raft.md, "A node that lost its data"):
 * - `released`: until the host calls releaseVotes() (a fresh node that has not yet heard from enough peers whether
 *   they knew it before);
 * - `leader-seen`: its durable state was lost, so it may have voted in a term it no longer remembers. It waits
 *   for a leader of the group, for its log to hold everything that leader had committed, for that and the
 *   leader's term to be durable, and then for one more maximum election timeout (2 × electionTicks ticks): any
 *   election it took part in before has ended by then, and a leader of a higher term it may have helped elect
 *   would have reached it. Until caught up, its empty log would also let a candidate missing committed entries win.
 */
export type VoteHold = 'released' | 'leader-seen';

/** Where a `leader-seen` hold is: waiting for a leader, for persistence, or counting ticks down. */
type LeaderHold =
  | { readonly phase: 'leader' }
  | { readonly phase: 'persist'; readonly term: number; readonly index: number }
  | { phase: 'wait'; ticksLeft: number };

interface Outstanding {
  readonly lastEntry: { index: number; term: number } | undefined;
  readonly snapshotIndex: number;
  readonly committedEntries: readonly Entry[];
  readonly hardState: HardState;
}

export class Core {
  readonly id: NodeId;
  readonly opts: ResolvedOptions;
  readonly log: RaftLog;
  term = 0;
  vote: NodeId = '';
  lead: NodeId = '';
  role: Role = 'follower';
  /** The membership the last Ready reported. */
  #reportedMembership: Membership;
  /** Ticks since the last election timeout reset (leader: since the last check-quorum). */
  electionElapsed = 0;
  #randomizedTimeout = 0;
  #votes = new Map<NodeId, boolean>();
  /** A leader's replication state; undefined on other roles. */
  leader: Leader | undefined;
  /** Ticks since this core was created: the leader's clock for lease reads. */
  now = 0;
  quiesced = false;
  /** A hold on votes until releaseVotes() (VoteHold 'released'). */
  #holdUntilReleased = false;
  /** A hold on votes until caught up with a leader (VoteHold 'leader-seen'). */
  #leaderHold: LeaderHold | undefined;
  /**
   * Lease reads: just started, we may have answered a leader's heartbeat before a crash that we no longer
   * remember. Refuse votes for one election timeout, as if we had heard from a leader (docs/raft.md).
   */
  #startLease = false;
  #msgs: Message[] = [];
  #msgsAfterPersist: Message[] = [];
  readStates: ReadState[] = [];
  #prevHardState: HardState;
  #outstanding: Outstanding | undefined;
  #stallTicks = 0;
  /** A snapshot being received in chunks. */
  readonly #receiving = new SnapshotReceiver();

  constructor(options: CoreOptions) {
    this.opts = readCoreOptions(options);
    this.id = this.opts.id;
    const { hardState, membership } = this.opts.storage.initialState();
    checkMembership(membership, 'storage.initialState().membership');
    this.log = new RaftLog(this.opts.storage, hardState.commit, this.opts.applied, membership);
    this.#reportedMembership = membership;
    this.term = hardState.term;
    this.vote = hardState.vote;
    this.#prevHardState = hardState;
    this.#becomeFollower(this.term, '');
    this.#startLease = this.opts.readMode === 'lease';
  }

  // ---- the API -------------------------------------------------------------------------------------------

  /** One unit of logical time. The host calls it once per elapsed interval of its monotonic clock. */
  tick(): void {
    this.now++;
    if (this.#outstanding !== undefined) {
      this.#stallTicks++;
      if (this.role === 'leader' && this.#stallTicks >= this.opts.persistStallTicks) {
        // Our disk does not answer: a leader that cannot persist must not keep the group (hashicorp/raft#503).
        this.#becomeFollower(this.term, '');
        return;
      }
    }
    const h = this.#leaderHold;
    if (h?.phase === 'wait' && --h.ticksLeft <= 0) this.#leaderHold = undefined;
    if (this.quiesced) return;
    if (this.role === 'leader') {
      this.leader!.tick();
      return;
    }
    this.electionElapsed++;
    if (this.votesHeld() !== undefined) {
      // Held: no campaign. The timer keeps running, so that a release lets an overdue election start at once.
    } else if (this.#mayCampaign() && this.electionElapsed >= this.#randomizedTimeout) {
      this.electionElapsed = 0;
      this.#hup(false);
    }
  }

  /** Handle a message from another replica of this group. */
  step(m: Message): void {
    invariant(m.to === this.id, () => `message for ${m.to} stepped into ${this.id}`);
    if (!(m.type === 'heartbeat' && m.quiesce) && m.type !== 'heartbeatResponse') this.quiesced = false;
    if (m.type === 'propose' || m.type === 'readIndex' || m.type === 'transfer') {
      this.#stepForward(m);
      return;
    }
    if (m.term > this.term) {
      if (m.type === 'vote' || m.type === 'preVote') {
        const inLease =
          this.opts.checkQuorum &&
          (this.lead !== '' || this.#startLease) &&
          this.electionElapsed < this.opts.electionTicks;
        if (inLease && !m.transfer) return; // we heard from a live leader recently: do not help depose it
      }
      if (m.type === 'preVote' || (m.type === 'preVoteResponse' && !m.reject)) {
        // A pre-vote raises nobody's term.
      } else if (m.type === 'append' || m.type === 'heartbeat' || m.type === 'snapshot') {
        this.#becomeFollower(m.term, m.from);
      } else {
        this.#becomeFollower(m.term, '');
      }
    } else if (m.term < this.term) {
      if (m.type === 'append' || m.type === 'heartbeat') {
        // A deposed leader (or one partitioned away): tell it our term so that it steps down.
        this.send({
          type: 'appendResponse',
          from: this.id,
          to: m.from,
          term: this.term,
          index: 0,
          reject: true,
          hintIndex: 0,
          hintTerm: 0,
        });
      } else if (m.type === 'preVote') {
        this.send({ type: 'preVoteResponse', from: this.id, to: m.from, term: this.term, reject: true });
      }
      return;
    }
    if (m.type === 'vote' || m.type === 'preVote') {
      this.#handleVoteRequest(m);
      return;
    }
    if (this.role === 'leader') {
      this.leader!.step(m);
      return;
    }
    switch (m.type) {
      case 'append':
      case 'heartbeat':
      case 'snapshot':
        if (this.role !== 'follower') this.#becomeFollower(this.term, m.from);
        this.electionElapsed = 0;
        this.lead = m.from;
        if (m.type === 'append') this.#handleAppend(m);
        else if (m.type === 'heartbeat') this.#handleHeartbeat(m);
        else this.#handleSnapshot(m);
        if (m.type !== 'heartbeat') this.#maybeCaughtUp(m.type === 'append' ? m.commit : m.meta.index);
        return;
      case 'voteResponse':
      case 'preVoteResponse':
        this.#handleVoteResponse(m.type, m.from, m.reject);
        return;
      case 'timeoutNow':
        if (this.isVoter() && this.votesHeld() === undefined) this.#hup(true);
        return;
      case 'readIndexResponse':
        this.readStates.push({ ctx: m.ctx, index: m.index });
        return;
      default:
        return; // responses meant for a leader we no longer are
    }
  }

  /** Propose a command. On a follower it is forwarded to the leader (and may still be lost: retry on timeout). */
  propose(data: Uint8Array): Outcome {
    this.quiesced = false;
    return this.#propose('normal', data);
  }

  /**
   * Propose one membership change. It takes effect on each replica as soon as the entry is in its log; the next is
   * accepted only once this one is committed.
   */
  changeMembership(change: MembershipChange): Outcome {
    this.quiesced = false;
    const why = applyChange(this.membership(), change);
    if (typeof why === 'string') return { ok: false, reason: 'invalid-membership-change', detail: why };
    return this.#propose('membership', new TextEncoder().encode(JSON.stringify(change)));
  }

  /**
   * Ask for a linearizable read index; the answer comes as a Ready.readStates entry carrying `ctx`. `lease`: a
   * leader with readMode 'lease' may answer from its lease, without a heartbeat round (followers always forward a
   * ReadIndex request, confirmed by a round).
   */
  readIndex(ctx: string, lease = false): Outcome {
    this.quiesced = false;
    if (this.role === 'leader') {
      this.leader!.readIndex(this.id, ctx, lease);
      return { ok: true };
    }
    if (this.lead === '') return { ok: false, reason: 'no-leader', detail: 'no leader is known; retry later' };
    this.send({ type: 'readIndex', from: this.id, to: this.lead, term: this.term, ctx });
    return { ok: true };
  }

  /** Hand leadership to `target` (a voter). Aborted if it has not happened within an election timeout. */
  transferLeadership(target: NodeId): Outcome {
    this.quiesced = false;
    if (!this.membership().voters.includes(target)) {
      throw new InvalidArgumentError(`cannot transfer leadership to ${target}: it is not a voter of the group`);
    }
    if (this.role === 'leader') {
      this.leader!.transfer(target);
      return { ok: true };
    }
    if (this.lead === '') return { ok: false, reason: 'no-leader', detail: 'no leader is known; retry later' };
    this.send({ type: 'transfer', from: this.id, to: this.lead, term: this.term, target });
    return { ok: true };
  }

  /**
   * A leader: stop heartbeating because the group is idle (every replica holds and knows every committed entry).
   * Followers stop their election timers until a message or wake() arrives; the host must wake() them when it
   * suspects the leader's node is gone. Returns false (and changes nothing) when the group is not idle.
   */
  quiesce(): boolean {
    if (this.role !== 'leader' || !this.leader!.canQuiesce()) return false;
    this.leader!.broadcastHeartbeat(true);
    this.quiesced = true;
    return true;
  }

  /** Leave the quiesced state: a follower restarts its election timer (from zero). */
  wake(): void {
    if (!this.quiesced) return;
    this.quiesced = false;
    this.electionElapsed = 0;
  }

  /**
   * The host lost its connection to `peer` (a process that died closes its sockets at once). A follower led by it
   * stops waiting a whole election timeout: it forgets the leader and campaigns within a few ticks (with pre-vote,
   * so a live leader that the other followers still hear is not deposed: they refuse). Not with lease reads: there
   * a follower's vote refusal for an election timeout is what keeps a leader's lease safe, and a broken connection
   * does not prove the leader dead.
   */
  leaderUnreachable(peer: NodeId): void {
    if (this.role !== 'follower' || this.lead !== peer || peer === '' || this.opts.readMode === 'lease') return;
    this.lead = '';
    this.quiesced = false;
    // Not in step (a split vote would cost a whole election timeout): the voters left take turns by id, two ticks
    // apart — the first campaigns at the next tick; one whose log is behind is refused and the next one wins.
    const others = this.membership()
      .voters.filter((v) => v !== peer)
      .sort();
    const turn = Math.max(0, others.indexOf(this.id));
    this.electionElapsed = Math.max(this.electionElapsed, this.#randomizedTimeout - 1 - 2 * turn);
  }

  /** Campaign now (tests and hosts that bootstrap a leader); the election timeout does the same. */
  campaign(): void {
    if (this.role !== 'leader' && this.#mayCampaign() && this.votesHeld() === undefined) this.#hup(false);
  }

  /**
   * Hold this replica's votes (see VoteHold): it grants no vote or pre-vote and does not campaign until the hold
   * ends. A leader or candidate steps down first. Holding `leader-seen` again restarts that hold from the start.
   */
  holdVotes(until: VoteHold): void {
    if (until === 'released') this.#holdUntilReleased = true;
    else this.#leaderHold = { phase: 'leader' };
    if (this.role !== 'follower') this.#becomeFollower(this.term, '');
  }

  /**
   * Replica `peer` lost its durable state (the host learnt it: its node came back with another incarnation). A
   * leader forgets what it knew of that replica's log and replicates to it from the start; other roles have nothing
   * to forget.
   */
  peerLostData(peer: NodeId): void {
    this.leader?.forgetLog(peer);
  }

  /** End a `released` hold (a `leader-seen` hold is unaffected: it ends by itself). */
  releaseVotes(): void {
    this.#holdUntilReleased = false;
  }

  /** The hold on this replica's votes, if any (`leader-seen` first: it is the longer one). */
  votesHeld(): VoteHold | undefined {
    if (this.#leaderHold !== undefined) return 'leader-seen';
    return this.#holdUntilReleased ? 'released' : undefined;
  }

  /**
   * A leader told us its commit index `leaderCommit` (in an append, or a snapshot's index): once our log has
   * committed that far, wait for it (and the term) to be durable.
   */
  #maybeCaughtUp(leaderCommit: number): void {
    if (this.#leaderHold?.phase !== 'leader' || this.log.committed < leaderCommit) return;
    this.#leaderHold = { phase: 'persist', term: this.term, index: this.log.committed };
    this.#maybeDurable();
  }

  /** Caught up and what we got is durable (term and log): the last maximum election timeout starts. */
  #maybeDurable(): void {
    const h = this.#leaderHold;
    if (h?.phase !== 'persist' || this.#prevHardState.term < h.term || this.persistedIndex() < h.index) return;
    this.#leaderHold = { phase: 'wait', ticksLeft: 2 * this.opts.electionTicks };
  }

  /** The membership in effect: the last one in the log (committed or not). */
  membership(): Membership {
    return this.log.membership();
  }

  /** The membership after entry `index`: what a host's snapshot taken at its applied index must record. */
  membershipAt(index: number): Membership {
    return this.log.membershipAt(index);
  }

  /**
   * A voter campaigns; so does a replica that the latest membership in its log removed or demoted while that
   * membership is not known to be committed: it may still be needed to elect a leader that has the change (the
   * dissertation, §4.2.2). It does not count its own vote then.
   */
  #mayCampaign(): boolean {
    return this.isVoter() || this.log.membershipIndex() > this.log.committed;
  }

  isVoter(): boolean {
    return this.membership().voters.includes(this.id);
  }

  status(): Status {
    return {
      id: this.id,
      role: this.role,
      term: this.term,
      vote: this.vote,
      lead: this.lead,
      committed: this.log.committed,
      applied: this.log.applied,
      lastIndex: this.log.lastIndex(),
      membership: this.membership(),
      quiesced: this.quiesced,
      votesHeld: this.votesHeld(),
      transferringTo: this.leader?.transferee ?? '',
    };
  }

  // ---- Ready / advance -----------------------------------------------------------------------------------

  #hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.committed };
  }

  hasReady(): boolean {
    if (this.#outstanding !== undefined) return false;
    const hs = this.#hardState();
    const prev = this.#prevHardState;
    return (
      this.#msgs.length > 0 ||
      this.#msgsAfterPersist.length > 0 ||
      this.readStates.length > 0 ||
      this.log.unstableEntries.length > 0 ||
      this.log.unstableSnapshot !== undefined ||
      this.log.committed > this.log.applied ||
      this.membership() !== this.#reportedMembership ||
      hs.term !== prev.term ||
      hs.vote !== prev.vote ||
      hs.commit !== prev.commit
    );
  }

  /** What the host must do now. Call advance() when done; no other ready() until then. */
  ready(): Ready {
    invariant(this.#outstanding === undefined, 'ready() called again before advance()');
    const hs = this.#hardState();
    const prev = this.#prevHardState;
    const termOrVoteChanged = hs.term !== prev.term || hs.vote !== prev.vote;
    const hsChanged = termOrVoteChanged || hs.commit !== prev.commit;
    const entries = this.log.unstableEntries;
    const last = entries[entries.length - 1];
    const snapshot = this.log.unstableSnapshot;
    const committedEntries = this.log.nextCommitted(this.opts.maxApplyBytes);
    const rd: Ready = {
      role: this.role,
      lead: this.lead,
      term: this.term,
      hardState: hsChanged ? hs : undefined,
      snapshot,
      entries: [...entries],
      committedEntries,
      // A term or vote not yet durable: nothing leaves before it is (a single voter elects itself in one step, and
      // its appends must not precede its vote: a crash would let it vote again in the same term).
      messages: termOrVoteChanged ? [] : coalesceAppends(this.#msgs, this.opts.maxMessageBytes),
      messagesAfterPersist: termOrVoteChanged
        ? coalesceAppends([...this.#msgs, ...this.#msgsAfterPersist], this.opts.maxMessageBytes)
        : this.#msgsAfterPersist,
      readStates: this.readStates,
      mustSync: hs.term !== prev.term || hs.vote !== prev.vote || entries.length > 0 || snapshot !== undefined,
      membership: this.membership() !== this.#reportedMembership ? this.membership() : undefined,
    };
    this.#msgs = [];
    this.#msgsAfterPersist = [];
    this.readStates = [];
    this.#reportedMembership = this.membership();
    this.#outstanding = {
      lastEntry: last ? { index: last.index, term: last.term } : undefined,
      snapshotIndex: snapshot?.meta.index ?? 0,
      committedEntries,
      hardState: hs,
    };
    this.#stallTicks = 0;
    this.leader?.handedOut(committedEntries); // also: the messages left with this Ready
    return rd;
  }

  /** The host has persisted, sent and applied what the last Ready asked. */
  advance(): void {
    const o = this.#outstanding;
    invariant(o !== undefined, 'advance() called without a ready()');
    this.#outstanding = undefined;
    this.#stallTicks = 0;
    this.#prevHardState = o.hardState;
    if (o.snapshotIndex > 0) {
      this.log.stableSnapshotTo(o.snapshotIndex);
      if (o.snapshotIndex > this.log.applied) this.log.appliedTo(o.snapshotIndex);
    }
    if (o.lastEntry) this.log.stableTo(o.lastEntry.index, o.lastEntry.term);
    const lastApplied = o.committedEntries[o.committedEntries.length - 1];
    if (lastApplied) this.log.appliedTo(lastApplied.index);
    this.leader?.persisted(this.persistedIndex());
    this.#maybeDurable();
  }

  /** The last index of our log that is durable (and agrees with the in-memory log). */
  persistedIndex(): number {
    if (this.log.unstableSnapshot) return 0;
    return Math.min(this.log.unstableOffset - 1, this.log.lastIndex());
  }

  // ---- internals shared with leader.ts -------------------------------------------------------------------

  send(m: Message): void {
    if (SEND_AT_ONCE.has(m.type)) this.#msgs.push(m);
    else this.#msgsAfterPersist.push(m);
  }

  resetRandomizedTimeout(): void {
    const r = this.opts.random();
    invariant(r >= 0 && r < 1, () => `options.random() returned ${r}, outside [0, 1)`);
    this.#randomizedTimeout = this.opts.electionTicks + Math.floor(r * this.opts.electionTicks);
  }

  stepDown(): void {
    this.#becomeFollower(this.term, '');
  }

  // ---- roles ---------------------------------------------------------------------------------------------

  #reset(term: number): void {
    if (term !== this.term) {
      this.term = term;
      this.vote = '';
    }
    this.lead = '';
    this.electionElapsed = 0;
    this.resetRandomizedTimeout();
    this.#votes.clear();
    this.leader = undefined;
    this.quiesced = false;
    this.#startLease = false;
  }

  #becomeFollower(term: number, lead: NodeId): void {
    this.#reset(term);
    this.role = 'follower';
    this.lead = lead;
  }

  #becomePreCandidate(): void {
    invariant(this.role !== 'leader', 'a leader cannot become a pre-candidate');
    // Neither the term nor the vote change: a pre-vote that fails leaves no trace.
    this.#votes.clear();
    // The lease a restarted replica grants an unknown leader lasts one election timeout, which has passed when it
    // campaigns. Kept, it would drop every pre-vote after each of its own (its timer restarts at each round): the
    // simulator found three replicas restarted together pre-voting in step, never answering each other.
    this.#startLease = false;
    this.role = 'preCandidate';
    this.lead = '';
    this.leader = undefined;
  }

  #becomeCandidate(): void {
    invariant(this.role !== 'leader', 'a leader cannot become a candidate');
    this.#reset(this.term + 1);
    this.vote = this.id;
    this.role = 'candidate';
  }

  #becomeLeader(): void {
    invariant(this.role === 'candidate', () => `only a candidate can become leader (was ${this.role})`);
    this.#reset(this.term);
    this.role = 'leader';
    this.lead = this.id;
    this.leader = new Leader(this);
    this.leader.start();
  }

  #hup(transfer: boolean): void {
    if (this.role === 'leader') return;
    if (this.opts.preVote && !transfer) this.#campaign('preVote', false);
    else this.#campaign('vote', transfer);
  }

  #campaign(kind: 'preVote' | 'vote', transfer: boolean): void {
    if (kind === 'preVote') this.#becomePreCandidate();
    else this.#becomeCandidate();
    const term = kind === 'preVote' ? this.term + 1 : this.term;
    this.#votes.set(this.id, true);
    if (voteResult(this.membership().voters, this.#votes) === 'won') {
      if (kind === 'preVote') this.#campaign('vote', false);
      else this.#becomeLeader();
      return;
    }
    for (const to of this.membership().voters) {
      if (to === this.id) continue;
      this.send({
        type: kind,
        from: this.id,
        to,
        term,
        index: this.log.lastIndex(),
        logTerm: this.log.lastTerm(),
        transfer,
      });
    }
  }

  #handleVoteRequest(m: VoteMessage): void {
    const canVote =
      this.votesHeld() === undefined &&
      (this.vote === m.from || (this.vote === '' && this.lead === '') || (m.type === 'preVote' && m.term > this.term));
    const respType = m.type === 'vote' ? 'voteResponse' : 'preVoteResponse';
    if (canVote && this.log.isUpToDate(m.index, m.logTerm)) {
      this.send({ type: respType, from: this.id, to: m.from, term: m.term, reject: false });
      if (m.type === 'vote') {
        this.electionElapsed = 0;
        this.vote = m.from;
      }
    } else {
      this.send({ type: respType, from: this.id, to: m.from, term: this.term, reject: true });
    }
  }

  #handleVoteResponse(type: 'voteResponse' | 'preVoteResponse', from: NodeId, reject: boolean): void {
    const expected = this.role === 'preCandidate' ? 'preVoteResponse' : this.role === 'candidate' ? 'voteResponse' : '';
    if (type !== expected) return;
    this.#votes.set(from, !reject);
    const result = voteResult(this.membership().voters, this.#votes);
    if (result === 'won') {
      if (this.role === 'preCandidate') this.#campaign('vote', false);
      else this.#becomeLeader();
    } else if (result === 'lost') {
      this.#becomeFollower(this.term, '');
    }
  }

  // ---- follower side -------------------------------------------------------------------------------------

  #stepForward(m: Extract<Message, { type: 'propose' | 'readIndex' | 'transfer' }>): void {
    if (this.role === 'leader') {
      this.leader!.step(m);
      return;
    }
    // Sent to a replica that is not the leader (any more): dropped, the asker times out and retries. Not
    // forwarded again: a message always comes from the replica that made it.
  }

  #propose(type: EntryType, data: Uint8Array): Outcome {
    if (data.byteLength > this.opts.maxProposalBytes) {
      return {
        ok: false,
        reason: 'too-large',
        detail: `a proposal of ${data.byteLength} bytes is above maxProposalBytes (${this.opts.maxProposalBytes})`,
      };
    }
    if (this.role === 'leader') return this.leader!.propose([{ type, data }]);
    if (this.lead === '') return { ok: false, reason: 'no-leader', detail: 'no leader is known; retry later' };
    this.send({ type: 'propose', from: this.id, to: this.lead, term: this.term, entries: [{ type, data }] });
    return { ok: true };
  }

  #handleAppend(m: AppendMessage): void {
    if (m.index < this.log.committed) {
      this.#ack(m.from, this.log.committed);
      return;
    }
    const lastNew = this.log.maybeAppend(m.index, m.logTerm, m.commit, m.entries);
    if (lastNew !== undefined) {
      this.#ack(m.from, lastNew);
      return;
    }
    const hint = this.log.findConflictByTerm(m.index, m.logTerm);
    this.send({
      type: 'appendResponse',
      from: this.id,
      to: m.from,
      term: this.term,
      index: m.index,
      reject: true,
      hintIndex: hint.index,
      hintTerm: hint.term,
    });
  }

  #ack(to: NodeId, index: number): void {
    this.send({
      type: 'appendResponse',
      from: this.id,
      to,
      term: this.term,
      index,
      reject: false,
      hintIndex: 0,
      hintTerm: 0,
    });
  }

  #handleHeartbeat(m: HeartbeatMessage): void {
    this.log.commitTo(Math.min(m.commit, this.log.lastIndex()));
    if (m.quiesce) this.quiesced = true;
    this.send({ type: 'heartbeatResponse', from: this.id, to: m.from, term: this.term, round: m.round });
  }

  #handleSnapshot(m: SnapshotMessage): void {
    if (m.meta.index <= this.log.committed) {
      this.#receiving.reset();
      this.#ack(m.from, this.log.committed); // we have it all already
      return;
    }
    const got = this.#receiving.receive(m);
    if (got.snapshot === undefined) {
      this.send({
        type: 'snapshotResponse',
        from: this.id,
        to: m.from,
        term: this.term,
        index: m.meta.index,
        offset: got.offset,
        reject: false,
      });
      return;
    }
    this.#restore(got.snapshot);
    // Only what the snapshot vouches for: entries we hold after its index were never checked against the leader's
    // log (a stale suffix of an old term), and the leader would count them as matching and commit them here.
    this.#ack(m.from, got.snapshot.meta.index);
  }

  #restore(snapshot: Snapshot): void {
    const { index, term } = snapshot.meta;
    if (this.log.matchTerm(index, term)) {
      // We hold the entries it covers: just learn that they are committed.
      this.log.commitTo(index);
      return;
    }
    checkMembership(snapshot.meta.membership, 'snapshot membership');
    this.log.restore(snapshot);
  }
}

/**
 * Merge each append into the previous message to the same peer when that is an append it continues (same term, its
 * `index`/`logTerm` the previous one's last entry) and the entries fit in `maxMessageBytes`: the follower does with
 * one message what it would do with the two in order (the later commit index, the entries of both) and answers once.
 * A leader queues one append per proposal and one per commit advance (etcd-io/raft does the same), so while a Ready
 * is being persisted several pile up for each follower; merged, each costs one encoding, one step, one Ready and one
 * answer instead of several. Messages to other peers keep their order; to one peer, nothing moves past another kind.
 */
export function coalesceAppends(msgs: readonly Message[], maxMessageBytes: number): Message[] {
  if (msgs.length < 2) return msgs as Message[];
  const out: Message[] = [];
  /** Peer → the position in `out` of the last message to it. */
  const last = new Map<NodeId, number>();
  for (const m of msgs) {
    const at = last.get(m.to);
    const prev = at === undefined ? undefined : out[at];
    if (m.type === 'append' && prev?.type === 'append' && prev.term === m.term) {
      const n = prev.entries.length;
      const endIndex = prev.index + n;
      const endTerm = n === 0 ? prev.logTerm : prev.entries[n - 1]!.term;
      const fits =
        n === 0 || m.entries.length === 0 || payloadBytes(prev.entries) + payloadBytes(m.entries) <= maxMessageBytes;
      if (m.index === endIndex && m.logTerm === endTerm && fits) {
        out[at!] = {
          ...prev,
          entries: m.entries.length === 0 ? prev.entries : n === 0 ? m.entries : [...prev.entries, ...m.entries],
          commit: Math.max(prev.commit, m.commit),
        };
        continue;
      }
    }
    last.set(m.to, out.length);
    out.push(m);
  }
  return out;
}
