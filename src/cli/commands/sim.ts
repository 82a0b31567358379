/** `rebalancer sim`: the deterministic simulator. */
import type { Command } from 'commander';
import { InvalidArgumentError } from '../../errors.js';
import type { MutantName, SlotsMutantName } from '../../protocol/mutants.js';
import { EXIT, globalOptions } from '../context.js';

export function register(program: Command): void {
  program
    .command('sim')
    .description(
      'run the deterministic simulator: the real protocol code on virtual time, under faults drawn from seeds',
    )
    .option('--scenario <name>', 'scenario: groups | slots', 'groups')
    .option('--protocol <name>', 'groups: resource-barrier | global-barrier', 'resource-barrier')
    .option('--seeds <n>', 'how many seeds to run', '100')
    .option('--seed <s>', 'first seed (with --seeds 1: replay exactly this seed)', '1')
    .option('--nodes <n>', 'simulated nodes (default 5; slots: sites, default 4)')
    .option('--sites <n>', 'slots: simulated sites (same as --nodes)')
    .option('--slots <n>', 'slots: slot count (default 24)')
    .option('--resources <k>', 'resources at the start (default 12)')
    .option('--strategy <name>', 'placement: sticky-balanced | round-robin | rendezvous')
    .option('--mutant <name>', 'run a deliberately broken variant (see --list-mutants); the checker must catch it')
    .option('--list-mutants', 'print the mutant names and what each breaks')
    .action(async (o: Record<string, string | boolean | undefined>) => {
      const json = globalOptions(program).json === true;
      const { MUTANTS, SLOTS_MUTANTS, isMutantName, isSlotsMutantName } = await import('../../protocol/mutants.js');
      if (o['listMutants'] === true) {
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
      const int = (name: string, v: unknown, min: number, max: number): number | undefined => {
        if (v === undefined) return undefined;
        const n = Number(v);
        if (!Number.isInteger(n) || n < min || n > max)
          throw new InvalidArgumentError(`--${name} must be an integer from ${min} to ${max}`);
        return n;
      };
      const scenario = o['scenario'];
      if (scenario !== 'groups' && scenario !== 'slots')
        throw new InvalidArgumentError(`unknown --scenario ${String(scenario)}: use groups or slots`);
      const protocol = o['protocol'];
      if (protocol !== 'resource-barrier' && protocol !== 'global-barrier') {
        throw new InvalidArgumentError('--protocol must be resource-barrier or global-barrier');
      }
      const rawMutant = o['mutant'];
      let mutant: MutantName | SlotsMutantName | undefined;
      if (rawMutant !== undefined) {
        if (typeof rawMutant === 'string' && scenario === 'slots' && isSlotsMutantName(rawMutant)) {
          mutant = rawMutant;
        } else if (typeof rawMutant === 'string' && scenario === 'groups' && isMutantName(rawMutant)) {
          mutant = rawMutant;
        } else {
          throw new InvalidArgumentError(
            `unknown --mutant ${String(rawMutant)} for --scenario ${scenario}; see rebalancer sim --list-mutants`,
          );
        }
      }
      const strategy = o['strategy'];
      if (
        strategy !== undefined &&
        strategy !== 'sticky-balanced' &&
        strategy !== 'round-robin' &&
        strategy !== 'rendezvous'
      ) {
        throw new InvalidArgumentError('--strategy must be sticky-balanced, round-robin or rendezvous');
      }
      const { runSimulation } = await import('../../sim/run.js');
      const seeds = int('seeds', o['seeds'], 1, 1_000_000)!;
      const tty = process.stderr.isTTY && !json;
      let shown = 0;
      const summary = await runSimulation({
        scenario,
        protocol,
        seeds,
        seed: int('seed', o['seed'], 0, 2 ** 32 - 1),
        nodes: int('nodes', o['nodes'] ?? o['sites'], 1, 50),
        resources: int('resources', o['resources'] ?? o['slots'], scenario === 'slots' ? 1 : 0, 5000),
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
