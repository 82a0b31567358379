/** `rebalancer sim`: the deterministic simulator. */
import type { Command } from 'commander';
import { InvalidArgumentError } from '../../errors.js';
import { PLACEMENT_STRATEGIES, type PlacementStrategy } from '../../placement/index.js';
import { PROTOCOLS, type Protocol } from '../../protocol/groups/keys.js';
import type { FleetMutantName, MutantName, SlotsMutantName } from '../../protocol/mutants.js';
import type { RaftMutantName } from '../../raft/mutants.js';
import type { SimScenario } from '../../sim/run.js';
import { EXIT, globalOptions } from '../context.js';
import { choiceFlag, integerFlag, parseChoice } from '../input.js';

const SCENARIOS: readonly SimScenario[] = [
  'groups',
  'slots',
  'slots-crash-and-leave',
  'raft',
  'fleet',
  'fleet-store-loss',
];

interface SimFlags {
  scenario: SimScenario;
  protocol: Protocol;
  seeds: number;
  seed: number;
  nodes?: number;
  sites?: number;
  slots?: number;
  resources?: number;
  strategy?: PlacementStrategy;
  mutant?: string;
  listMutants?: boolean;
}

const NODES = { min: 1, max: 50 };
const RESOURCES = { min: 0, max: 5000 };

