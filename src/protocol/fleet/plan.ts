/**
 * The next membership step of one Raft group, sans IO: given the group's membership and replication progress as
 * its leader sees them, the members and leader the coordinator wants, and which nodes are live, which single
 * change should the leader make now? The caller (the fleet runtime on the leader's node) makes it through Raft,
 * waits until it is committed, and asks again. One change at a time keeps every majority of the membership before a
 * change intersecting every majority after it (docs/raft.md, "Membership changes"), and keeps this function simple
 * enough to check exhaustively.
 *
 * Words used below:
 * - quorum(n) = floor(n / 2) + 1, a majority of n voters.
 * - caught up: the leader itself; another replica when the leader heard from it recently (`recentActive`), it has
 *   acknowledged at least one entry (`match` > 0), and its `match` is within `catchUpLagEntries` of the leader's
 *   `lastIndex`. A replica that never acknowledged anything is not caught up however short the log: a joining
 *   replica answers before it holds anything (its node answers for it, or it is empty), and promoting it would make
 *   a majority depend on a member that holds no entry and, holding its votes until it has caught up with a leader,
 *   cannot help elect one — with the next removal the group could no longer elect a leader at all.
 * - reachable: live (its node's session is alive) and, unless it is the leader, recently active.
 * - healthy: live and caught up. The group is healthy when its healthy voters are at least quorum(voters).
 * - safe (for a change of voters): the healthy voters of the membership after the change are at least its quorum.
 *   So a planned change never takes a healthy group below a quorum of caught-up live voters.
 *
 * Rules, first match wins:
 *  1. The leader is not a voter (an operator removed it; Raft makes it hand over by itself) → `none`
 *     (`leader-leaving`).
 *  2. Fewer reachable voters than quorum(voters): no change could commit → `stuck` (`majority-lost`). The group is
 *     reported and left alone: nothing is ever force-removed (recovery is an explicit operator command).
 *  3. A learner that is not desired → `remove` it (it only costs the leader bandwidth; voters are untouched).
 *  4. If the group is not healthy (a majority is reachable but not caught up), only learners may be added (rule 7);
 *     otherwise `none` (`catching-up`) until it is. No voter changes and no transfers on an unhealthy group.
 *  5. More voters than desired members → `remove` a voter that is not desired, never the leader, only if safe;
 *     unhealthy ones first (removing one never lowers the healthy count), then by id. Removing only while there are
 *     more voters than desired members makes moves add-before-remove: a group of R voters moving to R other members
 *     never has fewer than R voters.
 *  6. A desired learner that is healthy → `promote` it to voter (always safe on a healthy group: one healthy voter
 *     more, and quorum grows by at most one).
 *  7. A desired member that is neither voter nor learner and is live → `addLearner` (it catches up as a learner,
 *     without counting in any majority, before rule 6 promotes it).
 *  8. The leader is not desired and is the voter to remove (more voters than desired members, and removing it would
 *     be safe) → `transferLeader` to the desired leader if it is a healthy voter, else to the first healthy desired
 *     voter by id; the new leader removes the old one by rule 5. The leader never removes itself.
 *  9. The voters are exactly the desired members and the leader is not the desired one → `transferLeader` to it
 *     once it is healthy; until then `none` (`waiting-for-node` while it is not live, else `catching-up`).
 * 10. Otherwise `none`: `converged` when voters = desired members, no learners and the desired leader leads;
 *     `waiting-for-node` when a desired member is not live; `catching-up` otherwise (a learner or voter behind).
 *
 * Liveness from sessions and progress from Raft are both needed: a live node may be partitioned from the leader
 * (not recently active), and a node that answers Raft may have lost its session (the coordinator will replace it).
 */
import { InvalidArgumentError } from '../../errors.js';
import type { Membership, MembershipChange, NodeId } from '../../raft/messages.js';
import { NO_MUTANTS, type Mutants } from '../mutants.js';

/** What the leader knows of one other replica's replication. */
export interface ReplicaProgress {
  /** The highest log index known to be on that replica. */
  readonly match: number;
  /** The leader heard from it within the last election timeout. */
  readonly recentActive: boolean;
}

