/**
 * A site of a slots cluster (docs/protocol/slots.md): the runtime that drives
 * the pure cores in src/protocol/slots/ with the store, timers and the
 * application.
 *
 * The application is told which slots to prepare (`prepare`), which it may
 * release (`releasable`), and exactly which slots it gained or lost as primary
 * (`primaryGained` with the fencing epoch, `primaryLost` with the reason). It
 * answers with `markReady(slot)`, `release(slot)` and `reportFailed(slot)`.
 * Routing (`route`, `primary`, `slotForKey`) reads a local table kept current
 * by a watch; no lookup calls the store.
 *
 * Concurrency: one reconcile at a time (site and coordinator parts in turn);
 * every trigger (watch hint, timer, API call) just asks for another round.
 */
import {
  ClosedError,
  CorruptDataError,
  InvalidArgumentError,
  RebalancerError,
  SessionExpiredError,
} from '../errors.js';
import { slotForKey as hashKey } from '../placement/slot-hash.js';
import { decideSlotsPlan, type SlotsCoordinatorMemory } from '../protocol/slots/coordinator.js';
import {
  chunkCount,
  decodeConfig,
  decodePlanChunk,
  decodeHeld,
  decodeReady,
  decodeSite,
  emptyReady,
  encodeConfig,
  encodeHeld,
  encodePlanChunk,
  encodePrimary,
  encodeReady,
  encodeSite,
  hasReady,
  MAX_ADDRESS_BYTES,
  PLAN_CHUNK_SLOTS,
  setReady,
  SlotKeys,
  validateSlotsConfig,
  type ReadyBits,
  type SiteRecord,
  type SlotAssignment,
  type SlotsConfig,
} from '../protocol/slots/keys.js';
import { decideSite, readyElsewhere, type LocalSlotState, type SiteView } from '../protocol/slots/site.js';
import { validateNodeId } from '../protocol/groups/keys.js';
import { activeMutants } from '../protocol/mutants.js';
import type { Clock, Compare, KeyValue, Op, Session, Store, TimerHandle, Watcher } from '../store/contract.js';
import { Election, type Leadership } from '../store/election.js';
import { utf8Length } from '../store/validate.js';
import { TypedEmitter } from './events.js';
import { changedSlots, sameRevisions, type FullView, type Holder } from './slots-view.js';

export interface SlotsOptions {
  readonly store: Store;
  /** Cluster name (like a group name): 1-64 of A-Z a-z 0-9 . _ - */
  readonly cluster: string;
  readonly site: {
    readonly id: string;
    readonly zone?: string | undefined;
    readonly weight?: number | undefined;
    /** Where clients reach this site (host:port, URL); published in the routing table. */
    readonly address?: string | undefined;
  };
  /** Fixed for the cluster's life (default 16384); every site must agree. */
  readonly slotCount?: number | undefined;
  /** Replicas per slot, R (default 3); every site must agree. */
  readonly replicas?: number | undefined;
  /** No slot is placed while fewer sites are live (default 1); every site must agree. */
  readonly minSites?: number | undefined;
  /** Default 10 000 ms. */
  readonly sessionTtlMs?: number | undefined;
  /** Primary roles end this long before the session could expire (default TTL / 5). */
  readonly selfFenceMarginMs?: number | undefined;
  /** Re-read at least this often in case a notification was lost (default min(1000, TTL / 4)). */
  readonly reconcileIntervalMs?: number | undefined;
  /**
   * How long leave() waits for the new replicas and the application's releases (default 60 000 ms); it stops
   * waiting at once when no live site is left to take the slots (the whole cluster is shutting down).
   */
  readonly leaveTimeoutMs?: number | undefined;
  readonly clock?: Clock | undefined;
}

export type PrimaryLostReason = 'planned' | 'fenced' | 'failed' | 'sessionLost' | 'leaving';

export interface SlotsEvents {
  joined: { readonly siteId: string; readonly sessionId: string };
  /** Migrate these slots' data in, then call markReady(slot) for each. */
  prepare: { readonly slots: readonly number[] };
  /** Slots this site was preparing that the plan no longer assigns it: stop migrating, drop what came in. */
  cancelled: { readonly slots: readonly number[] };
  /**
   * Slots this site may now drop (enough ready replicas elsewhere): stop serving, then call release(slot). A slot
   * whose release() was refused or failed is announced again while it stays releasable.
   */
  releasable: { readonly slots: readonly number[] };
  /** This site is now the primary of these slots; pass `epoch` to what it writes so stale primaries are refused. */
  primaryGained: { readonly slots: readonly { readonly slot: number; readonly epoch: number }[] };
  /** This site is no longer primary of these slots (isPrimary() is already false when this fires). */
  primaryLost: { readonly slots: readonly number[]; readonly reason: PrimaryLostReason };
  /**
   * A slot was released: `readyElsewhere` are the other assigned sites whose readiness the release checked
   * (atomically: their ready keys were unchanged when it committed), `needed` how many it required, `revision`
   * the store revision it committed at (a counted replica may release the slot itself after that).
   */
  released: {
    readonly slot: number;
    readonly readyElsewhere: readonly string[];
    readonly needed: number;
    readonly failed: boolean;
    readonly revision: number;
  };
  /** Every slot this site held is gone from it (its session was lost): its copies are stale. */
  slotsDropped: { readonly slots: readonly number[]; readonly reason: 'sessionLost' | 'leaving' };
  /** The routing table changed. */
  routingChanged: { readonly version: number };
  coordinatorElected: { readonly siteId: string; readonly token: number };
  planWritten: { readonly generation: number; readonly changedSlots: number };
  fenced: { readonly safeUntilMs: number };
  unfenced: Record<string, never>;
  sessionLost: { readonly sessionId: string; readonly cause: unknown };
  error: { readonly error: unknown; readonly context: string };
  left: Record<string, never>;
}

/** release(slot) would leave fewer ready replicas than the cluster needs. Nothing was changed. */
export class ReleaseRefusedError extends RebalancerError {
  readonly slot: number;
  constructor(slot: number, ready: number, needed: number, why: 'tooFewReady' | 'contention' = 'tooFewReady') {
    super(
      'INVALID_ARGUMENT',
      why === 'contention'
        ? `slot ${slot} was not released: the ready bitmaps of the ${ready} other ready replica(s) kept changing ` +
            'while it checked them; it will be announced releasable again'
        : `slot ${slot} may not be released yet: ${ready} other assigned replica(s) are ready, ${needed} needed; ` +
            'wait for the releasable event (or call reportFailed(slot) if this copy is broken)',
    );
    this.slot = slot;
  }
}