export function register(program: Command): void {
  program
    .command('sim')
    .description(
      'run the deterministic simulator: the real protocol code on virtual time, under faults drawn from seeds',
    )
    .addOption(choiceFlag('--scenario <name>', 'scenario', SCENARIOS, 'groups'))
    .addOption(choiceFlag('--protocol <name>', 'groups: protocol', PROTOCOLS, 'resource-barrier'))
    .addOption(integerFlag('--seeds <n>', 'how many seeds to run', { min: 1, max: 1_000_000 }, 100))
    .addOption(
      integerFlag(
        '--seed <s>',
        'first seed (with --seeds 1: replay exactly this seed)',
        { min: 0, max: 2 ** 32 - 1 },
        1,
      ),
    )
    .addOption(
      integerFlag(
        '--nodes <n>',
        'simulated nodes (default 5; slots: sites, default 4; raft: 3 or 5, default 3; fleet: 3-6, default drawn 4-6)',
        NODES,
      ),
    )
    .addOption(integerFlag('--sites <n>', 'slots: simulated sites (same as --nodes)', NODES))
    .addOption(integerFlag('--slots <n>', 'slots: slot count (default 24)', { ...RESOURCES, min: 1 }))
    .addOption(
      integerFlag('--resources <k>', 'resources at the start (default 12; fleet: Raft groups, default 8)', RESOURCES),
    )
    .addOption(choiceFlag('--strategy <name>', 'placement', PLACEMENT_STRATEGIES))
    .option('--mutant <name>', 'run a deliberately broken variant (see --list-mutants); the checker must catch it')
    .option('--list-mutants', 'print the mutant names and what each breaks')
    .action(async (o: SimFlags) => {
      const json = globalOptions(program).json === true;
      const { MUTANTS, SLOTS_MUTANTS, FLEET_MUTANTS } = await import('../../protocol/mutants.js');
      const { RAFT_MUTANTS } = await import('../../raft/mutants.js');
      if (o.listMutants === true) {
        if (json) {
          process.stdout.write(
            `${JSON.stringify({ mutants: MUTANTS, slotsMutants: SLOTS_MUTANTS, raftMutants: RAFT_MUTANTS, fleetMutants: FLEET_MUTANTS })}\n`,
          );
        } else {
          process.stdout.write('--scenario groups:\n');
          for (const [name, what] of Object.entries(MUTANTS)) process.stdout.write(`  ${name.padEnd(28)} ${what}\n`);
          process.stdout.write('--scenario slots, slots-crash-and-leave:\n');
          for (const [name, what] of Object.entries(SLOTS_MUTANTS))
            process.stdout.write(`  ${name.padEnd(28)} ${what}\n`);
          process.stdout.write('--scenario raft:\n');
          for (const [name, what] of Object.entries(RAFT_MUTANTS))
            process.stdout.write(`  ${name.padEnd(28)} ${what}\n`);
          process.stdout.write('--scenario fleet, fleet-store-loss:\n');
          for (const [name, what] of Object.entries(FLEET_MUTANTS))
            process.stdout.write(`  ${name.padEnd(28)} ${what}\n`);
        }
        return;
      }
      const { scenario: chosen, protocol, strategy, seeds, seed } = o;
      // fleet-store-loss is the fleet scenario with one more kind of fault: the same checks and mutants.
      const scenario = chosen === 'fleet-store-loss' ? 'fleet' : chosen;
      // Each scenario has its own mutants: a groups mutant means nothing to the slots simulator.
      const mutantNames = Object.keys(
        scenario === 'groups'
          ? MUTANTS
          : scenario === 'raft'
            ? RAFT_MUTANTS
            : scenario === 'fleet'
              ? FLEET_MUTANTS
              : SLOTS_MUTANTS,
      ) as (MutantName | SlotsMutantName | RaftMutantName | FleetMutantName)[];
      const mutant = o.mutant === undefined ? undefined : parseChoice('--mutant', o.mutant, mutantNames);
      // --sites and --slots are the slots scenario's names for --nodes and --resources.
      const nodes = o.nodes ?? o.sites;
      const resources = o.resources ?? o.slots;
      if (scenario === 'raft' && nodes !== undefined && nodes !== 3 && nodes !== 5) {
        throw new InvalidArgumentError(`--nodes with --scenario raft must be 3 or 5, got "${nodes}"`);
      }
      if (scenario === 'fleet' && nodes !== undefined && (nodes < 3 || nodes > 6)) {
        throw new InvalidArgumentError(`--nodes with --scenario fleet must be 3 to 6, got "${nodes}"`);
      }
      if (scenario === 'fleet' && resources === 0) {
        throw new InvalidArgumentError(
          '--resources is the Raft group count with --scenario fleet: at least 1, got "0"',
        );
      }
      if (scenario !== 'groups' && scenario !== 'raft' && scenario !== 'fleet' && resources === 0) {
        throw new InvalidArgumentError('--resources is the slot count with --scenario slots: from 1 to 5000, got "0"');
      }
      const { runSimulation } = await import('../../sim/run.js');
      const tty = process.stderr.isTTY && !json;
      let shown = 0;
      const summary = await runSimulation({
        scenario: chosen,
        protocol,
        seeds,
        seed,
        nodes,
        resources,
        strategy,
        mutant,
        onSeed: (r, i) => {
          if (r.violations.length > 0 && shown++ < 10) {
            process.stderr.write(
              `${tty ? '\r\x1b[K' : ''}seed ${r.seed}: ${r.violations[0]!.kind}: ${r.violations[0]!.detail}\n`,
            );
          }
          if (tty) process.stderr.write(`\r\x1b[Kseed ${i + 1}/${seeds}  steps ${r.steps}`);
        },
      });
      if (tty) process.stderr.write('\r\x1b[K');
      for (const f of summary.failingSeeds.slice(0, 10))
        process.stdout.write(`FAIL seed ${f.seed} — replay: ${f.replay}\n`);
      process.stdout.write(
        `${summary.seeds} seeds, ${summary.steps} steps, ${summary.violations} violations` +
          `${mutant === undefined ? '' : ` (mutant ${mutant}: ${summary.violations > 0 ? `caught at seed ${summary.firstFailingSeed}` : 'NOT caught'})`}` +
          ` in ${(summary.wallMs / 1000).toFixed(1)} s\n`,
      );
      if (json) process.stdout.write(`${JSON.stringify(summary)}\n`);
      if (mutant === undefined ? summary.violations > 0 : summary.violations === 0) process.exitCode = EXIT.failed;
    });
}