export interface PlanInput {
  /** The group's membership: the last one in the leader's log, committed (the caller waits for that). */
  readonly membership: Membership;
  /** What the coordinator wants: the members (all voters) and which of them should lead. */
  readonly desired: { readonly members: readonly NodeId[]; readonly leader: NodeId };
  /** The current leader: the replica that runs this step. */
  readonly leader: NodeId;
  /** The leader's progress of every other member (a member with no entry is treated as not caught up). */
  readonly progress: ReadonlyMap<NodeId, ReplicaProgress>;
  /** The leader's last log index. */
  readonly lastIndex: number;
  /** Nodes whose control-plane sessions are alive. */
  readonly live: ReadonlySet<NodeId>;
  /** How far behind `lastIndex` a replica may be and still count as caught up. */
  readonly catchUpLagEntries: number;
}

/** Why no change is made now. */
export type WaitReason = 'converged' | 'catching-up' | 'waiting-for-node' | 'leader-leaving';

export type PlanStep =
  | { readonly type: 'addLearner' | 'promote' | 'remove' | 'transferLeader'; readonly node: NodeId }
  | { readonly type: 'none'; readonly reason: WaitReason; readonly detail: string }
  | { readonly type: 'stuck'; readonly reason: 'majority-lost'; readonly detail: string };

/** A majority of `n` voters. */
export function quorum(n: number): number {
  return Math.floor(n / 2) + 1;
}

/** The Raft membership change that carries out `step`, or undefined for steps that change no membership. */
export function membershipChangeOf(step: PlanStep): MembershipChange | undefined {
  switch (step.type) {
    case 'addLearner':
      return { type: 'addLearner', node: step.node };
    case 'promote':
      return { type: 'addVoter', node: step.node };
    case 'remove':
      return { type: 'remove', node: step.node };
    default:
      return undefined;
  }
}

/** The one step the leader should take next (the rules are in this file's comment). */
export function nextStep(input: PlanInput, mutants: Mutants = NO_MUTANTS): PlanStep {
  check(input);
  const { membership, desired, leader, progress, lastIndex, live, catchUpLagEntries } = input;
  const voters = [...membership.voters].sort();
  const learners = [...membership.learners].sort();
  const wanted = new Set(desired.members);
  const voterSet = new Set(voters);

  const caughtUp = (n: NodeId): boolean => {
    if (n === leader) return true;
    const p = progress.get(n);
    return p !== undefined && p.recentActive && p.match > 0 && lastIndex - p.match <= catchUpLagEntries;
  };
  const reachable = (n: NodeId): boolean => live.has(n) && (n === leader || progress.get(n)?.recentActive === true);
  const healthy = (n: NodeId): boolean => live.has(n) && caughtUp(n);
  const healthyCount = (vs: readonly NodeId[]): number => vs.filter(healthy).length;
  const safeWithout = (n: NodeId): boolean => {
    const after = voters.filter((v) => v !== n);
    return after.length > 0 && healthyCount(after) >= quorum(after.length);
  };

  // 1.
  if (!voterSet.has(leader)) {
    return none('leader-leaving', `the leader ${leader} is no longer a voter; it hands leadership over by itself`);
  }
  if (mutants.has('fleet-remove-before-add')) {
    // The mutant: a voter that is not desired goes first, whatever the others' health (no quorum check).
    const extra = voters.find((n) => !wanted.has(n) && n !== leader);
    if (extra !== undefined) return { type: 'remove', node: extra };
  }
  // 2.
  const reachableVoters = voters.filter(reachable).length;
  if (reachableVoters < quorum(voters.length)) {
    return {
      type: 'stuck',
      reason: 'majority-lost',
      detail:
        `only ${reachableVoters} of ${voters.length} voters are live and reachable, fewer than the ` +
        `${quorum(voters.length)} a change needs; bring members back (nothing is force-removed)`,
    };
  }
  // 3.
  const extraLearner = learners.find((n) => !wanted.has(n));
  if (extraLearner !== undefined) return { type: 'remove', node: extraLearner };

  const missing = desired.members.filter((n) => !voterSet.has(n) && !learners.includes(n)).sort();
  const addable = missing.find((n) => live.has(n));
  // 4.
  const groupHealthy = healthyCount(voters) >= quorum(voters.length);
  if (!groupHealthy) {
    if (addable !== undefined) return { type: 'addLearner', node: addable };
    return none(
      'catching-up',
      `only ${healthyCount(voters)} of ${voters.length} voters are live and caught up, fewer than ` +
        `${quorum(voters.length)}; no voter changes until a majority has caught up`,
    );
  }
  // 5.
  const tooMany = voters.length > wanted.size;
  if (tooMany) {
    const candidates = voters
      .filter((n) => !wanted.has(n) && n !== leader)
      .sort((a, b) => Number(healthy(a)) - Number(healthy(b)) || (a < b ? -1 : a > b ? 1 : 0));
    const removable = candidates.find(safeWithout);
    if (removable !== undefined) return { type: 'remove', node: removable };
  }
  // 6.
  const ready = learners.find((n) => wanted.has(n) && healthy(n));
  if (ready !== undefined) return { type: 'promote', node: ready };
  // 7.
  if (addable !== undefined) return { type: 'addLearner', node: addable };
  // 8.
  if (tooMany && !wanted.has(leader) && safeWithout(leader)) {
    const to = transferTarget(voters, desired.leader, wanted, healthy);
    if (to !== undefined) return { type: 'transferLeader', node: to };
  }
  // 9.
  const sameVoters = voters.length === wanted.size && voters.every((n) => wanted.has(n));
  if (sameVoters && leader !== desired.leader) {
    if (healthy(desired.leader)) return { type: 'transferLeader', node: desired.leader };
    if (!live.has(desired.leader)) return none('waiting-for-node', `the desired leader ${desired.leader} is not live`);
    return none('catching-up', `the desired leader ${desired.leader} has not caught up yet`);
  }
  // 10.
  if (sameVoters && learners.length === 0) return none('converged', 'the group has its desired members and leader');
  const dead = missing.filter((n) => !live.has(n));
  if (dead.length > 0) return none('waiting-for-node', `desired members not live: ${dead.join(', ')}`);
  return none('catching-up', 'waiting for replicas to catch up before the next change');
}

