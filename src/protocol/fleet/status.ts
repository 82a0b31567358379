/**
 * A fleet's status for people and tools (`rebalancer fleet status`, FleetNode.status()), computed from one fleet
 * view, sans IO. It never asks a node: what it says comes from the records, so an operator's machine that reaches
 * only the store sees the same as a node.
 *
 * A group's health, worst first:
 * - `majority-lost`: fewer than a majority of the voters its leader last reported are live (their nodes' sessions
 *   ended). Nothing is changed for it (no force-remove); it comes back when they do, or by the explicit, unsafe
 *   recovery (docs/fleet.md, "A group that lost its majority").
 * - `stuck`: its leader says it cannot make a change (a majority of voters is not reachable from it).
 * - `unplaced`: no desired record yet (no active node, fewer than minNodes, or no active node runs its machine).
 * - `unknown`: placed, but no leader has reported yet (it is being created, or has no leader).
 * - `moving`: members or leader differ from the desired ones, or a replica is catching up.
 * - `converged`: voters are the desired members, no learners, the desired leader leads.
 */
import type { FleetView } from './io.js';
import { runsMachine, type ObservedRecord } from './keys.js';
import { quorum } from './plan.js';

export type GroupHealth = 'converged' | 'moving' | 'unknown' | 'unplaced' | 'stuck' | 'majority-lost';

export interface FleetGroupStatus {
  readonly name: string;
  readonly replicas: number;
  readonly machine: string;
  readonly generation: number;
  /** Desired members (the desired leader first), empty while unplaced. */
  readonly desired: readonly string[];
  readonly desiredLeader: string | undefined;
  /** As last reported by the group's leader. */
  readonly leader: string | undefined;
  readonly term: number | undefined;
  readonly voters: readonly string[];
  readonly learners: readonly string[];
  /** Entries each member is behind the leader, as last reported. */
  readonly lag: Readonly<Record<string, number>>;
  readonly health: GroupHealth;
  readonly detail: string;
}

export interface FleetNodeStatus {
  readonly id: string;
  readonly zone: string;
  readonly weight: number;
  readonly address: string;
  readonly state: 'active' | 'deactivating';
  /** Groups whose desired members name it. */
  readonly desired: number;
  /** Groups it leads, as reported. */
  readonly leads: number;
}

export interface FleetStatus {
  readonly fleet: string;
  /** The coordinator's node id, when one is elected and its record readable. */
  readonly coordinator: string | undefined;
  readonly nodes: readonly FleetNodeStatus[];
  readonly groups: readonly FleetGroupStatus[];
  readonly counts: Readonly<Record<GroupHealth, number>>;
  /** Keys present but unreadable (repair them: nothing overwrites them). */
  readonly unreadable: readonly string[];
  /**
   * Groups on their way back after the control store lost its records (docs/fleet.md, "The control store loses its
   * data"): claimed by a node that keeps a replica, not written back yet. An add of such a name is refused.
   */
  readonly restoring: readonly { readonly name: string; readonly generation: number; readonly node: string }[];
}

const byName = <T extends { name: string }>(a: T, b: T): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

