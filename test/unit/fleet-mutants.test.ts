/**
 * The fleet mutants (src/protocol/mutants.ts) change exactly the decision they name, and only when passed in: the
 * planner removing a voter before its replacement is in, and a founding member's new replica bootstrapping after the
 * desired record was rewritten. The simulator must catch each (test/sim/fleet.test.ts); here each is pinned to its
 * one place, so that a mutant that silently stops mutating fails here rather than looking "not caught" there.
 */
import { describe, expect, it } from 'vitest';
import type { DesiredRecord } from '../../src/protocol/fleet/keys.js';
import { nextStep, type PlanInput } from '../../src/protocol/fleet/plan.js';
import { decideReplicas, type ReplicaInput } from '../../src/protocol/fleet/replicas.js';
import { FLEET_MUTANTS, isFleetMutantName, isMutantName } from '../../src/protocol/mutants.js';

/** Voters a, b, c led by a; c is to be replaced by d; b is far behind (so the group has no spare caught-up voter). */
const move: PlanInput = {
  membership: { voters: ['a', 'b', 'c'], learners: [] },
  desired: { members: ['a', 'b', 'd'], leader: 'a' },
  leader: 'a',
  progress: new Map([
    ['b', { match: 10, recentActive: true }],
    ['c', { match: 100, recentActive: true }],
  ]),
  lastIndex: 100,
  live: new Set(['a', 'b', 'c', 'd']),
  catchUpLagEntries: 4,
};

function rewritten(version: number): ReplicaInput {
  const d: DesiredRecord = {
    name: 'g',
    generation: 1,
    members: ['a', 'b', 'c'],
    leader: 'a',
    token: 1,
    initial: ['a', 'b', 'c'],
    version,
  };
  return {
    nodeId: 'a',
    groups: new Map([['g', { name: 'g', generation: 1, machine: 'kv', desired: d, observed: undefined }]]),
    open: new Map(),
    stored: new Set(),
    machines: new Set(['kv']),
    addressable: () => true,
  };
}

describe('fleet mutants', () => {
  it('are named apart from the groups mutants', () => {
    for (const name of Object.keys(FLEET_MUTANTS)) {
      expect(isFleetMutantName(name)).toBe(true);
      expect(isMutantName(name)).toBe(false);
    }
    expect(isFleetMutantName('acquire-without-lock')).toBe(false);
  });

  it('fleet-remove-before-add: the planner removes the undesired voter first, whatever the quorum', () => {
    expect(nextStep(move)).toEqual({ type: 'addLearner', node: 'd' });
    expect(nextStep(move, new Set(['fleet-remove-before-add']))).toEqual({ type: 'remove', node: 'c' });
    // Never the leader, even so.
    const leaderLeaves = { ...move, desired: { members: ['b', 'c', 'd'], leader: 'b' } };
    expect(nextStep(leaderLeaves, new Set(['fleet-remove-before-add']))).not.toEqual({ type: 'remove', node: 'a' });
  });

  it('fleet-bootstrap-always: a founding member bootstraps after the record was rewritten', () => {
    const mode = (version: number, mutant: boolean): string | undefined => {
      const a = decideReplicas(rewritten(version), new Set(mutant ? (['fleet-bootstrap-always'] as const) : []))
        .actions[0];
      return a?.type === 'open' ? a.mode : undefined;
    };
    expect(mode(1, false)).toBe('bootstrap');
    expect(mode(2, false)).toBe('join');
    expect(mode(2, true)).toBe('bootstrap');
  });
});
