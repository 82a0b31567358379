/**
 * Fleet placement: where the members of many Raft groups live, and which member of each should lead. The fleet's
 * coordinator calls it with the live nodes and the groups; every node (and the simulator) gets the same answer from
 * the same input. Pure: no clock, no IO, no randomness.
 *
 * It is slot placement (slots.ts) with named groups of their own replica counts instead of numbered slots of one:
 *
 * 1. Members — zone-aware weighted rendezvous hashing, keyed by `hash32(group name)`: exactly
 *    `rankNodes(name, nodes, min(replicas, N), { spreadZones: true })` (distinct zones first, then the best of the
 *    rest, ties by node id), computed by slot placement's ranking loop (`rankReplicas`), once per distinct replica
 *    count. Members never depend on `previous`: a join or leave moves only the groups whose top R it changes, about
 *    Σ R / N member slots, and two coordinators that disagree about history still agree about members.
 * 2. Desired leaders — slot placement's balancing pass (balance.ts): each group starts from its previous desired
 *    leader while that node is still a member, else its top-ranked member; then the shortest chains of leader
 *    hand-overs bring every node within the floor and ceiling of its weighted share of the groups, where the
 *    member sets allow it. Only what balance requires moves, so with `previous` a join or leave transfers about
 *    groups / N leaderships.
 *
 * Cost: groups × nodes hashes (SIMD where available) plus a sort of the names; 10 000 groups × 100 nodes take a
 * few milliseconds.
 */
import { InvalidArgumentError } from '../errors.js';
import { balanceLeaders, leaderBounds } from './balance.js';
import { hash32 } from './hash.js';
import type { PlacementNode } from './index.js';
import { MAX_REPLICAS, normaliseSites, rankReplicas } from './slots.js';

/** A group to place: its name and how many members it should have. */
export interface FleetGroupSpec {
  /** Non-empty, unique in the fleet. */
  readonly name: string;
  /** Desired members, 1 to MAX_REPLICAS; all nodes while there are fewer. */
  readonly replicas: number;
}

export interface FleetPlacementInput {
  /** The nodes that may hold members (the live, active ones). */
  readonly nodes: readonly PlacementNode[];
  readonly groups: readonly FleetGroupSpec[];
  /**
   * The placement in force, if any (as written to the control store: plain data is enough). Only its desired
   * leaders are read: a group keeps its leader while that node is still a member and balance allows.
   */
  readonly previous?: FleetPlacement | undefined;
}

/** One group's desired state. */
export interface GroupPlacement {
  readonly name: string;
  /** Replicas asked for (members may be fewer while there are fewer nodes). */
  readonly replicas: number;
  /** Desired members, min(replicas, nodes): the desired leader first, then the rest in rendezvous rank order. */
  readonly members: readonly string[];
  /** Desired leader (members[0]); undefined only when there are no nodes. */
  readonly leader: string | undefined;
}

