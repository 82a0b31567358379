/**
 * The runtime of one node in a resource group: it drives the sans-IO cores
 * (protocol/groups/member.ts and coordinator.ts) with the store, timers,
 * handlers and AbortSignals, and enforces self-fencing.
 *
 * Concurrency: the member reconcile and the coordinator reconcile each run
 * one at a time; a trigger during a run schedules exactly one more run. All
 * time comes from the injected clock, all randomness from the injected
 * `random`, so the simulator can run this code deterministically.
 */
import {
  CorruptDataError,
  NodeIdInUseError,
  RevokedError,
  SessionExpiredError,
  StoreUnavailableError,
} from '../errors.js';
import type { PlacementStrategy } from '../placement/index.js';
import {
  decideCoordinator,
  newCoordinatorMemory,
  type CoordinatorDecision,
  type CoordinatorMemory,
} from '../protocol/groups/coordinator.js';
import {
  acquire,
  putAck,
  CoordinatorReader,
  readMemberView,
  release,
  writeCoordinatorDecision,
} from '../protocol/groups/io.js';
import { GroupKeys, decodeMember, encode, type Protocol } from '../protocol/groups/keys.js';
import { decideMember, type LocalResource, type MemberAction, type StopReason } from '../protocol/groups/member.js';
import type { Clock, Session, Store, TimerHandle, Watcher } from '../store/contract.js';
import { Election, type Leadership } from '../store/election.js';
import { activeMutants } from '../protocol/mutants.js';
import { TypedEmitter } from './events.js';
import { resolveOptions, type JoinOptions, type ResolvedOptions } from './options.js';
import { syncRegistry } from './registry.js';

export interface GroupEvents {
  joined: { readonly nodeId: string; readonly sessionId: string };
  coordinatorElected: { readonly nodeId: string; readonly token: number };
  coordinatorLost: { readonly token: number };
  rebalanceStarted: { readonly generation: number; readonly moves: number; readonly protocol: Protocol };
  rebalanceCompleted: { readonly generation: number; readonly durationMs: number };
  assigned: { readonly resource: string; readonly fencingToken: number };
  revoked: { readonly resource: string; readonly reason: StopReason };
  released: { readonly resource: string; readonly fencingToken: number };
  fenced: { readonly safeUntilMs: number };
  unfenced: Record<string, never>;
  sessionLost: { readonly sessionId: string; readonly cause: unknown };
  handlerFailed: { readonly resource: string; readonly error: unknown };
  handlerStuck: { readonly resource: string; readonly stoppingForMs: number };
  /** Background errors (store unavailable, corrupt data); the member keeps going. */
  error: { readonly error: unknown; readonly context: string };
  left: Record<string, never>;
}

export interface AssignedResource {
  readonly resource: string;
  readonly fencingToken: number | undefined;
  readonly phase: LocalResource['phase'];
}

interface LocalEntry {
  state: LocalResource;
  controller: AbortController | undefined;
  settled: Promise<void> | undefined;
  failures: number;
  stuckReported: boolean;
}

type RunState = 'joining' | 'active' | 'rejoining' | 'leaving' | 'left';

/** Join a group: resolves once this node is a member (its resources start as they are granted). */
export async function joinGroup(options: JoinOptions): Promise<GroupMember> {
  const member = new GroupMember(resolveOptions(options));
  await member.start();
  return member;
}

/** Above this many awaited locks, one watch on all of `held/` instead of one per lock. */
const MAX_LOCK_WATCHES = 16;

export class GroupMember extends TypedEmitter<GroupEvents> {
  readonly nodeId: string;
  readonly group: string;
  readonly #o: ResolvedOptions;
  readonly #keys: GroupKeys;
  readonly #store: Store;
  readonly #clock: Clock;
  readonly #local = new Map<string, LocalEntry>();
  /** Resources whose acquire had an unknown outcome: we may hold their lock without knowing it. */
  readonly #uncertain = new Set<string>();
  #run: RunState = 'joining';
  #session: Session | undefined;
  #memberRevision = 0;
  /** Ids of the sessions this member has registered with (a rejoin waits for its own old one to expire). */
  readonly #pastSessionIds = new Set<string>();
  #fenced = false;
  #fenceTimer: TimerHandle | undefined;
  #tickTimer: TimerHandle | undefined;
  #memberWatch: Watcher | undefined;
  /** Watches on the locks this node waits for (prefix → watch; `watcher` unset while it is being opened). */
  readonly #lockWatches = new Map<string, { watcher?: Watcher }>();
  #memberLoop = new Loop();
  // Coordinator side.
  #leadership: Leadership | undefined;
  #campaignAbort: AbortController | undefined;
  #coordWatch: Watcher | undefined;
  #coordLoop = new Loop();
  #coordMemory: CoordinatorMemory = newCoordinatorMemory();
  #coordReader: CoordinatorReader | undefined;
  #coordWake: TimerHandle | undefined;
  #sourceTimer: TimerHandle | undefined;
  #rebalance: { generation: number; startedAtMs: number } | undefined;

