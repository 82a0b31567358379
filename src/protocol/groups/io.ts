/**
 * Reading and writing group state through the store contract. The cores
 * (member.ts, coordinator.ts) decide; these functions only translate between
 * keys and views, and never decide anything themselves.
 */
import { CorruptDataError } from '../../errors.js';
import type { Compare, KeyValue, Op, OpResult, Session, Store } from '../../store/contract.js';
import {
  decodeAck,
  decodeGrant,
  decodeHeld,
  decodeMember,
  decodeState,
  encode,
  type GroupKeys,
  type MemberRecord,
  type StateRecord,
} from './keys.js';
import type { CoordinatorView, GrantRef } from './coordinator.js';
import { NO_MUTANTS, type Mutants } from '../mutants.js';
import type { HeldView, MemberView } from './member.js';

/** Reads in one transaction when they fit (one snapshot on every backend that has them). */
const MAX_OPS = 120;

export type CorruptionReporter = (error: CorruptDataError) => void;

function rangeResult(r: OpResult | undefined): readonly KeyValue[] {
  return r?.op === 'range' ? r.kvs : [];
}

function getResult(r: OpResult | undefined): KeyValue | undefined {
  return r?.op === 'get' ? r.kv : undefined;
}

function tryDecode<T>(decode: () => T, report: CorruptionReporter): T | undefined {
  try {
    return decode();
  } catch (err) {
    if (err instanceof CorruptDataError) {
      report(err);
      return undefined;
    }
    throw err;
  }
}

export function decodeStateKv(kv: KeyValue | undefined, report: CorruptionReporter): StateRecord | undefined {
  return kv === undefined ? undefined : tryDecode(() => decodeState(kv.key, kv.value), report);
}

type ReadOp = Extract<Op, { op: 'get' } | { op: 'range' }>;

/**
 * Reads in one transaction, where a key the store itself cannot read (a Redis record of the wrong type: the whole
 * transaction fails with CorruptDataError naming it) does not hide the others: its `get` is reported and left out,
 * and the rest is read again (still one snapshot). A key under a `range` cannot be left out: that error is thrown.
 * Returns the results in the order of `ops` (undefined for a get left out) and the keys left out.
 */
export async function readAround(
  store: Store,
  ops: readonly ReadOp[],
  report: CorruptionReporter,
): Promise<{ results: (OpResult | undefined)[]; revision: number; unreadable: string[] }> {
  const unreadable: string[] = [];
  for (;;) {
    const live = ops.filter((o) => !(o.op === 'get' && unreadable.includes(o.key)));
    try {
      const r = await store.txn({ compare: [], then: live });
      let i = 0;
      const results = ops.map((o) => (live.includes(o) ? r.results[i++] : undefined));
      return { results, revision: r.revision, unreadable };
    } catch (err) {
      const key = err instanceof CorruptDataError ? err.key : undefined;
      if (key === undefined || unreadable.includes(key) || !live.some((o) => o.op === 'get' && o.key === key))
        throw err;
      report(err as CorruptDataError);
      unreadable.push(key);
    }
  }
}

/** The state, and whether its key is present but unreadable (then the coordinator must not overwrite it). */
function stateOf(
  kv: KeyValue | undefined,
  key: string,
  skipped: readonly string[],
  report: CorruptionReporter,
): { state: StateRecord | undefined; unreadable: boolean } {
  if (skipped.includes(key)) return { state: undefined, unreadable: true };
  const state = decodeStateKv(kv, report);
  return { state, unreadable: kv !== undefined && state === undefined };
}

function heldView(kv: KeyValue, report: CorruptionReporter): HeldView {
  const rec = tryDecode(() => decodeHeld(kv.key, kv.value), report);
  return { nodeId: rec?.nodeId, sessionId: kv.sessionId, token: kv.createRevision };
}

/** Batched gets (≤ MAX_OPS per transaction). */
export async function getMany(store: Store, keys: readonly string[]): Promise<Map<string, KeyValue>> {
  const out = new Map<string, KeyValue>();
  for (let i = 0; i < keys.length; i += MAX_OPS) {
    const chunk = keys.slice(i, i + MAX_OPS);
    const r = await store.txn({ compare: [], then: chunk.map((key) => ({ op: 'get', key })) });
    for (const res of r.results) if (res.op === 'get' && res.kv !== undefined) out.set(res.key, res.kv);
  }
  return out;
}