/** A slot's route: who serves it now. */
export interface SlotRoute {
  readonly slot: number;
  readonly primary: { readonly id: string; readonly address: string | undefined; readonly epoch: number } | undefined;
  /** Ready replicas other than the primary. */
  readonly secondaries: readonly { readonly id: string; readonly address: string | undefined }[];
}

/** Lock transactions of different chunks in flight at once (see #perChunk). */
const MAX_CHUNKS_IN_FLIGHT = 8;

export async function joinSlots(options: SlotsOptions): Promise<SlotSite> {
  const site = new SlotSite(options);
  await site.start();
  return site;
}

export class SlotSite extends TypedEmitter<SlotsEvents> {
  readonly siteId: string;
  readonly cluster: string;
  readonly config: SlotsConfig;
  readonly #store: Store;
  readonly #clock: Clock;
  readonly #keys: SlotKeys;
  readonly #zone: string;
  readonly #weight: number;
  readonly #address: string | undefined;
  readonly #ttlMs: number;
  readonly #marginMs: number;
  readonly #intervalMs: number;
  readonly #leaveTimeoutMs: number;

  #session: Session | undefined;
  readonly #pastSessions = new Set<string>();
  #fenced = false;
  #state: 'new' | 'running' | 'leaving' | 'left' = 'new';
  readonly #local = new Map<number, LocalSlotState>();
  /** The ready bitmap `#local` encodes, kept in step by #setLocal. */
  #bits: ReadyBits;
  /**
   * Slots whose local state or primary role changed since the last round decided about them; the round also
   * decides about every slot whose plan entry, ready bits or lock holder changed between the views it read.
   * `#allDirty`: decide about every slot (first round, fencing, session changes, the periodic pass, errors).
   */
  readonly #dirty = new Set<number>();
  #allDirty = true;
  /** The last view read (by any caller): parts that did not change are shared with the next. */
  #lastRead: FullView | undefined;
  /** The view the last round decided on (to tell which slots changed since). */
  #lastView: FullView | undefined;
  /** Slots the last decisions found releasable (kept between rounds: only changed slots are decided again). */
  readonly #releasableNow = new Set<number>();
  readonly #failed = new Set<number>();
  /** slot → epoch of the primary lock this site holds and acts on. */
  readonly #primaries = new Map<number, number>();
  /** Locks still in the store that this site no longer acts on (after fencing): deleted when possible. */
  readonly #stale = new Map<number, number>();
  readonly #announcedReleasable = new Set<number>();
  /** Serialises writes of this site's ready bitmap with the local state they encode (see #withReady). */
  #readyChain: Promise<unknown> = Promise.resolve();
  /** A bitmap write queued behind the lock and not started yet: later markReady calls join it. */
  #queuedWrite: Promise<void> | undefined;
  /** release() calls waiting for the next batch. */
  /** Decoded plan chunks, bitmaps and locks of the last read, by key (see #readView). Never mutated. */
  #decoded = new Map<string, { mod: number; create: number; value: unknown }>();
  readonly #pendingReleases = new Map<number, { resolve: () => void; reject: (error: unknown) => void }[]>();
  #watcher: Watcher | undefined;
  #timer: TimerHandle | undefined;
  #fenceTimer: TimerHandle | undefined;
  #busy = false;
  #opened = false;
  #again = false;
  #idle: Promise<void> = Promise.resolve();
  #campaign: AbortController | undefined;
  #leadership: Leadership | undefined;
  readonly #memory: SlotsCoordinatorMemory = {};
  #routes: SlotRoute[] = [];
  #routingVersion = 0;
  #routedRevision = -1;

