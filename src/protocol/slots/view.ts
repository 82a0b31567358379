/**
 * Reading a slots cluster: one snapshot of everything a site decides on (the
 * configuration, the live sites, the plan, the ready bitmaps and the `held/`
 * summaries of the primary locks), and which slots changed between two
 * snapshots (the runtime decides only about those).
 *
 * Views are never mutated, so an unchanged part is shared between two; a key
 * whose revisions did not change is not decoded again (decoding every lock,
 * chunk and bitmap on every round dominated a large cluster's CPU).
 */
import { CorruptDataError } from '../../errors.js';
import type { KeyValue, Store } from '../../store/contract.js';
import {
  chunkCount,
  decodeConfig,
  decodeHeld,
  decodePlanChunk,
  decodeProbe,
  decodeReady,
  decodeSite,
  PLAN_CHUNK_SLOTS,
  type ReadyBits,
  type SiteRecord,
  type SlotAssignment,
  type SlotKeys,
  type SlotsConfig,
} from './keys.js';

export interface Holder {
  readonly site: string;
  readonly epoch: number;
  readonly sessionId: string | undefined;
}

export function sameRevisions(a: ReadonlyMap<string, KeyValue>, b: ReadonlyMap<string, KeyValue>): boolean {
  if (a.size !== b.size) return false;
  for (const [key, x] of a) {
    const y = b.get(key);
    if (y === undefined || y.modRevision !== x.modRevision || y.createRevision !== x.createRevision) return false;
  }
  return true;
}

export interface SlotsView {
  readonly config: SlotsConfig | undefined;
  readonly sites: Map<string, SiteRecord>;
  readonly plan: readonly (SlotAssignment | undefined)[];
  readonly planRevisions: Map<number, number>;
  readonly generation: number;
  readonly ready: Map<string, ReadyBits>;
  readonly readyKvs: Map<string, KeyValue>;
  readonly holders: readonly (Holder | undefined)[];
  /** holders[s]?.site, for the pure cores. */
  readonly holderSites: readonly (string | undefined)[];
  /** The `held/` summaries read, by key (to tell which chunks changed). */
  readonly heldKvs: Map<string, KeyValue>;
  /** Mod revision of the joins key (0 when absent). */
  readonly joinsRevision: number;
  /** The release probes (see SlotKeys.probes), one per releasing site: its mod revision and whom it asks. */
  readonly probes: readonly { readonly revision: number; readonly ask: ReadonlySet<string> }[];
  readonly revision: number;
  /**
   * Plan chunks present but unreadable (reported as CorruptDataError): the coordinator writes no plan while any is
   * listed — it never overwrites what it could not read — and their slots keep the plan of the last view.
   */
  readonly unreadable?: readonly string[] | undefined;
}

/**
 * The slots whose plan entry, ready bits or lock holder differ between two views, or undefined when something
 * every slot depends on changed (the live sites, their addresses, the configuration). Chunks and bitmaps whose
 * revisions are unchanged are skipped without looking inside.
 */
export function changedSlots(prev: SlotsView, next: SlotsView): Set<number> | undefined {
  if (prev.config !== next.config && JSON.stringify(prev.config) !== JSON.stringify(next.config)) return undefined;
  if (prev.sites.size !== next.sites.size) return undefined;
  for (const [id, a] of next.sites) {
    const b = prev.sites.get(id);
    if (b === undefined || b.address !== a.address || b.sessionId !== a.sessionId || b.zone !== a.zone)
      return undefined;
  }
  const out = new Set<number>();
  const slotCount = next.plan.length;
  for (let c = 0; c < chunkCount(slotCount); c++) {
    if (prev.planRevisions.get(c) === next.planRevisions.get(c)) continue;
    const to = Math.min(slotCount, (c + 1) * PLAN_CHUNK_SLOTS);
    for (let s = c * PLAN_CHUNK_SLOTS; s < to; s++) {
      const a = prev.plan[s];
      const b = next.plan[s];
      if (a === b) continue;
      if (
        a === undefined ||
        b === undefined ||
        a.primary !== b.primary ||
        a.assigned.length !== b.assigned.length ||
        a.assigned.some((x, i) => x !== b.assigned[i])
      ) {
        out.add(s);
      }
    }
  }
  for (const id of new Set([...prev.readyKvs.keys(), ...next.readyKvs.keys()])) {
    const a = prev.readyKvs.get(id);
    const b = next.readyKvs.get(id);
    if (a?.modRevision === b?.modRevision && a?.createRevision === b?.createRevision) continue;
    const x = prev.ready.get(id);
    const y = next.ready.get(id);
    const n = Math.max(x?.length ?? 0, y?.length ?? 0);
    for (let i = 0; i < n; i++) {
      let d = (x?.[i] ?? 0) ^ (y?.[i] ?? 0);
      while (d !== 0) {
        const bit = 31 - Math.clz32(d & -d);
        out.add(i * 8 + bit);
        d &= d - 1;
      }
    }
  }
  for (const key of new Set([...prev.heldKvs.keys(), ...next.heldKvs.keys()])) {
    const a = prev.heldKvs.get(key);
    const b = next.heldKvs.get(key);
    if (a?.modRevision === b?.modRevision && a?.createRevision === b?.createRevision) continue;
    const chunk = Number(key.slice(-3));
    const to = Math.min(slotCount, (chunk + 1) * PLAN_CHUNK_SLOTS);
    for (let s = chunk * PLAN_CHUNK_SLOTS; s < to; s++) {
      const h = prev.holders[s];
      const g = next.holders[s];
      if (h?.site !== g?.site || h?.epoch !== g?.epoch || h?.sessionId !== g?.sessionId) out.add(s);
    }
  }
  return out;
}