export async function readMemberView(
  store: Store,
  keys: GroupKeys,
  nodeId: string,
  interesting: Iterable<string>,
  report: CorruptionReporter,
  /** Granted names whose lock the caller does not need (it runs them): not read, so a steady member reads little. */
  skip: ReadonlySet<string> = new Set(),
): Promise<MemberView> {
  const mine = keys.grantsOf(nodeId);
  const r = await readAround(
    store,
    [
      { op: 'range', prefix: mine },
      { op: 'get', key: keys.state },
      { op: 'get', key: keys.ack(nodeId) },
    ],
    report,
  );
  const grants = new Map<string, { generation: number }>();
  const unreadableGrants = new Set<string>();
  for (const kv of rangeResult(r.results[0])) {
    const g = tryDecode(() => decodeGrant(kv.key, kv.value), report);
    if (g !== undefined) grants.set(kv.key.slice(mine.length), g);
    else unreadableGrants.add(kv.key.slice(mine.length));
  }
  const stateKv = getResult(r.results[1]);
  const { state } = stateOf(stateKv, keys.state, r.unreadable, report);
  const ackKv = getResult(r.results[2]);
  const ack = ackKv === undefined ? undefined : tryDecode(() => decodeAck(ackKv.key, ackKv.value), report);
  const names = new Set<string>();
  for (const n of grants.keys()) if (!skip.has(n)) names.add(n);
  for (const n of interesting) names.add(n);
  const heldKvs = await getMany(
    store,
    [...names].map((n) => keys.heldKey(n)),
  );
  const held = new Map<string, HeldView>();
  for (const [key, kv] of heldKvs) held.set(key.slice(keys.held.length), heldView(kv, report));
  return {
    state,
    stateRevision: stateKv?.modRevision ?? 0,
    grants,
    held,
    ackedGeneration: ack?.generation,
    unreadableGrants,
  };
}

export interface FullGroupView extends CoordinatorView {
  /** The raw member records' session ids (for status). */
  readonly memberKvs: ReadonlyMap<string, KeyValue>;
  /** resource → lock (with its token), for status and completion. */
  readonly locks: ReadonlyMap<string, HeldView>;
  /** Mod revision of the catalog key (0 when absent), from the same snapshot. */
  readonly catalogRevision: number;
  readonly revision: number;
  /** Keys of the coordinator's (state, grants) present but unreadable (see CoordinatorView.unreadable). */
  readonly unreadable: readonly string[];
}

/**
 * Everything the coordinator (and `status`) needs. The small parts (members, acks, state, catalog) in one
 * transaction; then each large prefix (resources, grants, locks) in a read of its own, in that order. Each read
 * is a snapshot but together they are not; nothing depends on that: the catalog's revision is read before the
 * resources (a change in between only makes the next read look again), and a coordinator's view never decides
 * safety (coordinator.ts). Separate reads let a backend that pages a long read (SQLite) keep its event loop turning.
 */
