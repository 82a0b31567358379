/**
 * Deliberately broken variants of the Raft core and its write-ahead log, switched on only by the simulator
 * (`rebalancer sim --scenario raft --mutant NAME`) and by tests, to show that the checkers catch each of them
 * (test/unit/raft/mutants.test.ts). Like the group protocols' mutants (src/protocol/mutants.ts) they are passed in
 * explicitly — `CoreOptions.mutants`, `WalOptions.mutants` — never read from a global, and each is one Set lookup
 * at the exact place it breaks. Kept in src/raft/ (not src/protocol/) because the Raft core may import only
 * src/errors.ts and src/options.ts.
 */
export const RAFT_MUTANTS = {
  'raft-commit-by-counting':
    'the leader commits an entry of a previous term as soon as a majority holds it (no current-term rule: figure 8)',
  'raft-ack-before-fsync': "the write-ahead log resolves persist() (so the host acknowledges) before the batch's fsync",
  'raft-vote-not-persisted':
    'the write-ahead log records the hard state without the vote: a replica that restarts can vote twice in a term',
  'raft-read-without-readindex':
    'the leader answers a ReadIndex request at once with its commit index, without a heartbeat round (stale reads)',
  'raft-membership-before-safe':
    'a membership change is accepted while the previous one is not committed (two in flight: disjoint majorities)',
} as const;

export type RaftMutantName = keyof typeof RAFT_MUTANTS;

/** The Raft mutants switched on for one run (empty in production). */
export type RaftMutants = ReadonlySet<RaftMutantName>;

export const NO_RAFT_MUTANTS: RaftMutants = new Set();

export function isRaftMutantName(name: string): name is RaftMutantName {
  return Object.prototype.hasOwnProperty.call(RAFT_MUTANTS, name);
}

/** The option check shared by the core's and the log's option readers. */
export function checkRaftMutants(v: unknown): string | undefined {
  if (!(v instanceof Set)) return `must be a Set of raft mutant names (${Object.keys(RAFT_MUTANTS).join(', ')})`;
  for (const name of v as Set<unknown>) {
    if (typeof name !== 'string' || !isRaftMutantName(name)) {
      return `holds ${JSON.stringify(name)}, which is not a raft mutant (${Object.keys(RAFT_MUTANTS).join(', ')})`;
    }
  }
  return undefined;
}
