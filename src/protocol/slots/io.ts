/**
 * Writing a slots cluster through the store contract: the cluster's
 * configuration, a site's ready bitmap, the guarded release, primary locks
 * with the site's `held/` summaries, and the coordinator's plan. These
 * functions translate decisions into transactions; they decide nothing (the
 * release rule is checkRelease in site.ts; reading is view.ts).
 */
import { InvalidArgumentError } from '../../errors.js';
import type { Compare, Op, Session, Store, TxnResult } from '../../store/contract.js';
import { NO_MUTANTS, type Mutants } from '../mutants.js';
import {
  decodeConfig,
  encodeConfig,
  encodeHeld,
  encodePlanChunk,
  encodePrimary,
  encodeProbe,
  encodeReady,
  PLAN_CHUNK_SLOTS,
  type ReadyBits,
  type SlotAssignment,
  type SlotKeys,
  type SlotsConfig,
} from './keys.js';

/** Lock transactions of different chunks in flight at once (see perChunk). */
const MAX_CHUNKS_IN_FLIGHT = 8;

/** Create the cluster's configuration, or check that ours matches the one it was created with. */
export async function ensureConfig(store: Store, keys: SlotKeys, config: SlotsConfig, cluster: string): Promise<void> {
  for (;;) {
    const key = keys.config;
    const r = await store.txn({
      compare: [{ key, target: 'exists', exists: false }],
      then: [{ op: 'put', key, value: encodeConfig(config) }],
      else: [{ op: 'get', key }],
    });
    if (r.succeeded) return;
    const kv = r.results[0]?.op === 'get' ? r.results[0].kv : undefined;
    if (kv === undefined) continue; // deleted between the compare and the get: try again
    const found = decodeConfig(key, kv.value);
    if (
      found.slotCount !== config.slotCount ||
      found.replicas !== config.replicas ||
      found.minSites !== config.minSites
    ) {
      throw new InvalidArgumentError(
        `cluster ${cluster} was created with slotCount ${found.slotCount}, replicas ${found.replicas}, ` +
          `minNodes ${found.minSites}; this node asked for ${config.slotCount}, ${config.replicas}, ` +
          `${config.minSites}. Use the cluster's values (slots cannot be re-sharded in place)`,
      );
    }
    return;
  }
}

/** The ops that register a site: its ready bitmap on its session, and the joins key every registration rewrites. */
export function registrationOps(keys: SlotKeys, siteId: string, bits: ReadyBits, session: Session): Op[] {
  return [
    { op: 'put', key: keys.readyOf(siteId), value: encodeReady(bits), session },
    { op: 'put', key: keys.joins, value: JSON.stringify({ v: 1, site: siteId }) },
  ];
}

export async function writeReady(
  store: Store,
  keys: SlotKeys,
  siteId: string,
  bits: ReadyBits,
  session: Session,
): Promise<void> {
  await store.txn({
    compare: [],
    then: [{ op: 'put', key: keys.readyOf(siteId), value: encodeReady(bits), session }],
  });
}

/**
 * A release's liveness probe: ask the replicas it would count to answer (each rewrites its ready key). Returns the
 * probe's revision: only ready keys written after it count for the release (SiteView.confirmed).
 */
export async function writeProbe(
  store: Store,
  keys: SlotKeys,
  siteId: string,
  ask: readonly string[],
  session: Session,
): Promise<number> {
  const r = await store.txn({
    compare: [],
    then: [
      { op: 'put', key: keys.probeOf(siteId), value: encodeProbe({ site: siteId, ask: [...ask].sort() }), session },
    ],
  });
  return r.revision;
}

/**
 * Write the bitmap without the released slots — only if every counted replica's ready key is unchanged since
 * the read the release was checked on (`counted`: site → mod revision there), and, unless every slot was reported
 * failed, no site registered since (`joinsRevision`: a join raises the floor; Quint finding S2).
 */
export function releaseTxn(
  store: Store,
  keys: SlotKeys,
  siteId: string,
  bits: ReadyBits,
  session: Session,
  counted: ReadonlyMap<string, number>,
  joinsRevision: number | undefined,
): Promise<TxnResult> {
  const compare: Compare[] = [...counted].map(([site, modRevision]) => ({
    key: keys.readyOf(site),
    target: 'modRevision' as const,
    op: '=' as const,
    value: modRevision,
  }));
  if (joinsRevision !== undefined)
    compare.push({ key: keys.joins, target: 'modRevision', op: '=', value: joinsRevision });
  return store.txn({ compare, then: [{ op: 'put', key: keys.readyOf(siteId), value: encodeReady(bits), session }] });
}

