/** `rebalancer sim`: the deterministic simulator. */
import type { Command } from 'commander';
import { PLACEMENT_STRATEGIES } from '../../placement/index.js';
import { PROTOCOLS } from '../../protocol/groups/keys.js';
import type { MutantName, SlotsMutantName } from '../../protocol/mutants.js';
import type { SimScenario } from '../../sim/run.js';
import { EXIT, globalOptions } from '../context.js';
import { choiceOption, integerOption } from '../input.js';

const SCENARIOS: readonly SimScenario[] = ['groups', 'slots'];

interface SimFlags {
  scenario: string;
  protocol: string;
  seeds: string;
  seed: string;
  nodes?: string;
  sites?: string;
  slots?: string;
  resources?: string;
  strategy?: string;
  mutant?: string;
  listMutants?: boolean;
}

export function register(program: Command): void {
  program
    .command('sim')
    .description(
      'run the deterministic simulator: the real protocol code on virtual time, under faults drawn from seeds',
    )
    .option('--scenario <name>', 'scenario: groups | slots', 'groups')
    .option('--protocol <name>', 'groups: resource-barrier | global-barrier', 'resource-barrier')
    .option('--seeds <n>', 'how many seeds to run (1-1000000)', '100')
    .option('--seed <s>', 'first seed, 0-4294967295 (with --seeds 1: replay exactly this seed)', '1')
    .option('--nodes <n>', 'simulated nodes, 1-50 (default 5; slots: sites, default 4)')
    .option('--sites <n>', 'slots: simulated sites (same as --nodes)')
    .option('--slots <n>', 'slots: slot count, 1-5000 (default 24)')
    .option('--resources <k>', 'resources at the start, 0-5000 (default 12)')
    .option('--strategy <name>', 'placement: sticky-balanced | round-robin | rendezvous')
    .option('--mutant <name>', 'run a deliberately broken variant (see --list-mutants); the checker must catch it')
    .option('--list-mutants', 'print the mutant names and what each breaks')
    .action(async (o: SimFlags) => {
      const json = globalOptions(program).json === true;
      const { MUTANTS, SLOTS_MUTANTS } = await import('../../protocol/mutants.js');
      if (o.listMutants === true) {
        if (json) process.stdout.write(`${JSON.stringify({ mutants: MUTANTS, slotsMutants: SLOTS_MUTANTS })}\n`);
        else {
          process.stdout.write('--scenario groups:\n');
          for (const [name, what] of Object.entries(MUTANTS)) process.stdout.write(`  ${name.padEnd(28)} ${what}\n`);
          process.stdout.write('--scenario slots:\n');
          for (const [name, what] of Object.entries(SLOTS_MUTANTS))
            process.stdout.write(`  ${name.padEnd(28)} ${what}\n`);
        }
        return;
      }
      const scenario = choiceOption('--scenario', o.scenario, SCENARIOS);
      const protocol = choiceOption('--protocol', o.protocol, PROTOCOLS);
      const strategy = choiceOption('--strategy', o.strategy, PLACEMENT_STRATEGIES);
      // Each scenario has its own mutants: a groups mutant means nothing to the slots simulator.
      const mutantNames = Object.keys(scenario === 'slots' ? SLOTS_MUTANTS : MUTANTS) as (
        MutantName | SlotsMutantName
      )[];
      const mutant = choiceOption('--mutant', o.mutant, mutantNames);
      const seeds = integerOption('--seeds', o.seeds, { min: 1, max: 1_000_000 });
      const seed = integerOption('--seed', o.seed, { min: 0, max: 2 ** 32 - 1 });
      // --sites and --slots are the slots scenario's names for --nodes and --resources.
      const nodes = integerOption(o.nodes === undefined ? '--sites' : '--nodes', o.nodes ?? o.sites, {
        min: 1,
        max: 50,
      });
      const resources = integerOption(o.resources === undefined ? '--slots' : '--resources', o.resources ?? o.slots, {
        min: scenario === 'slots' ? 1 : 0,
        max: 5000,
      });
      const { runSimulation } = await import('../../sim/run.js');
      const tty = process.stderr.isTTY && !json;
      let shown = 0;
      const summary = await runSimulation({
        scenario,
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
