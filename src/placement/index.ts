/**
 * Placement: which node owns which resource. Pure functions — no clock, no
 * IO, no randomness — so every node (and the simulator) computes the same
 * answer from the same input, and property tests can explore it freely.
 *
 * Strategies:
 * - `sticky-balanced` (default): each node's count is within one of its
 *   weighted share, and only what balance requires moves.
 * - `round-robin`: the original Rebalanser's equal split of the sorted
 *   resources over the sorted nodes; ignores weights and history.
 * - `rendezvous`: weighted highest-random-weight hashing; no coordination
 *   history needed and minimal movement, but balance is only statistical.
 */
import { InvalidArgumentError } from '../errors.js';
import { hash32, rendezvousScore } from './hash.js';

export interface PlacementNode {
  readonly id: string;
  /** Failure domain (rack, availability zone). */
  readonly zone?: string | undefined;
  /** Relative capacity, > 0. Default 1. */
  readonly weight?: number | undefined;
}

export type PlacementStrategy = 'sticky-balanced' | 'round-robin' | 'rendezvous';

export const PLACEMENT_STRATEGIES: readonly PlacementStrategy[] = ['sticky-balanced', 'round-robin', 'rendezvous'];

export interface PlacementInput {
  readonly nodes: readonly PlacementNode[];
  readonly resources: readonly string[];
  /** Current owner of each resource. Owners that are not among `nodes` are ignored. */
  readonly current?: ReadonlyMap<string, string> | undefined;
}

/** resource → node id. With no nodes, every resource is unassigned (absent). */
export type Assignment = Map<string, string>;

export function place(strategy: PlacementStrategy, input: PlacementInput): Assignment {
  const nodes = normaliseNodes(input.nodes);
  const resources = uniqueResources(input.resources);
  if (nodes.length === 0) return new Map();
  switch (strategy) {
    case 'sticky-balanced':
      return stickyBalanced(nodes, resources, input.current ?? new Map());
    case 'round-robin':
      return roundRobin(nodes, resources);
    case 'rendezvous':
      return rendezvous(nodes, resources);
    default:
      throw new InvalidArgumentError(
        `unknown placement strategy ${JSON.stringify(strategy)}: use one of ${PLACEMENT_STRATEGIES.join(', ')}`,
      );
  }
}

/** How many resources changed owner between two assignments (resources absent from `after` are not counted). */
export function countMoves(before: ReadonlyMap<string, string>, after: ReadonlyMap<string, string>): number {
  let moves = 0;
  for (const [r, owner] of after) {
    const prev = before.get(r);
    if (prev !== undefined && prev !== owner) moves++;
  }
  return moves;
}

/** Each node's weighted share of `k` resources (a real number). */
export function shares(nodes: readonly PlacementNode[], k: number): Map<string, number> {
  const ns = normaliseNodes(nodes);
  const total = ns.reduce((s, n) => s + n.weight, 0);
  return new Map(ns.map((n) => [n.id, (k * n.weight) / total]));
}

interface Node {
  readonly id: string;
  readonly zone: string;
  readonly weight: number;
  readonly hash: number;
}

function normaliseNodes(nodes: readonly PlacementNode[]): Node[] {
  const seen = new Set<string>();
  const out: Node[] = [];
  for (const n of nodes) {
    if (typeof n?.id !== 'string' || n.id.length === 0)
      throw new InvalidArgumentError('placement: node id must be a non-empty string');
    if (seen.has(n.id)) throw new InvalidArgumentError(`placement: duplicate node id ${JSON.stringify(n.id)}`);
    seen.add(n.id);
    const weight = n.weight ?? 1;
    if (typeof weight !== 'number' || !Number.isFinite(weight) || weight <= 0) {
      throw new InvalidArgumentError(`placement: node ${n.id} has weight ${String(weight)}; use a finite number > 0`);
    }
    out.push({ id: n.id, zone: n.zone ?? '', weight, hash: hash32(n.id) });
  }
  // Sorted by id so that input order never changes the answer.
  out.sort((a, b) => cmp(a.id, b.id));
  return out;
}