/** A cluster's reader: one transaction per read, decoding only what changed since the last read. */
export class SlotsReader {
  readonly #store: Store;
  readonly #keys: SlotKeys;
  readonly #slotCount: number;
  readonly #report: (error: CorruptDataError) => void;
  /** Decoded plan chunks, bitmaps and summaries of the last read, by key. Never mutated. */
  #decoded = new Map<string, { mod: number; create: number; value: unknown }>();
  #last: SlotsView | undefined;

  constructor(store: Store, keys: SlotKeys, slotCount: number, report: (error: CorruptDataError) => void) {
    this.#store = store;
    this.#keys = keys;
    this.#slotCount = slotCount;
    this.#report = report;
  }

  /** The last view read, if any. */
  get last(): SlotsView | undefined {
    return this.#last;
  }

  async read(): Promise<SlotsView> {
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
        { op: 'range', prefix: k.probes },
      ],
    });
    const res = r.results;
    const decode = <T>(f: () => T): T | undefined => {
      try {
        return f();
      } catch (error) {
        if (error instanceof CorruptDataError) {
          this.#report(error);
          return undefined;
        }
        throw error;
      }
    };
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
    const slotCount = this.#slotCount;
    const built = new Array<SlotAssignment | undefined>(slotCount).fill(undefined);
    const planRevisions = new Map<number, number>();
    const unreadable: string[] = [];
    const last = this.#last;
    let generation = 0;
    for (const kv of res[3]?.op === 'range' ? res[3].kvs : []) {
      const c = k.chunkOfPlanKey(kv.key);
      if (c === undefined || c >= chunkCount(slotCount)) continue;
      const from = c * PLAN_CHUNK_SLOTS;
      const n = Math.min(slotCount, from + PLAN_CHUNK_SLOTS) - from;
      const chunk = cached(kv, () => decodePlanChunk(kv.key, kv.value, n));
      if (chunk === undefined) {
        // Unreadable (reported): the coordinator must not overwrite it, and the sites keep the last plan they read
        // for these slots rather than treat them as unplanned.
        unreadable.push(kv.key);
        if (last !== undefined) for (let i = 0; i < n; i++) built[from + i] = last.plan[from + i];
        continue;
      }
      generation = Math.max(generation, chunk.generation);
      planRevisions.set(c, kv.modRevision);
      chunk.slots.forEach((a, i) => (built[from + i] = a));
    }
    let plan: readonly (SlotAssignment | undefined)[] = built;
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
    let holders: readonly (Holder | undefined)[];
    let holderSites: readonly (string | undefined)[];
    if (last !== undefined && sameRevisions(last.heldKvs, heldKvs)) {
      holders = last.holders;
      holderSites = last.holderSites;
    } else {
      const hs = new Array<Holder | undefined>(slotCount).fill(undefined);
      const ss = new Array<string | undefined>(slotCount).fill(undefined);
      for (const list of heldLists) {
        for (const [slot, h] of list) {
          const other = hs[slot];
          // Two summaries name one slot only for a moment (a dead session's keys reaped in parts): the newer lock.
          if (other === undefined || other.epoch < h.epoch) {
            hs[slot] = h;
            ss[slot] = h.site;
          }
        }
      }
      holders = hs;
      holderSites = ss;
    }
    const joinsKv = res[1]?.op === 'get' ? res[1].kv : undefined;
    const probes: { revision: number; ask: ReadonlySet<string> }[] = [];
    for (const kv of res[6]?.op === 'range' ? res[6].kvs : []) {
      const rec = cached(kv, () => decodeProbe(kv.key, kv.value));
      if (rec !== undefined) probes.push({ revision: kv.modRevision, ask: new Set(rec.ask) });
    }
    const view: SlotsView = {
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
      probes,
      revision: r.revision,
      unreadable,
    };
    this.#last = view;
    return view;
  }
}
