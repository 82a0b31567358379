/**
 * The fleet coordinator's decision, pure: a fleet view in, the desired placements to write out. The runtime
 * (src/runtime/fleet/coordinator.ts) reads the view, calls this, and writes the result with `writeDesired` under
 * its election guard; keeping the decision free of IO and of the clock (time comes in as `nowMs`) makes every rule
 * below testable on plain data, and the simulator can run it deterministically.
 *
 * Rules:
 * - Members and desired leaders come from `placeGroups` over `placementInputOf(view)`: the same placement code as
 *   the rest of the library, the desired records in force as `previous` (so leaders stay where balance allows).
 * - Only groups whose desired member set or leader changed are written (the order of the non-leader members is not
 *   a change: it means nothing to the Raft side), so a join or leave rewrites only the groups it affects.
 * - A node that vanished (its session ended) while `active` stays in the placement for `gracePeriodMs`: a fast
 *   restart moves nothing. A node last seen `deactivating` gets no grace: it drained on purpose. A coordinator just
 *   elected does not know who vanished when (often the old coordinator's own node): on its first round, a desired
 *   member that is not live gets a grace period from then, and since its zone and weight are gone with its record,
 *   the groups naming it are held (not rewritten) until that grace ends, instead of being placed with it.
 * - A group whose desired record could not be read is skipped (never overwritten unread, ADR 0012) and listed in
 *   `skipped`; the others go on.
 * - A group being founded (its first desired record, no report from a leader yet) is not rebalanced: its founders
 *   bootstrap only from that record (replicas.ts), and one that opened its replica after a rewrite would join and
 *   hold its votes. Only a member that is no longer placeable rewrites it.
 * - At most `maxWritesPerRound` groups per round, most urgent first: groups with no desired record, then groups
 *   with a desired member that is no longer placeable, then the rest (rebalancing, leader moves); by name within
 *   each. `pending` says how many wait for the next round.
 */
import { placeGroups, type FleetPlacement, type FleetPlacementInput } from '../../placement/fleet.js';
import type { PlacementNode } from '../../placement/index.js';
import { placementInputOf, type DesiredEntry, type FleetView } from './io.js';

export interface FleetCoordinatorSettings {
  /** Groups written at most per round; the rest wait for the next round. */
  readonly maxWritesPerRound: number;
  /** How long a node whose session ended while active keeps its place (0: replaced at once). */
  readonly gracePeriodMs: number;
  /**
   * A group with no desired record yet is placed only once at least this many nodes are active (default 1): a
   * fleet started on several nodes at once does not put every group on the first node elected and move them all
   * a moment later. Groups already placed are never held by it.
   */
  readonly minNodes?: number | undefined;
}

/** What the coordinator remembers between rounds: nodes that vanished while active, within their grace period. */
export interface FleetCoordinatorMemory {
  readonly departed: ReadonlyMap<string, { readonly node: PlacementNode; readonly goneAtMs: number }>;
  /** The active nodes of the last round (to notice who vanished). */
  readonly lastActive: ReadonlyMap<string, PlacementNode>;
  /** Desired members not live at this coordinator's first round, by when their grace ends; undefined before it. */
  readonly unknown: ReadonlyMap<string, number> | undefined;
}

export function newFleetCoordinatorMemory(): FleetCoordinatorMemory {
  return { departed: new Map(), lastActive: new Map(), unknown: undefined };
}

export interface FleetRoundDecision {
  /** What to write now, at most maxWritesPerRound entries. */
  readonly writes: readonly DesiredEntry[];
  /** Groups whose desired placement changed but wait for a later round (the bound). */
  readonly pending: number;
  /** Groups not written because their desired record is unreadable (repair the key; nothing overwrites it). */
  readonly skipped: readonly { readonly name: string; readonly key: string }[];
  /** Groups left as they are because no node is placeable (no active node, or fewer than minNodes for a new group). */
  readonly unplaced: number;
  /**
   * Groups left as they are while a member this coordinator never saw live is within its grace period, or while
   * the group is being founded (its first desired record, no leader's report yet) and every member is placeable.
   */
  readonly held: number;
  /** The full placement computed this round. */
  readonly placement: FleetPlacement;
  readonly memory: FleetCoordinatorMemory;
  /** When a grace period ends (the runtime runs a round then), if one is running. */
  readonly wakeAtMs: number | undefined;
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const s = new Set(a);
  return b.every((x) => s.has(x));
}

