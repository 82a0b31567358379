/**
 * A site's decision, pure: from the plan, the ready bitmaps, the primary
 * locks and its own local state, what it must do next (docs/protocol/slots.md,
 * "Site"). No clock, no IO; the runtime carries the decisions out and asks
 * again when anything changes.
 */
import { NO_MUTANTS, type Mutants } from '../mutants.js';
import { hasReady, type ReadyBits, type SlotAssignment } from './keys.js';

/** A slot this site works on: still migrating data in, or serving. */
export type LocalSlotState = 'preparing' | 'ready';

export interface SiteView {
  readonly siteId: string;
  readonly slotCount: number;
  /** R as configured (the release rule uses min(R, other live sites)). */
  readonly replicas: number;
  /** Sites that may be given slots (`sites/` keys); a leaving site is not among them. */
  readonly liveSites: ReadonlySet<string>;
  readonly plan: readonly (SlotAssignment | undefined)[];
  /**
   * Ready bitmaps as last read: one per site whose session lives (the keys are attached to it). This site's own
   * entry is ignored: `local` is the truth.
   */
  readonly ready: ReadonlyMap<string, ReadyBits>;
  /** Holder of each slot's primary lock as last read (undefined: free). */
  readonly primaryHolders: readonly (string | undefined)[];
  readonly local: ReadonlyMap<number, LocalSlotState>;
  /** Slots whose primary lock this site holds, with the epoch. */
  readonly myPrimaries: ReadonlyMap<number, number>;
  /** Slots reported failed and not prepared again yet: released without the ready-elsewhere check. */
  readonly failed: ReadonlySet<number>;
  /** The lease cannot be trusted (self-fenced): take no new primary role. */
  readonly fenced: boolean;
  /**
   * A release's liveness check (SlotKeys.probe): count only the replicas whose ready key was rewritten after the
   * release's probe (`readyRevisions[site] > afterRevision`), so a site that crashed and whose session has not
   * expired yet is not counted. Undefined: every ready bit counts (deciding what to announce; the release itself
   * always checks with it).
   */
  readonly confirmed?:
    { readonly afterRevision: number; readonly readyRevisions: ReadonlyMap<string, number> } | undefined;
}

export interface SiteDecision {
  /** Assigned to this site, not yet worked on: ask the application to prepare them. */
  readonly prepare: readonly number[];
  /** Being prepared but no longer assigned: nothing was served, drop at once. */
  readonly cancel: readonly number[];
  /** Ready, no longer assigned, and enough ready replicas are assigned elsewhere: the application may release. */
  readonly releasable: readonly number[];
  /** Primary lock held but another site is planned primary (or the slot is gone from here): step down. */
  readonly stepDown: readonly number[];
  /** Planned primary, ready, lock free: take the lock. */
  readonly takeOver: readonly number[];
}

/**
 * How many other sites the plan assigns `slot` to that are ready for it; and how many are needed before this
 * site may drop it: min(R, sites that may hold slots), this site included while it is one of them (not leaving).
 * After the release the slot must still have min(R, live sites) ready replicas — counting the releasing site
 * among the live ones while it stays (Quint finding S1: "other live sites" was one short when it stays and there
 * are at most R sites). Only assigned sites count, so that two old replicas that are both leaving cannot each
 * count the other.
 */
export function readyElsewhere(
  view: SiteView,
  slot: number,
  mutants: Mutants = NO_MUTANTS,
): { ready: number; needed: number; counted: string[] } {
  const counted: string[] = [];
  const c = mutants.has('slots-release-unconfirmed') ? undefined : view.confirmed;
  for (const x of view.plan[slot]?.assigned ?? []) {
    if (x === view.siteId || !hasReady(view.ready.get(x), slot)) continue;
    if (c !== undefined && !((c.readyRevisions.get(x) ?? 0) > c.afterRevision)) continue;
    counted.push(x);
  }
  return { ready: counted.length, needed: Math.min(view.replicas, view.liveSites.size), counted };
}

/** Why a release is refused (see checkRelease). */
export type ReleaseRefusal = 'still-assigned' | 'not-enough-ready';

export interface ReleaseCheck {
  readonly allowed: boolean;
  readonly refusal: ReleaseRefusal | undefined;
  /** The other assigned sites whose readiness the release counts (their ready keys must be unchanged at commit). */
  readonly counted: readonly string[];
  readonly ready: number;
  readonly needed: number;
}

/**
 * The release rule, the most safety-critical check of the slots protocol, in one place: may this site drop its
 * ready copy of `slot`? Only when the plan no longer assigns the slot here and at least min(R, live sites) other
 * assigned sites are ready (see readyElsewhere) — and, for the release itself, have answered its probe (`confirmed`:
 * a crashed site whose session lives on is not counted) — or when this copy was reported failed (it is worthless). Used by
 * the decisions (which slots to announce releasable) and by the release itself, which re-reads the cluster and
 * commits only while the counted sites' ready keys are unchanged.
 */
export function checkRelease(view: SiteView, slot: number, mutants: Mutants = NO_MUTANTS): ReleaseCheck {
  const { ready, needed, counted } = readyElsewhere(view, slot, mutants);
  if (view.failed.has(slot)) return { allowed: true, refusal: undefined, counted: [], ready, needed };
  if (mutants.has('slots-release-without-check')) return { allowed: true, refusal: undefined, counted, ready, needed };
  const refusal: ReleaseRefusal | undefined = view.plan[slot]?.assigned.includes(view.siteId)
    ? 'still-assigned'
    : ready < needed
      ? 'not-enough-ready'
      : undefined;
  return { allowed: refusal === undefined, refusal, counted, ready, needed };
}

/**
 * Decide for every slot, or only for `slots`: a slot's decision depends on nothing but its own plan entry, ready
 * bits, lock holder and local state (and the global `fenced`, `liveSites`), so a caller that knows which of these
 * changed may ask only about those slots.
 */
export function decideSite(view: SiteView, slots?: Iterable<number>, mutants: Mutants = NO_MUTANTS): SiteDecision {
  const me = view.siteId;
  const prepare: number[] = [];
  const cancel: number[] = [];
  const releasable: number[] = [];
  const stepDown: number[] = [];
  const takeOver: number[] = [];
  const visit = (s: number): void => {
    const entry = view.plan[s];
    const assignedHere = entry?.assigned.includes(me) ?? false;
    const state = view.local.get(s);
    const holding = view.myPrimaries.has(s);
    if (holding && (entry?.primary !== me || state !== 'ready')) stepDown.push(s);
    if (assignedHere) {
      if (state === undefined) prepare.push(s);
      else if (
        state === 'ready' &&
        !holding &&
        !view.fenced &&
        entry?.primary === me &&
        view.primaryHolders[s] === undefined
      ) {
        takeOver.push(s);
      }
    } else if (state === 'preparing') {
      cancel.push(s);
    } else if (state === 'ready' && !holding && checkRelease(view, s, mutants).allowed) {
      releasable.push(s);
    }
  };
  if (slots === undefined) for (let s = 0; s < view.slotCount; s++) visit(s);
  else for (const s of slots) visit(s);
  return { prepare, cancel, releasable, stepDown, takeOver };
}
