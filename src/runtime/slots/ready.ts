/**
 * A slots member's local state — which slots it prepares and which it holds
 * ready, the ready bitmap that encodes it, slots reported failed — and the
 * only writer of that bitmap in the store: markReady batching, reportFailed,
 * and the guarded release.
 *
 * Every write of the bitmap encodes the local state at that moment, so the
 * writers run one at a time (`serialised`): two interleaved writers could
 * otherwise put back a bit another had just cleared.
 */
import { invariant, SessionExpiredError } from '../../errors.js';
import { NO_MUTANTS, type Mutants } from '../../protocol/mutants.js';
import { releaseTxn, writeReady } from '../../protocol/slots/io.js';
import { emptyReady, setReady, type ReadyBits, type SlotKeys } from '../../protocol/slots/keys.js';
import { checkRelease, type LocalSlotState, type ReleaseRefusal, type SiteView } from '../../protocol/slots/site.js';
import type { SlotsView } from '../../protocol/slots/view.js';
import type { Session, Store } from '../../store/contract.js';

/** The outcome of markReady(slot). Not being prepared any more (cancelled meanwhile) is routine, not an error. */
export type MarkReadyResult = { readonly ready: true } | { readonly ready: false; readonly reason: 'not-preparing' };

/**
 * The outcome of release(slot). A refusal is routine (the plan moved on, a replica elsewhere is not ready yet, the
 * bitmaps kept changing while it checked): nothing was changed, and the slot is announced `releasable` again when
 * (and if) it becomes releasable.
 */
export type ReleaseResult =
  | {
      readonly released: true;
      /** The other assigned nodes whose readiness the release counted (unchanged when it committed). */
      readonly readyElsewhere: readonly string[];
      readonly needed: number;
      /** The store revision the release committed at. */
      readonly revision: number;
    }
  | {
      readonly released: false;
      /**
       * `still-assigned`: the plan wants the slot here again; `not-enough-ready`: fewer ready replicas elsewhere
       * than needed; `contended`: other nodes' bitmaps kept changing while it checked; `not-ready-here`: this
       * node does not hold the slot ready (released, dropped or never ready); `primary`: this node is its
       * primary and must hand over first.
       */
      readonly reason: ReleaseRefusal | 'contended' | 'not-ready-here' | 'primary';
      readonly ready: number;
      readonly needed: number;
    };

/** How often a release re-reads and tries again when a counted bitmap changed under it. */
const RELEASE_ATTEMPTS = 6;

export class SlotsLocal {
  readonly slotCount: number;
  readonly #local = new Map<number, LocalSlotState>();
  #bits: ReadyBits;
  /** Slots reported failed and not prepared again yet (released without the ready-elsewhere check). */
  readonly failed = new Set<number>();
  /** Slots whose local state changed since the last round decided about them. */
  readonly dirty = new Set<number>();

  constructor(slotCount: number) {
    this.slotCount = slotCount;
    this.#bits = emptyReady(slotCount);
  }

  get(slot: number): LocalSlotState | undefined {
    return this.#local.get(slot);
  }

  get size(): number {
    return this.#local.size;
  }

  /** The local states (read-only: change them through set). */
  get states(): ReadonlyMap<number, LocalSlotState> {
    return this.#local;
  }

  /** The bitmap the local state encodes (shared: copy it before keeping it). */
  get bits(): ReadyBits {
    return this.#bits;
  }