  constructor(options: ResolvedOptions) {
    super();
    this.#o = options;
    this.nodeId = options.nodeId;
    this.group = options.group;
    this.#keys = new GroupKeys(options.group);
    this.#store = options.store;
    this.#clock = options.clock;
  }

  /** True while this node is the group's coordinator. */
  get isCoordinator(): boolean {
    return this.#leadership !== undefined;
  }

  /** The resources this node deals with now. */
  assignment(): AssignedResource[] {
    return [...this.#local]
      .map(([resource, e]) => ({
        resource,
        fencingToken: 'token' in e.state ? e.state.token : undefined,
        phase: e.state.phase,
      }))
      .sort((a, b) => (a.resource < b.resource ? -1 : 1));
  }

  /**
   * Until when (on this node's clock) the node trusts its lease: its
   * session's safety deadline minus the self-fencing margin. Handlers'
   * stillOwner() turns false there.
   */
  get leaseDeadlineMs(): number {
    return this.#fenceAtMs();
  }

  /** The current session's id (changes after a session loss and rejoin). */
  get sessionId(): string | undefined {
    return this.#session?.id;
  }

  // ---- lifecycle ------------------------------------------------------------------

  async start(): Promise<void> {
    await this.#joinWithNewSession();
    // The session may already have been lost while joining (then a rejoin is under way).
    if (this.#run === 'joining') this.#run = 'active';
    this.#scheduleTick();
    this.#kickMember();
  }

  /**
   * Leave gracefully: stop being a member (the coordinator moves this node's
   * resources away), wait until every handler has stopped and every lock is
   * released (bounded by drainTimeoutMs), then close the session.
   */
  async leave(): Promise<void> {
    if (this.#run === 'left' || this.#run === 'leaving') return;
    this.#run = 'leaving';
    const session = this.#session;
    try {
      if (session !== undefined && session.state === 'live') {
        await this.#store
          .txn({
            compare: [
              { key: this.#keys.member(this.nodeId), target: 'createRevision', op: '=', value: this.#memberRevision },
            ],
            then: [{ op: 'delete', key: this.#keys.member(this.nodeId) }],
          })
          .catch((error: unknown) => this.emit('error', { error, context: 'leave: deleting the member key' }));
      }
      this.#kickMember();
      const deadline = this.#clock.now() + this.#o.drainTimeoutMs;
      // Wait for the coordinator (maybe us) to move our grants away and for our handlers to hand over.
      while (this.#local.size > 0 && this.#clock.now() < deadline) {
        await this.#sleep(Math.min(50, this.#o.reconcileIntervalMs));
        this.#kickMember();
      }
      // Whatever is left (no coordinator, or a lone node): stop and release it ourselves.
      for (const [resource, e] of this.#local)
        if (e.state.phase === 'running' || e.state.phase === 'backoff') this.#stop(resource, 'leaving');
      const settleBy = this.#clock.now() + this.#o.drainTimeoutMs;
      while ([...this.#local.values()].some((e) => e.settled !== undefined) && this.#clock.now() < settleBy) {
        await this.#sleep(20);
      }
      for (const [resource, e] of [...this.#local]) {
        if ('token' in e.state && e.settled === undefined) {
          await release(this.#store, this.#keys, resource, e.state.token).catch(() => false);
          this.#local.delete(resource);
          this.emit('released', { resource, fencingToken: e.state.token });
        }
      }
    } finally {
      await this.#stopCoordinating();
      this.#clearTimers();
      await this.#memberWatch?.close().catch(() => undefined);
      await this.#closeLockWatches();
      // Closing the session deletes every key still attached to it (e.g. locks of stuck handlers, which
      // then may be taken over: the handler was told to stop drainTimeoutMs ago).
      await session?.close().catch(() => undefined);
      this.#run = 'left';
      this.emit('left', {});
    }
  }

  // ---- joining ------------------------------------------------------------------

  async #joinWithNewSession(): Promise<void> {
    const session = await this.#store.openSession({ ttlMs: this.#o.sessionTtlMs });
    this.#pastSessionIds.add(session.id);
    try {
      await this.#registerMember(session);
    } catch (err) {
      await session.close().catch(() => undefined);
      throw err;
    }
    this.#session = session;
    this.#fenced = false;
    session.onStateChange(() => this.#kickMember());
    // `ended` resolves even if the session already ended while we were registering.
    void session.ended.then((end) => {
      if (end.state === 'expired') this.#onSessionLost(session, end.cause);
    });
    this.#armFence();
    this.#memberWatch ??= await this.#watchMember();
    this.emit('joined', { nodeId: this.nodeId, sessionId: session.id });
    this.#startCampaign(session);
  }

  async #registerMember(session: Session): Promise<void> {
    const key = this.#keys.member(this.nodeId);
    const value = encode({
      nodeId: this.nodeId,
      zone: this.#o.zone,
      weight: this.#o.weight,
      sessionId: session.id,
      static: this.#o.gracePeriodMs > 0,
    });
    const deadline = this.#clock.now() + this.#o.joinTimeoutMs;
    for (;;) {
      const r = await this.#store.txn({
        compare: [{ key, target: 'exists', exists: false }],
        then: [{ op: 'put', key, value, session }],
        else: [{ op: 'get', key }],
      });
      if (r.succeeded) {
        this.#memberRevision = r.revision;
        return;
      }
      const existing = r.results[0]?.op === 'get' ? r.results[0].kv : undefined;
      if (existing !== undefined && existing.sessionId === session.id) {
        this.#memberRevision = existing.createRevision;
        return;
      }
      if (existing !== undefined && existing.sessionId === undefined) {
        // A member key without a session can only be garbage (written by hand): it would never go away.
        try {
          decodeMember(key, existing.value);
        } catch (cause) {
          throw new CorruptDataError(`${key} holds data Rebalancer did not write; delete it`, { key, cause });
        }
      }
      // Another session holds this node id: a previous process of ours that died (its session expires
      // within its TTL), or a second live process with the same id (never merge: fail).
      // Our own lost session (we are rejoining) is not another process: the server expires it within its TTL.
      const ours = existing?.sessionId !== undefined && this.#pastSessionIds.has(existing.sessionId);
      if (!ours && this.#clock.now() >= deadline) throw new NodeIdInUseError(this.nodeId, `group ${this.group}`);
      await this.#sleep(Math.min(250, this.#o.sessionTtlMs / 4));
    }
  }

  #onSessionLost(session: Session, cause: unknown): void {
    if (this.#session !== session || this.#run === 'left') return;
    this.#fenced = true;
    this.#stopAll('fenced');
    this.emit('sessionLost', { sessionId: session.id, cause });
    void this.#leadershipLost();
    if (this.#run === 'leaving') return;
    this.#run = 'rejoining';
    this.#kickMember();
    void this.#rejoin(session);
  }

  /** After a session loss: wait until every old handler has settled, then join again with a new session. */
  async #rejoin(lost: Session): Promise<void> {
    for (;;) {
      if (this.#run !== 'rejoining') return;
      // Locks of the lost session are gone on the server; our handlers must all have stopped before
      // we may take any lock again (we could be granted the same resources).
      const busy = [...this.#local.values()].some((e) => e.settled !== undefined);
      if (!busy) break;
      await this.#sleep(50);
    }
    this.#local.clear();
    for (;;) {
      if (this.#run !== 'rejoining') return;
      try {
        if (this.#session === lost) await this.#joinWithNewSession();
        if (this.#run === 'rejoining' && this.#session !== lost) {
          // Unless the new session was lost at once too (then another rejoin has started).
          const s = this.#session;
          if (s !== undefined && (s.state === 'live' || s.state === 'suspect')) this.#run = 'active';
        }
        this.#kickMember();
        return;
      } catch (error) {
        this.emit('error', { error, context: 'rejoining after session loss' });
        if (error instanceof NodeIdInUseError) {
          // Another process took our id while we were away: we must not merge with it.
          await this.leave().catch(() => undefined);
          return;
        }
        await this.#sleep(Math.min(1000, this.#o.sessionTtlMs / 4));
      }
    }
  }

  // ---- self-fencing ------------------------------------------------------------------

  /** Deadline after which handlers must not act: the session's safety deadline minus the margin. */
  #fenceAtMs(): number {
    const s = this.#session;
    return s === undefined ? Number.NEGATIVE_INFINITY : s.safeUntilMs - this.#o.selfFenceMarginMs;
  }

  #ownsNow(): boolean {
    const s = this.#session;
    if (activeMutants.has('no-self-fencing')) return s !== undefined;
    return s !== undefined && (s.state === 'live' || s.state === 'suspect') && this.#clock.now() < this.#fenceAtMs();
  }

  #armFence(): void {
    if (this.#fenceTimer !== undefined) this.#clock.clearTimeout(this.#fenceTimer);
    this.#fenceTimer = this.#clock.setTimeout(
      () => {
        this.#fenceTimer = undefined;
        if (this.#run === 'left') return;
        const owns = this.#ownsNow();
        if (!owns && !this.#fenced && !activeMutants.has('no-self-fencing')) {
          this.#fenced = true;
          this.emit('fenced', { safeUntilMs: this.#session?.safeUntilMs ?? 0 });
          // Abort now, not on the next reconcile: that one may be blocked on an unreachable store.
          this.#stopAll('fenced');
          this.#kickMember();
        } else if (owns && this.#fenced && this.#session?.state === 'live') {
          this.#fenced = false;
          this.emit('unfenced', {});
          this.#kickMember();
        }
        this.#armFence();
      },
      // Re-check at the deadline (at least 1 ms: a zero delay would spin), or every little while when
      // already past it (waiting for a keep-alive to extend it).
      this.#fenceAtMs() > this.#clock.now()
        ? Math.max(1, this.#fenceAtMs() - this.#clock.now())
        : Math.min(100, this.#o.reconcileIntervalMs),
      { background: true },
    );
  }

  // ---- member reconcile ------------------------------------------------------------------

  async #watchMember(): Promise<Watcher> {
    const k = this.#keys;
    // Only what concerns this node: its grants and the group state. Locks (`held/`) change with every handoff in
    // the group, so that watch is opened only while we wait for one (#watchLocksWhileWaiting).
    const grants = await this.#store.watch(k.grantsOf(this.nodeId), () => this.#kickMember());
    const state = await this.#store.watch(k.state, () => this.#kickMember());
    return {
      close: async () => {
        await grants.close();
        await state.close();
      },
    };
  }

  /**
   * Watch the locks we wait for. One watch per awaited lock (its key as the prefix) while they are few: a
   * watch on all of `held/` would wake every waiting member on every handoff in the group, which in a large
   * rebalance (every member waiting for one or two locks) is quadratic. Many at once: one prefix watch.
   */
  #watchLocksWhileWaiting(names: readonly string[]): void {
    const wanted = new Set<string>(
      this.#run === 'left' ? [] : names.length > MAX_LOCK_WATCHES ? [''] : names.map((n) => this.#keys.heldKey(n)),
    );
    if (wanted.has('')) {
      wanted.delete('');
      wanted.add(this.#keys.held);
    }
    for (const [prefix, entry] of this.#lockWatches) {
      if (wanted.has(prefix)) continue;
      this.#lockWatches.delete(prefix);
      void entry.watcher?.close().catch(() => undefined);
    }
    for (const prefix of wanted) {
      if (this.#lockWatches.has(prefix)) continue;
      const entry: { watcher?: Watcher } = {};
      this.#lockWatches.set(prefix, entry);
      this.#store
        .watch(prefix, () => this.#kickMember())
        .then(
          (w) => {
            // Closed meanwhile (no longer awaited, or left): drop it.
            if (this.#lockWatches.get(prefix) !== entry) void w.close().catch(() => undefined);
            else entry.watcher = w;
            this.#kickMember(); // a release may have happened while the watch was being opened
          },
          (error: unknown) => {
            if (this.#lockWatches.get(prefix) === entry) this.#lockWatches.delete(prefix);
            this.emit('error', { error, context: 'watching locks' });
          },
        );
    }
  }

  async #closeLockWatches(): Promise<void> {
    const entries = [...this.#lockWatches.values()];
    this.#lockWatches.clear();
    await Promise.all(entries.map((e) => e.watcher?.close().catch(() => undefined)));
  }

  #scheduleTick(): void {
    this.#tickTimer = this.#clock.setTimeout(
      () => {
        if (this.#run === 'left') return;
        this.#kickMember();
        if (this.#leadership !== undefined) this.#kickCoordinator();
        this.#scheduleTick();
      },
      // Not a background timer: a process whose job is to be a member stays alive until leave().
      this.#o.reconcileIntervalMs,
    );
  }

  #kickMember(): void {
    this.#memberLoop.kick(() => this.#reconcileMember());
  }

  async #reconcileMember(): Promise<void> {
    if (this.#run === 'left') return;
    const session = this.#session;
    if (session === undefined) return;
    if (!this.#ownsNow() && !this.#fenced && !activeMutants.has('no-self-fencing')) {
      this.#fenced = true;
      this.emit('fenced', { safeUntilMs: session.safeUntilMs });
    }
    this.#checkStuck();
    const fenced = this.#fenced || this.#run === 'rejoining';
    if (fenced) {
      // Stop everything without waiting for the store (it may be unreachable).
      for (const a of decideMember(
        { state: undefined, stateRevision: 0, grants: new Map(), held: new Map(), ackedGeneration: undefined },
        new Map([...this.#local].map(([r, e]) => [r, e.state])),
        {
          nodeId: this.nodeId,
          sessionId: session.id,
          protocol: this.#o.protocol,
          fenced: true,
          leaving: this.#run === 'leaving',
          nowMs: this.#clock.now(),
        },
      )) {
        if (a.type === 'stop') this.#stop(a.resource, a.reason);
      }
      if (this.#run === 'rejoining' || session.state === 'expired' || session.state === 'closed') return;
    }
    let view;
    const skipped = new Set<string>();
    try {
      // Locks matter only for what is not running: grants to take, stopped handlers to release, uncertain
      // acquires (decideMember reads no lock of a running, stopping or in-flight resource).
      const interesting: string[] = [...this.#uncertain];
      for (const [r, e] of this.#local) {
        if (e.state.phase === 'stopped') interesting.push(r);
        else skipped.add(r);
      }
      view = await readMemberView(
        this.#store,
        this.#keys,
        this.nodeId,
        interesting,
        (error) => this.emit('error', { error, context: 'reading member view' }),
        skipped,
      );
    } catch (error) {
      this.emit('error', { error, context: 'reading member view' });
      return;
    }
    // The read may have outlived the session it was made for (a blocked request, then a rejoin): its view
    // says "held by my session" of a session that is no longer ours. Decide again from scratch.
    if (this.#session !== session) {
      this.#kickMember();
      return;
    }
    // An uncertain lock is resolved once we see it is not ours (the decision below handles it if it is).
    for (const r of this.#uncertain) {
      const h = view.held.get(r);
      if (h === undefined || h.sessionId !== session.id) this.#uncertain.delete(r);
    }
    // A handler that stopped while we were reading: its lock was not read (it was running), so this view cannot
    // say whether to release it. Leave it to the next round, which reads it.
    const local = new Map<string, LocalResource>();
    let again = false;
    for (const [r, e] of this.#local) {
      if (e.state.phase === 'stopped' && skipped.has(r)) {
        again = true;
        local.set(r, { phase: 'stopping', token: e.state.token, sinceMs: this.#clock.now() });
      } else local.set(r, e.state);
    }
    if (again) this.#kickMember();
    const actions = decideMember(view, local, {
      nodeId: this.nodeId,
      sessionId: session.id,
      protocol: this.#o.protocol,
      fenced: this.#fenced || this.#run === 'rejoining' || !this.#ownsNow(),
      leaving: this.#run === 'leaving',
      nowMs: this.#clock.now(),
    });
    // Waiting for somebody else's lock on a resource granted to us? Then we need to hear when it is released.
    const waiting = [...view.grants.keys()].filter((r) => {
      const h = view.held.get(r);
      return !this.#local.has(r) && h !== undefined && h.sessionId !== session.id;
    });
    this.#watchLocksWhileWaiting(waiting);
    await Promise.all(actions.map((a) => this.#act(a, session)));
  }

  async #act(a: MemberAction, session: Session): Promise<void> {
    try {
      switch (a.type) {
        case 'stop':
          this.#stop(a.resource, a.reason);
          return;
        case 'restart': {
          const e = this.#local.get(a.resource);
          if (e !== undefined && this.#session === session && this.#ownsNow()) {
            this.#startHandler(a.resource, e, a.token, a.generation);
          }
          return;
        }
        case 'adopt': {
          if (this.#session !== session || !this.#ownsNow()) return;
          this.#uncertain.delete(a.resource);
          const e = this.#newEntry(a.resource);
          this.#startHandler(a.resource, e, a.token, a.generation);
          return;
        }
        case 'acquire': {
          const e = this.#newEntry(a.resource);
          e.state = { phase: 'acquiring' };
          let token: number | undefined;
          try {
            token = await acquire(
              this.#store,
              this.#keys,
              session,
              this.nodeId,
              a.resource,
              a.generation,
              a.stateRevision,
            );
          } catch (err) {
            // Outcome unknown: if the lock is ours after all, a later reconcile adopts or releases it.
            this.#local.delete(a.resource);
            this.#uncertain.add(a.resource);
            throw err;
          }
          if (token === undefined || !this.#ownsNow() || this.#session !== session) {
            this.#local.delete(a.resource);
            // Taken after all, or we lost the lease meanwhile: if we did get it, release at once.
            if (token !== undefined) await release(this.#store, this.#keys, a.resource, token).catch(() => false);
            return;
          }
          this.#startHandler(a.resource, e, token, a.stateGeneration);
          return;
        }
        case 'release': {
          const e = this.#local.get(a.resource);
          if (e === undefined) {
            // A lock we hold without running it (see #uncertain).
            if (await release(this.#store, this.#keys, a.resource, a.token)) this.#uncertain.delete(a.resource);
            return;
          }
          e.state = { phase: 'releasing', token: a.token };
          try {
            await release(this.#store, this.#keys, a.resource, a.token);
            this.#local.delete(a.resource);
            this.emit('released', { resource: a.resource, fencingToken: a.token });
          } catch (err) {
            e.state = { phase: 'stopped', token: a.token };
            throw err;
          }
          this.#kickMember();
          return;
        }
        case 'forget':
          this.#local.delete(a.resource);
          return;
        case 'ack':
          await putAck(this.#store, this.#keys, session, this.nodeId, a.generation);
          return;
      }
    } catch (error) {
      if (error instanceof SessionExpiredError || error instanceof StoreUnavailableError) {
        this.emit('error', { error, context: `${a.type} ${'resource' in a ? a.resource : ''}`.trim() });
      } else {
        this.emit('error', { error, context: `${a.type} failed` });
      }
    }
  }

  #newEntry(resource: string): LocalEntry {
    const e: LocalEntry = {
      state: { phase: 'acquiring' },
      controller: undefined,
      settled: undefined,
      failures: 0,
      stuckReported: false,
    };
    this.#local.set(resource, e);
    return e;
  }

  #startHandler(resource: string, e: LocalEntry, token: number, generation: number): void {
    const session = this.#session;
    const controller = new AbortController();
    e.controller = controller;
    e.state = { phase: 'running', token, generation };
    e.stuckReported = false;
    const ctx = {
      group: this.group,
      nodeId: this.nodeId,
      resource,
      fencingToken: token,
      signal: controller.signal,
      // Tied to the session the handler started under: a rejoin's new session does not make it an owner again.
      stillOwner: (): boolean => !controller.signal.aborted && this.#session === session && this.#ownsNow(),
    };
    this.emit('assigned', { resource, fencingToken: token });
    let run: Promise<void>;
    try {
      run = Promise.resolve(this.#o.handler(ctx));
    } catch (err) {
      run = Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    e.settled = run.then(
      () => this.#onHandlerSettled(resource, e, controller, undefined),
      (error: unknown) => this.#onHandlerSettled(resource, e, controller, error ?? new Error('handler rejected')),
    );
  }

  #onHandlerSettled(resource: string, e: LocalEntry, controller: AbortController, error: unknown): void {
    if (e.controller !== controller) return;
    e.settled = undefined;
    e.controller = undefined;
    const token = 'token' in e.state ? e.state.token : 0;
    if (controller.signal.aborted) {
      // Stopped on purpose: release the lock (the next reconcile does it).
      e.state = { phase: 'stopped', token };
    } else {
      // Ended on its own while still ours: keep the lock, restart after a backoff.
      if (error !== undefined) this.emit('handlerFailed', { resource, error });
      e.failures++;
      const base = Math.min(this.#o.restartMaxMs, this.#o.restartInitialMs * 2 ** Math.min(20, e.failures - 1));
      const delay = base * (0.5 + this.#o.random() / 2);
      const generation = 'generation' in e.state ? e.state.generation : 0;
      e.state = { phase: 'backoff', token, generation, restartAtMs: this.#clock.now() + delay };
      this.#clock.setTimeout(() => this.#kickMember(), delay, { background: true });
    }
    this.#kickMember();
  }

  #stop(resource: string, reason: StopReason): void {
    const e = this.#local.get(resource);
    if (e === undefined) return;
    if (e.state.phase === 'backoff') {
      e.state = { phase: 'stopped', token: e.state.token };
      this.emit('revoked', { resource, reason });
      this.#kickMember();
      return;
    }
    if (e.state.phase !== 'running') return;
    e.state = { phase: 'stopping', token: e.state.token, sinceMs: this.#clock.now() };
    this.emit('revoked', { resource, reason });
    e.controller?.abort(new RevokedError(resource, reason));
    if (activeMutants.has('release-before-stop')) e.state = { phase: 'stopped', token: e.state.token };
  }

  /** Abort every running handler at once (fenced or session lost); releases follow once they settle. */
  #stopAll(reason: StopReason): void {
    for (const [resource, e] of this.#local) {
      if (e.state.phase === 'running' || e.state.phase === 'backoff') this.#stop(resource, reason);
    }
  }

  #checkStuck(): void {
    const now = this.#clock.now();
    for (const [resource, e] of this.#local) {
      if (e.state.phase !== 'stopping') continue;
      const forMs = now - e.state.sinceMs;
      if (forMs < this.#o.drainTimeoutMs) continue;
      if (!e.stuckReported) {
        e.stuckReported = true;
        this.emit('handlerStuck', { resource, stoppingForMs: forMs });
        if (this.#o.onStuckHandler === 'exit') {
          // The lock stays held by our session until the process is gone; the OS then ends the work.
          process.exitCode = 75;
          setImmediate(() => process.exit(75));
        }
      }
    }
  }

  // ---- coordinator ------------------------------------------------------------------

  #startCampaign(session: Session): void {
    this.#campaignAbort?.abort();
    const abort = new AbortController();
    this.#campaignAbort = abort;
    const election = new Election(this.#store, {
      prefix: this.#keys.coordinator,
      recheckIntervalMs: this.#o.reconcileIntervalMs,
    });
    const loop = async (): Promise<void> => {
      while (
        !abort.signal.aborted &&
        this.#session === session &&
        session.state !== 'expired' &&
        session.state !== 'closed'
      ) {
        try {
          const leadership = await election.campaign(session, encode({ nodeId: this.nodeId }), abort.signal);
          if (abort.signal.aborted || this.#run === 'left') {
            await leadership.resign().catch(() => undefined);
            return;
          }
          await this.#becomeCoordinator(leadership);
          await leadership.lost;
          await this.#leadershipLost();
        } catch (error) {
          if (abort.signal.aborted) return;
          if (!(error instanceof SessionExpiredError)) this.emit('error', { error, context: 'coordinator election' });
          await this.#sleep(Math.min(1000, this.#o.reconcileIntervalMs));
        }
      }
    };
    void loop();
  }

  async #becomeCoordinator(leadership: Leadership): Promise<void> {
    this.#leadership = leadership;
    this.#coordMemory = newCoordinatorMemory();
    this.#coordReader = new CoordinatorReader(
      this.#store,
      this.#keys,
      (error) => this.emit('error', { error, context: 'reading group view' }),
      // A full re-read now and then heals anything the caches could miss (keys changed by hand).
      Math.max(30_000, 10 * this.#o.reconcileIntervalMs),
    );
    this.#rebalance = undefined;
    this.emit('coordinatorElected', { nodeId: this.nodeId, token: leadership.token });
    this.#coordWatch = await this.#store.watch(this.#keys.root, () => this.#kickCoordinator());
    this.#scheduleResourceSource(leadership);
    this.#kickCoordinator();
  }

  async #leadershipLost(): Promise<void> {
    const l = this.#leadership;
    if (l === undefined) return;
    this.#leadership = undefined;
    if (this.#coordWake !== undefined) this.#clock.clearTimeout(this.#coordWake);
    if (this.#sourceTimer !== undefined) this.#clock.clearTimeout(this.#sourceTimer);
    this.#coordWake = undefined;
    this.#sourceTimer = undefined;
    await this.#coordWatch?.close().catch(() => undefined);
    this.#coordWatch = undefined;
    this.emit('coordinatorLost', { token: l.token });
  }

  async #stopCoordinating(): Promise<void> {
    this.#campaignAbort?.abort();
    const l = this.#leadership;
    await this.#leadershipLost();
    await l?.resign().catch(() => undefined);
  }

  #kickCoordinator(): void {
    this.#coordLoop.kick(() => this.#reconcileCoordinator());
  }

  async #reconcileCoordinator(): Promise<void> {
    const leadership = this.#leadership;
    if (leadership === undefined || this.#run === 'left') return;
    // A coordinator that cannot trust its lease must not decide (its writes would fail anyway).
    if (!this.#ownsNow()) return;
    const reader = this.#coordReader;
    if (reader === undefined) return;
    let view;
    try {
      view = await reader.read(this.#clock.now());
    } catch (error) {
      this.emit('error', { error, context: 'coordinator: reading group view' });
      return;
    }
    if (this.#leadership !== leadership) return;
    const now = this.#clock.now();
    let decision: CoordinatorDecision;
    try {
      decision = decideCoordinator(
        view,
        {
          protocol: this.#o.protocol,
          strategy: this.#o.strategy as PlacementStrategy,
          gracePeriodMs: this.#o.gracePeriodMs,
          drainTimeoutMs: this.#o.drainTimeoutMs,
          rebalanceDebounceMs: this.#o.rebalanceDebounceMs,
          minRebalanceIntervalMs: this.#o.minRebalanceIntervalMs,
        },
        this.#coordMemory,
        now,
        { nodeId: this.nodeId, token: leadership.token },
      );
    } catch (error) {
      this.emit('error', { error, context: 'coordinator: placement' });
      return;
    }
    const generation = decision.state?.generation ?? view.state?.generation ?? view.maxGeneration;
    const startsRebalance =
      decision.state !== undefined && decision.state.generation > (view.state?.generation ?? view.maxGeneration);
    if (decision.changes.length > 0 || decision.state !== undefined) {
      try {
        const ok = await writeCoordinatorDecision(
          this.#store,
          this.#keys,
          leadership.guard,
          decision.changes,
          generation,
          decision.state,
        );
        if (!ok) {
          // The guard failed: we are no longer the coordinator.
          await this.#leadershipLost();
          return;
        }
        reader.applied(decision.changes, generation);
      } catch (error) {
        // Some batches may have been applied: read the grants again.
        reader.invalidate();
        this.emit('error', { error, context: 'coordinator: writing grants' });
        this.#wakeCoordinatorAt(now + Math.min(1000, this.#o.reconcileIntervalMs));
        return;
      }
      if (startsRebalance) {
        this.#rebalance = { generation, startedAtMs: now };
        this.emit('rebalanceStarted', { generation, moves: decision.moves, protocol: this.#o.protocol });
      }
    } else if (decision.settled && this.#rebalance !== undefined) {
      const r = this.#rebalance;
      this.#rebalance = undefined;
      this.emit('rebalanceCompleted', { generation: r.generation, durationMs: now - r.startedAtMs });
    }
    if (decision.wakeAtMs !== undefined) this.#wakeCoordinatorAt(decision.wakeAtMs);
  }

  #wakeCoordinatorAt(atMs: number): void {
    if (this.#coordWake !== undefined) this.#clock.clearTimeout(this.#coordWake);
    this.#coordWake = this.#clock.setTimeout(
      () => {
        this.#coordWake = undefined;
        this.#kickCoordinator();
      },
      Math.max(0, atMs - this.#clock.now()),
      { background: true },
    );
  }

  #scheduleResourceSource(leadership: Leadership): void {
    const source = this.#o.resourceSource;
    if (source === undefined) return;
    const run = async (): Promise<void> => {
      if (this.#leadership !== leadership) return;
      try {
        await this.#syncResources(leadership);
      } catch (error) {
        this.emit('error', { error, context: 'resource source' });
      }
      if (this.#leadership === leadership) {
        this.#sourceTimer = this.#clock.setTimeout(() => void run(), this.#o.resourceSourceIntervalMs, {
          background: true,
        });
      }
    };
    void run();
  }

  async #syncResources(leadership: Leadership): Promise<void> {
    const source = this.#o.resourceSource!;
    const abort = new AbortController();
    const timer = this.#clock.setTimeout(
      () => abort.abort(new Error('resource source timed out')),
      this.#o.resourceSourceTimeoutMs,
    );
    let listed: Iterable<string>;
    try {
      listed = await Promise.race([
        Promise.resolve(source.list(abort.signal)),
        new Promise<never>((_, reject) =>
          abort.signal.addEventListener('abort', () => reject(abort.signal.reason as Error)),
        ),
      ]);
    } finally {
      this.#clock.clearTimeout(timer);
    }
    await syncRegistry(this.#store, this.#keys, [...listed], leadership.guard);
  }

  // ---- utilities ------------------------------------------------------------------

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.#clock.setTimeout(resolve, ms));
  }

  #clearTimers(): void {
    for (const t of [this.#fenceTimer, this.#tickTimer, this.#coordWake, this.#sourceTimer]) {
      if (t !== undefined) this.#clock.clearTimeout(t);
    }
    this.#fenceTimer = this.#tickTimer = this.#coordWake = this.#sourceTimer = undefined;
  }
}

/** Runs an async task one at a time; a kick during a run schedules exactly one more. */
class Loop {
  #running = false;
  #again = false;

  kick(task: () => Promise<void>): void {
    if (this.#running) {
      this.#again = true;
      return;
    }
    this.#running = true;
    void (async () => {
      try {
        do {
          this.#again = false;
          try {
            await task();
          } catch {
            // Tasks report their own errors; the loop must survive.
          }
        } while (this.#again);
      } finally {
        this.#running = false;
      }
    })();
  }
}
