/**
 * A Raft group as its user sees it on one node: commands, queries at three consistency levels, readiness, status.
 * Any replica serves: a follower forwards proposals and ReadIndex requests to the leader and answers its caller
 * once it has applied the entry itself (every replica computes every result).
 *
 * Commands apply exactly once (state-machine.ts): each handle is a client with its own session; a command keeps its
 * sequence number across the retries made inside one call (after a lost forward, a leader change, a timeout of the
 * retry interval), so a retry never applies twice. When a call's time runs out the outcome is unknown
 * (TimeoutError.outcome 'unknown') unless the command was never handed to any leader.
 */
import {
  ClosedError,
  InvalidArgumentError,
  LimitExceededError,
  NoQuorumError,
  NotLeaderError,
  RebalancerError,
  SessionExpiredError,
  TimeoutError,
} from '../../errors.js';
import { checkCallOptions } from '../../options.js';
import type { Outcome } from '../core.js';
import type { Membership, MembershipChange, NodeId } from '../messages.js';
import { MIN_WAIT_MS, type Timers } from '../transport/transport.js';
import type { Replica } from './replica.js';
import { commandOverheadBytes, encodeCommand, encodeRegister, NONCE_BYTES, type Codec } from './state-machine.js';

export type Consistency = 'linearizable' | 'lease' | 'stale';

export interface RequestOptions {
  /** How long this call may take, from now (default: the group's requestTimeoutMs). */
  readonly timeoutMs?: number;
}

const REQUEST_OPTIONS: readonly string[] = ['timeoutMs'];
const QUERY_OPTIONS: readonly string[] = ['timeoutMs', 'consistency'];

export interface QueryOptions extends RequestOptions {
  /**
   * 'linearizable' (default): confirmed by a ReadIndex round; sees every command acknowledged before the call.
   * 'lease': served by the leader from its lease without a round (leaseReads on the group; otherwise a round);
   * on another replica: NotLeaderError with the leader's address. 'stale': this replica's state, at once, however
   * far behind it is.
   */
  readonly consistency?: Consistency;
}

/** RaftGroup.brief(): what a host checks before asking for the whole status. */
export interface GroupBrief {
  readonly role: GroupStatus['role'];
  readonly leader: NodeId | undefined;
  readonly term: number;
  readonly membershipIndex: number;
  /** The replica stopped (status().failed says why). */
  readonly failed: boolean;
}

export interface GroupStatus {
  readonly group: string;
  readonly node: NodeId;
  readonly role: 'follower' | 'preCandidate' | 'candidate' | 'leader';
  readonly leader: NodeId | undefined;
  readonly term: number;
  readonly committed: number;
  readonly applied: number;
  readonly lastIndex: number;
  /** The index of this replica's newest snapshot (0: none): what it compacted, or installed from the leader. */
  readonly snapshotIndex: number;
  readonly membership: Membership;
  /** The log index of the entry that made `membership` (0: the membership the replica started with). */
  readonly membershipIndex: number;
  /**
   * On the leader: what it knows of each other member's log — `match` (the highest index known to be there) and
   * whether it heard from it within the last election timeout. Empty on other replicas.
   */
  readonly progress: ReadonlyMap<NodeId, { readonly match: number; readonly recentActive: boolean }>;
  readonly quiesced: boolean;
  /**
   * Why this replica may not vote yet, if so: `released` while a node with a new data directory waits for its peers
   * to say whether they knew it, `leader-seen` while one that lost its data catches up (docs/raft.md).
   */
  readonly votesHeld: 'released' | 'leader-seen' | undefined;
  readonly sessions: number;
  /** Why this replica stopped (disk or state machine), if it did. */
  readonly failed: RebalancerError | undefined;
}

/**
 * @internal What a node serves remote clients with (remote-client.ts, serveGroupRequest): a client that holds no
 * replica owns a session of the group and numbers its commands itself, so that its retries — on this replica or any
 * other — carry the same (session, seq) and apply once. Bytes in and out, in the group's codec.
 */
export interface RemoteGroupSurface {
  /** Propose a register entry; resolves with the new session's id once applied here. */
  registerSession(options?: RequestOptions): Promise<number>;
  /**
   * Propose command `payload` (codec bytes) as (session, seq) with the lowest seq the client still waits for, wait
   * until it applies here, and resolve with the result in codec bytes. A retry of the same (session, seq) returns
   * the same result and never applies twice. SessionExpiredError when the session was evicted (not applied).
   */
  command(
    session: number,
    seq: number,
    lowestOutstanding: number,
    payload: Uint8Array,
    options?: RequestOptions,
  ): Promise<Uint8Array>;
  /** `query` on the decoded `payload` at `consistency`; the answer in codec bytes. */
  query(payload: Uint8Array, consistency: Consistency, options?: RequestOptions): Promise<Uint8Array>;
  /** The leader as this replica knows it, if any. */
  leader(): NodeId | undefined;
}