  /** Every change of the local state goes through here: the bitmap follows it, the next round decides again. */
  set(slot: number, state: LocalSlotState | undefined): void {
    if (state === undefined) this.#local.delete(slot);
    else this.#local.set(slot, state);
    setReady(this.#bits, slot, state === 'ready');
    this.dirty.add(slot);
  }

  clear(): void {
    this.#local.clear();
    this.#bits = emptyReady(this.slotCount);
  }
}

export interface ReadyWriterConfig {
  readonly store: Store;
  readonly keys: SlotKeys;
  readonly siteId: string;
  readonly local: SlotsLocal;
  readonly mutants?: Mutants | undefined;
  /** The member's session, if it may write now (else undefined). */
  readonly session: () => Session | undefined;
  /** Whether `slot`'s primary lock is held by this member (a primary may not release). */
  readonly isPrimaryHolder: (slot: number) => boolean;
  readonly read: () => Promise<SlotsView>;
  readonly siteView: (view: SlotsView) => SiteView;
  readonly released: (
    slot: number,
    readyElsewhere: readonly string[],
    needed: number,
    failed: boolean,
    revision: number,
  ) => void;
  /** Write a release probe asking `ask` to answer (io.ts writeProbe); returns its revision. */
  readonly probe: (ask: readonly string[], session: Session) => Promise<number>;
  /** The injected clock's time and sleep. */
  readonly now: () => number;
  readonly sleep: (ms: number) => Promise<void>;
  /** How long a release waits for the replicas it would count to answer its probe; how often it looks. */
  readonly confirmWaitMs: number;
  readonly confirmPollMs: number;
}

export class ReadyWriter {
  readonly #c: ReadyWriterConfig;
  readonly #mutants: Mutants;
  #chain: Promise<unknown> = Promise.resolve();
  /** A bitmap write queued behind the chain and not started yet: later markReady calls join it. */
  #queued: Promise<void> | undefined;
  /** release() calls waiting for the next batch. */
  readonly #pending: Waiters = new Map();
  /** A batch of releases is being confirmed and committed (one batch at a time; the next takes what piled up). */
  #releasing = false;

  constructor(config: ReadyWriterConfig) {
    this.#c = config;
    this.#mutants = config.mutants ?? NO_MUTANTS;
  }

  /** Run `fn` alone among the writers of this member's bitmap. */
  serialised<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#chain.then(fn, fn);
    this.#chain = run.catch(() => undefined);
    return run;
  }

  /** Write the current local state now (after the writers queued before it). */
  write(): Promise<void> {
    return this.serialised(() => this.#write());
  }

  async #write(): Promise<void> {
    await writeReady(this.#c.store, this.#c.keys, this.#c.siteId, this.#c.local.bits.slice(), this.#session());
  }

  #session(): Session {
    const s = this.#c.session();
    if (s === undefined) {
      throw new SessionExpiredError('-', `node ${this.#c.siteId} has no live session right now; retry shortly`);
    }
    return s;
  }

