/** `rebalancer groups list`. */
import type { Command } from 'commander';
import { listGroups } from '../../runtime/groups/registry.js';
import { withStore } from '../context.js';

export function register(program: Command): void {
  program
    .command('groups')
    .description('groups in this namespace')
    .command('list')
    .description('list the groups that have members or resources, with their counts')
    .action(async () => {
      await withStore(program, async (store, opts) => {
        const groups = await listGroups(store);
        if (opts.json === true) process.stdout.write(`${JSON.stringify({ groups })}\n`);
        else if (groups.length === 0) process.stdout.write(`no groups in namespace ${store.namespace}\n`);
        else {
          for (const g of groups)
            process.stdout.write(`${g.group.padEnd(24)} ${g.members} members  ${g.resources} resources\n`);
        }
      });
    });
}