/** What the node hands a group handle. */
export interface GroupContext {
  readonly replica: Replica;
  readonly nodeId: NodeId;
  readonly codec: Codec;
  readonly timers: Timers;
  readonly now: () => number;
  readonly random: () => number;
  readonly tickMs: number;
  readonly electionTicks: number;
  readonly requestTimeoutMs: number;
  readonly maxCommandBytes: number;
  readonly addressOf: (node: NodeId) => string | undefined;
  /** Run the ticks due by the clock (after a pause) before deciding anything. */
  readonly catchUp: () => void;
}

export class RaftGroup<C = unknown, Q = unknown, R = unknown, A = unknown> {
  readonly name: string;
  readonly #c: GroupContext;
  #session: number | undefined;
  #registering: Promise<number> | undefined;
  #seq = 0;
  readonly #outstanding = new Set<number>();
  #reads = 0;
  /** @internal For serving clients on other nodes (RemoteGroupSurface). */
  readonly remote: RemoteGroupSurface;

  constructor(name: string, context: GroupContext) {
    this.name = name;
    this.#c = context;
    this.remote = {
      registerSession: (options = {}) => {
        const start = this.#c.now();
        return this.#register(start, start + this.#timeout(options));
      },
      command: (session, seq, lowest, payload, options = {}) =>
        this.#remoteCommand(session, seq, lowest, payload, options),
      query: async (payload, consistency, options = {}) => {
        let q: unknown;
        try {
          q = this.#c.codec.decode(payload);
        } catch (err) {
          throw new InvalidArgumentError(`raft group ${this.name}: a remote query does not decode with the codec`, {
            cause: err,
          });
        }
        const answer = await this.query(q as Q, { ...options, consistency });
        return this.#c.codec.encode(answer);
      },
      leader: () => {
        const lead = this.#c.replica.core.lead;
        return lead === '' ? undefined : lead;
      },
    };
  }

