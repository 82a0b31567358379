/**
 * A member (node) of a slots cluster (docs/protocol/slots.md): the runtime
 * that drives the pure cores in src/protocol/slots/ with the store, timers
 * and the application. It wires the shared pieces together:
 *
 *  - membership (../membership.ts): session, registration, self-fencing,
 *    rejoin, the coordinator campaign, the periodic tick;
 *  - the local state and the bitmap writer with the guarded release
 *    (ready.ts), the primary locks (primaries.ts), the live routing table
 *    (routing.ts);
 *  - the round: read the cluster (protocol/slots/view.ts), write the plan if
 *    this node coordinates, ask the pure core what to do (decideSite), do it.
 *
 * The application is told which slots to prepare (`prepare`), which it may
 * release (`releasable`), and exactly which slots it gained or lost as primary
 * (`primaryGained` with the fencing epoch, `primaryLost` with the reason). It
 * answers with `markReady(slot)`, `release(slot)` and `reportFailed(slot)`.
 * Routing (`route`, `routeKey`, `routing()`) reads a local table kept current
 * by a watch; no lookup calls the store.
 *
 * Concurrency: one round at a time; every trigger (watch hint, timer, API call)
 * just asks for another round.
 */
import {
  ClosedError,
  CorruptDataError,
  InvalidArgumentError,
  InvariantError,
  SessionExpiredError,
} from '../../errors.js';
import type { PrimaryRoute, RoutingTable, SlotRoute } from '../../placement/routing.js';
import { slotForKey as hashKey } from '../../placement/slot-hash.js';
import { NO_MUTANTS, type Mutants } from '../../protocol/mutants.js';
import { ensureConfig, registrationOps, writeProbe } from '../../protocol/slots/io.js';
import { encodeSite, SlotKeys, type SlotsConfig } from '../../protocol/slots/keys.js';
import { decideSite, type LocalSlotState, type SiteView } from '../../protocol/slots/site.js';
import { changedSlots, SlotsReader, type SlotsView } from '../../protocol/slots/view.js';
import type { Session, Store } from '../../store/contract.js';
import type { RuntimeInternals } from '../common-options.js';
import { TypedEmitter } from '../../events.js';
import type { PrimaryLostReason, SlotsEvents } from './events.js';
import { CorruptionReports } from '../corruption.js';
import { Loop } from '../loop.js';
import { Membership } from '../membership.js';
import { Watches } from '../watches.js';
import { resolveSlotsOptions, type JoinSlotsOptions, type ResolvedSlotsOptions } from './options.js';
import { PrimaryLocks } from './primaries.js';
import { ReadyWriter, Releasables, SlotsLocal, type MarkReadyResult, type ReleaseResult } from './ready.js';
import { LiveRouting } from './routing.js';
import { SlotsCoordinator } from './coordinator.js';

export type { PrimaryLostReason, SlotsEvents } from './events.js';

/** Join a slots cluster: resolves once this node is a member (its first round runs at once; events follow). */
export async function joinSlots(options: JoinSlotsOptions): Promise<SlotsMember> {
  return joinSlotsWith(resolveSlotsOptions(options), {});
}

/** joinSlots for callers that resolved the options themselves (the simulator). */
export async function joinSlotsWith(options: ResolvedSlotsOptions, internals: RuntimeInternals): Promise<SlotsMember> {
  const member = new SlotsMember(options, internals);
  await member.start();
  return member;
}

export class SlotsMember extends TypedEmitter<SlotsEvents> {
  readonly nodeId: string;
  readonly cluster: string;
  readonly config: SlotsConfig;
  readonly #o: ResolvedSlotsOptions;
  readonly #mutants: Mutants;
  readonly #store: Store;
  readonly #keys: SlotKeys;
  readonly #membership: Membership;
  readonly #local: SlotsLocal;
  readonly #ready: ReadyWriter;
  readonly #locks: PrimaryLocks;
  readonly #routing: LiveRouting;
  readonly #reader: SlotsReader;
  readonly #loop: Loop;
  /** Decide about every slot in the next round (first round, fencing, session changes, the periodic pass, errors). */
  #allDirty = true;
  /** The view the last round decided on (to tell which slots changed since). */
  #lastView: SlotsView | undefined;
  readonly #releasable = new Releasables();
  readonly #coordinator: SlotsCoordinator;
  readonly #watches: Watches;
  /** leave() is closing: no more rounds. */
  #closing = false;
  /** Unreadable keys, each reported once while it stays unreadable. */
  readonly #corruption = new CorruptionReports((error) => this.reportError(error, 'reading the cluster'));
  /** The plan chunks the coordinator stopped for, as reported last. */
  #halted = '';