export function fleetStatus(fleet: string, view: FleetView): FleetStatus {
  const live = new Set(view.nodes.keys());
  const desiredOn = new Map<string, number>();
  const leads = new Map<string, number>();
  const counts: Record<GroupHealth, number> = {
    converged: 0,
    moving: 0,
    unknown: 0,
    unplaced: 0,
    stuck: 0,
    'majority-lost': 0,
  };
  const groups: FleetGroupStatus[] = [];
  for (const g of [...view.groups.values()].sort(byName)) {
    const d = g.desired;
    const o = g.observed;
    for (const m of d?.members ?? []) desiredOn.set(m, (desiredOn.get(m) ?? 0) + 1);
    if (o !== undefined) leads.set(o.leader, (leads.get(o.leader) ?? 0) + 1);
    let health: GroupHealth;
    let detail: string;
    if (d === undefined && g.seed !== undefined) {
      health = 'unplaced';
      detail =
        `being recovered (unsafe) from node ${g.seed.node}'s replica of generation ${g.seed.generation}: it starts ` +
        `there alone${live.has(g.seed.node) ? '' : `, once node ${g.seed.node} is live (nothing else holds its state)`}`;
    } else if (d === undefined) {
      health = 'unplaced';
      const active = [...view.nodes.values()].filter((n) => n.state === 'active');
      detail =
        active.length > 0 && !active.some((n) => runsMachine(n, g.machine))
          ? `no active node runs its state machine ${JSON.stringify(g.machine)}: it is placed once a node with it ` +
            'in its `machines` joins'
          : 'no desired placement yet (no active node, or fewer than minNodes)';
    } else if (o === undefined) {
      health = 'unknown';
      detail = 'no leader has reported yet';
    } else {
      const liveVoters = o.voters.filter((v) => live.has(v)).length;
      if (liveVoters < quorum(o.voters.length)) {
        health = 'majority-lost';
        detail =
          `only ${liveVoters} of its ${o.voters.length} voters (${o.voters.join(', ')}) are live; it waits for ` +
          'them to come back (nothing is force-removed)';
      } else if (o.status === 'stuck') {
        health = 'stuck';
        detail = o.detail;
      } else {
        const same =
          o.voters.length === d.members.length &&
          d.members.every((m) => o.voters.includes(m)) &&
          o.learners.length === 0 &&
          o.leader === d.leader;
        health = same && o.status === 'converged' ? 'converged' : 'moving';
        detail = o.detail;
      }
    }
    counts[health]++;
    groups.push({
      name: g.name,
      replicas: g.replicas,
      machine: g.machine,
      generation: g.generation,
      desired: d?.members ?? [],
      desiredLeader: d?.leader,
      leader: o?.leader,
      term: o?.term,
      voters: o?.voters ?? [],
      learners: o?.learners ?? [],
      lag: o?.lag ?? {},
      health,
      detail,
    });
  }
  const nodes: FleetNodeStatus[] = [...view.nodes.values()]
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    .map((n) => ({
      id: n.id,
      zone: n.zone,
      weight: n.weight,
      address: n.address,
      state: n.state,
      desired: desiredOn.get(n.id) ?? 0,
      leads: leads.get(n.id) ?? 0,
    }));
  let coordinator: string | undefined;
  if (view.coordinator !== undefined) {
    try {
      const v = JSON.parse(view.coordinator.value) as { nodeId?: unknown };
      if (typeof v.nodeId === 'string') coordinator = v.nodeId;
    } catch {
      coordinator = undefined;
    }
  }
  const restoring = [...view.claims.values()]
    .filter((c) => !view.groups.has(c.name))
    .sort(byName)
    .map((c) => ({ name: c.name, generation: c.generation, node: c.node }));
  return { fleet, coordinator, nodes, groups, counts, unreadable: view.unreadable, restoring };
}

/** One group as `groups()` lists it (a node's or a client's): its record, desired placement and last report. */
export interface FleetGroupInfo {
  readonly name: string;
  readonly replicas: number;
  readonly machine: string;
  readonly generation: number;
  /** What the coordinator wants, once placed. */
  readonly desired: { readonly members: readonly string[]; readonly leader: string } | undefined;
  /** What the group's leader last reported. */
  readonly observed: ObservedRecord | undefined;
}

/** Every group of `view`, by name. */
export function groupInfos(view: FleetView): FleetGroupInfo[] {
  return [...view.groups.values()].sort(byName).map((g) => ({
    name: g.name,
    replicas: g.replicas,
    machine: g.machine,
    generation: g.generation,
    desired: g.desired === undefined ? undefined : { members: g.desired.members, leader: g.desired.leader },
    observed: g.observed,
  }));
}
