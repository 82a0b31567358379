/**
 * Majorities over a set of voters. Membership changes one voter at a time, so any majority of the membership before
 * a change intersects any majority of the one after: a single majority configuration is all the core needs.
 */
import type { NodeId } from './messages.js';

export function majority(voters: number): number {
  return Math.floor(voters / 2) + 1;
}

/** The highest index that a majority of `voters` hold (the k-th largest match, k = majority). 0 without voters. */
export function quorumIndex(voters: readonly NodeId[], indexOf: (id: NodeId) => number): number {
  if (voters.length === 0) return 0;
  const values = voters.map(indexOf).sort((a, b) => b - a);
  return values[majority(voters.length) - 1]!;
}

export type VoteResult = 'won' | 'lost' | 'pending';

/** Whether the granted votes make a majority, the refusals make one impossible, or neither yet. */
export function voteResult(voters: readonly NodeId[], votes: ReadonlyMap<NodeId, boolean>): VoteResult {
  let granted = 0;
  let rejected = 0;
  for (const id of voters) {
    const v = votes.get(id);
    if (v === true) granted++;
    else if (v === false) rejected++;
  }
  const need = majority(voters.length);
  if (granted >= need) return 'won';
  if (voters.length - rejected < need) return 'lost';
  return 'pending';
}

/** Whether `ids` hold a majority of `voters`. */
export function isQuorum(voters: readonly NodeId[], has: (id: NodeId) => boolean): boolean {
  let n = 0;
  for (const id of voters) if (has(id)) n++;
  return n >= majority(voters.length);
}
