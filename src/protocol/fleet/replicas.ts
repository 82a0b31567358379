/**
 * Which Raft replicas one fleet node should hold, sans IO: the fleet's records (as last read) and this node's open
 * replicas in, the replicas to open and to drop out. The fleet node (src/runtime/fleet/node.ts) runs it after every
 * read of the control plane and carries the actions out; the rules live here so that they can be checked on plain
 * data, and the simulator runs the same function.
 *
 * Rules (docs/fleet.md, "Replicas on a node"):
 * - Open: a group whose desired record names this node and that has no replica here. A replica the node's log
 *   already holds is recovered. Otherwise the replica is created: it **bootstraps** (starts as a voter of the
 *   generation's `initial` members) only while the desired record is the generation's first (`version` 1) and
 *   `initial` names this node; in every other case it **joins** empty and the group's leader brings it in (learner,
 *   caught up, promoted). Every replica starts from the same founding membership (`initial`: Raft's log begins after
 *   it), but a joining one holds its votes until it has caught up with a leader (RaftNode.openGroup `join`). So two
 *   sets of replicas can never both believe they are the group: only the founding members of a generation may
 *   elect a leader from an empty log, and only before the coordinator changed anything.
 * - Drop (close the replica and delete its data): a replica of a generation that is no longer live (the group was
 *   removed, or removed and added again), or of the live generation but of another incarnation than the record's
 *   (GroupRecord.incarnation: its group was removed and another of the same name and generation written back after a
 *   loss of the records; an unknown incarnation, of an older release, matches); or one whose desired record no longer names this node and that is no
 *   longer a member of the group: its own committed membership does not name it (it was never added, or its
 *   removal committed), or the leader's report excludes it at a membership index at least as recent as the one it knows.
 *   A replica still counted as a member stays until the leader has removed it — dropping a voter's data would
 *   silently weaken the group.
 * - A generation seeded by the unsafe recovery (GroupFacts.seed, src/protocol/fleet/recover.ts): its seed node
 *   bootstraps it from its open replica of the old generation (`seedFrom`), which stays until then (it is
 *   recovered first if it is only stored); without that replica the seed node waits (`seed-missing`), it never
 *   bootstraps an empty group. Every other node joins, as usual.
 * - A group whose state machine is not one of this node's `machines` is not opened (reported, nothing else
 *   happens: the coordinator keeps the placement, the group runs on its other members).
 * - Orphans — replicas this node held when it found the control plane's records lost (another meta id, or none:
 *   docs/fleet.md, "The control store loses its data") — are left alone: never dropped (the records that could say
 *   their group was removed are gone, and their data may be the only copy), never taken for a group of the new
 *   records (a name added again after the loss may be handed the very same generation) unless the record is of
 *   their own incarnation (the node takes them back before deciding: node.ts #reclaimOrphans). A group whose id is an
 *   orphan's is not opened here (`orphan`).
 */
import { NO_MUTANTS, type Mutants } from '../mutants.js';
import {
  groupRaftId,
  parseRaftGroupId,
  raftGroupId,
  sameIncarnation,
  type DesiredRecord,
  type GroupSeed,
  type ObservedRecord,
} from './keys.js';

/** One replica open on this node, as the node sees it. */
export interface OpenReplica {
  /** The Raft group id, `<name>:<generation>.<tag>` (keys.ts raftGroupId). */
  readonly id: string;
  readonly voters: readonly string[];
  readonly learners: readonly string[];
  /** The log index of the membership entry it knows (0: the bootstrap membership, or none when joined empty). */
  readonly membershipIndex: number;
  /**
   * Its commit index. When given, its own membership excluding it counts only once committed (`membershipIndex` ≤
   * `committed`): a removal merely appended may be overwritten by a new leader, and the replica is then still a
   * voter. Absent: its membership counts as it is.
   */
  readonly committed?: number;
}

/** What the node knows of one live group. */
export interface GroupFacts {
  readonly name: string;
  readonly generation: number;
  readonly machine: string;
  /** The record's incarnation (GroupRecord.incarnation); undefined (older releases) matches any replica. */
  readonly incarnation?: string | undefined;
  /** The record's Raft id tag (GroupRecord.tag); part of the group's Raft id. */
  readonly tag?: string | undefined;
  readonly desired: DesiredRecord | undefined;
  readonly observed: ObservedRecord | undefined;
  /** Set when this generation is seeded from an older one's replica (the unsafe recovery, recover.ts). */
  readonly seed?: GroupSeed | undefined;
}