export async function readGroupView(store: Store, keys: GroupKeys, report: CorruptionReporter): Promise<FullGroupView> {
  const small = await readAround(
    store,
    [
      { op: 'range', prefix: keys.members },
      { op: 'range', prefix: keys.acks },
      { op: 'get', key: keys.state },
      { op: 'get', key: keys.catalog },
    ],
    report,
  );
  const resourcesRead = await store.range(keys.resources);
  const grantsRead = await store.range(keys.grants);
  const heldRead = await store.range(keys.held);
  const r = {
    revision: Math.max(small.revision, resourcesRead.revision, grantsRead.revision, heldRead.revision),
    unreadable: small.unreadable,
    results: [
      small.results[0],
      { op: 'range', prefix: keys.resources, kvs: resourcesRead.kvs },
      { op: 'range', prefix: keys.grants, kvs: grantsRead.kvs },
      { op: 'range', prefix: keys.held, kvs: heldRead.kvs },
      small.results[1],
      small.results[2],
      small.results[3],
    ] as (OpResult | undefined)[],
  };
  const memberKvList = rangeResult(r.results[0]);
  const members = decodeMembers(keys, memberKvList, report);
  const memberKvs = new Map<string, KeyValue>();
  for (const kv of memberKvList) {
    const id = kv.key.slice(keys.members.length);
    if (members.has(id)) memberKvs.set(id, kv);
  }
  const resources = rangeResult(r.results[1]).map((kv) => kv.key.slice(keys.resources.length));
  const decoded = decodeGrants(keys, rangeResult(r.results[2]), report);
  const grants = decoded.grants;
  let maxGeneration = decoded.maxGeneration;
  const held = new Map<string, string>();
  const locks = new Map<string, HeldView>();
  for (const kv of rangeResult(r.results[3])) {
    const name = kv.key.slice(keys.held.length);
    const h = heldView(kv, report);
    locks.set(name, h);
    held.set(name, h.nodeId ?? '?');
  }
  const acks = decodeAcks(keys, rangeResult(r.results[4]), report);
  const stateKv = getResult(r.results[5]);
  const st = stateOf(stateKv, keys.state, r.unreadable, report);
  const state = st.state;
  maxGeneration = Math.max(maxGeneration, state?.generation ?? 0);
  const catalogRevision = getResult(r.results[6])?.modRevision ?? 0;
  const unreadable = [...decoded.unreadable, ...(st.unreadable ? [keys.state] : [])];
  return {
    members,
    memberKvs,
    resources,
    grants,
    held,
    locks,
    acks,
    state,
    maxGeneration,
    catalogRevision,
    revision: r.revision,
    unreadable,
    stateRevision: stateKv?.modRevision ?? 0,
  };
}

/**
 * The coordinator's view, read incrementally. A full read of a group with many
 * resources costs three keys per resource (resource, grant, lock); doing it on
 * every change would make the coordinator's cost — and the store's — grow with
 * the group, not with the change. So it caches:
 *  - the resource list, re-read only when the catalog key's mod revision moved
 *    (every registry write rewrites it in the same transaction);
 *  - the grants, which only the coordinator writes (guarded): after each
 *    successful write it applies its own changes; after a write with an
 *    unknown outcome it reads them all again;
 *  - the locks: only those of resources whose handoff it has not yet seen
 *    complete are re-read (`unconfirmed`), all of them during a global
 *    barrier's stop phase (it waits for every lock to be free).
 * Every `resyncIntervalMs` it reads everything again, so that nothing a cache
 * could miss (a key changed by hand) survives long. Members, acks and the
 * state are small and read every time. Safety never depends on this view
 * (see coordinator.ts); a stale cache could only delay a rebalance.
 *
 * The maps a read hands out are never changed afterwards: an update builds a
 * new map (copy on write), so a caller may keep a view as long as it likes.
 */
export class CoordinatorReader {
  readonly #store: Store;
  readonly #keys: GroupKeys;
  readonly #report: CorruptionReporter;
  readonly #resyncIntervalMs: number;
  #resources: string[] | undefined;
  #catalogRevision = -1;
  #grants: ReadonlyMap<string, readonly string[]> | undefined;
  #maxGeneration = 0;
  #held: ReadonlyMap<string, string> = new Map();
  /** Resources whose lock may not be held by their grantee yet. */
  readonly #unconfirmed = new Set<string>();
  #lastFullAtMs = Number.NEGATIVE_INFINITY;
  /** The last view listed unreadable keys: read everything again until they are repaired. */
  #unreadableSeen = false;
  /** When the resource list was last read, and what that cost (see read()). */
  #resourcesReadAtMs = Number.NEGATIVE_INFINITY;
  #resourcesReadCostMs = 0;
  /** When every lock was last read, and what that cost (see read()). */
  #heldReadAtMs = Number.NEGATIVE_INFINITY;
  #heldReadCostMs = 0;
  /** Bumped whenever the resources (or the grants) change, so the coordinator can skip an unchanged placement. */
  #resourcesVersion = 0;
  #grantsVersion = 0;

  constructor(store: Store, keys: GroupKeys, report: CorruptionReporter, resyncIntervalMs: number) {
    this.#store = store;
    this.#keys = keys;
    this.#report = report;
    this.#resyncIntervalMs = resyncIntervalMs;
  }

  /** Something was written with an unknown outcome: read everything next time. */
  invalidate(): void {
    this.#grants = undefined;
  }