/** The desired state of the whole fleet. Plain, frozen data: it serialises to JSON as it is. */
export interface FleetPlacement {
  /** The nodes placed on, sorted by id, with their zone ('' when none) and weight. */
  readonly nodes: readonly { readonly id: string; readonly zone: string; readonly weight: number }[];
  /** Every group, sorted by name. */
  readonly groups: readonly GroupPlacement[];
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function normaliseGroups(groups: readonly FleetGroupSpec[]): FleetGroupSpec[] {
  if (!Array.isArray(groups)) throw new InvalidArgumentError('fleet placement: groups must be an array');
  const seen = new Set<string>();
  const out: FleetGroupSpec[] = [];
  for (const g of groups) {
    if (typeof g?.name !== 'string' || g.name.length === 0) {
      throw new InvalidArgumentError('fleet placement: a group name must be a non-empty string');
    }
    if (seen.has(g.name)) {
      throw new InvalidArgumentError(
        `fleet placement: group ${JSON.stringify(g.name)} is listed twice; names are unique`,
      );
    }
    seen.add(g.name);
    const r = g.replicas;
    if (typeof r !== 'number' || !Number.isInteger(r) || r < 1 || r > MAX_REPLICAS) {
      throw new InvalidArgumentError(
        `fleet placement: group ${JSON.stringify(g.name)} has replicas ${String(r)}; use an integer from 1 to ${MAX_REPLICAS}`,
      );
    }
    out.push({ name: g.name, replicas: r });
  }
  // By name (UTF-16 code unit order): input order never matters.
  out.sort((a, b) => cmp(a.name, b.name));
  return out;
}

/** group name → previous desired leader. A record that is not plain placement data is refused, not guessed at. */
function previousLeaders(previous: FleetPlacement | undefined): Map<string, string> {
  const out = new Map<string, string>();
  if (previous === undefined) return out;
  const groups = (previous as { groups?: unknown } | null)?.groups;
  if (!Array.isArray(groups)) {
    throw new InvalidArgumentError(
      'fleet placement: previous placement has no groups array; pass the FleetPlacement in force, or none',
    );
  }
  for (const g of groups as unknown[]) {
    const { name, leader } = (g ?? {}) as { name?: unknown; leader?: unknown };
    if (typeof name !== 'string' || (leader !== undefined && leader !== null && typeof leader !== 'string')) {
      throw new InvalidArgumentError(
        'fleet placement: previous placement has a malformed group (name must be a string, leader a string or absent); pass the FleetPlacement in force, or none',
      );
    }
    if (typeof leader === 'string') out.set(name, leader);
  }
  return out;
}

/** Place every group's members and desired leader on `nodes`. Deterministic; see the module comment. */
export function placeGroups(input: FleetPlacementInput): FleetPlacement {
  const sites = normaliseSites(input.nodes, 'fleet placement', 'node');
  const groups = normaliseGroups(input.groups);
  const prev = previousLeaders(input.previous);
  const nodes = Object.freeze(sites.map((s) => Object.freeze({ id: s.id, zone: s.zone, weight: s.weight })));
  const N = sites.length;
  const G = groups.length;
  if (N === 0) {
    const empty = groups.map((g) => Object.freeze({ ...g, members: Object.freeze([]), leader: undefined }));
    return Object.freeze({ nodes, groups: Object.freeze(empty) });
  }

  // Compressed rows: group g's members (node indices, rank order) are rank[rowStart[g] .. rowStart[g + 1]).
  const rowStart = new Int32Array(G + 1);
  for (let g = 0; g < G; g++) rowStart[g + 1] = rowStart[g]! + Math.min(groups[g]!.replicas, N);
  const rank = new Uint16Array(rowStart[G]!);
  // The ranking loop works on one replica count at a time: one pass per distinct count (usually one).
  const byR = new Map<number, number[]>();
  for (let g = 0; g < G; g++) {
    const R = Math.min(groups[g]!.replicas, N);
    let list = byR.get(R);
    if (list === undefined) byR.set(R, (list = []));
    list.push(g);
  }
  for (const [R, list] of byR) {
    const hashes = Uint32Array.from(list, (g) => hash32(groups[g]!.name));
    const sub = new Uint16Array(list.length * R);
    rankReplicas(sites, hashes, list.length, R, sub);
    list.forEach((g, k) => rank.set(sub.subarray(k * R, k * R + R), rowStart[g]!));
  }

  // Start each group from its previous desired leader while it is still a member, else its top-ranked member.
  const index = new Map(sites.map((s, i) => [s.id, i]));
  const leader = new Int32Array(G);
  for (let g = 0; g < G; g++) {
    const start = rowStart[g]!;
    let p = rank[start]!;
    const was = index.get(prev.get(groups[g]!.name) ?? '');
    if (was !== undefined) {
      for (let k = start + 1; k < rowStart[g + 1]!; k++) {
        if (rank[k] === was) {
          p = was;
          break;
        }
      }
    }
    leader[g] = p;
  }
  const { lo, hi } = leaderBounds(
    sites.map((s) => s.weight),
    G,
  );
  balanceLeaders(N, G, rowStart, rank, leader, lo, hi);

  const out: GroupPlacement[] = new Array<GroupPlacement>(G);
  for (let g = 0; g < G; g++) {
    const p = leader[g]!;
    const members = [sites[p]!.id];
    for (let k = rowStart[g]!; k < rowStart[g + 1]!; k++) if (rank[k] !== p) members.push(sites[rank[k]!]!.id);
    const { name, replicas } = groups[g]!;
    out[g] = Object.freeze({ name, replicas, members: Object.freeze(members), leader: members[0] });
  }
  return Object.freeze({ nodes, groups: Object.freeze(out) });
}

/** Per node, in id order: groups it is a desired member of and the desired leader of, and its weighted shares. */
export interface FleetNodeLoad {
  readonly id: string;
  readonly members: number;
  readonly leaders: number;
  /** Weighted share of all members (what `members` would be under perfect balance). */
  readonly memberShare: number;
  /** Weighted share of the groups (what `leaders` would be under perfect balance). */
  readonly leaderShare: number;
}

export function fleetLoads(placement: FleetPlacement): FleetNodeLoad[] {
  const members = new Map<string, number>();
  const leaders = new Map<string, number>();
  let total = 0;
  for (const g of placement.groups) {
    for (const m of g.members) members.set(m, (members.get(m) ?? 0) + 1);
    total += g.members.length;
    if (g.leader !== undefined) leaders.set(g.leader, (leaders.get(g.leader) ?? 0) + 1);
  }
  const weight = placement.nodes.reduce((a, n) => a + n.weight, 0);
  return placement.nodes.map((n) => ({
    id: n.id,
    members: members.get(n.id) ?? 0,
    leaders: leaders.get(n.id) ?? 0,
    memberShare: (total * n.weight) / weight,
    leaderShare: (placement.groups.length * n.weight) / weight,
  }));
}

/** What placing `after` over `before` changes: member slots gained, lost, and desired leaders changed. */
export interface FleetMoves {
  /** (group, node) memberships in `after` and not in `before`, over groups present in both. */
  readonly membersAdded: number;
  readonly membersRemoved: number;
  /** Groups present in both whose desired leader differs. */
  readonly leaderChanges: number;
}

export function countFleetMoves(before: FleetPlacement, after: FleetPlacement): FleetMoves {
  const old = new Map(before.groups.map((g) => [g.name, g]));
  let membersAdded = 0;
  let membersRemoved = 0;
  let leaderChanges = 0;
  for (const g of after.groups) {
    const b = old.get(g.name);
    if (b === undefined) continue;
    const was = new Set(b.members);
    const now = new Set(g.members);
    for (const m of now) if (!was.has(m)) membersAdded++;
    for (const m of was) if (!now.has(m)) membersRemoved++;
    if (b.leader !== g.leader) leaderChanges++;
  }
  return { membersAdded, membersRemoved, leaderChanges };
}