  /** The migration of `slot` is done. Many calls in a row share one bitmap write. */
  async markReady(slot: number): Promise<MarkReadyResult> {
    const local = this.#c.local;
    if (local.get(slot) !== 'preparing') return { ready: false, reason: 'not-preparing' };
    // Setting a bit never undoes a release (only preparing slots become ready), so this needs no check.
    local.set(slot, 'ready');
    local.failed.delete(slot);
    this.#queued ??= this.serialised(async () => {
      this.#queued = undefined;
      await this.#write();
    });
    await this.#queued;
    return { ready: true };
  }

  /** This copy is broken: stop counting it as ready at once. */
  reportFailed(slot: number): Promise<void> {
    return this.serialised(async () => {
      this.#c.local.set(slot, undefined);
      this.#c.local.failed.add(slot);
      await this.#write();
    });
  }

  /** Drop `slot` if the release rule allows it (checked again against the store, atomically). */
  async release(slot: number): Promise<ReleaseResult> {
    const outcome = await new Promise<ReleaseResult | Error>((resolve) => {
      const waiting = this.#pending.get(slot) ?? [];
      waiting.push(resolve);
      this.#pending.set(slot, waiting);
      void this.#releaseBatches();
    });
    if (outcome instanceof Error) throw outcome;
    return outcome;
  }

  /** Take the waiting release() calls batch by batch, one batch at a time. */
  async #releaseBatches(): Promise<void> {
    if (this.#releasing) return; // the running loop takes this one too
    this.#releasing = true;
    try {
      while (this.#pending.size > 0) {
        const batch = new Map(this.#pending);
        this.#pending.clear();
        await this.#confirmAndRelease(batch);
      }
    } finally {
      this.#releasing = false;
    }
  }

  /**
   * Release a batch: read which replicas the release would count, ask them to answer (a probe; only a running site
   * answers), wait for their answers outside the bitmap writers' queue (our own answers to others' probes go
   * through it), then commit with only the answered replicas counted (#commitReleases).
   */
  async #confirmAndRelease(batch: Waiters): Promise<void> {
    const { settle, refuse } = settlers(batch);
    const local = this.#c.local;
    try {
      for (const slot of [...batch.keys()]) {
        if (local.get(slot) !== 'ready') refuse(slot, 'not-ready-here');
        else if (this.#c.isPrimaryHolder(slot)) refuse(slot, 'primary');
      }
      if (batch.size === 0) return;
      const view = await this.#c.read();
      const sv = this.#c.siteView(view);
      const ask = new Set<string>();
      for (const slot of [...batch.keys()]) {
        const check = checkRelease(sv, slot, this.#mutants);
        if (!check.allowed) refuse(slot, check.refusal!, check.ready, check.needed);
        else if (!local.failed.has(slot)) for (const x of check.counted) ask.add(x);
      }
      if (batch.size === 0) return;
      // No replica to confirm: nothing written after "never" counts, so a replica that turns up meanwhile is not
      // counted unconfirmed (the release is then refused and announced again).
      let after = Number.POSITIVE_INFINITY;
      if (ask.size > 0 && !this.#mutants.has('slots-release-unconfirmed')) {
        after = await this.#c.probe([...ask], this.#session());
        const deadline = this.#c.now() + this.#c.confirmWaitMs;
        for (;;) {
          const v = await this.#c.read();
          const unanswered = [...ask].filter((x) => {
            const kv = v.readyKvs.get(x);
            return kv !== undefined && kv.modRevision <= after;
          });
          if (unanswered.length === 0 || this.#c.now() >= deadline) break;
          await this.#c.sleep(this.#c.confirmPollMs);
        }
      }
      await this.serialised(() => this.#commitReleases(batch, after));
    } catch (error) {
      for (const slot of [...batch.keys()]) settle(slot, error instanceof Error ? error : new Error(String(error)));
    }
  }

  /**
   * Release every slot of the batch that the rule allows, counting only replicas that answered the probe at
   * `after`, in one transaction where possible: one read of the cluster, one compare per counted replica's ready
   * key, one write of our bitmap. Runs alone among the bitmap writers.
   */
  async #commitReleases(batch: Waiters, after: number): Promise<void> {
    if (batch.size === 0) return;
    const local = this.#c.local;
    const { settle, refuse } = settlers(batch);
    let last = new Map<number, { ready: number; needed: number }>();
    try {
      for (let attempt = 0; attempt < RELEASE_ATTEMPTS && batch.size > 0; attempt++) {
        for (const slot of [...batch.keys()]) {
          if (local.get(slot) !== 'ready') refuse(slot, 'not-ready-here');
          else if (this.#c.isPrimaryHolder(slot)) refuse(slot, 'primary');
        }
        if (batch.size === 0) return;
        const view = await this.#c.read();
        const readyRevisions = new Map<string, number>();
        for (const [x, kv] of view.readyKvs) readyRevisions.set(x, kv.modRevision);
        const sv: SiteView = { ...this.#c.siteView(view), confirmed: { afterRevision: after, readyRevisions } };
        const go = new Map<number, { counted: readonly string[]; needed: number; failed: boolean }>();
        last = new Map();
        for (const slot of [...batch.keys()]) {
          const check = checkRelease(sv, slot, this.#mutants);
          last.set(slot, { ready: check.ready, needed: check.needed });
          if (!check.allowed) refuse(slot, check.refusal!, check.ready, check.needed);
          else go.set(slot, { counted: check.counted, needed: check.needed, failed: local.failed.has(slot) });
        }
        if (go.size === 0) return;
        const counted = new Map<string, number>();
        for (const g of go.values()) for (const x of g.counted) counted.set(x, view.readyKvs.get(x)?.modRevision ?? 0);
        const allFailed = [...go.values()].every((g) => g.failed);
        const bits = local.bits.slice();
        for (const slot of go.keys()) setReady(bits, slot, false);
        const r = await releaseTxn(
          this.#c.store,
          this.#c.keys,
          this.#c.siteId,
          bits,
          this.#session(),
          counted,
          allFailed ? undefined : view.joinsRevision,
        );
        if (!r.succeeded) continue; // a counted bitmap (or the joins key) changed: read again
        for (const [slot, g] of go) {
          invariant(local.get(slot) === 'ready', () => `released slot ${slot} was not ready here`);
          local.set(slot, undefined);
          local.failed.delete(slot);
          this.#c.released(slot, g.counted, g.needed, g.failed, r.revision);
          settle(slot, { released: true, readyElsewhere: g.counted, needed: g.needed, revision: r.revision });
        }
      }
      for (const slot of [...batch.keys()]) {
        const l = last.get(slot) ?? { ready: 0, needed: 0 };
        refuse(slot, 'contended', l.ready, l.needed);
      }
    } catch (error) {
      for (const slot of [...batch.keys()]) settle(slot, error instanceof Error ? error : new Error(String(error)));
    }
  }
}

type Waiters = Map<number, ((r: ReleaseResult | Error) => void)[]>;

/** Answer the release() calls of a batch (and take the slot out of it). */
function settlers(batch: Waiters): {
  settle: (slot: number, r: ReleaseResult | Error) => void;
  refuse: (
    slot: number,
    reason: Extract<ReleaseResult, { released: false }>['reason'],
    ready?: number,
    needed?: number,
  ) => void;
} {
  const settle = (slot: number, r: ReleaseResult | Error): void => {
    for (const w of batch.get(slot) ?? []) w(r);
    batch.delete(slot);
  };
  return {
    settle,
    refuse: (slot, reason, ready = 0, needed = 0) => settle(slot, { released: false, reason, ready, needed }),
  };
}

/**
 * Which slots are releasable and which of them the application was told about. A slot is announced once while it
 * stays releasable, and again after a refused or failed release (a release that did not happen must not strand it).
 */
export class Releasables {
  /** Slots the last decisions found releasable (kept between rounds: only changed slots are decided again). */
  readonly #now = new Set<number>();
  readonly #announced = new Set<number>();

  /** Announce `slot` again when it is (still) releasable. */
  announceAgain(slot: number): void {
    this.#announced.delete(slot);
  }

  clear(): void {
    this.#now.clear();
    this.#announced.clear();
  }

  /**
   * Take a round's decisions (`releasable` among the `decided` slots; undefined: every slot was decided) and return
   * the slots to announce now. `holdable(slot)`: still ready here and not primary.
   */
  update(
    releasable: readonly number[],
    decided: ReadonlySet<number> | undefined,
    holdable: (slot: number) => boolean,
  ): number[] {
    if (decided === undefined) this.#now.clear();
    else for (const s of decided) this.#now.delete(s);
    for (const s of releasable) this.#now.add(s);
    const fresh: number[] = [];
    for (const s of this.#now) {
      if (!holdable(s)) this.#now.delete(s);
      else if (!this.#announced.has(s)) fresh.push(s);
    }
    for (const s of this.#announced) if (!this.#now.has(s)) this.#announced.delete(s);
    for (const s of fresh) this.#announced.add(s);
    return fresh;
  }
}