function uniqueResources(resources: readonly string[]): string[] {
  const set = new Set(resources);
  if (set.size !== resources.length) throw new InvalidArgumentError('placement: resource names must be unique');
  return [...set];
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

const EPS = 1e-9;

/**
 * Integer quotas summing to k, each floor or ceil of the node's weighted
 * share. The +1s go first to nodes that already hold more than their
 * floor (so they need not shed), then to the largest fractional shares, then
 * by id: as few resources move as possible.
 */
function quotas(nodes: readonly Node[], k: number, held: ReadonlyMap<string, number>): Map<string, number> {
  const total = nodes.reduce((s, n) => s + n.weight, 0);
  const q = new Map<string, number>();
  const fractional: { node: Node; frac: number }[] = [];
  let assigned = 0;
  for (const n of nodes) {
    const share = (k * n.weight) / total;
    const base = Math.floor(share + EPS);
    q.set(n.id, base);
    assigned += base;
    const frac = share - base;
    if (frac > EPS) fractional.push({ node: n, frac });
  }
  let extra = k - assigned;
  // A +1 spares a move only where the node already holds more than its floor.
  const benefit = (n: Node): number => ((held.get(n.id) ?? 0) > (q.get(n.id) ?? 0) ? 1 : 0);
  fractional.sort((a, b) => benefit(b.node) - benefit(a.node) || b.frac - a.frac || cmp(a.node.id, b.node.id));
  for (const { node } of fractional) {
    if (extra <= 0) break;
    q.set(node.id, (q.get(node.id) ?? 0) + 1);
    extra--;
  }
  return q;
}

function stickyBalanced(
  nodes: readonly Node[],
  resources: readonly string[],
  current: ReadonlyMap<string, string>,
): Assignment {
  const index = new Map<string, number>(nodes.map((n, i) => [n.id, i]));
  const byNode: number[][] = nodes.map(() => []);
  const hashes = new Uint32Array(resources.length);
  const pool: number[] = [];
  for (let i = 0; i < resources.length; i++) {
    const r = resources[i]!;
    hashes[i] = hash32(r);
    const owner = current.get(r);
    const at = owner === undefined ? undefined : index.get(owner);
    if (at === undefined) pool.push(i);
    else byNode[at]!.push(i);
  }
  // Order by hash, then name: deterministic whatever the input order.
  const byHash = (a: number, b: number): number => hashes[a]! - hashes[b]! || cmp(resources[a]!, resources[b]!);
  const held = new Map(nodes.map((n, i) => [n.id, byNode[i]!.length]));
  const quota = quotas(nodes, resources.length, held);
  const out: Assignment = new Map();
  const open: { id: string; room: number }[] = [];
  nodes.forEach((n, ni) => {
    const mine = byNode[ni]!;
    const q = quota.get(n.id) ?? 0;
    if (mine.length > q) {
      // Keep a deterministic subset, release the rest.
      mine.sort(byHash);
      for (let i = q; i < mine.length; i++) pool.push(mine[i]!);
      mine.length = q;
    }
    for (const r of mine) out.set(resources[r]!, n.id);
    if (mine.length < q) open.push({ id: n.id, room: q - mine.length });
  });
  // Spread the pool over nodes with room, by hash, so it is deterministic and even.
  pool.sort((a, b) => cmp(resources[a]!, resources[b]!));
  for (const r of pool) {
    const i = hashes[r]! % open.length;
    const slot = open[i]!;
    out.set(resources[r]!, slot.id);
    if (--slot.room === 0) open.splice(i, 1);
  }
  return out;
}

function roundRobin(nodes: readonly Node[], resources: readonly string[]): Assignment {
  const sorted = [...resources].sort(cmp);
  const out: Assignment = new Map();
  sorted.forEach((r, i) => out.set(r, nodes[i % nodes.length]!.id));
  return out;
}

function rendezvous(nodes: readonly Node[], resources: readonly string[]): Assignment {
  const out: Assignment = new Map();
  for (const r of resources) {
    const rh = hash32(r);
    let best = nodes[0]!;
    let bestScore = -Infinity;
    // nodes are sorted by id, so a strict > breaks ties by id.
    for (const n of nodes) {
      const s = rendezvousScore(rh, n.hash, n.weight);
      if (s > bestScore) {
        best = n;
        bestScore = s;
      }
    }
    out.set(r, best.id);
  }
  return out;
}

/**
 * The `count` best nodes for `key` by weighted rendezvous hashing; with
 * `spreadZones`, distinct zones are chosen first (replicas in different
 * failure domains where possible). Ties break by node id.
 */
export function rankNodes<N extends PlacementNode>(
  key: string,
  nodes: readonly N[],
  count: number,
  options: { spreadZones?: boolean } = {},
): N[] {
  const kh = hash32(key);
  const scored = nodes.map((n) => ({ n, s: rendezvousScore(kh, hash32(n.id), n.weight ?? 1) }));
  scored.sort((a, b) => b.s - a.s || cmp(a.n.id, b.n.id));
  if (options.spreadZones !== true) return scored.slice(0, count).map((x) => x.n);
  const out: N[] = [];
  const zones = new Set<string>();
  for (const x of scored) {
    if (out.length >= count) break;
    const z = x.n.zone ?? '';
    if (!zones.has(z)) {
      zones.add(z);
      out.push(x.n);
    }
  }
  for (const x of scored) {
    if (out.length >= count) break;
    if (!out.includes(x.n)) out.push(x.n);
  }
  return out;
}

// Fleet placement (many Raft groups over nodes): members and balanced desired leaders; see fleet.ts.
export {
  countFleetMoves,
  fleetLoads,
  placeGroups,
  type FleetGroupSpec,
  type FleetMoves,
  type FleetNodeLoad,
  type FleetPlacement,
  type FleetPlacementInput,
  type FleetPlacementNode,
  type GroupPlacement,
} from './fleet.js';