export interface ReplicaInput {
  readonly nodeId: string;
  readonly groups: ReadonlyMap<string, GroupFacts>;
  /** Replicas open here, by Raft group id. */
  readonly open: ReadonlyMap<string, OpenReplica>;
  /** Raft group ids the node's log holds but that are not open (after a restart). */
  readonly stored: ReadonlySet<string>;
  /** This node's state machine names. */
  readonly machines: ReadonlySet<string>;
  /** Nodes whose transport address is known (this node's peers). Bootstrap voters must all be reachable by id. */
  readonly addressable: (node: string) => boolean;
  /** Raft group ids of this node's orphans (open or stored): see the rules above. */
  readonly orphans?: ReadonlySet<string> | undefined;
  /**
   * The incarnation of each replica held here (open or stored), by Raft group id, as the record it was opened from had
   * it (the node's catalog); absent or undefined: unknown (opened by an older release), matches any record.
   */
  readonly incarnations?: ReadonlyMap<string, string | undefined> | undefined;
}

export type ReplicaAction =
  | {
      readonly type: 'open';
      readonly id: string;
      readonly name: string;
      readonly machine: string;
      /**
       * recover: the log holds it; bootstrap: a founding voter; join: new to the running group (votes held until
       * caught up). `members`: the founding voters.
       */
      readonly mode: 'recover' | 'bootstrap' | 'join';
      readonly members: readonly string[];
      /**
       * With `bootstrap`: the Raft group id of this node's open replica (of an older generation) whose applied
       * state the new replica starts from (RaftNode.seedGroup) instead of the state machine's initial state.
       */
      readonly seedFrom?: string;
    }
  | { readonly type: 'drop'; readonly id: string; readonly reason: 'group-removed' | 'moved-away' };

export interface ReplicaWait {
  readonly name: string;
  readonly reason: 'unknown-machine' | 'unknown-address' | 'seed-missing' | 'orphan';
  readonly detail: string;
}

export interface ReplicaDecision {
  readonly actions: readonly ReplicaAction[];
  /** Groups this node should hold but cannot yet (the node reports them; nothing else happens). */
  readonly waits: readonly ReplicaWait[];
}

