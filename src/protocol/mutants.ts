/**
 * Deliberately broken variants of the protocols, switched on only by the
 * simulator (`rebalancer sim --mutant NAME`) to show that its checker catches
 * each of them. They are passed in explicitly — to the cores as an argument,
 * to the runtimes through their internal options — never read from a global,
 * so a core's output depends on its inputs alone. Each check is one Set lookup
 * at the exact place the mutant breaks.
 */
export const MUTANTS = {
  'acquire-without-lock':
    'a new owner starts without waiting for the previous owner to release (no compare on the lock)',
  'no-self-fencing': 'a node that cannot renew its session keeps its handlers running and stillOwner() true',
  'release-before-stop': 'the lock is released as soon as a handler is told to stop, not when it has stopped',
  'delete-lock-on-remove': "removing a resource also deletes its lock (the original Rebalanser's reused-name bug)",
  'unguarded-coordinator':
    "coordinator writes do not compare the coordinator's election key, so a stale coordinator can write",
  'no-delayed-restart':
    'after the store lost its data, sessions (and so locks) are granted at once, while a paused holder of a lost lock may still act',
  'overwrite-unreadable':
    'the coordinator treats a group state it cannot read as absent and claims it, overwriting what it could not read',
} as const;

export type MutantName = keyof typeof MUTANTS;

/** Broken variants of the slots protocol (`rebalancer sim --scenario slots --mutant NAME`). */
export const SLOTS_MUTANTS = {
  'slots-release-without-check':
    'a site releases a slot without checking that enough replicas elsewhere are ready (and the coordinator drops old replicas at once)',
  'slots-primary-without-lock': "a site takes a slot's primary role without comparing that the lock is free",
  'slots-no-self-fencing': 'a site whose lease ran out keeps acting as primary (isPrimary ignores the lease)',
  'slots-release-unconfirmed':
    'a release counts ready replicas that did not answer its probe (a site that crashed within a TTL still counts)',
  'slots-no-delayed-restart':
    'after the store lost its data, sessions (and so primary locks) are granted at once, while a paused primary may still act',
} as const;

export type SlotsMutantName = keyof typeof SLOTS_MUTANTS;

/** Broken variants of the fleet's planner and replica rules (`rebalancer sim --scenario fleet --mutant NAME`). */
export const FLEET_MUTANTS = {
  'fleet-remove-before-add':
    'the planner removes a voter that is not desired before its replacement is added and caught up, ignoring the quorum check',
  'fleet-bootstrap-always':
    'a new replica on a founding member bootstraps from `initial` (votes not held) even after the desired record was rewritten, or after it dropped a replica of that group',
  'fleet-drop-on-lost-records':
    'a node that finds the control store lost its records takes the missing group records for removals and drops its replicas (no orphans)',
} as const;

export type FleetMutantName = keyof typeof FLEET_MUTANTS;

/** The mutants switched on for one run (empty in production). */
export type Mutants = ReadonlySet<MutantName | SlotsMutantName | FleetMutantName>;

export const NO_MUTANTS: Mutants = new Set();

export function isMutantName(name: string): name is MutantName {
  return Object.prototype.hasOwnProperty.call(MUTANTS, name);
}

export function isSlotsMutantName(name: string): name is SlotsMutantName {
  return Object.prototype.hasOwnProperty.call(SLOTS_MUTANTS, name);
}

export function isFleetMutantName(name: string): name is FleetMutantName {
  return Object.prototype.hasOwnProperty.call(FLEET_MUTANTS, name);
}
