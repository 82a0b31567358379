/**
 * `rebalancer bench <suite> [options]`: the benchmarks (bench/), which start
 * private store servers with the test harness and so run from a source
 * checkout (`npm ci` installs what they need). Same as `npm run bench -- …`.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { EXIT, globalOptions } from '../context.js';

export function register(program: Command): void {
  program
    .command('bench')
    .description('run a benchmark suite (store, groups, …) from a source checkout; same as npm run bench -- …')
    .argument('[suite]', 'which suite; without one, list them')
    .argument('[options...]', 'passed to the suite (e.g. --sections failover --quick)')
    .allowUnknownOption()
    .helpOption(false)
    .action(async (suite: string | undefined, rest: string[]) => {
      const root = fileURLToPath(new URL('../../..', import.meta.url));
      const main = `${root}bench/main.ts`;
      if (!existsSync(main)) {
        process.stderr.write(
          'rebalancer bench: the benchmarks run from a source checkout (they start private store servers): ' +
            'clone the repository, `npm ci`, then `npm run bench -- <suite>`\n',
        );
        process.exitCode = EXIT.failed;
        return;
      }
      const args = [...(suite === undefined ? [] : [suite]), ...rest];
      if (globalOptions(program).json === true && !args.includes('--json')) args.push('--json');
      const child = spawn(process.execPath, ['--import', 'tsx', main, ...args], { cwd: root, stdio: 'inherit' });
      const code = await new Promise<number>((resolve) =>
        child.on('exit', (c, signal) => resolve(c ?? (signal === null ? EXIT.internal : 128))),
      );
      process.exitCode = code;
    });
}
