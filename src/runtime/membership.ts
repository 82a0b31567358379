/**
 * Lease, membership and election: the one module every runtime (resource
 * groups, slots, and the fleet after them) uses to take part in a group of
 * nodes through the store. It owns, for one node:
 *
 *  - the session (lease) and the member key attached to it, registered so
 *    that two live processes never act under one id (NodeIdInUseError), while
 *    a rejoin waits for its own previous session to expire on the server;
 *  - self-fencing: `ownsNow()` is false from `session.safeUntilMs −
 *    selfFenceMarginMs` on (a monotonic-clock comparison, right even just
 *    after a process pause, before any timer ran), and a timer tells the
 *    runtime at that deadline, so work stops before the server can expire the
 *    session and hand it to another node;
 *  - session loss and rejoin: the runtime is told at once, stops everything,
 *    and the node registers again with a new session once the runtime says its
 *    old work has stopped;
 *  - the coordinator campaign (the Election recipe on the same session) and
 *    the end of leadership;
 *  - the periodic tick that drives the runtime's reconcile loop (a net under
 *    lost watch hints). The tick is a foreground timer: a process whose job
 *    is to be a member stays alive until it leaves.
 *
 * What a runtime does with these moments (stop handlers, drop primaries,
 * start coordinating) is its own business: it hears them through `hooks`.
 * Time comes only from the injected clock, so the simulator runs this code
 * deterministically.
 */
import {
  ClockRateError,
  invariant,
  NodeIdInUseError,
  SessionExpiredError,
  StoreDataLostError,
  StoreRecoveringError,
} from '../errors.js';
import type { Clock, KeyValue, Op, Session, Store, TimerHandle, TxnResult } from '../store/contract.js';
import { Election, type Leadership } from '../store/election.js';

export type MembershipState = 'new' | 'joining' | 'active' | 'rejoining' | 'leaving' | 'left';

export interface MembershipConfig {
  readonly store: Store;
  readonly clock: Clock;
  /** What the node is a member of, for messages: `group orders`, `slots cluster kv`. */
  readonly scope: string;
  readonly nodeId: string;
  /** The member key (attached to the session; its existence says "this node is a member"). */
  readonly memberKey: string;
  /** Candidates' prefix of the coordinator election; undefined: this runtime never campaigns. */
  readonly electionPrefix: string | undefined;
  /** The value of this node's election key. */
  readonly electionValue: string;
  readonly sessionTtlMs: number;
  readonly selfFenceMarginMs: number;
  readonly reconcileIntervalMs: number;
  /** How long a registration waits for another session holding this id to go away. */
  readonly joinTimeoutMs: number;
  /** False only for a simulator mutant: the lease deadline is ignored and nothing is ever fenced. */
  readonly selfFencing: boolean;
  /** The member record for `session`, and other writes that belong in the registering transaction. */
  readonly record: (session: Session) => { readonly value: string; readonly alsoPut?: readonly Op[] };
  /** A member key under our id that no session owns can only be garbage: throw a CorruptDataError for it. */
  readonly checkOrphanRecord?: ((kv: KeyValue) => void) | undefined;
}

export interface MembershipHooks {
  /** Registered with a new session (the first join or a rejoin). */
  joined(session: Session): Promise<void> | void;
  /** The lease deadline passed: stop acting at once (a keep-alive may still save the session). */
  fenced(safeUntilMs: number): void;
  /** A keep-alive arrived in time after all: the node may act again. */
  unfenced(): void;
  /**
   * The session ended on the server: every key attached to it is gone. Stop everything now; the promise
   * resolves once the old work has stopped (the rejoin waits for it, since the new session may be given the
   * same work).
   */
  sessionLost(session: Session, cause: unknown): Promise<void> | void;
  /** This node leads (coordinator). */
  elected(leadership: Leadership): Promise<void> | void;
  /** This node no longer leads (the key is gone, a guarded write failed, or it resigned). Once per leadership. */
  leadershipLost(leadership: Leadership): void;
  /** Something changed: run a round soon. */
  kick(): void;
  /** Every reconcileIntervalMs while a member. */
  tick(): void;
  error(error: unknown, context: string): void;
  /** Another process took this id while we were away: never merge with it. The runtime should leave. */
  idTaken(error: NodeIdInUseError): void;
}

export class Membership {
  readonly #c: MembershipConfig;
  readonly #h: MembershipHooks;
  #state: MembershipState = 'new';
  #session: Session | undefined;
  #memberRevision = 0;
  /** Ids of every session this node registered with: a rejoin waits for its own old one to expire. */
  readonly #pastSessionIds = new Set<string>();
  #fenced = false;
  #fenceTimer: TimerHandle | undefined;
  #tickTimer: TimerHandle | undefined;
  #campaign: AbortController | undefined;
  #leadership: Leadership | undefined;
  /** The ClockRateError the session was lost with: not reported a second time when the rejoin is refused with it. */
  #reportedClockRate: ClockRateError | undefined;