export function decideReplicas(input: ReplicaInput, mutants: Mutants = NO_MUTANTS): ReplicaDecision {
  const { nodeId, groups, open, stored, machines } = input;
  const actions: ReplicaAction[] = [];
  const waits: ReplicaWait[] = [];

  // Replicas held here (open or stored) of a generation that is no longer live: drop.
  const orphans = input.orphans ?? new Set<string>();
  const held = new Set([...open.keys(), ...stored]);
  // A held replica of the record's generation but of another incarnation: of a group that is gone (see the rules).
  const otherIncarnation = (id: string, g: GroupFacts): boolean =>
    !sameIncarnation(input.incarnations?.get(id), g.incarnation);
  for (const id of held) {
    if (orphans.has(id)) continue;
    const parsed = parseRaftGroupId(id);
    const g = parsed === undefined ? undefined : groups.get(parsed.name);
    if (parsed === undefined || g === undefined || groupRaftId(g) !== id || otherIncarnation(id, g)) {
      // The replica a recovered group is seeded from stays until the new generation exists here.
      if (g !== undefined && seedsHere(g, nodeId) && seedRaftId(g) === id) {
        if (!held.has(groupRaftId(g))) continue;
      }
      actions.push({ type: 'drop', id, reason: 'group-removed' });
    }
  }

  for (const g of [...groups.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const id = groupRaftId(g);
    const d = g.desired;
    const wanted = d !== undefined && d.generation === g.generation && d.members.includes(nodeId);
    if (orphans.has(id)) {
      if (wanted) {
        waits.push({
          name: g.name,
          reason: 'orphan',
          detail:
            `this node holds a replica ${id} from before the control store lost its records, and the group ` +
            `${g.name} now in the records has the same generation: it is not opened here (docs/fleet.md, "The ` +
            'control store loses its data")',
        });
      }
      continue;
    }
    if (held.has(id) && otherIncarnation(id, g)) continue; // dropped above
    const replica = open.get(id);
    if (replica !== undefined) {
      if (!wanted && d !== undefined && removedFrom(nodeId, replica, g.observed, g.generation)) {
        actions.push({ type: 'drop', id, reason: 'moved-away' });
      }
      continue;
    }
    if (stored.has(id)) {
      // Recover it whatever the desired record says: whether it may be dropped depends on its own membership.
      // (The founding members go with it: a replica recovered without a snapshot rebuilds its base from them.)
      if (!machines.has(g.machine)) waits.push(unknownMachine(g));
      else if (d !== undefined && d.generation === g.generation) {
        actions.push({ type: 'open', id, name: g.name, machine: g.machine, mode: 'recover', members: d.initial });
      }
      continue;
    }
    if (!wanted) continue;
    if (!machines.has(g.machine)) {
      waits.push(unknownMachine(g));
      continue;
    }
    // The mutant bootstraps a founding member's new replica whatever the desired record's version.
    if ((d.version === 1 || mutants.has('fleet-bootstrap-always')) && d.initial.includes(nodeId)) {
      const unknown = d.initial.filter((m) => m !== nodeId && !input.addressable(m));
      if (unknown.length > 0) {
        waits.push({
          name: g.name,
          reason: 'unknown-address',
          detail: `waiting for the address of ${unknown.join(', ')} (not live in the fleet) to create the group`,
        });
        continue;
      }
      if (seedsHere(g, nodeId)) {
        // Seeded (the unsafe recovery): from this node's replica of the old generation, never from an empty state.
        const seedId = seedRaftId(g)!;
        if (open.has(seedId)) {
          actions.push({ ...openBootstrap(g, id, d), seedFrom: seedId });
        } else if (stored.has(seedId)) {
          // Restarted since the recovery was written: recover the old replica first; the next decision seeds.
          actions.push({
            type: 'open',
            id: seedId,
            name: g.name,
            machine: g.machine,
            mode: 'recover',
            members: g.seed!.initial,
          });
        } else {
          waits.push({
            name: g.name,
            reason: 'seed-missing',
            detail:
              `group ${g.name} is to be recovered from this node's replica of generation ${g.seed!.generation}, ` +
              'which this node does not hold (its data is gone?). Recover the group from another node: ' +
              `rebalancer fleet recover ${g.name} --from NODE --unsafe --force`,
          });
        }
        continue;
      }
      actions.push(openBootstrap(g, id, d));
    } else {
      actions.push({ type: 'open', id, name: g.name, machine: g.machine, mode: 'join', members: d.initial });
    }
  }
  return { actions, waits };
}

function openBootstrap(g: GroupFacts, id: string, d: DesiredRecord): ReplicaAction & { type: 'open' } {
  return { type: 'open', id, name: g.name, machine: g.machine, mode: 'bootstrap', members: d.initial };
}

/** The Raft group id of the old generation a recovered group is seeded from. */
function seedRaftId(g: GroupFacts): string | undefined {
  return g.seed === undefined ? undefined : raftGroupId(g.name, g.seed.generation, g.seed.tag);
}

/** This node is the seed of the group's generation (the unsafe recovery) and the only founding member. */
function seedsHere(g: GroupFacts, nodeId: string): boolean {
  return g.seed !== undefined && g.seed.node === nodeId;
}

/** The replica is no longer a member of its group (see the rules above). */
function removedFrom(
  nodeId: string,
  replica: OpenReplica,
  observed: ObservedRecord | undefined,
  generation: number,
): boolean {
  const member = (voters: readonly string[], learners: readonly string[]): boolean =>
    voters.includes(nodeId) || learners.includes(nodeId);
  const committed = replica.committed === undefined || replica.membershipIndex <= replica.committed;
  if (!member(replica.voters, replica.learners) && committed) return true;
  return (
    observed !== undefined &&
    observed.generation === generation &&
    observed.membershipIndex >= replica.membershipIndex &&
    !member(observed.voters, observed.learners)
  );
}

function unknownMachine(g: GroupFacts): ReplicaWait {
  return {
    name: g.name,
    reason: 'unknown-machine',
    detail:
      `group ${g.name} uses state machine ${JSON.stringify(g.machine)}, which is not in this node's machines; ` +
      'it was placed here by a coordinator that did not know (an older release, or a node record without ' +
      '`machines`): start the node with it, or the next placement moves the group to nodes that run it',
  };
}