/** Decide one round. Throws only what placeGroups throws for input no valid view produces (InvalidArgumentError). */
export function decideFleetRound(
  view: FleetView,
  keysDesiredOf: (name: string) => string,
  settings: FleetCoordinatorSettings,
  memory: FleetCoordinatorMemory,
  nowMs: number,
): FleetRoundDecision {
  const base: FleetPlacementInput = placementInputOf(view);
  const active = new Map(base.nodes.map((n) => [n.id, n]));

  // Grace: who vanished while active since the last round joins the departed; who is back (any state) or whose
  // grace ran out leaves it. A node seen deactivating is not in `active`, so it never gets here.
  const departed = new Map(memory.departed);
  for (const [id, node] of memory.lastActive) {
    if (!view.nodes.has(id) && !departed.has(id)) departed.set(id, { node, goneAtMs: nowMs });
  }
  let wakeAtMs: number | undefined;
  for (const [id, d] of departed) {
    const endsAtMs = d.goneAtMs + settings.gracePeriodMs;
    if (view.nodes.has(id) || endsAtMs <= nowMs) departed.delete(id);
    else wakeAtMs = Math.min(wakeAtMs ?? endsAtMs, endsAtMs);
  }
  const nodes = [...base.nodes, ...[...departed.values()].map((d) => d.node)];
  let unknown = memory.unknown;
  if (unknown === undefined) {
    const seeded = new Map<string, number>();
    for (const g of view.groups.values()) {
      for (const m of g.desired?.members ?? []) {
        if (!view.nodes.has(m)) seeded.set(m, nowMs + settings.gracePeriodMs);
      }
    }
    unknown = seeded;
  }
  unknown = new Map([...unknown].filter(([id, endsAtMs]) => !view.nodes.has(id) && endsAtMs > nowMs));
  for (const endsAtMs of unknown.values()) wakeAtMs = Math.min(wakeAtMs ?? endsAtMs, endsAtMs);
  const placement = placeGroups({ ...base, nodes });

  const placeable = new Set(nodes.map((n) => n.id));
  const minNodes = settings.minNodes ?? 1;
  const unreadable = new Set(view.unreadable);
  const skipped: { name: string; key: string }[] = [];
  const urgent: DesiredEntry[][] = [[], [], []];
  let unplaced = 0;
  let held = 0;
  let founding = 0;
  for (const p of placement.groups) {
    const group = view.groups.get(p.name);
    if (group === undefined) continue;
    const key = keysDesiredOf(p.name);
    const d = group.desired;
    if (p.leader === undefined || p.members.length === 0 || (d === undefined && active.size < minNodes)) {
      unplaced++;
      continue;
    }
    if (d !== undefined && d.leader === p.leader && sameSet(d.members, p.members)) continue;
    if (d !== undefined && d.members.some((m) => unknown.has(m))) {
      held++;
      continue;
    }
    if (unreadable.has(key)) {
      skipped.push({ name: p.name, key });
      continue;
    }
    const entry: DesiredEntry = { name: p.name, members: p.members, leader: p.leader };
    if (d === undefined) urgent[0]!.push(entry);
    else if (d.members.some((m) => !placeable.has(m))) urgent[1]!.push(entry);
    else if (d.version === 1 && group.observed === undefined) {
      // Being founded: its founding members bootstrap only from the first desired record; one that opens its
      // replica after a rewrite joins instead, holding its votes until it has seen a leader. With a majority of the
      // founders late (a slow start, peers' addresses not known yet) the group could never elect one (seen in
      // test/fleet/processes.test.ts). Rebalancing waits for its first leader's report.
      founding++;
    } else urgent[2]!.push(entry);
  }
  // placement.groups is sorted by name, so each tier is too.
  const all = urgent.flat();
  const max = Math.max(1, Math.floor(settings.maxWritesPerRound));
  return {
    writes: all.slice(0, max),
    pending: Math.max(0, all.length - max),
    skipped,
    unplaced,
    held: held + founding,
    placement,
    memory: { departed, lastActive: active, unknown },
    wakeAtMs,
  };
}