  constructor(config: MembershipConfig, hooks: MembershipHooks) {
    this.#c = config;
    this.#h = hooks;
  }

  get state(): MembershipState {
    return this.#state;
  }

  /** The current session (a new one after each rejoin). */
  get session(): Session | undefined {
    return this.#session;
  }

  /** True from the lease deadline (or a session loss) until a keep-alive or rejoin restores trust. */
  get fenced(): boolean {
    return this.#fenced;
  }

  /** The leadership this node holds now, if it is the coordinator. */
  get leadership(): Leadership | undefined {
    return this.#leadership;
  }

  /** Until when (on this node's clock) the node trusts its lease: the session's safety deadline minus the margin. */
  get leaseDeadlineMs(): number {
    const s = this.#session;
    return s === undefined ? Number.NEGATIVE_INFINITY : s.safeUntilMs - this.#c.selfFenceMarginMs;
  }

  /**
   * May the node act on what its session guards, now? A synchronous monotonic-clock check: right even just
   * after a process pause, before the fence timer (or any other overdue timer) has run.
   */
  ownsNow(): boolean {
    const s = this.#session;
    if (!this.#c.selfFencing) return s !== undefined;
    return (
      s !== undefined && (s.state === 'live' || s.state === 'suspect') && this.#c.clock.now() < this.leaseDeadlineMs
    );
  }

  /** True while the node is (becoming) a member and not leaving. */
  get active(): boolean {
    return this.#state === 'joining' || this.#state === 'active' || this.#state === 'rejoining';
  }

  // ---- joining ------------------------------------------------------------------

  /** Open a session and register; resolves once this node is a member. */
  async join(): Promise<void> {
    invariant(this.#state === 'new', `${this.#c.scope}: join() called twice`);
    this.#state = 'joining';
    try {
      await this.#joinWithNewSession();
    } catch (error) {
      this.#state = 'left';
      this.#clearTimers();
      throw error;
    }
    // The session may already have been lost while joining (then a rejoin is under way).
    if (this.#state === 'joining') this.#state = 'active';
    this.#scheduleTick();
  }

  async #joinWithNewSession(): Promise<void> {
    const session = await this.#openSession();
    this.#pastSessionIds.add(session.id);
    try {
      await this.#register(session);
    } catch (error) {
      // Never leave a session behind: it would keep a member key alive for nothing.
      await session.close().catch(() => undefined);
      throw error;
    }
    this.#session = session;
    this.#fenced = false;
    session.onStateChange(() => this.#h.kick());
    // `ended` resolves even if the session already ended while we were registering.
    void session.ended.then((end) => {
      if (end.state === 'expired') this.#onSessionLost(session, end.cause);
    });
    this.#armFence();
    await this.#h.joined(session);
    this.#startCampaign(session);
  }

  /**
   * A new session. While the store refuses sessions because its data is new and a lease from before could still be
   * running elsewhere (StoreRecoveringError), wait as long as it says — reported once per wait — and try again.
   */
  async #openSession(): Promise<Session> {
    for (let reported = false; ;) {
      try {
        return await this.#c.store.openSession({ ttlMs: this.#c.sessionTtlMs });
      } catch (error) {
        if (error instanceof StoreDataLostError && this.active) {
          // Found while opening (the old session had already ended otherwise): say it, then wait like anyone.
          this.#h.error(error, 'the store lost its data');
          continue;
        }
        const waits = error instanceof StoreRecoveringError || error instanceof ClockRateError;
        if (!waits || !this.active) throw error;
        if (!reported && error !== this.#reportedClockRate) {
          this.#h.error(
            error,
            error instanceof ClockRateError
              ? "waiting for this host's clock rate to be back within the bound"
              : 'waiting for the store to grant sessions again',
          );
        }
        reported = true;
        await this.#sleep(Math.max(10, Math.min(error.retryAfterMs, this.#c.sessionTtlMs)));
      }
    }
  }

  async #register(session: Session): Promise<void> {
    const key = this.#c.memberKey;
    const deadline = this.#c.clock.now() + this.#c.joinTimeoutMs;
    for (;;) {
      const { value, alsoPut = [] } = this.#c.record(session);
      const r = await this.#c.store.txn({
        compare: [{ key, target: 'exists', exists: false }],
        then: [{ op: 'put', key, value, session }, ...alsoPut],
        else: [{ op: 'get', key }],
      });
      if (r.succeeded) {
        this.#memberRevision = r.revision;
        return;
      }
      const existing = r.results[0]?.op === 'get' ? r.results[0].kv : undefined;
      // Our own earlier attempt went through (its answer was lost): registered.
      if (existing !== undefined && existing.sessionId === session.id) {
        this.#memberRevision = existing.createRevision;
        return;
      }
      if (existing !== undefined && existing.sessionId === undefined) this.#c.checkOrphanRecord?.(existing);
      // Another session holds this id: a previous process of ours that died (its session expires within its
      // TTL), or a second live process with the same id (never merge: fail). A session of our own from before a
      // rejoin is not another process: the server expires it within its TTL, so wait for it however long.
      const ours = existing?.sessionId !== undefined && this.#pastSessionIds.has(existing.sessionId);
      if (!ours && this.#c.clock.now() >= deadline) throw new NodeIdInUseError(this.#c.nodeId, this.#c.scope);
      await this.#sleep(Math.min(250, this.#c.sessionTtlMs / 4));
    }
  }

  // ---- session loss and rejoin ------------------------------------------------------------------

  #onSessionLost(session: Session, cause: unknown): void {
    if (this.#session !== session || this.#state === 'left') return;
    this.#fenced = true;
    // Said loudly: the data (registered resources, plans) is gone too, not only this node's locks.
    if (cause instanceof StoreDataLostError) this.#h.error(cause, 'the store lost its data');
    // Said loudly too: nothing else went wrong, this host's clock is not fit for leases.
    if (cause instanceof ClockRateError) {
      this.#reportedClockRate = cause;
      this.#h.error(cause, "this host's clock rate left the bound");
    }
    const settled = Promise.resolve(this.#h.sessionLost(session, cause)).catch((error: unknown) =>
      this.#h.error(error, 'stopping work after the session was lost'),
    );
    this.#endLeadership();
    if (!this.active) return;
    this.#state = 'rejoining';
    this.#h.kick();
    void this.#rejoin(session, settled);
  }

  /** After a session loss: wait until the runtime's old work has stopped, then join again with a new session. */
  async #rejoin(lost: Session, settled: Promise<void>): Promise<void> {
    await settled;
    void this.#endLostSession(lost);
    for (;;) {
      if (this.#state !== 'rejoining') return;
      try {
        if (this.#session === lost) await this.#joinWithNewSession();
        // Unless the new session was lost at once too (then another rejoin has started).
        const s = this.#session;
        if (
          this.#state === 'rejoining' &&
          s !== lost &&
          s !== undefined &&
          (s.state === 'live' || s.state === 'suspect')
        ) {
          this.#state = 'active';
        }
        this.#h.kick();
        return;
      } catch (error) {
        this.#h.error(error, 'rejoining after the session was lost');
        if (error instanceof NodeIdInUseError) {
          this.#h.idTaken(error);
          return;
        }
        await this.#sleep(Math.min(1000, this.#c.sessionTtlMs / 4));
      }
    }
  }

  /**
   * After a session loss, once the old work has stopped. A session whose deadline passed here while the store did
   * not answer may still be alive on the server, holding this node's member key and locks until the server expires
   * it — for etcd and ZooKeeper a whole TTL after the store is back, since a new leader restarts every lease's
   * clock; the rejoin would wait for it all that time. End it on the server as soon as the store answers: tried
   * until the server confirms, the node has rejoined (its old member key, and with it the old session, is gone),
   * or it leaves. Safe because the runtime's work under the old session has stopped (`settled`): only the lease
   * ends earlier than the server would have ended it.
   */
  async #endLostSession(lost: Session): Promise<void> {
    const maxDelayMs = Math.min(1000, this.#c.sessionTtlMs / 4);
    for (let delayMs = Math.min(100, maxDelayMs); ; delayMs = Math.min(maxDelayMs, delayMs * 2)) {
      if (this.#state === 'left' || (this.#state === 'active' && this.#session !== lost)) return;
      if (await lost.endOnServer()) {
        // The rejoin may be waiting for the old member key: it is gone now.
        this.#h.kick();
        return;
      }
      await this.#sleep(delayMs);
    }
  }

  // ---- self-fencing ------------------------------------------------------------------

  /**
   * Compare the lease with the clock and tell the runtime when trust is lost or regained. Runs at the
   * deadline (timer) and whenever a runtime round wants to be sure; never while leaving or after.
   */
  checkFence(): void {
    // While leaving too: a node handing its work over must still stop it at the deadline. Not once left: closing
    // the session ends the lease on purpose, and that is no fencing.
    if (this.#state === 'new' || this.#state === 'left' || !this.#c.selfFencing) return;
    const owns = this.ownsNow();
    if (!owns && !this.#fenced) {
      this.#fenced = true;
      this.#h.fenced(this.#session?.safeUntilMs ?? 0);
    } else if (owns && this.#fenced && this.#state !== 'rejoining' && this.#session?.state === 'live') {
      this.#fenced = false;
      this.#h.unfenced();
    }
  }

  #armFence(): void {
    const clock = this.#c.clock;
    if (this.#fenceTimer !== undefined) clock.clearTimeout(this.#fenceTimer);
    this.#fenceTimer = undefined;
    if (this.#state === 'left') return;
    const untilMs = this.leaseDeadlineMs - clock.now();
    this.#fenceTimer = clock.setTimeout(
      () => {
        this.#fenceTimer = undefined;
        this.checkFence();
        this.#armFence();
      },
      // Re-check at the deadline (at least 1 ms: a zero delay would spin), or every little while once past it
      // (waiting for a keep-alive to move it).
      untilMs > 0 ? Math.max(1, untilMs) : Math.min(100, this.#c.reconcileIntervalMs),
      { background: true },
    );
  }

  // ---- coordinator election ------------------------------------------------------------------

  #startCampaign(session: Session): void {
    this.#campaign?.abort();
    const prefix = this.#c.electionPrefix;
    if (prefix === undefined) return;
    const abort = new AbortController();
    this.#campaign = abort;
    const election = new Election(this.#c.store, { prefix, recheckIntervalMs: this.#c.reconcileIntervalMs });
    const runs = (): boolean =>
      !abort.signal.aborted && this.#session === session && session.state !== 'expired' && session.state !== 'closed';
    void (async () => {
      while (runs()) {
        try {
          const leadership = await election.campaign(session, this.#c.electionValue, abort.signal);
          // A leaving node may still lead (a group's coordinator moves its own resources away); one that has
          // left, or stopped campaigning (resign()), may not.
          if (abort.signal.aborted || this.#state === 'left') {
            await leadership.resign().catch(() => undefined);
            return;
          }
          this.#leadership = leadership;
          await this.#h.elected(leadership);
          await leadership.lost;
          this.#endLeadership(leadership);
        } catch (error) {
          if (abort.signal.aborted) return;
          if (!(error instanceof SessionExpiredError)) this.#h.error(error, 'coordinator election');
          await this.#sleep(Math.min(1000, this.#c.reconcileIntervalMs));
        }
      }
    })();
  }

  /**
   * This node no longer leads under `leadership` (e.g. a guarded write failed): tell the runtime once. The
   * campaign goes on and may win again with a new token.
   */
  leadershipLost(leadership: Leadership): void {
    this.#endLeadership(leadership);
  }

  #endLeadership(leadership: Leadership | undefined = this.#leadership): void {
    if (leadership === undefined || this.#leadership !== leadership) return;
    this.#leadership = undefined;
    this.#h.leadershipLost(leadership);
  }

  /** Stop campaigning and give up leadership (deletes the election key). */
  async resign(): Promise<void> {
    this.#campaign?.abort();
    const l = this.#leadership;
    this.#endLeadership(l);
    await l?.resign().catch(() => undefined);
  }

  // ---- leaving ------------------------------------------------------------------

  /**
   * Stop being a member: delete the member key (only if it is still the one we registered), so the others
   * plan without this node. The session lives on (the runtime hands its work over); nothing is fenced from
   * now on. Resolves with the delete's result (its revision tells when the others can have seen it).
   */
  async deregister(): Promise<TxnResult | undefined> {
    if (!this.active) return undefined;
    const rejoining = this.#state === 'rejoining';
    this.#state = 'leaving';
    const session = this.#session;
    if (rejoining || session === undefined || session.state === 'expired' || session.state === 'closed')
      return undefined;
    try {
      return await this.#c.store.txn({
        compare: [{ key: this.#c.memberKey, target: 'createRevision', op: '=', value: this.#memberRevision }],
        then: [{ op: 'delete', key: this.#c.memberKey }],
      });
    } catch (error) {
      this.#h.error(error, 'leaving: deleting the member key');
      return undefined;
    }
  }

  /** The end: resign, stop every timer, close the session (which deletes every key still attached to it). */
  async close(): Promise<void> {
    if (this.#state === 'left') return;
    this.#state = 'left';
    await this.resign();
    this.#clearTimers();
    await this.#session?.close().catch(() => undefined);
  }

  // ---- timers ------------------------------------------------------------------

  #scheduleTick(): void {
    this.#tickTimer = this.#c.clock.setTimeout(() => {
      this.#tickTimer = undefined;
      if (this.#state === 'left') return;
      this.#h.tick();
      this.#scheduleTick();
    }, this.#c.reconcileIntervalMs);
  }

  #clearTimers(): void {
    const clock = this.#c.clock;
    for (const t of [this.#fenceTimer, this.#tickTimer]) if (t !== undefined) clock.clearTimeout(t);
    this.#fenceTimer = this.#tickTimer = undefined;
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.#c.clock.setTimeout(resolve, ms));
  }
}
