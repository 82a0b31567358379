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
 * - A group being created (its first desired record, no leader report yet) keeps that record until it reports: its
 *   founders bootstrap only from it (src/protocol/fleet/replicas.ts).
 * - A generation seeded by the unsafe recovery (group record `seed`, src/protocol/fleet/recover.ts) gets the first
 *   desired record `[seed node]` (its `initial`), once that node is live; then the rule above holds it until the
 *   seed node reports, and it is placed as usual.
 * - A group whose desired record could not be read is skipped (never overwritten unread, ADR 0012) and listed in
 *   `skipped`; the others go on.
 * - A group not founded yet (its desired record is the generation's first, version 1, and no leader has reported)
 *   keeps that record while all its members are placeable: a rebalance waits for its first leader's report. Its
 *   founding members bootstrap only from version 1 (src/protocol/fleet/replicas.ts); one that reads a rewritten
 *   record joins with its votes held, so a rewrite between the first members' reads could leave fewer than a
 *   majority able to vote, and the group without a leader for ever (seen with 48 groups added at once on three
 *   nodes, bench/fleet.ts). `founding` counts them, and the decision asks for another round soon (the coordinator
 *   does not watch the reports).
 * - At most `maxWritesPerRound` groups per round, most urgent first: groups with no desired record, then groups
 *   with a desired member that is no longer placeable, then the rest (rebalancing, leader moves); by name within
 *   each. First placements (no desired record) alone may fill FIRST_PLACEMENTS_FACTOR times the bound: they move
 *   nothing. `pending` says how many wait for the next round.
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

/** How soon the coordinator looks again while a group waits to be founded (it does not watch the reports). */
export const FOUNDING_RECHECK_MS = 1000;
/** How many times `maxWritesPerRound` first placements (groups without a desired record) a round may write. */
export const FIRST_PLACEMENTS_FACTOR = 4;

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
  /** Groups not founded yet whose rebalance waits for their first leader's report. */
  readonly founding: number;
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
    // A generation seeded by the unsafe recovery starts on its seed node alone (it bootstraps from its old
    // replica's state; the others join once it has reported a leader). Not before that node is live: no other
    // node holds the state. minNodes does not apply: the group exists, and every other node joins it anyway.
    const seed = group.seed;
    if (d === undefined && seed !== undefined) {
      if (!view.nodes.has(seed.node)) {
        unplaced++;
        continue;
      }
      if (unreadable.has(key)) {
        skipped.push({ name: p.name, key });
        continue;
      }
      urgent[0]!.push({ name: p.name, members: [seed.node], leader: seed.node });
      continue;
    }
    if (p.leader === undefined || p.members.length === 0 || (d === undefined && active.size < minNodes)) {
      unplaced++;
      continue;
    }
    if (d !== undefined && d.leader === p.leader && sameSet(d.members, p.members)) continue;
    if (d !== undefined && d.members.some((m) => unknown.has(m))) {
      held++;
      continue;
    }
    // Being founded: its founders bootstrap only from the generation's first desired record, so that record stays
    // until the group has a leader (its first report). Rewriting it earlier would make founders that have not
    // opened yet join with their votes held, and a group whose founders hold their votes never elects a leader.
    // Unless a founder is no longer placeable (gone past its grace): then the group is placed again.
    if (
      d !== undefined &&
      d.version === 1 &&
      group.observed === undefined &&
      d.members.every((m) => placeable.has(m))
    ) {
      founding++;
      continue;
    }
    if (unreadable.has(key)) {
      skipped.push({ name: p.name, key });
      continue;
    }
    const entry: DesiredEntry = { name: p.name, members: p.members, leader: p.leader };
    if (d === undefined) urgent[0]!.push(entry);
    else if (d.members.some((m) => !placeable.has(m))) urgent[1]!.push(entry);
    else urgent[2]!.push(entry);
  }
  // placement.groups is sorted by name, so each tier is too.
  if (founding > 0) wakeAtMs = Math.min(wakeAtMs ?? Infinity, nowMs + FOUNDING_RECHECK_MS);
  const all = urgent.flat();
  const max = Math.max(1, Math.floor(settings.maxWritesPerRound));
  // First placements (groups with no desired record yet) go FIRST_PLACEMENTS_FACTOR times as many a round: they move
  // nothing (each is a group being created), and a fleet started with 10 000 groups took 20 rounds to place them
  // (bench/README.md). Moves keep the bound: more at once made drains slower (transfers that fall behind back off).
  const firsts = urgent[0]!.slice(0, max * FIRST_PLACEMENTS_FACTOR);
  const writes = firsts.length >= max ? firsts : all.slice(0, max);
  return {
    writes,
    pending: Math.max(0, all.length - writes.length),
    skipped,
    unplaced,
    held,
    founding,
    placement,
    memory: { departed, lastActive: active, unknown },
    wakeAtMs,
  };
}
