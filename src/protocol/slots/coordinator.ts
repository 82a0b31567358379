/**
 * The slots coordinator's decision, pure: from the live sites, the plan in
 * force, the sites' ready bitmaps and the primary locks, the next plan
 * (docs/protocol/slots.md, "Coordinator"). No clock, no IO.
 *
 * The plan steers; it is never what keeps a slot safe. Two primaries are
 * prevented by the per-slot lock, a release below R by the site's own check
 * (site.ts). A stale or wrong plan can only delay.
 */
import { computeSlotPlacement, type SlotPlacement } from '../../placement/slots.js';
import { NO_MUTANTS, type Mutants } from '../mutants.js';
import { hasReady, type ReadyBits, type SiteRecord, type SlotAssignment, type SlotsConfig } from './keys.js';

export interface SlotsCoordinatorView {
  /** Sites that may be given slots (their `sites/` keys exist; a leaving site has deleted its own). */
  readonly sites: ReadonlyMap<string, Pick<SiteRecord, 'id' | 'zone' | 'weight'>>;
  /** The plan in force, one entry per slot (undefined: never planned). */
  readonly plan: readonly (SlotAssignment | undefined)[];
  /**
   * Ready bitmaps of every site whose session lives (the keys are attached to it), leaving sites included:
   * a leaving site keeps serving, and stays primary, until the slots' new replicas are ready.
   */
  readonly ready: ReadonlyMap<string, ReadyBits>;
  /** The site holding each slot's primary lock (undefined: free). */
  readonly primaries: readonly (string | undefined)[];
}

/**
 * What the coordinator keeps between decisions (lost on failover: that only changes which primaries stay put). A
 * decision returns the next memory (`SlotsDecision.target`); it never changes the one it is given.
 */
export interface SlotsCoordinatorMemory {
  readonly target?: SlotPlacement | undefined;
}

export interface SlotsDecision {
  /** The next plan, one entry per slot. */
  readonly plan: readonly SlotAssignment[];
  /** Slots whose entry differs from the plan in force. */
  readonly changed: readonly number[];
  readonly target: SlotPlacement;
}

function sameAssignment(a: SlotAssignment | undefined, b: SlotAssignment): boolean {
  if (a === undefined || a.primary !== b.primary || a.assigned.length !== b.assigned.length) return false;
  for (let i = 0; i < b.assigned.length; i++) if (a.assigned[i] !== b.assigned[i]) return false;
  return true;
}

/** The next plan, or undefined while there are fewer live sites than `minSites` (nothing is moved then). */
export function decideSlotsPlan(
  config: SlotsConfig,
  view: SlotsCoordinatorView,
  memory: SlotsCoordinatorMemory,
  mutants: Mutants = NO_MUTANTS,
): SlotsDecision | undefined {
  const live = view.sites;
  if (live.size < config.minSites || live.size === 0) return undefined;
  const target = computeSlotPlacement({
    sites: [...live.values()].map((s) => ({ id: s.id, zone: s.zone, weight: s.weight })),
    slotCount: config.slotCount,
    replicas: config.replicas,
    previous: memory.target?.slotCount === config.slotCount ? memory.target : undefined,
  });
  const R = target.replicas;
  const ids = target.siteIds;
  const plan: SlotAssignment[] = new Array<SlotAssignment>(config.slotCount);
  const changed: number[] = [];
  for (let s = 0; s < config.slotCount; s++) {
    const T: string[] = [];
    for (let r = 0; r < R; r++) T.push(ids[target.table[s * R + r]!]!);
    let readyT = 0;
    for (const x of T) if (hasReady(view.ready.get(x), s)) readyT++;
    const assigned = [...T];
    const current = view.plan[s];
    // Old replicas stay assigned, serving, until every target replica is ready (so a slot never has fewer
    // ready replicas than it had); one still preparing has nothing to serve and goes at once.
    if (readyT < T.length && !mutants.has('slots-release-without-check')) {
      for (const x of current?.assigned ?? []) {
        if (!T.includes(x) && hasReady(view.ready.get(x), s)) assigned.push(x);
      }
    }
    const targetPrimary = T[0];
    const holder = view.primaries[s];
    let primary: string | undefined;
    if (targetPrimary !== undefined && hasReady(view.ready.get(targetPrimary), s)) primary = targetPrimary;
    else if (holder !== undefined && assigned.includes(holder) && hasReady(view.ready.get(holder), s)) primary = holder;
    else primary = assigned.find((x) => hasReady(view.ready.get(x), s)) ?? targetPrimary;
    const next: SlotAssignment = { assigned, primary };
    if (sameAssignment(current, next)) {
      plan[s] = current!;
    } else {
      plan[s] = next;
      changed.push(s);
    }
  }
  return { plan, changed, target };
}