function none(reason: WaitReason, detail: string): PlanStep {
  return { type: 'none', reason, detail };
}

/** The desired leader if it is a healthy voter, else the first healthy desired voter by id. */
function transferTarget(
  voters: readonly NodeId[],
  desiredLeader: NodeId,
  wanted: ReadonlySet<NodeId>,
  healthy: (n: NodeId) => boolean,
): NodeId | undefined {
  if (voters.includes(desiredLeader) && healthy(desiredLeader)) return desiredLeader;
  return voters.find((n) => wanted.has(n) && healthy(n));
}

/** Inputs that cannot describe a real group are the caller's bug: say which. */
function check(input: PlanInput): void {
  const { membership, desired, lastIndex, catchUpLagEntries } = input;
  const where = 'fleet plan';
  const all = [...membership.voters, ...membership.learners];
  if (new Set(all).size !== all.length) {
    throw new InvalidArgumentError(`${where}: a node is listed twice in the membership (voters and learners)`);
  }
  if (membership.voters.length === 0) throw new InvalidArgumentError(`${where}: the membership has no voters`);
  if (desired.members.length === 0) {
    throw new InvalidArgumentError(`${where}: the desired members are empty; a group needs at least one member`);
  }
  if (new Set(desired.members).size !== desired.members.length) {
    throw new InvalidArgumentError(`${where}: a desired member is listed twice`);
  }
  if (!desired.members.includes(desired.leader)) {
    throw new InvalidArgumentError(
      `${where}: the desired leader ${JSON.stringify(desired.leader)} is not one of the desired members`,
    );
  }
  if (!Number.isSafeInteger(lastIndex) || lastIndex < 0) {
    throw new InvalidArgumentError(`${where}: lastIndex must be a whole number of at least 0, got ${lastIndex}`);
  }
  if (!Number.isSafeInteger(catchUpLagEntries) || catchUpLagEntries < 0) {
    throw new InvalidArgumentError(
      `${where}: catchUpLagEntries must be a whole number of at least 0, got ${catchUpLagEntries}`,
    );
  }
}