/**
 * The writes of a site's `held/` summary for the chunks of `slots`: `held` maps every lock the site holds in those
 * chunks to its epoch (0: "the revision of this transaction", for locks the same transaction creates). An empty
 * chunk's key is deleted.
 */
export function heldOps(
  keys: SlotKeys,
  siteId: string,
  slots: readonly number[],
  held: ReadonlyMap<number, number>,
  session: Session,
): Op[] {
  const chunks = new Set(slots.map((s) => Math.floor(s / PLAN_CHUNK_SLOTS)));
  const ops: Op[] = [];
  for (const c of chunks) {
    const from = c * PLAN_CHUNK_SLOTS;
    const to = from + PLAN_CHUNK_SLOTS;
    const inChunk = new Map<number, number>();
    for (const [slot, epoch] of held) if (slot >= from && slot < to) inChunk.set(slot - from, epoch);
    const key = keys.heldChunk(siteId, c);
    ops.push(inChunk.size === 0 ? { op: 'delete', key } : { op: 'put', key, value: encodeHeld(inChunk), session });
  }
  return ops;
}

/** Take the primary locks of `batch` (all or none: each must be free) and write the summary ops with them. */
export async function takeLocksTxn(
  store: Store,
  keys: SlotKeys,
  siteId: string,
  batch: readonly number[],
  summary: readonly Op[],
  session: Session,
  mutants: Mutants = NO_MUTANTS,
): Promise<TxnResult> {
  return store.txn({
    compare: mutants.has('slots-primary-without-lock')
      ? []
      : batch.map((s) => ({ key: keys.primary(s), target: 'exists' as const, exists: false })),
    then: [
      ...batch.map((s) => ({ op: 'put' as const, key: keys.primary(s), value: encodePrimary(siteId), session })),
      ...summary,
    ],
  });
}

/**
 * Delete the locks of `batch` if every one is still the one we took (`epochs`: slot → create revision), with the
 * summary ops; `orElse` runs when a compare fails (a lone lock that is no longer ours: drop it from the summary).
 */
export async function deleteLocksTxn(
  store: Store,
  keys: SlotKeys,
  batch: readonly number[],
  epochs: ReadonlyMap<number, number>,
  summary: readonly Op[],
  orElse: readonly Op[],
): Promise<TxnResult> {
  return store.txn({
    compare: batch.map((slot) => ({
      key: keys.primary(slot),
      target: 'createRevision' as const,
      op: '=' as const,
      value: epochs.get(slot)!,
    })),
    then: [...batch.map((slot) => ({ op: 'delete' as const, key: keys.primary(slot) })), ...summary],
    else: orElse,
  });
}

/**
 * Write the changed chunks of the plan in one transaction guarded by the coordinator's leadership (16 chunks of a
 * 16384-slot cluster fit): sites never see half a plan. False when the guard failed.
 */
export async function writePlan(
  store: Store,
  keys: SlotKeys,
  guard: Compare,
  generation: number,
  plan: readonly SlotAssignment[],
  changed: readonly number[],
  slotCount: number,
): Promise<boolean> {
  const chunks = new Set(changed.map((s) => Math.floor(s / PLAN_CHUNK_SLOTS)));
  const ops: Op[] = [];
  for (const c of chunks) {
    const from = c * PLAN_CHUNK_SLOTS;
    const to = Math.min(slotCount, from + PLAN_CHUNK_SLOTS);
    ops.push({ op: 'put', key: keys.planChunk(c), value: encodePlanChunk(generation, plan.slice(from, to)) });
  }
  const r = await store.txn({ compare: [guard], then: ops });
  return r.succeeded;
}

/**
 * Run `fn` over `slots` in batches that fit one transaction (two ops per slot plus the chunk's summary): the
 * batches of one chunk one after the other (each rewrites that chunk's summary, so two at once would lose each
 * other's entries), different chunks concurrently (a start or a leave moves thousands of primaries; one
 * transaction at a time took seconds). Every batch has ended when this returns, even when one failed.
 */
export async function perChunk(
  slots: readonly number[],
  maxTxnOps: number,
  fn: (batch: readonly number[]) => Promise<void>,
): Promise<void> {
  const perBatch = Math.max(1, Math.floor((maxTxnOps - 1) / 2));
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
  const results = await Promise.allSettled(
    Array.from({ length: Math.min(MAX_CHUNKS_IN_FLIGHT, queue.length) }, worker),
  );
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}
