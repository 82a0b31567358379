/**
 * Taking and releasing a group member's locks in batches (a transaction per batch, a few batches in flight): with
 * thousands of resources per node, one request per resource would flood the store and this process's event loop.
 * The member (member.ts) decides what to take and release; this runs it and starts or forgets the handlers.
 */
import { invariant } from '../../errors.js';
import { ACQUIRE_BATCH, acquireMany, releaseMany, RELEASE_BATCH } from '../../protocol/groups/io.js';
import type { GroupKeys } from '../../protocol/groups/keys.js';
import type { MemberAction } from '../../protocol/groups/member.js';
import type { Mutants } from '../../protocol/mutants.js';
import type { Session, Store } from '../../store/contract.js';
import type { HandlerSupervisor } from './handlers.js';

/** Acquire batches in flight at once. */
const ACQUIRE_LANES = 4;

/** What the member lends the lock work. */
export interface LockContext {
  readonly store: Store;
  readonly keys: GroupKeys;
  readonly nodeId: string;
  readonly mutants: Mutants;
  readonly handlers: HandlerSupervisor;
  /** Resources whose acquire had an unknown outcome (the member adopts or releases them later). */
  readonly uncertain: Set<string>;
  membershipState(): string;
  /** Still this session, the lease holds, nothing broke: the only condition under which a handler may start. */
  mayStart(session: Session): boolean;
  reportOrFail(error: unknown, context: string): void;
  released(event: { resource: string; fencingToken: number }): void;
  kick(): void;
}

export class LockBatches {
  readonly #c: LockContext;

  constructor(context: LockContext) {
    this.#c = context;
  }

  /**
   * Take the locks of granted resources, a batch per transaction, one batch after the other (so that a node with
   * thousands of grants neither floods the store nor holds thousands of requests in flight), and start each
   * handler as soon as its batch has its lock.
   */
  async acquireAll(actions: readonly Extract<MemberAction, { type: 'acquire' }>[], session: Session): Promise<void> {
    const batches: Extract<MemberAction, { type: 'acquire' }>[][] = [];
    for (let i = 0; i < actions.length; i += ACQUIRE_BATCH) batches.push(actions.slice(i, i + ACQUIRE_BATCH));
    // A few batches in flight at once (the latency of one round trip is not paid 250 times), never all of them.
    const lanes = Array.from({ length: Math.min(ACQUIRE_LANES, batches.length) }, async () => {
      for (let b = batches.shift(); b !== undefined; b = batches.shift()) {
        if (!(await this.#acquireBatch(b, session))) return;
      }
    });
    await Promise.all(lanes);
  }

  /** One batch of #acquireAll; false when no further batch should be tried. */
  async #acquireBatch(
    actions: readonly Extract<MemberAction, { type: 'acquire' }>[],
    session: Session,
  ): Promise<boolean> {
    // Lost the lease or the session meanwhile, or leaving: the next round decides again.
    const state = this.#c.membershipState();
    if (!this.#c.mayStart(session) || state === 'leaving' || state === 'left') return false;
    const batch = actions.filter((a) => !this.#c.handlers.has(a.resource));
    if (batch.length === 0) return true;
    const entries = batch.map((a) => this.#c.handlers.newEntry(a.resource));
    const got = new Map<string, number>();
    let failure: unknown;
    try {
      await acquireMany(
        this.#c.store,
        this.#c.keys,
        session,
        this.#c.nodeId,
        batch.map((a) => ({ resource: a.resource, generation: a.generation })),
        batch[0]!.stateRevision,
        this.#c.mutants,
        got,
      );
    } catch (err) {
      failure = err;
    }
    const mayStart = this.#c.mayStart(session);
    const toRelease: { resource: string; token: number }[] = [];
    let broken: unknown;
    batch.forEach((a, j) => {
      const token = got.get(a.resource);
      if (token === undefined) {
        this.#c.handlers.delete(a.resource);
        // Outcome unknown: if the lock is ours after all, a later round adopts or releases it.
        if (failure !== undefined) this.#c.uncertain.add(a.resource);
        return;
      }
      if (!mayStart) {
        // We lost the lease meanwhile: release at once.
        this.#c.handlers.delete(a.resource);
        toRelease.push({ resource: a.resource, token });
        return;
      }
      try {
        this.#c.handlers.start(a.resource, entries[j]!, token, a.stateGeneration, session);
      } catch (error) {
        // Not started (a broken invariant): forget it; the lock goes with the session when the member leaves.
        this.#c.handlers.delete(a.resource);
        broken ??= error;
      }
    });
    if (toRelease.length > 0) await releaseMany(this.#c.store, this.#c.keys, toRelease).catch(() => undefined);
    if (broken !== undefined) this.#c.reportOrFail(broken, 'acquire');
    if (failure !== undefined) {
      this.#c.reportOrFail(failure, `acquire ${batch.length === 1 ? batch[0]!.resource : `${batch.length} resources`}`);
      return false;
    }
    return true;
  }

  /** Release the locks of settled handlers, a batch per transaction. */
  async releaseAll(actions: readonly Extract<MemberAction, { type: 'release' }>[]): Promise<void> {
    if (actions.length === 0) return;
    const items: { resource: string; token: number }[] = [];
    for (const a of actions) {
      const e = this.#c.handlers.get(a.resource);
      if (e === undefined) continue;
      try {
        // The mutant removes the wait for the handler and this guard with it (the simulator must catch it).
        if (!this.#c.mutants.has('release-before-stop'))
          invariant(e.settled === undefined, () => `releasing ${a.resource} while its handler runs`);
      } catch (error) {
        this.#c.reportOrFail(error, `release ${a.resource}`);
        continue;
      }
      e.state = { phase: 'releasing', token: a.token };
      items.push({ resource: a.resource, token: a.token });
    }
    const done = new Set<string>();
    let failure: unknown;
    try {
      // A lock that is no longer the one we took (our session expired, somebody else holds it now) is not ours to
      // release: it is forgotten all the same.
      for (let i = 0; i < items.length; i += RELEASE_BATCH) {
        const batch = items.slice(i, i + RELEASE_BATCH);
        await releaseMany(this.#c.store, this.#c.keys, batch);
        for (const it of batch) done.add(it.resource);
      }
    } catch (error) {
      failure = error;
    }
    for (const it of items) {
      const e = this.#c.handlers.get(it.resource);
      if (e === undefined) continue;
      if (done.has(it.resource)) {
        this.#c.handlers.delete(it.resource);
        this.#c.released({ resource: it.resource, fencingToken: it.token });
      } else e.state = { phase: 'stopped', token: it.token };
    }
    if (failure !== undefined) this.#c.reportOrFail(failure, `release ${items.length} resources`);
    this.#c.kick();
  }
}
