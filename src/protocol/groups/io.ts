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
import { activeMutants } from '../mutants.js';
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
): Promise<MemberView> {
  const mine = keys.grantsOf(nodeId);
  const r = await store.txn({
    compare: [],
    then: [
      { op: 'range', prefix: mine },
      { op: 'get', key: keys.state },
      { op: 'get', key: keys.ack(nodeId) },
    ],
  });
  const grants = new Map<string, { generation: number }>();
  for (const kv of rangeResult(r.results[0])) {
    const g = tryDecode(() => decodeGrant(kv.key, kv.value), report);
    if (g !== undefined) grants.set(kv.key.slice(mine.length), g);
  }
  const stateKv = getResult(r.results[1]);
  const state = decodeStateKv(stateKv, report);
  const ackKv = getResult(r.results[2]);
  const ack = ackKv === undefined ? undefined : tryDecode(() => decodeAck(ackKv.key, ackKv.value), report);
  const names = new Set<string>(grants.keys());
  for (const n of interesting) names.add(n);
  const heldKvs = await getMany(
    store,
    [...names].map((n) => keys.heldKey(n)),
  );
  const held = new Map<string, HeldView>();
  for (const [key, kv] of heldKvs) held.set(key.slice(keys.held.length), heldView(kv, report));
  return { state, stateRevision: stateKv?.modRevision ?? 0, grants, held, ackedGeneration: ack?.generation };
}

export interface FullGroupView extends CoordinatorView {
  /** The raw member records' session ids (for status). */
  readonly memberKvs: ReadonlyMap<string, KeyValue>;
  /** resource → lock (with its token), for status and completion. */
  readonly locks: ReadonlyMap<string, HeldView>;
  readonly revision: number;
}

/** Everything the coordinator (and `status`) needs, in one transaction. */
export async function readGroupView(store: Store, keys: GroupKeys, report: CorruptionReporter): Promise<FullGroupView> {
  const r = await store.txn({
    compare: [],
    then: [
      { op: 'range', prefix: keys.members },
      { op: 'range', prefix: keys.resources },
      { op: 'range', prefix: keys.grants },
      { op: 'range', prefix: keys.held },
      { op: 'range', prefix: keys.acks },
      { op: 'get', key: keys.state },
    ],
  });
  const members = new Map<string, MemberRecord>();
  const memberKvs = new Map<string, KeyValue>();
  for (const kv of rangeResult(r.results[0])) {
    const id = kv.key.slice(keys.members.length);
    const m = tryDecode(() => decodeMember(kv.key, kv.value), report);
    // A record must describe the key it is stored under; anything else is not ours to trust.
    if (m !== undefined && m.nodeId === id) {
      members.set(id, m);
      memberKvs.set(id, kv);
    } else if (m !== undefined) report(new CorruptDataError(`${kv.key} names node ${m.nodeId}`, { key: kv.key }));
  }
  const resources = rangeResult(r.results[1]).map((kv) => kv.key.slice(keys.resources.length));
  const grants = new Map<string, string[]>();
  let maxGeneration = 0;
  for (const kv of rangeResult(r.results[2])) {
    const ref = keys.parseGrantKey(kv.key);
    if (ref === undefined) continue;
    const g = tryDecode(() => decodeGrant(kv.key, kv.value), report);
    if (g !== undefined) maxGeneration = Math.max(maxGeneration, g.generation);
    // Even an unreadable grant is listed, so that the coordinator replaces it.
    const list = grants.get(ref.name) ?? [];
    list.push(ref.nodeId);
    grants.set(ref.name, list);
  }
  const held = new Map<string, string>();
  const locks = new Map<string, HeldView>();
  for (const kv of rangeResult(r.results[3])) {
    const name = kv.key.slice(keys.held.length);
    const h = heldView(kv, report);
    locks.set(name, h);
    held.set(name, h.nodeId ?? '?');
  }
  const acks = new Map<string, number>();
  for (const kv of rangeResult(r.results[4])) {
    const a = tryDecode(() => decodeAck(kv.key, kv.value), report);
    if (a !== undefined) acks.set(kv.key.slice(keys.acks.length), a.generation);
  }
  const state = decodeStateKv(getResult(r.results[5]), report);
  maxGeneration = Math.max(maxGeneration, state?.generation ?? 0);
  return { members, memberKvs, resources, grants, held, locks, acks, state, maxGeneration, revision: r.revision };
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
  stateRevision?: number,
): Promise<number | undefined> {
  const heldKey = keys.heldKey(resource);
  const r = await store.txn({
    compare: [
      // Global barrier: only under the state we decided on (no start may slip past a new stop phase).
      ...(stateRevision === undefined
        ? []
        : [{ key: keys.state, target: 'modRevision' as const, op: '=' as const, value: stateRevision }]),
      ...(activeMutants.has('acquire-without-lock')
        ? []
        : [{ key: heldKey, target: 'exists' as const, exists: false }]),
      { key: keys.grant(nodeId, resource), target: 'exists', exists: true },
    ],
    then: [{ op: 'put', key: heldKey, value: encode({ nodeId, generation }), session }],
  });
  return r.succeeded ? r.revision : undefined;
}

/** Release a lock we hold (only if it is still the one we took). */
export async function release(store: Store, keys: GroupKeys, resource: string, token: number): Promise<boolean> {
  const heldKey = keys.heldKey(resource);
  const r = await store.txn({
    compare: [{ key: heldKey, target: 'createRevision', op: '=', value: token }],
    then: [{ op: 'delete', key: heldKey }],
  });
  return r.succeeded;
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
 * each). A moved resource's delete and put stay in one transaction. Returns
 * false as soon as the guard fails (this node is no longer the coordinator).
 */
export async function writeCoordinatorDecision(
  store: Store,
  keys: GroupKeys,
  guard: Compare,
  changes: readonly { readonly remove?: GrantRef | undefined; readonly add?: GrantRef | undefined }[],
  generation: number,
  state: StateRecord | undefined,
): Promise<boolean> {
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
  for (const ops of batches) {
    const r = await store.txn({ compare: activeMutants.has('unguarded-coordinator') ? [] : [guard], then: ops });
    if (!r.succeeded) return false;
  }
  return true;
}
