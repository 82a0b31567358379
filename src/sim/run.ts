/**
 * Run many simulation seeds, report failing ones with the command that
 * replays each exactly, and summarise. Used by `rebalancer sim` and the tests.
 */
import type { PlacementStrategy } from '../placement/index.js';
import type { Protocol } from '../protocol/groups/keys.js';
import type { FleetMutantName, MutantName, SlotsMutantName } from '../protocol/mutants.js';
import type { RaftMutantName } from '../raft/mutants.js';
import { runFleetSim } from './fleet.js';
import { runGroupsSim } from './groups.js';
import { runRaftSim } from './raft.js';
import { runSlotsSim } from './slots.js';

/**
 * `slots-crash-and-leave`: the slots simulator's one fixed scenario instead of random faults (runSlotsSim).
 * `fleet-store-loss`: the fleet scenario with the control store also losing its data (runFleetSim `storeLoss`).
 * `raft`: one Raft group of real nodes on a simulated network and disks (runRaftSim).
 * `fleet`: real fleet nodes (control plane on the memory store, Raft on the simulated network and disks) running
 * many groups (runFleetSim).
 */
export type SimScenario = 'groups' | 'slots' | 'slots-crash-and-leave' | 'raft' | 'fleet' | 'fleet-store-loss';

/** What every scenario reports per seed. */
export interface SeedResult {
  readonly seed: number;
  readonly steps: number;
  readonly violations: readonly { readonly atMs: number; readonly kind: string; readonly detail: string }[];
}

type Violation = SeedResult['violations'][number];

export interface SimRunOptions {
  readonly scenario: SimScenario;
  /** groups only. */
  readonly protocol: Protocol;
  readonly seeds: number;
  /** First seed (default 1); with `seeds: 1` this replays one seed. */
  readonly seed?: number | undefined;
  /** Nodes (groups) or sites (slots). */
  readonly nodes?: number | undefined;
  /** Resources (groups), slots (slots) or Raft groups (fleet). */
  readonly resources?: number | undefined;
  readonly strategy?: PlacementStrategy | undefined;
  readonly mutant?: MutantName | SlotsMutantName | RaftMutantName | FleetMutantName | undefined;
  /** Stop at the first failing seed (mutant hunting). */
  readonly stopOnFailure?: boolean | undefined;
  readonly onSeed?: ((result: SeedResult, index: number) => void) | undefined;
}

export interface SimSummary {
  readonly scenario: string;
  readonly protocol: Protocol | null;
  readonly mutant: MutantName | SlotsMutantName | RaftMutantName | FleetMutantName | null;
  readonly seeds: number;
  readonly steps: number;
  readonly violations: number;
  readonly failingSeeds: readonly { readonly seed: number; readonly violation: Violation; readonly replay: string }[];
  readonly firstFailingSeed: number | null;
  readonly wallMs: number;
}

export function replayCommand(o: SimRunOptions, seed: number): string {
  const parts = [
    `npx rebalancer sim --scenario ${o.scenario}${o.scenario === 'groups' ? ` --protocol ${o.protocol}` : ''} --seed ${seed} --seeds 1`,
  ];
  if (o.nodes !== undefined) parts.push(`--nodes ${o.nodes}`);
  if (o.resources !== undefined) parts.push(`--resources ${o.resources}`);
  if (o.strategy !== undefined) parts.push(`--strategy ${o.strategy}`);
  if (o.mutant !== undefined) parts.push(`--mutant ${o.mutant}`);
  return parts.join(' ');
}

export async function runSimulation(o: SimRunOptions): Promise<SimSummary> {
  const started = performance.now();
  const first = o.seed ?? 1;
  let steps = 0;
  let violations = 0;
  let ran = 0;
  const failing: { seed: number; violation: Violation; replay: string }[] = [];
  for (let i = 0; i < o.seeds; i++) {
    const seed = first + i;
    const r: SeedResult =
      o.scenario === 'raft'
        ? await runRaftSim({ seed, nodes: o.nodes, mutant: o.mutant as RaftMutantName | undefined })
        : o.scenario === 'fleet' || o.scenario === 'fleet-store-loss'
          ? await runFleetSim({
              seed,
              nodes: o.nodes,
              groups: o.resources,
              mutant: o.mutant as FleetMutantName | undefined,
              storeLoss: o.scenario === 'fleet-store-loss',
            })
          : o.scenario !== 'groups'
            ? await runSlotsSim({
                seed,
                sites: o.nodes,
                slots: o.resources,
                mutant: o.mutant as SlotsMutantName | undefined,
                crashAndLeave: o.scenario === 'slots-crash-and-leave',
              })
            : await runGroupsSim({
                seed,
                protocol: o.protocol,
                mutant: o.mutant as MutantName | undefined,
                ...(o.nodes === undefined ? {} : { nodes: o.nodes }),
                ...(o.resources === undefined ? {} : { resources: o.resources }),
                ...(o.strategy === undefined ? {} : { strategy: o.strategy }),
              });
    ran++;
    steps += r.steps;
    violations += r.violations.length;
    if (r.violations.length > 0) failing.push({ seed, violation: r.violations[0]!, replay: replayCommand(o, seed) });
    o.onSeed?.(r, i);
    if (o.stopOnFailure === true && failing.length > 0) break;
  }
  return {
    scenario: o.scenario,
    protocol: o.scenario === 'groups' ? o.protocol : null,
    mutant: o.mutant ?? null,
    seeds: ran,
    steps,
    violations,
    failingSeeds: failing,
    firstFailingSeed: failing[0]?.seed ?? null,
    wallMs: Math.round(performance.now() - started),
  };
}
