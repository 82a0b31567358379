/**
 * A slots member's primary locks: the ones it acts on (`acting`, slot →
 * epoch) and the ones still in the store that it no longer acts on (`stale`:
 * after fencing, a failed copy, a step-down whose delete has not been
 * acknowledged). Taking and deleting locks always rewrites the member's
 * `held/` summaries in the same transaction, on the same session, so the
 * summaries other members read never disagree with the locks for long.
 *
 * The lock is the only arbiter of who is primary: a lock is taken only while
 * free (create-if-absent), its create revision is the primary's epoch, and a
 * member acts only on locks its current session took while its lease holds.
 */
import { invariant } from '../../errors.js';
import type { Mutants } from '../../protocol/mutants.js';
import { deleteLocksTxn, heldOps, perChunk, takeLocksTxn } from '../../protocol/slots/io.js';
import type { SlotKeys } from '../../protocol/slots/keys.js';
import type { SlotsView } from '../../protocol/slots/view.js';
import type { Op, Session, Store } from '../../store/contract.js';

export class PrimaryLocks {
  /** slot → epoch of the primary lock this member holds and acts on. */
  readonly acting = new Map<number, number>();
  /** Locks still in the store that this member no longer acts on: deleted when possible. */
  readonly stale = new Map<number, number>();
  readonly #store: Store;
  readonly #keys: SlotKeys;
  readonly #siteId: string;
  readonly #mutants: Mutants;
  /** The session is still `session` (a round that outlived its session must not record locks). */
  readonly #current: (session: Session) => boolean;

  constructor(store: Store, keys: SlotKeys, siteId: string, mutants: Mutants, current: (session: Session) => boolean) {
    this.#store = store;
    this.#keys = keys;
    this.#siteId = siteId;
    this.#mutants = mutants;
    this.#current = current;
  }

  /** Stop acting on every lock at once (fenced, failed, leaving): they become stale. Returns their slots. */
  dropAll(): number[] {
    const slots = [...this.acting.keys()];
    for (const [slot, epoch] of this.acting) this.stale.set(slot, epoch);
    this.acting.clear();
    return slots;
  }

  /** Stop acting on one lock (it becomes stale until deleted). */
  drop(slot: number): number | undefined {
    const epoch = this.acting.get(slot);
    if (epoch === undefined) return undefined;
    this.acting.delete(slot);
    this.stale.set(slot, epoch);
    return epoch;
  }

  /**
   * Locks of `session` in the view that this member does not know it holds (a take-over whose answer was lost):
   * `wanted(slot)` decides whether to act on one (then it is returned) or to mark it stale for deletion — a
   * forgotten lock would block the slot for as long as the session lives. Only `slots` can show a new one.
   */
  adopt(
    view: SlotsView,
    session: Session,
    slots: Iterable<number> | undefined,
    wanted: (slot: number) => boolean,
  ): { slot: number; epoch: number }[] {
    const adopted: { slot: number; epoch: number }[] = [];
    const visit = (slot: number): void => {
      const h = view.holders[slot];
      if (h === undefined || h.site !== this.#siteId || h.sessionId !== session.id) return;
      if (this.acting.has(slot) || this.stale.has(slot)) return;
      if (wanted(slot)) {
        this.acting.set(slot, h.epoch);
        adopted.push({ slot, epoch: h.epoch });
      } else {
        this.stale.set(slot, h.epoch);
      }
    };
    if (slots === undefined) for (let s = 0; s < view.holders.length; s++) visit(s);
    else for (const s of slots) visit(s);
    return adopted;
  }

  /**
   * Take the locks of `slots` (each only if free). Returns the locks taken (slot → epoch); the caller decides
   * whether to act on them (its lease may have run out meanwhile: then they go to `stale`).
   */
  async take(slots: readonly number[], session: Session, mayWrite: () => boolean): Promise<Map<number, number>> {
    const gained = new Map<number, number>();
    const tryBatch = async (batch: readonly number[]): Promise<void> => {
      if (batch.length === 0 || !mayWrite()) return;
      // Epoch 0: "this transaction's revision" (see encodeHeld), which is the new locks' create revision.
      const summary = this.#summary(batch, session, gained, new Map(batch.map((s) => [s, 0])));
      const r = await takeLocksTxn(this.#store, this.#keys, this.#siteId, batch, summary, session, this.#mutants);
      if (r.succeeded) {
        for (const s of batch) gained.set(s, r.revision);
      } else if (batch.length > 1) {
        const mid = batch.length >> 1;
        await tryBatch(batch.slice(0, mid));
        await tryBatch(batch.slice(mid));
      }
    };
    await perChunk(slots, this.#store.limits.maxTxnOps, tryBatch);
    return gained;
  }

  /** Act on locks just taken. */
  act(gained: ReadonlyMap<number, number>): void {
    for (const [slot, epoch] of gained) {
      invariant(!this.acting.has(slot), () => `took the lock of slot ${slot}, which this member already holds`);
      this.acting.set(slot, epoch);
    }
  }

  /**
   * Delete the locks of `locks` (slot → epoch) that are still the ones we took, many per transaction (one per slot
   * made a hand-over of thousands of primaries take minutes while the other members read). A batch whose compare
   * fails (some lock is gone or was taken again) is split until the failing slot is alone; a lock that is no longer
   * ours is forgotten, and dropped from our summary.
   */
  async delete(locks: ReadonlyMap<number, number>, session: Session): Promise<void> {
    const deleteBatch = async (batch: readonly number[]): Promise<void> => {
      if (batch.length === 0 || !this.#current(session)) return;
      const summary = this.#summary(batch, session, undefined, undefined, new Set(batch));
      // Alone and not ours any more: our summary must stop listing it.
      const r = await deleteLocksTxn(this.#store, this.#keys, batch, locks, summary, batch.length === 1 ? summary : []);
      if (r.succeeded || batch.length === 1) {
        for (const slot of batch) if (this.stale.get(slot) === locks.get(slot)) this.stale.delete(slot);
        return;
      }
      const mid = batch.length >> 1;
      await deleteBatch(batch.slice(0, mid));
      await deleteBatch(batch.slice(mid));
    };
    await perChunk([...locks.keys()], this.#store.limits.maxTxnOps, deleteBatch);
  }

  /**
   * The summary writes for the chunks of `slots`: every lock held there (acting or stale, plus `extra`, plus
   * `adding`) except `removing`.
   */
  #summary(
    slots: readonly number[],
    session: Session,
    extra?: ReadonlyMap<number, number>,
    adding?: ReadonlyMap<number, number>,
    removing?: ReadonlySet<number>,
  ): Op[] {
    const held = new Map<number, number>();
    for (const m of [this.acting, this.stale, extra, adding]) {
      for (const [slot, epoch] of m ?? []) if (removing?.has(slot) !== true) held.set(slot, epoch);
    }
    return heldOps(this.#keys, this.#siteId, slots, held, session);
  }
}
