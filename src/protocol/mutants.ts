/**
 * Deliberately broken variants of the protocol, switched on only by the
 * simulator (`rebalancer sim --mutant NAME`) to show that its checker catches
 * each of them. Production code never sets them; each check is one Set
 * lookup at the exact place the mutant breaks.
 */
export const MUTANTS = {
  'acquire-without-lock':
    'a new owner starts without waiting for the previous owner to release (no compare on the lock)',
  'no-self-fencing': 'a node that cannot renew its session keeps its handlers running and stillOwner() true',
  'release-before-stop': 'the lock is released as soon as a handler is told to stop, not when it has stopped',
  'delete-lock-on-remove': "removing a resource also deletes its lock (the original Rebalanser's reused-name bug)",
  'unguarded-coordinator':
    "coordinator writes do not compare the coordinator's election key, so a stale coordinator can write",
} as const;

export type MutantName = keyof typeof MUTANTS;

export const activeMutants = new Set<MutantName>();

export function isMutantName(name: string): name is MutantName {
  return Object.prototype.hasOwnProperty.call(MUTANTS, name);
}
