/**
 * The runtime of one node in a resource group. It wires the shared pieces
 * together and runs the member's reconcile round:
 *
 *  - membership (../membership.ts): session, registration, self-fencing,
 *    rejoin, the coordinator campaign, the periodic tick;
 *  - handler supervision (handlers.ts): start, abort, settle, backoff;
 *  - the coordinator loop (coordinator.ts) while this node leads;
 *  - the round: read what concerns this node, ask the pure core
 *    (protocol/groups/member.ts) what to do, do it.
 *
 * Concurrency: one member round at a time (a trigger during a round asks for
 * exactly one more). All time comes from the injected clock, all randomness
 * from the injected `random`, so the simulator runs this code
 * deterministically.
 */
import { CorruptDataError, invariant, InvariantError } from '../../errors.js';
import { putAck, readMemberView, release } from '../../protocol/groups/io.js';
import { GroupKeys, decodeMember, encode } from '../../protocol/groups/keys.js';
import { decideMember, type LocalResource, type MemberAction } from '../../protocol/groups/member.js';
import { NO_MUTANTS, type Mutants } from '../../protocol/mutants.js';
import type { Session, Store } from '../../store/contract.js';
import type { RuntimeInternals } from '../common-options.js';
import { TypedEmitter } from '../../events.js';
import type { GroupEvents } from './events.js';
import { CorruptionReports } from '../corruption.js';
import { Loop } from '../loop.js';
import { Membership } from '../membership.js';
import { Watches } from '../watches.js';
import { GroupCoordinator } from './coordinator.js';
import { HandlerSupervisor, type AssignedResource } from './handlers.js';
import { LockBatches } from './locks.js';
import { resolveGroupOptions, type JoinGroupOptions, type ResolvedGroupOptions } from './options.js';

export type { AssignedResource };

export type { GroupEvents } from './events.js';

/** Join a group: resolves once this node is a member (its resources start as they are granted). */
export async function joinGroup(options: JoinGroupOptions): Promise<GroupMember> {
  return joinGroupWith(resolveGroupOptions(options), {});
}

/** joinGroup for callers that resolved the options themselves (wrappers, the simulator). */
export async function joinGroupWith(options: ResolvedGroupOptions, internals: RuntimeInternals): Promise<GroupMember> {
  const member = new GroupMember(options, internals);
  await member.start();
  return member;
}

/** The longest pause between two member rounds the pace imposes. */
const MAX_ROUND_SPACING_MS = 500;

/** Above this many awaited locks, one watch on all of `held/` instead of one per lock. */
const MAX_LOCK_WATCHES = 16;

export class GroupMember extends TypedEmitter<GroupEvents> {
  readonly nodeId: string;
  readonly group: string;
  readonly #o: ResolvedGroupOptions;
  readonly #mutants: Mutants;
  readonly #keys: GroupKeys;
  readonly #store: Store;
  readonly #membership: Membership;
  readonly #handlers: HandlerSupervisor;
  readonly #locks: LockBatches;
  readonly #loop: Loop;
  /** Resources whose acquire had an unknown outcome: we may hold their lock without knowing it. */
  readonly #uncertain = new Set<string>();
  /** Its grants and the group state: what concerns this node. */
  readonly #memberWatches: Watches;
  /** The locks this node waits for (see #watchLocksWhileWaiting). */
  readonly #lockWatches: Watches;
  #coordinator: GroupCoordinator | undefined;
  /** Unreadable keys seen by the member's rounds, each reported once while it stays unreadable. */
  readonly #corruption = new CorruptionReports((error) => this.reportError(error, 'reading member view'));
  /** When this node registered again after losing its session (the injected clock); undefined after its first join. */
  #rejoinedAtMs: number | undefined;
  #joinedBefore = false;
  /** What the last round's read and decision cost (ms): the loop's pace. */
  #lastCostMs = 0;
  /** An invariant broke: the member is leaving and starts nothing more (see #reportOrFail). */
  #broken = false;