  constructor(o: SlotsOptions) {
    super();
    this.#store = o.store;
    this.#clock = o.clock ?? o.store.clock;
    this.cluster = o.cluster;
    this.#keys = new SlotKeys(o.cluster);
    this.siteId = validateNodeId(o.site.id);
    this.#zone = o.site.zone ?? '';
    this.#weight = o.site.weight ?? 1;
    if (!(this.#weight > 0) || !Number.isFinite(this.#weight)) {
      throw new InvalidArgumentError(`site weight must be a positive number, got ${String(o.site.weight)}`);
    }
    this.#address = o.site.address;
    if (this.#address !== undefined && utf8Length(this.#address) > MAX_ADDRESS_BYTES) {
      throw new InvalidArgumentError(`site address is above ${MAX_ADDRESS_BYTES} UTF-8 bytes`);
    }
    this.config = validateSlotsConfig({
      slotCount: o.slotCount ?? 16384,
      replicas: o.replicas ?? 3,
      minSites: o.minSites ?? 1,
    });
    this.#ttlMs = o.sessionTtlMs ?? 10_000;
    this.#marginMs = o.selfFenceMarginMs ?? this.#ttlMs / 5;
    if (!(this.#marginMs > 0 && this.#marginMs < this.#ttlMs / 2)) {
      throw new InvalidArgumentError('selfFenceMarginMs must be > 0 and below half the session TTL');
    }
    this.#intervalMs = o.reconcileIntervalMs ?? Math.min(1000, this.#ttlMs / 4);
    this.#leaveTimeoutMs = o.leaveTimeoutMs ?? 60_000;
    this.#bits = emptyReady(this.config.slotCount);
    this.#routes = Array.from({ length: this.config.slotCount }, (_, slot) => ({
      slot,
      primary: undefined,
      secondaries: [],
    }));
  }

  // ---- application API ------------------------------------------------------------

  /** The migration of `slot` is done: this site serves it. */
  async markReady(slot: number): Promise<void> {
    this.#checkSlot(slot);
    if (this.#local.get(slot) !== 'preparing') {
      throw new InvalidArgumentError(`slot ${slot} is not being prepared on ${this.siteId}; wait for a prepare event`);
    }
    // Setting a bit never undoes a release (only preparing slots become ready), so this needs no lock; the write
    // does, and many markReady calls in a row share one write of the bitmap.
    this.#setLocal(slot, 'ready');
    this.#failed.delete(slot);
    await this.#flushReady();
    this.#kick();
  }

  /** Write the ready bitmap once for every change made before the write starts. */
  #flushReady(): Promise<void> {
    if (this.#queuedWrite !== undefined) return this.#queuedWrite;
    const write = this.#withReady(async () => {
      this.#queuedWrite = undefined;
      await this.#writeReady();
    });
    this.#queuedWrite = write;
    return write;
  }

  /**
   * Drop `slot`: allowed while at least min(R, other sites) other assigned replicas are ready (checked again
   * against the store, atomically), or when the slot was reported failed.
   */
  async release(slot: number): Promise<void> {
    this.#checkSlot(slot);
    if (this.#local.get(slot) !== 'ready') {
      throw new InvalidArgumentError(`slot ${slot} is not held ready on ${this.siteId}`);
    }
    if (this.#primaries.has(slot)) {
      throw new InvalidArgumentError(`slot ${slot}: ${this.siteId} is its primary; it must hand over first`);
    }
    try {
      await new Promise<void>((resolve, reject) => {
        const waiting = this.#pendingReleases.get(slot) ?? [];
        waiting.push({ resolve, reject });
        this.#pendingReleases.set(slot, waiting);
        void this.#withReady(() => this.#releasePending());
      });
    } catch (error) {
      // Announce it again when it is (still) releasable: a refused or failed release must not strand the slot.
      this.#announcedReleasable.delete(slot);
      throw error;
    } finally {
      this.#kick();
    }
  }

  /**
   * Release every slot whose release() is waiting, in one transaction where possible: one read of the cluster,
   * one compare per counted replica's ready key, one write of our bitmap. Runs alone among the bitmap writers.
   */
  async #releasePending(): Promise<void> {
    const batch = new Map(this.#pendingReleases);
    this.#pendingReleases.clear();
    if (batch.size === 0) return;
    const settle = (slot: number, error?: unknown): void => {
      for (const w of batch.get(slot) ?? []) {
        if (error === undefined) w.resolve();
        else w.reject(error);
      }
      batch.delete(slot);
    };
    const unchecked = activeMutants.has('slots-release-without-check');
    let last = new Map<number, { ready: number; needed: number }>();
    try {
      for (let attempt = 0; attempt < 6 && batch.size > 0; attempt++) {
        // Released meanwhile (an earlier batch): nothing left to do for those.
        for (const slot of [...batch.keys()]) if (this.#local.get(slot) !== 'ready') settle(slot);
        if (batch.size === 0) return;
        const view = await this.#readView();
        const sv = this.#siteView(view);
        const go = new Map<number, { counted: string[]; needed: number; failed: boolean }>();
        last = new Map();
        for (const slot of [...batch.keys()]) {
          const counted: string[] = [];
          for (const x of view.plan[slot]?.assigned ?? []) {
            if (x !== this.siteId && hasReady(view.ready.get(x), slot)) counted.push(x);
          }
          const { ready, needed } = readyElsewhere(sv, slot);
          last.set(slot, { ready, needed });
          const failed = this.#failed.has(slot);
          const stillAssigned = view.plan[slot]?.assigned.includes(this.siteId) ?? false;
          if (!failed && !unchecked && (ready < needed || stillAssigned)) {
            settle(slot, new ReleaseRefusedError(slot, ready, needed));
            continue;
          }
          go.set(slot, { counted: failed ? [] : counted, needed, failed });
        }
        if (go.size === 0) return;
        // Compare the counted replicas' ready keys: if one of them changed meanwhile, read again.
        const sites = new Set<string>();
        for (const g of go.values()) for (const x of g.counted) sites.add(x);
        const compare: Compare[] = [...sites].map((x) => ({
          key: this.#keys.readyOf(x),
          target: 'modRevision' as const,
          op: '=' as const,
          value: view.readyKvs.get(x)?.modRevision ?? 0,
        }));
        // A site that joined since the read raises the floor: read again (Quint finding S2).
        if ([...go.values()].some((g) => !g.failed)) {
          compare.push({ key: this.#keys.joins, target: 'modRevision', op: '=', value: view.joinsRevision });
        }
        const bits = this.#readyBits();
        for (const slot of go.keys()) setReady(bits, slot, false);
        const session = this.#liveSession();
        const r = await this.#store.txn({
          compare,
          then: [{ op: 'put', key: this.#keys.readyOf(this.siteId), value: encodeReady(bits), session }],
        });
        if (!r.succeeded) continue;
        for (const [slot, g] of go) {
          this.#setLocal(slot, undefined);
          this.#failed.delete(slot);
          this.#announcedReleasable.delete(slot);
          this.emit('released', {
            slot,
            readyElsewhere: g.counted,
            needed: g.needed,
            failed: g.failed,
            revision: r.revision,
          });
          settle(slot);
        }
      }
      for (const slot of [...batch.keys()]) {
        const l = last.get(slot) ?? { ready: 0, needed: 0 };
        settle(slot, new ReleaseRefusedError(slot, l.ready, l.needed, 'contention'));
      }
    } catch (error) {
      for (const slot of [...batch.keys()]) settle(slot, error);
    }
  }

  /** This site's copy of `slot` is broken: stop counting it as ready at once (and give up the primary role). */
  async reportFailed(slot: number): Promise<void> {
    this.#checkSlot(slot);
    const wasPrimary = this.#primaries.get(slot);
    if (wasPrimary !== undefined) {
      this.#primaries.delete(slot);
      this.#stale.set(slot, wasPrimary);
      this.emit('primaryLost', { slots: [slot], reason: 'failed' });
    }
    await this.#withReady(async () => {
      this.#setLocal(slot, undefined);
      this.#failed.add(slot);
      this.#announcedReleasable.delete(slot);
      await this.#writeReady();
    });
    this.#kick();
  }

  /**
   * Cheap synchronous check to call before acting as the slot's primary: false once the role is lost or this
   * site's lease can no longer be trusted — a monotonic-clock comparison, right even just after a process pause,
   * before the fence timer ran (after a pause, overdue timers run in any order).
   */
  isPrimary(slot: number): boolean {
    if (activeMutants.has('slots-no-self-fencing')) return this.#primaries.has(slot);
    return this.#primaries.has(slot) && !this.#fenced && this.#ownsNow();
  }
  epoch(slot: number): number | undefined {
    return this.isPrimary(slot) ? this.#primaries.get(slot) : undefined;
  }
  /** Slots this site works on, with their state. */
  slots(): ReadonlyMap<number, LocalSlotState> {
    return new Map(this.#local);
  }
  slotForKey(key: string): number {
    return hashKey(key, this.config.slotCount);
  }
  /** Who serves `slot` now, from the local table (no store call): the primary with its epoch, the ready secondaries. */
  route(slot: number): SlotRoute {
    this.#checkSlot(slot);
    return this.#routes[slot]!;
  }
  /** The primary of `slot` from the local table (undefined while it has none, e.g. during a fail-over). */
  primary(slot: number): SlotRoute['primary'] {
    return this.route(slot).primary;
  }
  /** route(slotForKey(key)). */
  routeKey(key: string): SlotRoute {
    return this.#routes[hashKey(key, this.config.slotCount)]!;
  }
  get routingVersion(): number {
    return this.#routingVersion;
  }
  get isCoordinator(): boolean {
    return this.#leadership !== undefined;
  }

  /**
   * Leave gracefully: stop being a placement candidate, keep serving until the new replicas are ready and the
   * application has released every slot (or leaveTimeoutMs passed), then end the session.
   */
  async leave(): Promise<void> {
    if (this.#state !== 'running') return;
    this.#state = 'leaving';
    this.#allDirty = true;
    try {
      const gone = await this.#store
        .txn({ compare: [], then: [{ op: 'delete', key: this.#keys.site(this.siteId) }] })
        .catch((error: unknown) => this.emit('error', { error, context: 'leave: deleting the site key' }));
      await this.#resign();
      this.#kick();
      const deadline = this.#clock.now() + this.#leaveTimeoutMs;
      while ((this.#local.size > 0 || this.#primaries.size > 0) && this.#clock.now() < deadline) {
        // No live site left to take the slots over (the whole cluster is shutting down): waiting cannot help.
        const v = this.#lastView;
        if (gone !== undefined && v !== undefined && v.revision >= gone.revision && v.sites.size === 0) break;
        await this.#sleep(Math.min(50, this.#intervalMs));
        this.#kick();
      }
      // Whatever was not handed over ends here (timeout, or nowhere to go): tell the application before the
      // session ends and takes the locks with it.
      this.#dropPrimaries('leaving');
      if (this.#local.size > 0) {
        this.emit('slotsDropped', { slots: [...this.#local.keys()], reason: 'leaving' });
        this.#clearLocal();
      }
    } finally {
      this.#state = 'left';
      await this.#idle.catch(() => undefined);
      this.#clearTimers();
      await this.#watcher?.close().catch(() => undefined);
      await this.#session?.close().catch(() => undefined);
      this.emit('left', {});
    }
  }

  // ---- start, sessions, fencing --------------------------------------------------------

  async start(): Promise<void> {
    if (this.#state !== 'new') throw new ClosedError(`slots site ${this.siteId}`);
    await this.#ensureConfig();
    // Running before the session opens: the campaign it starts runs only while the site is running.
    this.#state = 'running';
    try {
      await this.#openSession();
    } catch (err) {
      this.#state = 'left';
      throw err;
    }
    this.#watcher = await this.#store.watch(this.#keys.root, () => this.#kick());
    // The first round runs after the caller of joinSlots() got the site and subscribed to its events: no
    // `prepare` is emitted to nobody.
    this.#clock.setTimeout(() => {
      this.#opened = true;
      this.#tick();
      this.#kick();
    }, 0);
  }

  async #ensureConfig(): Promise<void> {
    const key = this.#keys.config;
    const r = await this.#store.txn({
      compare: [{ key, target: 'exists', exists: false }],
      then: [{ op: 'put', key, value: encodeConfig(this.config) }],
      else: [{ op: 'get', key }],
    });
    if (r.succeeded) return;
    const kv = r.results[0]?.op === 'get' ? r.results[0].kv : undefined;
    if (kv === undefined) return this.#ensureConfig();
    const found = decodeConfig(key, kv.value);
    if (
      found.slotCount !== this.config.slotCount ||
      found.replicas !== this.config.replicas ||
      found.minSites !== this.config.minSites
    ) {
      throw new InvalidArgumentError(
        `cluster ${this.cluster} was created with slotCount ${found.slotCount}, replicas ${found.replicas}, ` +
          `minSites ${found.minSites}; this site asked for ${this.config.slotCount}, ${this.config.replicas}, ` +
          `${this.config.minSites}. Use the cluster's values (slots cannot be re-sharded in place)`,
      );
    }
  }

  async #openSession(): Promise<void> {
    const session = await this.#store.openSession({ ttlMs: this.#ttlMs });
    this.#pastSessions.add(session.id);
    const key = this.#keys.site(this.siteId);
    const value = encodeSite({ zone: this.#zone, weight: this.#weight, address: this.#address, sessionId: session.id });
    const deadline = this.#clock.now() + 2 * this.#ttlMs;
    try {
      await this.#register(session, key, value, deadline);
    } catch (err) {
      // Never leave a session behind: it would keep a site key (and maybe its ready key) alive for nothing.
      await session.close().catch(() => undefined);
      throw err;
    }
    this.#session = session;
    this.#fenced = false;
    this.#allDirty = true;
    session.onStateChange(() => this.#kick());
    void session.ended.then((end) => {
      if (end.state === 'expired') this.#onSessionLost(session, end.cause);
    });
    this.#armFence();
    this.emit('joined', { siteId: this.siteId, sessionId: session.id });
    this.#startCampaign(session);
  }

  async #register(session: Session, key: string, value: string, deadline: number): Promise<void> {
    for (;;) {
      const r = await this.#store.txn({
        compare: [{ key, target: 'exists', exists: false }],
        then: [
          { op: 'put', key, value, session },
          { op: 'put', key: this.#keys.readyOf(this.siteId), value: encodeReady(this.#readyBits()), session },
          { op: 'put', key: this.#keys.joins, value: JSON.stringify({ v: 1, site: this.siteId }) },
        ],
        else: [{ op: 'get', key }],
      });
      if (r.succeeded) {
        return;
      }
      const existing = r.results[0]?.op === 'get' ? r.results[0].kv : undefined;
      // Our own earlier attempt went through (its answer was lost): registered.
      if (existing?.sessionId === session.id) return;
      // A past session of ours (we are rejoining): it expires on the server within its TTL; wait for it.
      const ours = existing?.sessionId !== undefined && this.#pastSessions.has(existing.sessionId);
      if (!ours && this.#clock.now() >= deadline) {
        throw new InvalidArgumentError(
          `site id ${this.siteId} is in use by another live process in cluster ${this.cluster}; give each site its own id`,
        );
      }
      await this.#sleep(Math.min(250, this.#ttlMs / 4));
    }
  }

  #onSessionLost(session: Session, cause: unknown): void {
    if (this.#session !== session || this.#state === 'left') return;
    this.#fenced = true;
    this.#allDirty = true;
    this.#dropPrimaries('sessionLost');
    this.#stale.clear(); // the locks went with the session
    if (this.#local.size > 0) {
      // Our ready bits vanished with the session; while we were gone other copies took writes: ours are stale.
      this.emit('slotsDropped', { slots: [...this.#local.keys()], reason: 'sessionLost' });
      this.#clearLocal();
      this.#announcedReleasable.clear();
    }
    this.emit('sessionLost', { sessionId: session.id, cause });
    void this.#resign();
    if (this.#state !== 'running') return;
    void (async () => {
      for (;;) {
        if (this.#state !== 'running') return;
        try {
          await this.#openSession();
          this.#kick();
          return;
        } catch (error) {
          this.emit('error', { error, context: 'rejoining with a new session' });
          await this.#sleep(Math.min(1000, this.#ttlMs / 2));
        }
      }
    })();
  }

  #fenceAtMs(): number {
    const s = this.#session;
    return s === undefined ? Number.NEGATIVE_INFINITY : s.safeUntilMs - this.#marginMs;
  }

  #ownsNow(): boolean {
    const s = this.#session;
    return s !== undefined && (s.state === 'live' || s.state === 'suspect') && this.#clock.now() < this.#fenceAtMs();
  }

  #armFence(): void {
    if (this.#fenceTimer !== undefined) this.#clock.clearTimeout(this.#fenceTimer);
    if (this.#state === 'left') return;
    this.#fenceTimer = this.#clock.setTimeout(
      () => {
        this.#fenceTimer = undefined;
        const owns = this.#ownsNow();
        if (!owns && !this.#fenced && !activeMutants.has('slots-no-self-fencing')) {
          this.#fenced = true;
          this.#allDirty = true;
          this.emit('fenced', { safeUntilMs: this.#session?.safeUntilMs ?? 0 });
          this.#dropPrimaries('fenced');
        } else if (owns && this.#fenced && this.#session?.state === 'live') {
          this.#fenced = false;
          this.#allDirty = true;
          this.emit('unfenced', {});
          this.#kick();
        }
        this.#armFence();
      },
      this.#fenceAtMs() > this.#clock.now() ? Math.max(1, this.#fenceAtMs() - this.#clock.now()) : this.#intervalMs,
      { background: true },
    );
  }

  /** End every primary role locally at once; the locks are deleted later (or go with the session). */
  #dropPrimaries(reason: PrimaryLostReason): void {
    if (this.#primaries.size === 0) return;
    const slots = [...this.#primaries.keys()];
    for (const [slot, epoch] of this.#primaries) {
      this.#stale.set(slot, epoch);
      this.#dirty.add(slot);
    }
    this.#primaries.clear();
    this.emit('primaryLost', { slots, reason });
  }

  #startCampaign(session: Session): void {
    this.#campaign?.abort();
    const abort = new AbortController();
    this.#campaign = abort;
    const election = new Election(this.#store, { prefix: this.#keys.coordinator, recheckIntervalMs: this.#intervalMs });
    void (async () => {
      while (!abort.signal.aborted && this.#session === session && this.#state === 'running') {
        try {
          const l = await election.campaign(session, JSON.stringify({ v: 1, siteId: this.siteId }), abort.signal);
          if (abort.signal.aborted || this.#state !== 'running') {
            await l.resign().catch(() => undefined);
            return;
          }
          this.#leadership = l;
          this.emit('coordinatorElected', { siteId: this.siteId, token: l.token });
          this.#kick();
          await l.lost;
          if (this.#leadership === l) this.#leadership = undefined;
        } catch (error) {
          if (abort.signal.aborted || error instanceof SessionExpiredError) return;
          this.emit('error', { error, context: 'coordinator election' });
          await this.#sleep(this.#intervalMs);
        }
      }
    })();
  }

  async #resign(): Promise<void> {
    this.#campaign?.abort();
    const l = this.#leadership;
    this.#leadership = undefined;
    await l?.resign().catch(() => undefined);
  }

  // ---- the reconcile loop ----------------------------------------------------------

  #kick(): void {
    if (this.#state === 'left' || this.#state === 'new' || !this.#opened) return;
    if (this.#busy) {
      this.#again = true;
      return;
    }
    this.#busy = true;
    this.#idle = (async () => {
      try {
        do {
          this.#again = false;
          try {
            await this.#reconcile();
          } catch (error) {
            // Decisions of the failed round may not have been carried out: decide about every slot again.
            this.#allDirty = true;
            if (!(error instanceof SessionExpiredError)) this.emit('error', { error, context: 'reconcile' });
          }
        } while (this.#again && this.#state !== 'left');
      } finally {
        this.#busy = false;
      }
    })();
  }

  #tick(): void {
    this.#timer = this.#clock.setTimeout(
      () => {
        // The periodic pass decides about every slot: a net under the change tracking.
        this.#allDirty = true;
        this.#kick();
        if (this.#state !== 'left') this.#tick();
      },
      this.#intervalMs,
      { background: true },
    );
  }

  async #reconcile(): Promise<void> {
    const session = this.#session;
    if (session === undefined || session.state === 'expired' || session.state === 'closed') return;
    let view = await this.#readView();
    if (this.#session !== session) return; // outlived its session: decide nothing
    if (this.#leadership !== undefined && this.#state === 'running') {
      const wrote = await this.#coordinate(view, this.#leadership);
      if (wrote) view = await this.#readView();
    }
    // Which slots to decide about: those whose inputs in the store changed since the last round's view, and those
    // whose local state changed since. A large cluster's rounds were dominated by deciding about every slot.
    const viewChanged = this.#lastView === undefined ? undefined : changedSlots(this.#lastView, view);
    this.#lastView = view;
    let slots: Set<number> | undefined;
    if (this.#allDirty || viewChanged === undefined) {
      this.#allDirty = false;
      this.#dirty.clear();
    } else {
      slots = viewChanged;
      for (const s of this.#dirty) slots.add(s);
      this.#dirty.clear();
    }
    this.#publishRouting(view, viewChanged);
    // The local state is the truth about our readiness; a write whose answer was lost (or that failed) left the
    // stored bitmap behind it: write it again.
    const stored = view.ready.get(this.siteId);
    const local = this.#bits;
    if (stored === undefined || stored.some((b, i) => b !== local[i])) {
      await this.#withReady(() => this.#writeReady());
    }
    // Before deleting anything this round, so that the view (read before) is still right about our locks.
    this.#adoptOwnLocks(view, session, slots);
    // Locks we stopped acting on (fenced, failed): delete them once we may write again.
    if (this.#stale.size > 0 && this.#ownsNow()) await this.#deleteLocks(new Map(this.#stale), session);
    if (this.#fenced || !this.#ownsNow()) {
      this.#allDirty = true; // nothing was decided: decide about everything once we may act again
      return;
    }

    const d = decideSite(this.#siteView(view), slots);
    if (d.stepDown.length > 0) {
      const locks = new Map<number, number>();
      for (const s of d.stepDown) {
        const e = this.#primaries.get(s);
        if (e !== undefined) {
          locks.set(s, e);
          // Until the delete is acknowledged the lock is stale: a failed delete is retried next round.
          this.#stale.set(s, e);
        }
        this.#primaries.delete(s);
        this.#dirty.add(s);
      }
      this.emit('primaryLost', { slots: d.stepDown, reason: this.#state === 'leaving' ? 'leaving' : 'planned' });
      await this.#deleteLocks(locks, session);
    }
    // The decisions were taken before the awaits above; markReady and release may have run meanwhile. Apply each
    // only if the slot is still in the state it was decided for (a slot marked ready meanwhile is not cancelled:
    // that would drop a ready copy without the release check, its bit vanishing with the next bitmap write).
    const cancel = d.cancel.filter((s) => this.#local.get(s) === 'preparing');
    if (cancel.length > 0) {
      for (const s of cancel) this.#setLocal(s, undefined);
      this.emit('cancelled', { slots: cancel });
    }
    const prepare = d.prepare.filter((s) => !this.#local.has(s));
    if (prepare.length > 0 && this.#state === 'running') {
      for (const s of prepare) this.#setLocal(s, 'preparing');
      this.emit('prepare', { slots: prepare });
    }
    const takeOver = d.takeOver.filter((s) => this.#local.get(s) === 'ready' && !this.#primaries.has(s));
    if (takeOver.length > 0 && this.#state === 'running') await this.#takeOver(takeOver, session);
    if (slots === undefined) this.#releasableNow.clear();
    else for (const s of slots) this.#releasableNow.delete(s);
    for (const s of d.releasable) this.#releasableNow.add(s);
    const fresh: number[] = [];
    for (const s of this.#releasableNow) {
      if (this.#local.get(s) !== 'ready' || this.#primaries.has(s)) this.#releasableNow.delete(s);
      else if (!this.#announcedReleasable.has(s)) fresh.push(s);
    }
    for (const s of this.#announcedReleasable) if (!this.#releasableNow.has(s)) this.#announcedReleasable.delete(s);
    if (fresh.length > 0) {
      for (const s of fresh) this.#announcedReleasable.add(s);
      this.emit('releasable', { slots: fresh });
    }
  }

  /**
   * Locks of this session that this site does not know it holds: a take-over whose answer was lost. Adopt them
   * if the plan still wants us as primary, else mark them for deletion — a forgotten lock would block the slot
   * for as long as the session lives. Only `slots` can show a new one (undefined: every slot).
   */
  #adoptOwnLocks(view: FullView, session: Session, slots: Iterable<number> | undefined): void {
    const adopted: { slot: number; epoch: number }[] = [];
    const visit = (slot: number): void => {
      const h = view.holders[slot];
      if (h === undefined || h.site !== this.siteId || h.sessionId !== session.id) return;
      if (this.#primaries.has(slot) || this.#stale.has(slot)) return;
      const wanted = view.plan[slot]?.primary === this.siteId && this.#local.get(slot) === 'ready';
      this.#dirty.add(slot);
      if (wanted && !this.#fenced && this.#ownsNow() && this.#state === 'running') {
        this.#primaries.set(slot, h.epoch);
        adopted.push({ slot, epoch: h.epoch });
      } else {
        this.#stale.set(slot, h.epoch);
      }
    };
    if (slots === undefined) for (let s = 0; s < this.config.slotCount; s++) visit(s);
    else for (const s of slots) visit(s);
    if (adopted.length > 0) this.emit('primaryGained', { slots: adopted });
  }

  async #takeOver(slots: readonly number[], session: Session): Promise<void> {
    const gained = new Map<number, number>();
    const tryBatch = async (batch: readonly number[]): Promise<void> => {
      if (batch.length === 0 || !this.#ownsNow()) return;
      const r = await this.#store.txn({
        compare: activeMutants.has('slots-primary-without-lock')
          ? []
          : batch.map((s) => ({ key: this.#keys.primary(s), target: 'exists' as const, exists: false })),
        then: [
          ...batch.map((s) => ({
            op: 'put' as const,
            key: this.#keys.primary(s),
            value: encodePrimary(this.siteId),
            session,
          })),
          // Epoch 0: "this transaction's revision" (see encodeHeld), which is the new locks' create revision.
          ...this.#heldOps(batch, session, gained, new Map(batch.map((s) => [s, 0]))),
        ],
      });
      if (r.succeeded) {
        for (const s of batch) gained.set(s, r.revision);
      } else if (batch.length > 1) {
        const mid = batch.length >> 1;
        await tryBatch(batch.slice(0, mid));
        await tryBatch(batch.slice(mid));
      }
    };
    await this.#perChunk(slots, tryBatch);
    if (gained.size === 0 || this.#session !== session) return;
    // A lease that ran out while we wrote: do not act on the new locks; delete them once we may write again.
    if (!this.#ownsNow()) {
      for (const [slot, epoch] of gained) this.#stale.set(slot, epoch);
      return;
    }
    for (const [slot, epoch] of gained) {
      this.#primaries.set(slot, epoch);
      this.#dirty.add(slot);
    }
    this.emit('primaryGained', { slots: [...gained].map(([slot, epoch]) => ({ slot, epoch })) });
  }

  /**
   * Delete the locks of `locks` (slot → epoch) that are still the ones we took, many per transaction (one per slot
   * made a hand-over of thousands of primaries take minutes while the other sites read). A batch whose compare
   * fails (some lock is gone or was taken again) is split until the failing slot is alone; a lock that is no
   * longer ours is forgotten, and dropped from our summary.
   */
  async #deleteLocks(locks: ReadonlyMap<number, number>, session: Session): Promise<void> {
    const deleteBatch = async (batch: readonly number[]): Promise<void> => {
      if (batch.length === 0 || this.#session !== session) return;
      const gone = new Set(batch);
      const summary = this.#heldOps(batch, session, undefined, undefined, gone);
      const r = await this.#store.txn({
        compare: batch.map((slot) => ({
          key: this.#keys.primary(slot),
          target: 'createRevision' as const,
          op: '=' as const,
          value: locks.get(slot)!,
        })),
        then: [...batch.map((slot) => ({ op: 'delete' as const, key: this.#keys.primary(slot) })), ...summary],
        // Alone and not ours any more: our summary must stop listing it.
        else: batch.length === 1 ? summary : [],
      });
      if (r.succeeded || batch.length === 1) {
        for (const slot of batch) if (this.#stale.get(slot) === locks.get(slot)) this.#stale.delete(slot);
        return;
      }
      const mid = batch.length >> 1;
      await deleteBatch(batch.slice(0, mid));
      await deleteBatch(batch.slice(mid));
    };
    await this.#perChunk([...locks.keys()], deleteBatch);
  }

  /**
   * Run `fn` over `slots` in batches that fit one transaction (two ops per slot plus the chunk's summary): the
   * batches of one chunk one after the other (each rewrites that chunk's summary from the local state, so two at
   * once would lose each other's entries), different chunks concurrently (a start or a leave moves thousands of
   * primaries; one transaction at a time took seconds).
   */
  async #perChunk(slots: readonly number[], fn: (batch: readonly number[]) => Promise<void>): Promise<void> {
    const perBatch = Math.max(1, Math.floor((this.#store.limits.maxTxnOps - 1) / 2));
    const byChunk = new Map<number, number[]>();
    for (const slot of [...slots].sort((a, b) => a - b)) {
      const c = Math.floor(slot / PLAN_CHUNK_SLOTS);
      const list = byChunk.get(c);
      if (list === undefined) byChunk.set(c, [slot]);
      else list.push(slot);
    }
    const queue = [...byChunk.values()];
    const worker = async (): Promise<void> => {
      for (let list = queue.shift(); list !== undefined; list = queue.shift()) {
        for (let i = 0; i < list.length; i += perBatch) await fn(list.slice(i, i + perBatch));
      }
    };
    // Every worker ends before this returns, even when one fails: none may still write when the next round runs.
    const results = await Promise.allSettled(
      Array.from({ length: Math.min(MAX_CHUNKS_IN_FLIGHT, queue.length) }, worker),
    );
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  /**
   * The writes of this site's `held/` summary for the chunks of `slots`: every lock it holds there (acting or
   * stale, plus `extra`, plus `adding` with their epochs) except `removing`. An empty chunk's key is deleted.
   */
  #heldOps(
    slots: readonly number[],
    session: Session,
    extra?: ReadonlyMap<number, number>,
    adding?: ReadonlyMap<number, number>,
    removing?: ReadonlySet<number>,
  ): Op[] {
    const chunks = new Set(slots.map((s) => Math.floor(s / PLAN_CHUNK_SLOTS)));
    const ops: Op[] = [];
    for (const c of chunks) {
      const from = c * PLAN_CHUNK_SLOTS;
      const to = from + PLAN_CHUNK_SLOTS;
      const held = new Map<number, number>();
      for (const m of [this.#primaries, this.#stale, extra, adding]) {
        for (const [slot, epoch] of m ?? []) {
          if (slot >= from && slot < to && removing?.has(slot) !== true) held.set(slot - from, epoch);
        }
      }
      const key = this.#keys.heldChunk(this.siteId, c);
      ops.push(held.size === 0 ? { op: 'delete', key } : { op: 'put', key, value: encodeHeld(held), session });
    }
    return ops;
  }

  // ---- coordinator -----------------------------------------------------------------

  async #coordinate(view: FullView, leadership: Leadership): Promise<boolean> {
    const d = decideSlotsPlan(
      this.config,
      {
        sites: view.sites,
        plan: view.plan,
        ready: view.ready,
        primaries: view.holderSites,
      },
      this.#memory,
    );
    if (d === undefined || d.changed.length === 0) return false;
    const generation = view.generation + 1;
    const chunks = new Set(d.changed.map((s) => Math.floor(s / PLAN_CHUNK_SLOTS)));
    const ops: Op[] = [];
    for (const c of chunks) {
      const from = c * PLAN_CHUNK_SLOTS;
      const to = Math.min(this.config.slotCount, from + PLAN_CHUNK_SLOTS);
      ops.push({ op: 'put', key: this.#keys.planChunk(c), value: encodePlanChunk(generation, d.plan.slice(from, to)) });
    }
    // One transaction for the whole change (16 chunks of a 16384-slot cluster fit): sites never see half a plan.
    const r = await this.#store.txn({ compare: [leadership.guard], then: ops });
    if (r.succeeded) this.emit('planWritten', { generation, changedSlots: d.changed.length });
    return r.succeeded;
  }

  // ---- reading ------------------------------------------------------------------

  async #readView(): Promise<FullView> {
    const k = this.#keys;
    const r = await this.#store.txn({
      compare: [],
      then: [
        { op: 'get', key: k.config },
        { op: 'get', key: k.joins },
        { op: 'range', prefix: k.sites },
        { op: 'range', prefix: k.plan },
        { op: 'range', prefix: k.ready },
        { op: 'range', prefix: k.held },
      ],
    });
    const res = r.results;
    const report = (error: unknown): void => this.emit('error', { error, context: 'reading the cluster' });
    const decode = <T>(f: () => T): T | undefined => {
      try {
        return f();
      } catch (error) {
        if (error instanceof CorruptDataError) {
          report(error);
          return undefined;
        }
        throw error;
      }
    };
    // Decoding every lock, chunk and bitmap on every round dominated a large cluster's CPU (profile at 2048 slots):
    // a key whose revisions did not change decodes to what it decoded to last time.
    const previous = this.#decoded;
    const seen = new Map<string, { mod: number; create: number; value: unknown }>();
    this.#decoded = seen;
    const cached = <T>(kv: KeyValue, f: () => T): T | undefined => {
      const hit = previous.get(kv.key);
      if (hit !== undefined && hit.mod === kv.modRevision && hit.create === kv.createRevision) {
        seen.set(kv.key, hit);
        return hit.value as T;
      }
      const value = decode(f);
      if (value !== undefined) seen.set(kv.key, { mod: kv.modRevision, create: kv.createRevision, value });
      return value;
    };
    const cfgKv = res[0]?.op === 'get' ? res[0].kv : undefined;
    const config = cfgKv === undefined ? undefined : decode(() => decodeConfig(cfgKv.key, cfgKv.value));
    const sites = new Map<string, SiteRecord>();
    for (const kv of res[2]?.op === 'range' ? res[2].kvs : []) {
      const id = kv.key.slice(k.sites.length);
      const rec = decode(() => decodeSite(kv.key, id, kv.value));
      if (rec !== undefined) sites.set(id, rec);
    }
    const slotCount = this.config.slotCount;
    const built = new Array<SlotAssignment | undefined>(slotCount).fill(undefined);
    const planRevisions = new Map<number, number>();
    let generation = 0;
    for (const kv of res[3]?.op === 'range' ? res[3].kvs : []) {
      const c = k.chunkOfPlanKey(kv.key);
      if (c === undefined || c >= chunkCount(slotCount)) continue;
      const from = c * PLAN_CHUNK_SLOTS;
      const n = Math.min(slotCount, from + PLAN_CHUNK_SLOTS) - from;
      const chunk = cached(kv, () => decodePlanChunk(kv.key, kv.value, n));
      if (chunk === undefined) continue;
      generation = Math.max(generation, chunk.generation);
      planRevisions.set(c, kv.modRevision);
      chunk.slots.forEach((a, i) => (built[from + i] = a));
    }
    let plan: readonly (SlotAssignment | undefined)[] = built;
    const last = this.#lastRead;
    if (last !== undefined && last.planRevisions.size === planRevisions.size) {
      let same = true;
      for (const [c, rev] of planRevisions) if (last.planRevisions.get(c) !== rev) same = false;
      if (same) plan = last.plan;
    }
    const ready = new Map<string, ReadyBits>();
    const readyKvs = new Map<string, KeyValue>();
    for (const kv of res[4]?.op === 'range' ? res[4].kvs : []) {
      const id = kv.key.slice(k.ready.length);
      const bits = cached(kv, () => decodeReady(kv.key, kv.value, slotCount));
      if (bits === undefined) continue;
      ready.set(id, bits);
      readyKvs.set(id, kv);
    }
    const heldKvs = new Map<string, KeyValue>();
    const heldLists: (readonly (readonly [number, Holder])[])[] = [];
    for (const kv of res[5]?.op === 'range' ? res[5].kvs : []) {
      const at = k.ofHeldKey(kv.key);
      if (at === undefined || at.chunk >= chunkCount(slotCount)) continue;
      const from = at.chunk * PLAN_CHUNK_SLOTS;
      const n = Math.min(slotCount, from + PLAN_CHUNK_SLOTS) - from;
      // Decoded once per revision into shared holder records: building 16384 of them per round was most of a
      // large cluster's garbage.
      const list = cached(kv, () =>
        [...decodeHeld(kv.key, kv.value, n, kv.modRevision)].map(
          ([offset, epoch]) =>
            [from + offset, Object.freeze({ site: at.site, epoch, sessionId: kv.sessionId })] as const,
        ),
      );
      if (list === undefined) continue;
      heldKvs.set(kv.key, kv);
      heldLists.push(list);
    }
    const before = this.#lastRead;
    let holders: readonly (Holder | undefined)[];
    let holderSites: readonly (string | undefined)[];
    if (before !== undefined && sameRevisions(before.heldKvs, heldKvs)) {
      // Views are never mutated: an unchanged part is shared with the last one.
      holders = before.holders;
      holderSites = before.holderSites;
    } else {
      const hs = new Array<Holder | undefined>(slotCount).fill(undefined);
      const sites = new Array<string | undefined>(slotCount).fill(undefined);
      for (const list of heldLists) {
        for (const [slot, h] of list) {
          const other = hs[slot];
          // Two summaries name one slot only for a moment (a dead session's keys reaped in parts): the newer lock.
          if (other === undefined || other.epoch < h.epoch) {
            hs[slot] = h;
            sites[slot] = h.site;
          }
        }
      }
      holders = hs;
      holderSites = sites;
    }
    const joinsKv = res[1]?.op === 'get' ? res[1].kv : undefined;
    const view = {
      config,
      sites,
      plan,
      planRevisions,
      generation,
      ready,
      readyKvs,
      holders,
      holderSites,
      heldKvs,
      joinsRevision: joinsKv?.modRevision ?? 0,
      revision: r.revision,
    };
    this.#lastRead = view;
    return view;
  }

  #siteView(view: FullView): SiteView {
    return {
      siteId: this.siteId,
      slotCount: this.config.slotCount,
      replicas: this.config.replicas,
      liveSites: new Set(view.sites.keys()),
      plan: view.plan,
      ready: view.ready,
      primaryHolders: view.holderSites,
      local: this.#local,
      myPrimaries: this.#primaries,
      failed: this.#failed,
      fenced: this.#fenced,
    };
  }

  /** Rebuild the routes of `slots` (undefined: every slot), those whose primary or ready replicas may have changed. */
  #publishRouting(view: FullView, slots: Iterable<number> | undefined): void {
    // The same snapshot as last time (a timer's round with no write anywhere since): nothing to rebuild.
    if (view.revision === this.#routedRevision) return;
    this.#routedRevision = view.revision;
    let changed = false;
    const visit = (s: number): void => {
      const h = view.holders[s];
      const holderReady = h !== undefined && hasReady(view.ready.get(h.site), s);
      const primary =
        h === undefined || !holderReady
          ? undefined
          : { id: h.site, address: view.sites.get(h.site)?.address, epoch: h.epoch };
      const secondaries: { id: string; address: string | undefined }[] = [];
      for (const x of view.plan[s]?.assigned ?? []) {
        if (x !== h?.site && hasReady(view.ready.get(x), s))
          secondaries.push({ id: x, address: view.sites.get(x)?.address });
      }
      const old = this.#routes[s]!;
      const same =
        old.primary?.id === primary?.id &&
        old.primary?.epoch === primary?.epoch &&
        old.primary?.address === primary?.address &&
        old.secondaries.length === secondaries.length &&
        old.secondaries.every((x, i) => x.id === secondaries[i]!.id && x.address === secondaries[i]!.address);
      if (same) return;
      changed = true;
      this.#routes[s] = Object.freeze({
        slot: s,
        primary: primary && Object.freeze(primary),
        secondaries: Object.freeze(secondaries),
      });
    };
    if (slots === undefined) for (let s = 0; s < this.config.slotCount; s++) visit(s);
    else for (const s of slots) visit(s);
    if (changed) {
      this.#routingVersion = view.revision;
      this.emit('routingChanged', { version: view.revision });
    }
  }

  // ---- helpers ------------------------------------------------------------------

  /** A copy of the ready bitmap of the local state. */
  #readyBits(): ReadyBits {
    return this.#bits.slice();
  }

  /** Every change of the local state goes through here: the bitmap follows it, the next round decides again. */
  #setLocal(slot: number, state: LocalSlotState | undefined): void {
    if (state === undefined) this.#local.delete(slot);
    else this.#local.set(slot, state);
    setReady(this.#bits, slot, state === 'ready');
    this.#dirty.add(slot);
  }

  #clearLocal(): void {
    this.#local.clear();
    this.#bits = emptyReady(this.config.slotCount);
    this.#allDirty = true;
  }

  async #writeReady(): Promise<void> {
    const session = this.#liveSession();
    await this.#store.txn({
      compare: [],
      then: [{ op: 'put', key: this.#keys.readyOf(this.siteId), value: encodeReady(this.#readyBits()), session }],
    });
  }

  /**
   * Run `fn` alone among the writers of this site's ready bitmap: each write encodes the local state at that
   * moment, so two interleaved writers could otherwise put back a bit another had just cleared.
   */
  #withReady<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#readyChain.then(fn, fn);
    this.#readyChain = run.catch(() => undefined);
    return run;
  }

  #liveSession(): Session {
    const s = this.#session;
    if (s === undefined || s.state === 'expired' || s.state === 'closed') {
      throw new SessionExpiredError(s?.id ?? '-', `site ${this.siteId} has no live session right now; retry shortly`);
    }
    return s;
  }

  #checkSlot(slot: number): void {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.config.slotCount) {
      throw new InvalidArgumentError(
        `slot must be an integer from 0 to ${this.config.slotCount - 1}, got ${String(slot)}`,
      );
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.#clock.setTimeout(resolve, ms));
  }

  #clearTimers(): void {
    for (const t of [this.#timer, this.#fenceTimer]) if (t !== undefined) this.#clock.clearTimeout(t);
    this.#timer = this.#fenceTimer = undefined;
  }
}