  /** Apply `command` once; resolves with the state machine's result. */
  async command(command: C, options: RequestOptions = {}): Promise<R> {
    checkCallOptions(options, REQUEST_OPTIONS, `raft group ${this.name}: command options`);
    const start = this.#c.now();
    const deadline = start + this.#timeout(options);
    const payload = this.#c.codec.encode(command);
    this.#checkSize(payload);
    for (let attempt = 0; ; attempt++) {
      const session = await this.#ensureSession(start, deadline);
      try {
        return (await this.#commandOnce(session, payload, start, deadline)) as R;
      } catch (err) {
        // Evicted session: the command was not applied; open a new session and go on (once).
        if (err instanceof SessionExpiredError && attempt === 0) {
          if (this.#session === session) this.#session = undefined;
          continue;
        }
        throw err;
      }
    }
  }

  #checkSize(payload: Uint8Array): void {
    const bytes = payload.byteLength + commandOverheadBytes;
    if (bytes > this.#c.maxCommandBytes) {
      throw new LimitExceededError(
        'command bytes',
        bytes,
        this.#c.maxCommandBytes,
        `raft group ${this.name}: a command of ${bytes} bytes (encoded) is above maxCommandBytes ` +
          `(${this.#c.maxCommandBytes}); split it, or raise maxCommandBytes on every node`,
      );
    }
  }

  async #commandOnce(session: number, payload: Uint8Array, start: number, deadline: number): Promise<unknown> {
    const replica = this.#c.replica;
    const seq = ++this.#seq;
    this.#outstanding.add(seq);
    const done = replica.waitCommand(session, seq);
    try {
      return await this.#drive('a command', start, deadline, done.promise, 'unknown', () => {
        let lowest = seq;
        for (const s of this.#outstanding) if (s < lowest) lowest = s;
        return replica.core.propose(encodeCommand(session, seq, lowest, payload));
      });
    } finally {
      this.#outstanding.delete(seq);
      done.cancel();
    }
  }

  /** A remote client's command: its own (session, seq, lowest), proposed and re-proposed by the same #drive. */
  async #remoteCommand(
    session: number,
    seq: number,
    lowest: number,
    payload: Uint8Array,
    options: RequestOptions,
  ): Promise<Uint8Array> {
    const start = this.#c.now();
    const deadline = start + this.#timeout(options);
    const bad = !isCount(session) ? 'session' : !isCount(seq) ? 'seq' : !isCount(lowest) ? 'lowestOutstanding' : '';
    if (bad !== '') {
      throw new InvalidArgumentError(`raft group ${this.name}: a remote command's ${bad} must be an integer ≥ 0`);
    }
    if (lowest > seq) {
      throw new InvalidArgumentError(
        `raft group ${this.name}: a remote command's lowestOutstanding (${lowest}) is above its seq (${seq}): ` +
          'the command itself is outstanding',
      );
    }
    this.#checkSize(payload);
    const replica = this.#c.replica;
    const done = replica.waitCommand(session, seq);
    try {
      const result = await this.#drive('a command', start, deadline, done.promise, 'unknown', () =>
        replica.core.propose(encodeCommand(session, seq, lowest, payload)),
      );
      return this.#c.codec.encode(result);
    } finally {
      done.cancel();
    }
  }

  /** Read the state machine with `query`. */
  async query(query: Q, options: QueryOptions = {}): Promise<A> {
    checkCallOptions(options, QUERY_OPTIONS, `raft group ${this.name}: query options`);
    const consistency = options.consistency ?? 'linearizable';
    if (!['linearizable', 'lease', 'stale'].includes(consistency)) {
      throw new InvalidArgumentError(
        `raft group ${this.name}: consistency must be 'linearizable', 'lease' or 'stale', got ${JSON.stringify(consistency)}`,
      );
    }
    const replica = this.#c.replica;
    this.#check();
    this.#c.catchUp();
    if (consistency !== 'stale') {
      if (consistency === 'lease' && replica.core.role !== 'leader') {
        const lead = replica.core.lead;
        throw new NotLeaderError(
          this.name,
          lead === '' ? undefined : { id: lead, address: this.#c.addressOf(lead) },
          'a lease read',
        );
      }
      await this.#barrier(options, consistency === 'lease');
    }
    return replica.query(query) as A;
  }

  /**
   * Resolves once this replica can serve a linearizable read: a leader is elected and this replica has applied
   * every entry committed before the call. Throws NoQuorumError or TimeoutError when that does not happen in time.
   */
  async ready(options: RequestOptions = {}): Promise<GroupStatus> {
    checkCallOptions(options, REQUEST_OPTIONS, `raft group ${this.name}: ready options`);
    await this.#barrier(options, false);
    return this.status();
  }

  async #barrier(options: RequestOptions, lease: boolean): Promise<void> {
    const start = this.#c.now();
    const deadline = start + this.#timeout(options);
    const replica = this.#c.replica;
    const ctx = `${this.#c.nodeId}/${this.name}/${++this.#reads}/${Math.floor(this.#c.random() * 2 ** 32)}`;
    const read = replica.waitRead(ctx);
    let index: number;
    try {
      index = await this.#drive('a read', start, deadline, read, 'not-applied', () =>
        replica.core.readIndex(ctx, lease),
      );
    } finally {
      replica.forgetRead(ctx);
    }
    const applied = replica.waitApplied(index);
    try {
      await this.#race(applied.promise, deadline, () => {
        throw new TimeoutError(this.name, `catching up to index ${index} for a read`, deadline - start, 'not-applied');
      });
    } finally {
      applied.cancel();
    }
  }

  /**
   * Propose one membership change and wait until it is applied here (one change at a time per group). A change the
   * membership already has (in the log) is not proposed again: the call waits for it to be applied and resolves
   * (a removal of a node that is not a member is refused, unless it is our own earlier proposal).
   */
  async changeMembership(change: MembershipChange, options: RequestOptions = {}): Promise<Membership> {
    checkCallOptions(options, REQUEST_OPTIONS, `raft group ${this.name}: changeMembership options`);
    const start = this.#c.now();
    const deadline = start + this.#timeout(options);
    const replica = this.#c.replica;
    let index = 0;
    const shaped = (): boolean => {
      const m = replica.core.membership();
      const voter = m.voters.includes(change.node);
      const learner = m.learners.includes(change.node);
      return change.type === 'addVoter' ? voter : change.type === 'addLearner' ? learner : !voter && !learner;
    };
    // Applied here, the entry that made the membership so included (not merely in the log: that may be undone).
    const took = (): boolean =>
      shaped() && index > 0 && replica.applied >= Math.max(index, replica.core.log.membershipIndex());
    // An addition already applied here: nothing to wait for (a removal of a non-member stays refused below).
    if (change.type !== 'remove' && shaped() && replica.applied >= replica.core.log.membershipIndex()) {
      this.#check();
      return replica.core.membership();
    }
    await this.#drive('a membership change', start, deadline, waitFor(replica, took), 'unknown', () => {
      // A change the latest membership already makes (our own earlier proposal, or one a previous leader or caller got
      // into the log) is not refused: it is waited for, like our own, until the entry that made it is applied here.
      if (shaped() && (index > 0 || change.type !== 'remove')) {
        index = Math.max(index, replica.core.log.membershipIndex(), 1);
        return { ok: true };
      }
      const out = replica.core.changeMembership(change);
      if (out.ok) index = Math.max(index, replica.core.log.lastIndex());
      return out;
    });
    return replica.core.membership();
  }

  /** Ask the leader to hand leadership to `node` (returns when asked; watch status() for the change). */
  transferLeadership(node: NodeId): void {
    this.#check();
    const out = this.#c.replica.core.transferLeadership(node);
    this.#c.replica.process();
    if (!out.ok) throw new NotLeaderError(this.name, undefined, 'a leadership transfer');
  }

  /**
   * A quiesced group (idle: no heartbeats) starts heartbeating again, so that its leader learns afresh which
   * replicas answer (the fleet does this before it plans a membership change).
   */
  wake(): void {
    this.#check();
    const replica = this.#c.replica;
    replica.idleTicks = 0;
    if (!replica.core.quiesced) return;
    replica.core.wake();
    replica.process();
  }

  /**
   * The state machine's snapshot() of the state this replica has applied (status().applied), whatever its role and
   * without asking anyone: not a linearizable read. The fleet's unsafe recovery seeds a new group with it
   * (RaftNode.seedGroup). Throws what check() throws when the replica is closed or failed.
   */
  exportState(): Uint8Array {
    this.#check();
    return this.#c.replica.stateSnapshot();
  }

  /**
   * The few fields of status() a host polling thousands of groups checks first (role, leader, term, membership
   * index), without building the membership, progress or sessions: status() allocates for each of them.
   */
  brief(): GroupBrief {
    const r = this.#c.replica;
    const core = r.core;
    return {
      role: core.role,
      leader: core.lead === '' ? undefined : core.lead,
      term: core.term,
      membershipIndex: core.log.membershipIndex(),
      failed: r.failed !== undefined,
    };
  }

  /** This replica's membership now (the latest in its log): status().membership without building a whole status. */
  membership(): Membership {
    return this.#c.replica.core.membership();
  }

  status(): GroupStatus {
    const r = this.#c.replica;
    const s = r.core.status();
    return {
      group: this.name,
      node: this.#c.nodeId,
      role: s.role,
      leader: s.lead === '' ? undefined : s.lead,
      term: s.term,
      committed: s.committed,
      applied: r.applied,
      lastIndex: s.lastIndex,
      snapshotIndex: r.snapshotIndex,
      membership: s.membership,
      membershipIndex: r.core.log.membershipIndex(),
      progress: progressOf(r),
      quiesced: s.quiesced,
      votesHeld: s.votesHeld,
      sessions: r.sessions,
      failed: r.failed,
    };
  }

  // ---- internals ----

  #timeout(options: RequestOptions): number {
    const t = options.timeoutMs ?? this.#c.requestTimeoutMs;
    if (!Number.isFinite(t) || t <= 0) {
      throw new InvalidArgumentError(`raft group ${this.name}: timeoutMs must be a positive number of ms, got ${t}`);
    }
    return t;
  }

  #check(): void {
    this.#c.replica.check(() => new ClosedError(`raft group ${this.name} on node ${this.#c.nodeId}`));
  }

  async #ensureSession(start: number, deadline: number): Promise<number> {
    if (this.#session !== undefined) return this.#session;
    if (this.#registering === undefined) {
      this.#registering = this.#register(start, deadline).finally(() => {
        this.#registering = undefined;
      });
    }
    const id = await this.#registering;
    this.#session = id;
    return id;
  }

  async #register(start: number, deadline: number): Promise<number> {
    const replica = this.#c.replica;
    const nonce = new Uint8Array(NONCE_BYTES);
    for (let i = 0; i < NONCE_BYTES; i++) nonce[i] = Math.floor(this.#c.random() * 256);
    const key = Buffer.from(nonce).toString('hex');
    const done = replica.waitRegister(key);
    try {
      return await this.#drive('opening a client session', start, deadline, done, 'not-applied', () =>
        replica.core.propose(encodeRegister(nonce)),
      );
    } finally {
      replica.forgetRegister(key);
    }
  }

  /**
   * Make `attempt` (a proposal or a read request) until `done` resolves: again after each leader change, after a
   * retry interval (a forward may have been lost), or each tick while no leader is known. At the deadline:
   * NoQuorumError when no leader was ever known during the call, else TimeoutError (`outcome` once something was
   * handed to a leader: a command may still apply).
   */
  async #drive<T>(
    what: string,
    start: number,
    deadline: number,
    done: Promise<T>,
    outcomeOnceSent: 'unknown' | 'not-applied',
    attempt: () => Outcome,
  ): Promise<T> {
    const replica = this.#c.replica;
    const c = this.#c;
    let sent = false;
    let sawLeader = false;
    let settled = false;
    let value: T | undefined;
    let failure: unknown;
    let wake: (() => void) | undefined;
    done.then(
      (v) => {
        settled = true;
        value = v;
        wake?.();
      },
      (e: unknown) => {
        settled = true;
        failure = e;
        wake?.();
      },
    );
    const off = replica.onLeaderChange(() => wake?.());
    // The replica closed under the call (dropped, moved away, its node closing): say whether the request may have
    // been handed to a leader, so that a remote client knows whether another replica may take it over safely.
    const closed = (e: unknown): unknown =>
      e instanceof ClosedError && e.outcome === undefined
        ? new ClosedError(`raft group ${this.name} on node ${c.nodeId}`, {
            outcome: sent ? outcomeOnceSent : 'not-applied',
            cause: e,
          })
        : e;
    try {
      for (;;) {
        if (settled) break;
        try {
          this.#check();
        } catch (e) {
          throw closed(e);
        }
        c.catchUp();
        replica.idleTicks = 0;
        const out = attempt();
        replica.processSoon();
        if (replica.core.lead !== '') sawLeader = true;
        if (out.ok) sent = true;
        else if (out.reason === 'too-large') {
          throw new LimitExceededError('command bytes', 0, 0, `raft group ${this.name}: ${out.detail}`);
        } else if (out.reason === 'invalid-membership-change') {
          throw new InvalidArgumentError(`raft group ${this.name}: ${out.detail}`);
        }
        // Wait for the answer, a leader change, or the time to try again.
        const retryMs = out.ok ? c.tickMs * c.electionTicks : c.tickMs;
        const waitMs = Math.min(retryMs, deadline - c.now());
        if (waitMs < MIN_WAIT_MS) break;
        await new Promise<void>((resolve) => {
          const timer = c.timers.setTimeout(() => {
            wake = undefined;
            resolve();
          }, waitMs);
          wake = () => {
            wake = undefined;
            c.timers.clearTimeout(timer);
            resolve();
          };
        });
        if (!settled && c.now() >= deadline) break;
      }
    } finally {
      off();
      wake = undefined;
    }
    if (settled) {
      if (failure !== undefined) throw closed(failure);
      return value as T;
    }
    if (!sawLeader && replica.core.lead === '') throw new NoQuorumError(this.name, c.now() - start);
    throw new TimeoutError(this.name, what, c.now() - start, sent ? outcomeOnceSent : 'not-applied');
  }

  async #race<T>(p: Promise<T>, deadline: number, onTimeout: () => never): Promise<T> {
    const waitMs = deadline - this.#c.now();
    if (waitMs < MIN_WAIT_MS) onTimeout();
    let timer: unknown;
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = this.#c.timers.setTimeout(() => resolve('timeout'), waitMs);
    });
    try {
      const r = await Promise.race([p, timeout]);
      if (r === 'timeout') onTimeout();
      return r as T;
    } finally {
      this.#c.timers.clearTimeout(timer);
    }
  }
}

function progressOf(r: Replica): Map<NodeId, { match: number; recentActive: boolean }> {
  const out = new Map<NodeId, { match: number; recentActive: boolean }>();
  const leader = r.core.role === 'leader' ? r.core.leader : undefined;
  if (leader === undefined) return out;
  for (const [id, p] of leader.progress) {
    if (id !== r.core.id) out.set(id, { match: p.match, recentActive: p.recentActive });
  }
  return out;
}

/** A promise that resolves once `cond()` holds, checked at each leader change and apply (via the replica). */
function waitFor(replica: Replica, cond: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const check = (): void => {
      if (cond()) resolve();
      else void replica.waitApplied(replica.applied + 1).promise.then(check, () => resolve());
    };
    check();
  });
}

/** A non-negative safe integer (a session id, a sequence number). */
function isCount(v: number): boolean {
  return Number.isSafeInteger(v) && v >= 0;
}
