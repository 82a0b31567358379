/**
 * A slots site's view of its cluster, as read in one snapshot, and which slots
 * changed between two views (src/runtime/slots-site.ts decides only about
 * those). Views are never mutated, so an unchanged part is shared between two.
 */
import type { KeyValue } from '../store/contract.js';
import {
  chunkCount,
  PLAN_CHUNK_SLOTS,
  type ReadyBits,
  type SiteRecord,
  type SlotAssignment,
  type SlotsConfig,
} from '../protocol/slots/keys.js';

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

export interface FullView {
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
  readonly revision: number;
}

/**
 * The slots whose plan entry, ready bits or lock holder differ between two views, or undefined when something
 * every slot depends on changed (the live sites, their addresses, the configuration). Chunks and bitmaps whose
 * revisions are unchanged are skipped without looking inside.
 */
export function changedSlots(prev: FullView, next: FullView): Set<number> | undefined {
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