  /** Use joinGroup(). */
  constructor(options: ResolvedGroupOptions, internals: RuntimeInternals = {}) {
    super({ held: true });
    this.#o = options;
    this.#mutants = internals.mutants ?? NO_MUTANTS;
    this.nodeId = options.node.id;
    this.group = options.group;
    this.#keys = new GroupKeys(options.group);
    this.#store = options.store;
    // Paced like the coordinator's (see coordinator.ts): with thousands of grants a round's read and decision cost
    // tens of milliseconds, and while work moves, watch hints would otherwise run rounds back to back.
    this.#loop = new Loop(
      () => this.#round(),
      (error) => this.#reportOrFail(error, 'member round'),
      { clock: options.clock, spacingMs: () => Math.min(MAX_ROUND_SPACING_MS, 2 * this.#lastCostMs) },
    );
    this.#memberWatches = new Watches(
      this.#store,
      () => this.#kick(),
      (error) => this.reportError(error, 'watching'),
    );
    this.#lockWatches = new Watches(
      this.#store,
      () => this.#kick(),
      (error) => this.reportError(error, 'watching locks'),
    );
    this.#membership = new Membership(
      {
        store: options.store,
        clock: options.clock,
        scope: `group ${options.group}`,
        nodeId: options.node.id,
        memberKey: this.#keys.member(options.node.id),
        electionPrefix: this.#keys.coordinator,
        electionValue: encode({ nodeId: options.node.id }),
        sessionTtlMs: options.sessionTtlMs,
        selfFenceMarginMs: options.selfFenceMarginMs,
        reconcileIntervalMs: options.reconcileIntervalMs,
        joinTimeoutMs: options.joinTimeoutMs,
        selfFencing: !this.#mutants.has('no-self-fencing'),
        record: (session) => ({
          value: encode({
            nodeId: options.node.id,
            zone: options.node.zone,
            weight: options.node.weight,
            sessionId: session.id,
            static: options.gracePeriodMs > 0,
          }),
        }),
        checkOrphanRecord: (kv) => {
          try {
            decodeMember(kv.key, kv.value);
          } catch (cause) {
            throw new CorruptDataError(`${kv.key} holds data Rebalancer did not write; delete it`, {
              key: kv.key,
              cause,
            });
          }
        },
      },
      {
        joined: async (session) => {
          // A coordinator that has just rejoined after losing its session waits a little for the nodes that held
          // grants (they lost theirs too: a store restart). A first join never waits.
          this.#rejoinedAtMs = this.#joinedBefore ? options.clock.now() : undefined;
          this.#joinedBefore = true;
          // Only what concerns this node: its grants and the group state. Locks (`held/`) change with every handoff
          // in the group, so that watch is opened only while we wait for one (#watchLocksWhileWaiting).
          await this.#memberWatches.set([this.#keys.grantsOf(this.nodeId), this.#keys.state]);
          this.emit('joined', { nodeId: this.nodeId, sessionId: session.id });
        },
        fenced: (safeUntilMs) => {
          this.emit('fenced', { safeUntilMs });
          // Abort now, not on the next round: that one may be blocked on an unreachable store.
          this.#handlers.stopAll('fenced');
          this.#kick();
        },
        unfenced: () => {
          this.emit('unfenced', {});
          this.#kick();
        },
        sessionLost: async (session, cause) => {
          this.#handlers.stopAll('fenced');
          this.emit('sessionLost', { sessionId: session.id, cause });
          this.#kick();
          // Locks of the lost session are gone on the server; our handlers must all have stopped before we may
          // take any lock again (we could be granted the same resources).
          await this.#handlers.whenSettled(50);
          this.#handlers.clear();
          this.#uncertain.clear();
        },
        elected: async (leadership) => {
          const c = new GroupCoordinator({
            options: this.#o,
            keys: this.#keys,
            leadership,
            mutants: this.#mutants,
            ownsNow: () => this.#membership.ownsNow(),
            rejoinedAtMs: this.#rejoinedAtMs,
            onDeposed: () => this.#membership.leadershipLost(leadership),
            events: {
              rebalanceStarted: (generation, moves, protocol) =>
                this.emit('rebalanceStarted', { generation, moves, protocol }),
              rebalanceCompleted: (generation, durationMs) =>
                this.emit('rebalanceCompleted', { generation, durationMs }),
              error: (error, context) => this.reportError(error, context),
            },
          });
          this.#coordinator = c;
          this.emit('coordinatorElected', { nodeId: this.nodeId, token: leadership.token });
          await c.start();
        },
        leadershipLost: (leadership) => {
          const c = this.#coordinator;
          if (c === undefined || c.token !== leadership.token) return;
          this.#coordinator = undefined;
          void c.stop();
          this.emit('coordinatorLost', { token: leadership.token });
        },
        kick: () => this.#kick(),
        tick: () => {
          this.#kick();
          this.#coordinator?.kick();
        },
        error: (error, context) => this.reportError(error, context),
        idTaken: () => void this.leave().catch(() => undefined),
      },
    );
    this.#handlers = new HandlerSupervisor({
      group: options.group,
      nodeId: options.node.id,
      clock: options.clock,
      random: options.random,
      handler: options.handler,
      restartInitialMs: options.restartInitialMs,
      restartMaxMs: options.restartMaxMs,
      drainTimeoutMs: options.drainTimeoutMs,
      onStuckHandler: options.onStuckHandler,
      mutants: this.#mutants,
      session: () => this.#membership.session,
      ownsNow: () => this.#membership.ownsNow(),
      kick: () => this.#kick(),
      events: {
        assigned: (resource, fencingToken) => this.emit('assigned', { resource, fencingToken }),
        revoked: (resource, reason) => this.emit('revoked', { resource, reason }),
        handlerFailed: (resource, error) => this.emit('handlerFailed', { resource, error }),
        handlerStuck: (resource, stoppingForMs) => this.emit('handlerStuck', { resource, stoppingForMs }),
      },
    });
    this.#locks = new LockBatches({
      store: this.#store,
      keys: this.#keys,
      nodeId: this.nodeId,
      mutants: this.#mutants,
      handlers: this.#handlers,
      uncertain: this.#uncertain,
      membershipState: () => this.#membership.state,
      mayStart: (session) => this.#mayStart(session),
      reportOrFail: (error, context) => this.#reportOrFail(error, context),
      released: (event) => this.emit('released', event),
      kick: () => this.#kick(),
    });
  }

  /** True while this node is the group's coordinator. */
  get isCoordinator(): boolean {
    return this.#coordinator !== undefined;
  }

  /** The resources this node deals with now. */
  assignment(): AssignedResource[] {
    return this.#handlers.assignment();
  }

  /**
   * Until when (on this node's clock) the node trusts its lease: its session's safety deadline minus the
   * self-fencing margin. Handlers' stillOwner() turns false there.
   */
  get leaseDeadlineMs(): number {
    return this.#membership.leaseDeadlineMs;
  }

  /** The current session's id (changes after a session loss and rejoin). */
  get sessionId(): string | undefined {
    return this.#membership.session?.id;
  }

  // ---- lifecycle ------------------------------------------------------------------

  /** Use joinGroup(), which calls this. Events are held until the caller has the member. */
  async start(): Promise<void> {
    await this.#membership.join();
    this.#kick();
    this.#o.clock.setTimeout(() => this.openEvents(), 0);
  }

  /**
   * Leave gracefully: stop being a member (the coordinator moves this node's resources away), wait until every
   * handler has stopped and every lock is released (bounded by leaveTimeoutMs, then drainTimeoutMs for handlers
   * still stopping), then close the session. Does not close the store: that is the application's.
   */
  async leave(): Promise<void> {
    const m = this.#membership;
    if (!m.active) return;
    const clock = this.#o.clock;
    try {
      await m.deregister();
      this.#kick();
      const deadline = clock.now() + this.#o.leaveTimeoutMs;
      // Wait for the coordinator (maybe us) to move our grants away and for our handlers to hand over.
      while (this.#handlers.size > 0 && clock.now() < deadline) {
        await this.#sleep(Math.min(50, this.#o.reconcileIntervalMs));
        this.#kick();
      }
      // Whatever is left (no coordinator, or a lone node): stop and release it ourselves.
      this.#handlers.stopAll('leaving');
      await this.#handlers.whenSettled(20, clock.now() + this.#o.drainTimeoutMs);
      for (const [resource, e] of [...this.#handlers.entries()]) {
        if ('token' in e.state && e.settled === undefined) {
          await release(this.#store, this.#keys, resource, e.state.token).catch(() => false);
          this.#handlers.delete(resource);
          this.emit('released', { resource, fencingToken: e.state.token });
        }
      }
    } finally {
      await this.#coordinator?.stop();
      await this.#memberWatches.close();
      await this.#lockWatches.close();
      // Closing the session deletes every key still attached to it (e.g. locks of stuck handlers, which then may
      // be taken over: the handler was told to stop drainTimeoutMs ago).
      await m.close();
      this.emit('left', {});
    }
  }

  // ---- the member round ------------------------------------------------------------------

  #kick(): void {
    if (this.#membership.state !== 'left') this.#loop.kick();
  }

  async #round(): Promise<void> {
    const m = this.#membership;
    if (m.state === 'left') return;
    const session = m.session;
    if (session === undefined) return;
    m.checkFence();
    this.#handlers.checkStuck();
    const leaving = m.state === 'leaving';
    if (m.fenced || m.state === 'rejoining') {
      // Stop everything without waiting for the store (it may be unreachable).
      const stop = decideMember(
        { state: undefined, stateRevision: 0, grants: new Map(), held: new Map(), ackedGeneration: undefined },
        this.#handlers.states(),
        this.#self(session, true, leaving),
        this.#mutants,
      );
      for (const a of stop) if (a.type === 'stop') this.#handlers.stop(a.resource, a.reason);
      if (m.state === 'rejoining' || session.state === 'expired' || session.state === 'closed') return;
    }
    // Locks matter only for what is not running: grants to take, stopped handlers to release, uncertain acquires
    // (decideMember reads no lock of a running, stopping or in-flight resource).
    const interesting: string[] = [...this.#uncertain];
    const skipped = new Set<string>();
    for (const [r, e] of this.#handlers.entries()) {
      if (e.state.phase === 'stopped') interesting.push(r);
      else skipped.add(r);
    }
    const startedAtMs = this.#o.clock.now();
    let view;
    try {
      view = await readMemberView(this.#store, this.#keys, this.nodeId, interesting, this.#corruption.report, skipped);
    } catch (error) {
      if (error instanceof CorruptDataError) this.#corruption.report(error);
      else this.reportError(error, 'reading member view');
      return;
    }
    this.#corruption.endRound();
    // The read may have outlived the session it was made for (a blocked request, then a rejoin): its view says
    // "held by my session" of a session that is no longer ours. Decide again from scratch.
    if (m.session !== session) {
      this.#kick();
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
    for (const [r, e] of this.#handlers.entries()) {
      if (e.state.phase === 'stopped' && skipped.has(r)) {
        again = true;
        local.set(r, { phase: 'stopping', token: e.state.token, sinceMs: this.#o.clock.now() });
      } else local.set(r, e.state);
    }
    if (again) this.#kick();
    const fenced = m.fenced || (m.state as string) === 'rejoining' || !m.ownsNow();
    const actions = decideMember(view, local, this.#self(session, fenced, m.state === 'leaving'), this.#mutants);
    this.#lastCostMs = this.#o.clock.now() - startedAtMs;
    // Waiting for somebody else's lock on a resource granted to us? Then we need to hear when it is released.
    const waiting = [...view.grants.keys()].filter((r) => {
      const h = view.held.get(r);
      return !this.#handlers.has(r) && h !== undefined && h.sessionId !== session.id;
    });
    this.#watchLocksWhileWaiting(waiting);
    // Acquires and releases go in batches (a transaction per batch, not per resource): with thousands of
    // resources per node, one request per resource would flood the store and this process's event loop.
    const acquires: Extract<MemberAction, { type: 'acquire' }>[] = [];
    const releases: Extract<MemberAction, { type: 'release' }>[] = [];
    const others: MemberAction[] = [];
    for (const a of actions) {
      if (a.type === 'acquire') acquires.push(a);
      else if (a.type === 'release' && this.#handlers.has(a.resource)) releases.push(a);
      else others.push(a);
    }
    await Promise.all([
      ...others.map((a) => this.#act(a, session)),
      this.#locks.acquireAll(acquires, session),
      this.#locks.releaseAll(releases),
    ]);
  }

  #self(session: Session, fenced: boolean, leaving: boolean) {
    return {
      nodeId: this.nodeId,
      sessionId: session.id,
      protocol: this.#o.protocol,
      fenced,
      leaving,
      nowMs: this.#o.clock.now(),
    };
  }

  /** Still the session `session`, and the lease holds: the only condition under which a handler may start. */
  #mayStart(session: Session): boolean {
    return !this.#broken && this.#membership.session === session && this.#membership.ownsNow();
  }

  async #act(a: MemberAction, session: Session): Promise<void> {
    try {
      switch (a.type) {
        case 'stop':
          this.#handlers.stop(a.resource, a.reason);
          return;
        case 'restart': {
          const e = this.#handlers.get(a.resource);
          if (e !== undefined && this.#mayStart(session))
            this.#handlers.start(a.resource, e, a.token, a.generation, session);
          return;
        }
        case 'adopt': {
          if (!this.#mayStart(session)) return;
          this.#uncertain.delete(a.resource);
          const e = this.#handlers.newEntry(a.resource);
          this.#handlers.start(a.resource, e, a.token, a.generation, session);
          return;
        }
        case 'acquire':
          return await this.#locks.acquireAll([a], session);
        case 'release': {
          const e = this.#handlers.get(a.resource);
          if (e === undefined) {
            // A lock we hold without running it (see #uncertain).
            if (await release(this.#store, this.#keys, a.resource, a.token)) this.#uncertain.delete(a.resource);
            return;
          }
          // The mutant removes the wait for the handler and this guard with it (the simulator must catch it).
          if (!this.#mutants.has('release-before-stop'))
            invariant(e.settled === undefined, () => `releasing ${a.resource} while its handler runs`);
          e.state = { phase: 'releasing', token: a.token };
          try {
            await release(this.#store, this.#keys, a.resource, a.token);
            this.#handlers.delete(a.resource);
            this.emit('released', { resource: a.resource, fencingToken: a.token });
          } catch (err) {
            e.state = { phase: 'stopped', token: a.token };
            throw err;
          }
          this.#kick();
          return;
        }
        case 'forget':
          this.#handlers.delete(a.resource);
          return;
        case 'ack':
          await putAck(this.#store, this.#keys, session, this.nodeId, a.generation);
          return;
      }
    } catch (error) {
      this.#reportOrFail(error, `${a.type} ${'resource' in a ? a.resource : ''}`.trim());
    }
  }

  /**
   * Report a background error. A broken invariant is fatal: the member stops every handler and leaves (it cannot
   * trust its own state any more); the error event says so.
   */
  #reportOrFail(error: unknown, context: string): void {
    this.reportError(error, context);
    // From here on nothing starts: a round that runs before the leave takes effect must not adopt or start anything.
    if (error instanceof InvariantError) this.#broken = true;
    if (error instanceof InvariantError && this.#membership.active) {
      this.#handlers.stopAll('fenced');
      void this.leave().catch(() => undefined);
    }
  }

  /**
   * Watch the locks we wait for. One watch per awaited lock (its key as the prefix) while they are few: a watch
   * on all of `held/` would wake every waiting member on every handoff in the group, which in a large rebalance
   * (every member waiting for one or two locks) is quadratic. Many at once: one prefix watch.
   */
  #watchLocksWhileWaiting(names: readonly string[]): void {
    const k = this.#keys;
    void this.#lockWatches.set(names.length > MAX_LOCK_WATCHES ? [k.held] : names.map((n) => k.heldKey(n)));
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.#o.clock.setTimeout(resolve, ms));
  }
}