  /** Use joinSlots(). */
  constructor(options: ResolvedSlotsOptions, internals: RuntimeInternals = {}) {
    super({ held: true });
    this.#o = options;
    this.#mutants = internals.mutants ?? NO_MUTANTS;
    this.#store = options.store;
    this.nodeId = options.node.id;
    this.cluster = options.cluster;
    this.config = options.config;
    this.#keys = new SlotKeys(options.cluster);
    this.#local = new SlotsLocal(options.config.slotCount);
    this.#routing = new LiveRouting(options.config.slotCount);
    this.#coordinator = new SlotsCoordinator(this.#store, this.#keys, options.config, this.#mutants);
    this.#reader = new SlotsReader(this.#store, this.#keys, options.config.slotCount, this.#corruption.report);
    this.#watches = new Watches(
      this.#store,
      () => this.#kick(),
      (error) => this.reportError(error, 'watching'),
    );
    this.#loop = new Loop(
      () => this.#round(),
      (error) => {
        // Decisions of the failed round may not have been carried out: decide about every slot again.
        this.#allDirty = true;
        if (!(error instanceof SessionExpiredError)) this.#reportOrFail(error, 'round');
      },
    );
    this.#membership = new Membership(
      {
        store: options.store,
        clock: options.clock,
        scope: `slots cluster ${options.cluster}`,
        nodeId: options.node.id,
        memberKey: this.#keys.site(options.node.id),
        electionPrefix: this.#keys.coordinator,
        electionValue: JSON.stringify({ v: 1, siteId: options.node.id }),
        sessionTtlMs: options.sessionTtlMs,
        selfFenceMarginMs: options.selfFenceMarginMs,
        reconcileIntervalMs: options.reconcileIntervalMs,
        joinTimeoutMs: options.joinTimeoutMs,
        selfFencing: !this.#mutants.has('slots-no-self-fencing'),
        record: (session) => ({
          value: encodeSite({
            zone: options.node.zone,
            weight: options.node.weight,
            address: options.node.address,
            sessionId: session.id,
          }),
          alsoPut: registrationOps(this.#keys, this.nodeId, this.#local.bits.slice(), session),
        }),
      },
      {
        joined: (session) => {
          this.#allDirty = true;
          this.emit('joined', { nodeId: this.nodeId, sessionId: session.id });
        },
        fenced: (safeUntilMs) => {
          this.#allDirty = true;
          this.emit('fenced', { safeUntilMs });
          this.#dropPrimaries('fenced');
        },
        unfenced: () => {
          this.#allDirty = true;
          this.emit('unfenced', {});
          this.#kick();
        },
        sessionLost: (session, cause) => {
          this.#allDirty = true;
          this.#dropPrimaries('sessionLost');
          this.#locks.stale.clear(); // the locks went with the session
          if (this.#local.size > 0) {
            // Our ready bits vanished with the session; while we were gone other copies took writes: ours are stale.
            this.emit('slotsDropped', { slots: [...this.#local.states.keys()], reason: 'sessionLost' });
            this.#local.clear();
            this.#releasable.clear();
          }
          this.emit('sessionLost', { sessionId: session.id, cause });
        },
        elected: (leadership) => {
          this.emit('coordinatorElected', { nodeId: this.nodeId, token: leadership.token });
          this.#kick();
        },
        leadershipLost: () => undefined,
        kick: () => this.#kick(),
        tick: () => {
          // The periodic pass decides about every slot: a net under the change tracking.
          this.#allDirty = true;
          this.#kick();
        },
        error: (error, context) => this.reportError(error, context),
        idTaken: () => void this.leave().catch(() => undefined),
      },
    );
    this.#locks = new PrimaryLocks(
      this.#store,
      this.#keys,
      this.nodeId,
      this.#mutants,
      (s) => this.#membership.session === s,
    );
    this.#ready = new ReadyWriter({
      store: this.#store,
      keys: this.#keys,
      siteId: this.nodeId,
      local: this.#local,
      mutants: this.#mutants,
      session: () => {
        const s = this.#membership.session;
        return s === undefined || s.state === 'expired' || s.state === 'closed' ? undefined : s;
      },
      isPrimaryHolder: (slot) => this.#locks.acting.has(slot),
      read: () => this.#reader.read(),
      siteView: (view) => this.#siteView(view),
      released: (slot, readyElsewhere, needed, failed, revision) => {
        this.#releasable.announceAgain(slot);
        this.emit('released', { slot, readyElsewhere, needed, failed, revision });
      },
      probe: (ask, session) => writeProbe(this.#store, this.#keys, this.nodeId, ask, session),
      now: () => options.clock.now(),
      sleep: (ms) => new Promise((resolve) => options.clock.setTimeout(resolve, ms)),
      // A running site answers within a round; its periodic round comes every reconcileIntervalMs even if the
      // probe's notification was lost. Waiting longer than half a TTL is no use: by then a crashed site's session
      // is about to expire (and the release is retried when the slot is announced releasable again).
      confirmWaitMs: Math.min(options.sessionTtlMs / 2, Math.max(250, 2 * options.reconcileIntervalMs)),
      confirmPollMs: Math.min(50, options.reconcileIntervalMs),
    });
  }

  // ---- the application's calls ------------------------------------------------------------

  /**
   * The migration of `slot` is done: this node serves it. Resolves `{ ready: false }` when the slot is no longer
   * being prepared here (cancelled meanwhile: routine). Many calls in a row share one store write.
   */
  async markReady(slot: number): Promise<MarkReadyResult> {
    this.#checkSlot(slot);
    const r = await this.#ready.markReady(slot);
    this.#kick();
    return r;
  }

  /**
   * Drop `slot`: allowed while enough other assigned replicas are ready (checked again against the store,
   * atomically), or when the slot was reported failed. A refusal is a result, not an error: nothing changed, and
   * the slot is announced `releasable` again when it is. Rejects only when the store cannot be reached.
   */
  async release(slot: number): Promise<ReleaseResult> {
    this.#checkSlot(slot);
    try {
      const r = await this.#ready.release(slot);
      if (!r.released) this.#releasable.announceAgain(slot);
      return r;
    } catch (error) {
      // Announce it again when it is (still) releasable: a failed release must not strand the slot.
      this.#releasable.announceAgain(slot);
      throw error;
    } finally {
      this.#kick();
    }
  }

  /** This node's copy of `slot` is broken: stop counting it as ready at once (and give up the primary role). */
  async reportFailed(slot: number): Promise<void> {
    this.#checkSlot(slot);
    if (this.#locks.drop(slot) !== undefined) {
      this.#local.dirty.add(slot);
      this.emit('primaryLost', { slots: [slot], reason: 'failed' });
    }
    this.#releasable.announceAgain(slot);
    await this.#ready.reportFailed(slot);
    this.#kick();
  }

  /**
   * Cheap synchronous check to call before acting as the slot's primary: false once the role is lost or this
   * node's lease can no longer be trusted — a monotonic-clock comparison, right even just after a process pause,
   * before the fence timer ran (after a pause, overdue timers run in any order).
   */
  isPrimary(slot: number): boolean {
    return this.#locks.acting.has(slot) && !this.#membership.fenced && this.#membership.ownsNow();
  }

  /** The fencing epoch of `slot` while this node is its primary. */
  epoch(slot: number): number | undefined {
    return this.isPrimary(slot) ? this.#locks.acting.get(slot) : undefined;
  }

  /** Slots this node works on, with their state. */
  slots(): ReadonlyMap<number, LocalSlotState> {
    return new Map(this.#local.states);
  }

  slotForKey(key: string): number {
    return hashKey(key, this.config.slotCount);
  }

  /** The live routing table (immutable; a new one after every change). */
  routing(): RoutingTable {
    return this.#routing.table;
  }

  /** Who serves `slot` now, from the local table (no store call): the primary with its epoch, the ready secondaries. */
  route(slot: number): SlotRoute {
    this.#checkSlot(slot);
    return this.#routing.table.route(slot);
  }

  /** The primary of `slot` from the local table (undefined while it has none, e.g. during a fail-over). */
  primary(slot: number): PrimaryRoute | undefined {
    return this.route(slot).primary;
  }

  /** route(slotForKey(key)). */
  routeKey(key: string): SlotRoute {
    return this.#routing.table.routeKey(key);
  }

  get routingVersion(): number {
    return this.#routing.table.version;
  }

  get isCoordinator(): boolean {
    return this.#membership.leadership !== undefined;
  }

  // ---- lifecycle ------------------------------------------------------------------

  /** Use joinSlots(), which calls this. Events are held until the caller has the member. */
  async start(): Promise<void> {
    if (this.#membership.state !== 'new') throw new ClosedError(`slots member ${this.nodeId}`);
    await ensureConfig(this.#store, this.#keys, this.config, this.cluster);
    await this.#membership.join();
    await this.#watches.set([this.#keys.root]);
    this.#kick();
    this.#o.clock.setTimeout(() => this.openEvents(), 0);
  }

  /**
   * Leave gracefully: stop being a placement candidate, keep serving until the new replicas are ready and the
   * application has released every slot (or leaveTimeoutMs passed), then end the session. Does not close the
   * store: that is the application's.
   */
  async leave(): Promise<void> {
    const m = this.#membership;
    if (!m.active || this.#closing) return;
    this.#allDirty = true;
    const clock = this.#o.clock;
    try {
      const gone = await m.deregister();
      await m.resign();
      this.#kick();
      const deadline = clock.now() + this.#o.leaveTimeoutMs;
      while ((this.#local.size > 0 || this.#locks.acting.size > 0) && clock.now() < deadline) {
        // No live node left to take the slots over (the whole cluster is shutting down): waiting cannot help.
        const v = this.#lastView;
        if (gone !== undefined && v !== undefined && v.revision >= gone.revision && v.sites.size === 0) break;
        await new Promise<void>((resolve) => clock.setTimeout(resolve, Math.min(50, this.#o.reconcileIntervalMs)));
        this.#kick();
      }
      // Whatever was not handed over ends here (timeout, or nowhere to go): tell the application before the
      // session ends and takes the locks with it.
      this.#dropPrimaries('leaving');
      if (this.#local.size > 0) {
        this.emit('slotsDropped', { slots: [...this.#local.states.keys()], reason: 'leaving' });
        this.#local.clear();
      }
    } finally {
      this.#closing = true;
      await this.#loop.idle().catch(() => undefined);
      await this.#watches.close();
      await m.close();
      this.emit('left', {});
    }
  }

  // ---- the round ------------------------------------------------------------------

  #kick(): void {
    if (!this.#closing && this.#membership.state !== 'left' && this.#membership.state !== 'new') this.#loop.kick();
  }

  /** The coordinator wrote no plan because chunks could not be read: say so once per set of chunks. */
  #reportHalt(halted: readonly string[] | undefined): void {
    const id = (halted ?? []).join('\u0000');
    if (id !== this.#halted && halted !== undefined && halted.length > 0) {
      this.reportError(
        new CorruptDataError(
          `the coordinator of slots cluster ${this.cluster} writes no plan: ${halted.slice(0, 5).join(', ')} could ` +
            'not be read, and it never overwrites what it could not read. Sites keep the last plan they read; ' +
            'delete the key to let the coordinator plan those slots again',
          { key: halted[0]!, expected: "Rebalancer's plan chunk (docs/protocol/slots.md)" },
        ),
        'coordinator halted',
      );
    }
    this.#halted = id;
  }

  #reportOrFail(error: unknown, context: string): void {
    this.reportError(error, context);
    if (error instanceof InvariantError && this.#membership.active) {
      this.#dropPrimaries('failed');
      void this.leave().catch(() => undefined);
    }
  }

  async #round(): Promise<void> {
    const m = this.#membership;
    const session = m.session;
    if (session === undefined || session.state === 'expired' || session.state === 'closed') return;
    m.checkFence();
    let view = await this.#reader.read();
    this.#corruption.endRound();
    if (m.session !== session) return; // outlived its session: decide nothing
    const leadership = m.leadership;
    if (leadership !== undefined && m.state === 'active') {
      const plan = await this.#coordinator.round(view, leadership);
      this.#reportHalt(plan.written ? undefined : plan.halted);
      if (plan.written) {
        this.emit('planWritten', { generation: plan.generation, changedSlots: plan.changedSlots });
        view = await this.#reader.read();
      } else if (plan.deposed) {
        m.leadershipLost(leadership);
      }
    }
    // Which slots to decide about: those whose inputs in the store changed since the last round's view, and those
    // whose local state changed since. A large cluster's rounds were dominated by deciding about every slot.
    const viewChanged = this.#lastView === undefined ? undefined : changedSlots(this.#lastView, view);
    this.#lastView = view;
    let slots: Set<number> | undefined;
    if (this.#allDirty || viewChanged === undefined) {
      this.#allDirty = false;
      this.#local.dirty.clear();
    } else {
      slots = viewChanged;
      for (const s of this.#local.dirty) slots.add(s);
      this.#local.dirty.clear();
    }
    if (this.#routing.publish(view, viewChanged)) this.emit('routingChanged', { version: this.#routing.table.version });
    // The local state is the truth about our readiness; a write whose answer was lost (or that failed) left the
    // stored bitmap behind it: write it again.
    const stored = view.ready.get(this.nodeId);
    const local = this.#local.bits;
    // A releasing site asks the replicas it would count to answer its probe: rewriting our bitmap is the answer
    // (only a running site gives it; a crashed one whose session lives on does not, so it is not counted).
    const mine = view.readyKvs.get(this.nodeId)?.modRevision ?? 0;
    const asked = view.probes.some((p) => p.ask.has(this.nodeId) && mine <= p.revision);
    if (stored === undefined || asked || stored.some((b, i) => b !== local[i])) await this.#ready.write();
    // Before deleting anything this round, so that the view (read before) is still right about our locks.
    const running = m.state === 'active';
    const adopted = this.#locks.adopt(view, session, slots, (slot) => {
      this.#local.dirty.add(slot);
      return (
        view.plan[slot]?.primary === this.nodeId &&
        this.#local.get(slot) === 'ready' &&
        !m.fenced &&
        m.ownsNow() &&
        running
      );
    });
    if (adopted.length > 0) this.emit('primaryGained', { slots: adopted });
    // Locks we stopped acting on (fenced, failed): delete them once we may write again.
    if (this.#locks.stale.size > 0 && m.ownsNow()) await this.#locks.delete(new Map(this.#locks.stale), session);
    if (m.fenced || !m.ownsNow()) {
      this.#allDirty = true; // nothing was decided: decide about everything once we may act again
      return;
    }

    const d = decideSite(this.#siteView(view), slots, this.#mutants);
    if (d.stepDown.length > 0) {
      const locks = new Map<number, number>();
      for (const s of d.stepDown) {
        // Until the delete is acknowledged the lock is stale: a failed delete is retried next round.
        const e = this.#locks.drop(s);
        if (e !== undefined) locks.set(s, e);
        this.#local.dirty.add(s);
      }
      this.emit('primaryLost', { slots: d.stepDown, reason: m.state === 'leaving' ? 'leaving' : 'planned' });
      await this.#locks.delete(locks, session);
    }
    // The decisions were taken before the awaits above; markReady and release may have run meanwhile. Apply each
    // only if the slot is still in the state it was decided for (a slot marked ready meanwhile is not cancelled:
    // that would drop a ready copy without the release check, its bit vanishing with the next bitmap write).
    const cancel = d.cancel.filter((s) => this.#local.get(s) === 'preparing');
    if (cancel.length > 0) {
      for (const s of cancel) this.#local.set(s, undefined);
      this.emit('cancelled', { slots: cancel });
    }
    const prepare = d.prepare.filter((s) => this.#local.get(s) === undefined);
    if (prepare.length > 0 && m.state === 'active') {
      for (const s of prepare) this.#local.set(s, 'preparing');
      this.emit('prepare', { slots: prepare });
    }
    const takeOver = d.takeOver.filter((s) => this.#local.get(s) === 'ready' && !this.#locks.acting.has(s));
    if (takeOver.length > 0 && m.state === 'active') await this.#takeOver(takeOver, session);
    const fresh = this.#releasable.update(
      d.releasable,
      slots,
      (s) => this.#local.get(s) === 'ready' && !this.#locks.acting.has(s),
    );
    if (fresh.length > 0) this.emit('releasable', { slots: fresh });
  }

  async #takeOver(slots: readonly number[], session: Session): Promise<void> {
    const m = this.#membership;
    const gained = await this.#locks.take(slots, session, () => m.ownsNow());
    if (gained.size === 0 || m.session !== session) return;
    // A lease that ran out while we wrote: do not act on the new locks; delete them once we may write again.
    if (!m.ownsNow()) {
      for (const [slot, epoch] of gained) this.#locks.stale.set(slot, epoch);
      return;
    }
    this.#locks.act(gained);
    for (const slot of gained.keys()) this.#local.dirty.add(slot);
    this.emit('primaryGained', { slots: [...gained].map(([slot, epoch]) => ({ slot, epoch })) });
  }

  /** End every primary role locally at once; the locks are deleted later (or go with the session). */
  #dropPrimaries(reason: PrimaryLostReason): void {
    const slots = this.#locks.dropAll();
    if (slots.length === 0) return;
    for (const s of slots) this.#local.dirty.add(s);
    this.emit('primaryLost', { slots, reason });
  }

  #siteView(view: SlotsView): SiteView {
    return {
      siteId: this.nodeId,
      slotCount: this.config.slotCount,
      replicas: this.config.replicas,
      liveSites: new Set(view.sites.keys()),
      plan: view.plan,
      ready: view.ready,
      primaryHolders: view.holderSites,
      local: this.#local.states,
      myPrimaries: this.#locks.acting,
      failed: this.#local.failed,
      fenced: this.#membership.fenced,
    };
  }

  #checkSlot(slot: number): void {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.config.slotCount) {
      throw new InvalidArgumentError(
        `slot must be an integer from 0 to ${this.config.slotCount - 1}, got ${String(slot)}`,
      );
    }
  }
}