  #clockNow(): number {
    return this.#store.clock.now();
  }

  async read(nowMs: number): Promise<CoordinatorView> {
    const k = this.#keys;
    if (
      this.#grants === undefined ||
      this.#resources === undefined ||
      this.#unreadableSeen ||
      nowMs >= this.#lastFullAtMs + this.#resyncIntervalMs
    ) {
      return this.#readFull(nowMs);
    }
    const r = await readAround(
      this.#store,
      [
        { op: 'range', prefix: k.members },
        { op: 'range', prefix: k.acks },
        { op: 'get', key: k.state },
        { op: 'get', key: k.catalog },
      ],
      this.#report,
    );
    const members = decodeMembers(k, rangeResult(r.results[0]), this.#report);
    const acks = decodeAcks(k, rangeResult(r.results[1]), this.#report);
    const stateKv = getResult(r.results[2]);
    const st = stateOf(stateKv, k.state, r.unreadable, this.#report);
    const state = st.state;
    if (st.unreadable) {
      this.#unreadableSeen = true;
      return {
        members,
        resources: this.#resources,
        grants: this.#grants,
        held: this.#held,
        acks,
        state,
        maxGeneration: this.#maxGeneration,
        unreadable: [k.state],
      };
    }
    const catalogRevision = getResult(r.results[3])?.modRevision ?? 0;
    if (
      catalogRevision !== this.#catalogRevision &&
      // While the registry is being written (100 000 names are 834 transactions, each moving the catalog), read the
      // list at most a tenth of the time: every read of it is as long as the list.
      nowMs >= this.#resourcesReadAtMs + 10 * this.#resourcesReadCostMs
    ) {
      // The catalog's revision was read before the resources: a change in between only makes the next read look again.
      const startedAtMs = this.#clockNow();
      const rr = await this.#store.range(k.resources);
      this.#catalogRevision = catalogRevision;
      this.#resources = rr.kvs.map((kv) => kv.key.slice(k.resources.length));
      this.#resourcesVersion++;
      this.#resourcesReadAtMs = nowMs;
      this.#resourcesReadCostMs = this.#clockNow() - startedAtMs;
    }
    // Locks of departed members go away with their sessions: look at them again.
    for (const [name, node] of this.#held) if (!members.has(node)) this.#unconfirmed.add(name);
    if (
      state?.phase === 'stopping' ||
      // Many handoffs at once: one read of every lock, but in the running phase (where locks only tell when a
      // rebalance has completed) not more often than every tenth of the time, so that a group of 100 000
      // resources does not spend its coordinator's process on re-reading them while they move.
      (this.#unconfirmed.size > 1000 && nowMs >= this.#heldReadAtMs + 10 * this.#heldReadCostMs)
    ) {
      const startedAtMs = this.#clockNow();
      const hr = await this.#store.range(k.held);
      this.#setHeld(
        new Map(hr.kvs.map((kv) => [kv.key.slice(k.held.length), heldView(kv, this.#report).nodeId ?? '?'])),
      );
      this.#heldReadAtMs = nowMs;
      this.#heldReadCostMs = this.#clockNow() - startedAtMs;
    } else if (this.#unconfirmed.size > 1000) {
      // Read all of them again soon (above).
    } else if (this.#unconfirmed.size > 0) {
      const names = [...this.#unconfirmed];
      const got = await getMany(
        this.#store,
        names.map((n) => k.heldKey(n)),
      );
      const held = new Map(this.#held);
      for (const n of names) {
        const kv = got.get(k.heldKey(n));
        if (kv === undefined) held.delete(n);
        else held.set(n, heldView(kv, this.#report).nodeId ?? '?');
      }
      this.#held = held;
      this.#confirm(names);
    }
    const maxGeneration = Math.max(this.#maxGeneration, state?.generation ?? 0);
    return {
      members,
      resources: this.#resources,
      grants: this.#grants,
      held: this.#held,
      acks,
      state,
      maxGeneration,
      versions: { resources: this.#resourcesVersion, grants: this.#grantsVersion },
      stateRevision: stateKv?.modRevision ?? 0,
    };
  }

  /** The coordinator's own write succeeded: bring the cached grants in step. */
  applied(
    changes: readonly { readonly remove?: GrantRef | undefined; readonly add?: GrantRef | undefined }[],
    generation: number,
  ): void {
    if (this.#grants === undefined || changes.length === 0) return;
    const grants = new Map(this.#grants);
    for (const c of changes) {
      if (c.remove !== undefined) {
        const list = (grants.get(c.remove.name) ?? []).filter((n) => n !== c.remove!.nodeId);
        if (list.length === 0) grants.delete(c.remove.name);
        else grants.set(c.remove.name, list);
        this.#unconfirmed.add(c.remove.name);
      }
      if (c.add !== undefined) {
        const list = grants.get(c.add.name) ?? [];
        if (!list.includes(c.add.nodeId)) grants.set(c.add.name, [...list, c.add.nodeId]);
        this.#unconfirmed.add(c.add.name);
      }
    }
    this.#grants = grants;
    this.#grantsVersion++;
    this.#maxGeneration = Math.max(this.#maxGeneration, generation);
  }

  async #readFull(nowMs: number): Promise<CoordinatorView> {
    const view = await readGroupView(this.#store, this.#keys, this.#report);
    this.#unreadableSeen = view.unreadable.length > 0;
    this.#resources = [...view.resources];
    this.#grants = view.grants;
    this.#setHeld(view.held);
    this.#catalogRevision = view.catalogRevision;
    this.#maxGeneration = view.maxGeneration;
    this.#lastFullAtMs = nowMs;
    this.#resourcesVersion++;
    this.#grantsVersion++;
    return {
      members: view.members,
      resources: this.#resources,
      grants: this.#grants,
      held: this.#held,
      acks: view.acks,
      state: view.state,
      maxGeneration: this.#maxGeneration,
      versions: { resources: this.#resourcesVersion, grants: this.#grantsVersion },
      unreadable: view.unreadable,
      stateRevision: view.stateRevision,
    };
  }

  #setHeld(held: ReadonlyMap<string, string>): void {
    this.#held = held;
    this.#unconfirmed.clear();
    for (const [name, owners] of this.#grants ?? [])
      if (this.#held.get(name) !== owners[0]) this.#unconfirmed.add(name);
  }

  /** A resource is confirmed once its lock is held by its (single) grantee, or it is neither granted nor held. */
  #confirm(names: readonly string[]): void {
    for (const n of names) {
      const owners = this.#grants?.get(n);
      const holder = this.#held.get(n);
      if (owners === undefined ? holder === undefined : owners.length === 1 && holder === owners[0]) {
        this.#unconfirmed.delete(n);
      }
    }
  }
}

function decodeMembers(
  keys: GroupKeys,
  kvs: readonly KeyValue[],
  report: CorruptionReporter,
): Map<string, MemberRecord> {
  const members = new Map<string, MemberRecord>();
  for (const kv of kvs) {
    const id = kv.key.slice(keys.members.length);
    const m = tryDecode(() => decodeMember(kv.key, kv.value), report);
    // A record must describe the key it is stored under; anything else is not ours to trust.
    if (m !== undefined && m.nodeId === id) members.set(id, m);
    else if (m !== undefined) report(new CorruptDataError(`${kv.key} names node ${m.nodeId}`, { key: kv.key }));
  }
  return members;
}

function decodeGrants(
  keys: GroupKeys,
  kvs: readonly KeyValue[],
  report: CorruptionReporter,
): { grants: Map<string, string[]>; maxGeneration: number; unreadable: string[] } {
  const grants = new Map<string, string[]>();
  const unreadable: string[] = [];
  let maxGeneration = 0;
  for (const kv of kvs) {
    const ref = keys.parseGrantKey(kv.key);
    if (ref === undefined) {
      // Not a name the coordinator writes (so never overwritten either): reported only.
      report(
        new CorruptDataError(`${kv.key} is not a grant key (grants/<node>/<resource>); delete it`, { key: kv.key }),
      );
      continue;
    }
    const g = tryDecode(() => decodeGrant(kv.key, kv.value), report);
    if (g !== undefined) maxGeneration = Math.max(maxGeneration, g.generation);
    // An unreadable grant is still listed (status shows it); the coordinator does not overwrite it.
    else unreadable.push(kv.key);
    const list = grants.get(ref.name) ?? [];
    list.push(ref.nodeId);
    grants.set(ref.name, list);
  }
  return { grants, maxGeneration, unreadable };
}

function decodeAcks(keys: GroupKeys, kvs: readonly KeyValue[], report: CorruptionReporter): Map<string, number> {
  const acks = new Map<string, number>();
  for (const kv of kvs) {
    const a = tryDecode(() => decodeAck(kv.key, kv.value), report);
    if (a !== undefined) acks.set(kv.key.slice(keys.acks.length), a.generation);
  }
  return acks;
}

// ---- writes ---------------------------------------------------------------------

/** Try to take a resource's lock. Resolves to the fencing token, or undefined if it is taken or no longer granted. */
export async function acquire(
  store: Store,
  keys: GroupKeys,
  session: Session,
  nodeId: string,
  resource: string,
  generation: number,
  stateRevision: number | undefined,
  mutants: Mutants = NO_MUTANTS,
): Promise<number | undefined> {
  const got = await acquireMany(store, keys, session, nodeId, [{ resource, generation }], stateRevision, mutants);
  return got.get(resource);
}

/** Locks taken in one transaction at most (three compares and ops each, one more for the state's revision). */
export const ACQUIRE_BATCH = 40;
/** Locks released in one transaction at most (a compare and a delete each). */
export const RELEASE_BATCH = 60;

/**
 * Take several locks, a batch per transaction: each lock only if it is free and still granted to `nodeId`
 * (exactly the single acquire's compares, so a batch never takes what one acquire could not). A batch whose
 * compares fail (one of its locks was taken meanwhile) is split in halves and tried again, down to single locks,
 * so a race costs a few more transactions and never a lock that was free. Resolves to each lock taken with its
 * fencing token (the create revision of its transaction: it still grows with every acquisition of that lock).
 * Throws on a request failure (outcome unknown for the batch in flight; `done` says which locks were taken
 * before it).
 */
export async function acquireMany(
  store: Store,
  keys: GroupKeys,
  session: Session,
  nodeId: string,
  items: readonly { readonly resource: string; readonly generation: number }[],
  stateRevision: number | undefined,
  mutants: Mutants = NO_MUTANTS,
  done: Map<string, number> = new Map(),
): Promise<Map<string, number>> {
  const attempt = async (batch: readonly { readonly resource: string; readonly generation: number }[]) => {
    const compare: Compare[] =
      // Global barrier: only under the state we decided on (no start may slip past a new stop phase).
      stateRevision === undefined ? [] : [{ key: keys.state, target: 'modRevision', op: '=', value: stateRevision }];
    const then: Op[] = [];
    for (const { resource, generation } of batch) {
      const heldKey = keys.heldKey(resource);
      if (!mutants.has('acquire-without-lock')) compare.push({ key: heldKey, target: 'exists', exists: false });
      compare.push({ key: keys.grant(nodeId, resource), target: 'exists', exists: true });
      then.push({ op: 'put', key: heldKey, value: encode({ nodeId, generation }), session });
    }
    const r = await store.txn({
      compare,
      then,
      else: stateRevision === undefined ? [] : [{ op: 'get', key: keys.state }],
    });
    if (r.succeeded) for (const { resource } of batch) done.set(resource, r.revision);
    // A new state fails every smaller batch too: stop here.
    else if (stateRevision !== undefined && (getResult(r.results[0])?.modRevision ?? 0) !== stateRevision) stale = true;
    return r.succeeded;
  };
  let stale = false;
  const split = async (batch: readonly { readonly resource: string; readonly generation: number }[]) => {
    if (await attempt(batch)) return;
    if (batch.length === 1 || stale) return;
    const half = Math.ceil(batch.length / 2);
    await split(batch.slice(0, half));
    await split(batch.slice(half));
  };
  for (let i = 0; i < items.length && !stale; i += ACQUIRE_BATCH) await split(items.slice(i, i + ACQUIRE_BATCH));
  return done;
}

/** Release a lock we hold (only if it is still the one we took). */
export async function release(store: Store, keys: GroupKeys, resource: string, token: number): Promise<boolean> {
  const released = await releaseMany(store, keys, [{ resource, token }]);
  return released.has(resource);
}

/**
 * Release several locks, a batch per transaction, each only if it is still the one taken with its token. A batch
 * whose compares fail is split down to single locks (a lock that is gone, or somebody else's now, is simply not
 * released). Resolves to the names released; `done` collects them as they go (for a caller whose request failed).
 */
export async function releaseMany(
  store: Store,
  keys: GroupKeys,
  items: readonly { readonly resource: string; readonly token: number }[],
  done: Set<string> = new Set(),
): Promise<Set<string>> {
  const split = async (batch: readonly { readonly resource: string; readonly token: number }[]): Promise<void> => {
    const r = await store.txn({
      compare: batch.map(({ resource, token }) => ({
        key: keys.heldKey(resource),
        target: 'createRevision' as const,
        op: '=' as const,
        value: token,
      })),
      then: batch.map(({ resource }) => ({ op: 'delete' as const, key: keys.heldKey(resource) })),
    });
    if (r.succeeded) for (const { resource } of batch) done.add(resource);
    else if (batch.length > 1) {
      const half = Math.ceil(batch.length / 2);
      await split(batch.slice(0, half));
      await split(batch.slice(half));
    }
  };
  for (let i = 0; i < items.length; i += RELEASE_BATCH) await split(items.slice(i, i + RELEASE_BATCH));
  return done;
}

export async function putAck(
  store: Store,
  keys: GroupKeys,
  session: Session,
  nodeId: string,
  generation: number,
): Promise<void> {
  await store.txn({
    compare: [],
    then: [{ op: 'put', key: keys.ack(nodeId), value: encode({ generation }), session }],
  });
}

/**
 * Apply grant changes and a new state with guarded transactions (≤ 128 ops
 * each). A moved resource's delete and put stay in one transaction. Each
 * transaction compares the leadership guard and, when `stateRevision` is
 * given, that the state key is still the one the decision was made from
 * (never overwrite a state that changed since — e.g. junk written meanwhile —
 * unread). Returns `written`; `deposed` as soon as the guard fails (this node
 * is no longer the coordinator); `stale` when only the state changed (read
 * again and decide again).
 */
export async function writeCoordinatorDecision(
  store: Store,
  keys: GroupKeys,
  guard: Compare,
  changes: readonly { readonly remove?: GrantRef | undefined; readonly add?: GrantRef | undefined }[],
  generation: number,
  state: StateRecord | undefined,
  mutants: Mutants = NO_MUTANTS,
  stateRevision?: number,
): Promise<'written' | 'deposed' | 'stale'> {
  const batches: Op[][] = [];
  let batch: Op[] = [];
  const written = new Set<string>();
  for (const c of changes) {
    const ops: Op[] = [];
    if (c.remove !== undefined) ops.push({ op: 'delete', key: keys.grant(c.remove.nodeId, c.remove.name) });
    if (c.add !== undefined) {
      const key = keys.grant(c.add.nodeId, c.add.name);
      if (!written.has(key)) ops.push({ op: 'put', key, value: encode({ generation }) });
      written.add(key);
    }
    if (batch.length + ops.length > MAX_OPS) {
      batches.push(batch);
      batch = [];
    }
    batch.push(...ops);
  }
  // The state goes last, so that members see the new generation only with (the last of) its grants.
  if (state !== undefined) {
    if (batch.length + 1 > MAX_OPS) {
      batches.push(batch);
      batch = [];
    }
    batch.push({ op: 'put', key: keys.state, value: encode(state) });
  }
  if (batch.length > 0) batches.push(batch);
  const compare: Compare[] = mutants.has('unguarded-coordinator')
    ? []
    : [
        guard,
        ...(stateRevision === undefined
          ? []
          : [{ key: keys.state, target: 'modRevision' as const, op: '=' as const, value: stateRevision }]),
      ];
  for (const ops of batches) {
    const r = await store.txn({ compare, then: ops, else: [{ op: 'get', key: guard.key }] });
    if (!r.succeeded) {
      const leader = r.results[0]?.op === 'get' ? r.results[0].kv : undefined;
      return compare.length > 1 && leader !== undefined && holds(guard, leader) ? 'stale' : 'deposed';
    }
  }
  return 'written';
}

/** Whether a compare on a key holds for its current record (the leadership guard: createRevision = token). */
function holds(c: Compare, kv: KeyValue): boolean {
  if (c.target !== 'createRevision' || c.op !== '=') return false;
  return kv.createRevision === c.value;
}
