/** `rebalancer groups list` and `rebalancer groups repair`. */
import type { Command } from 'commander';
import { listGroups } from '../../runtime/groups/registry.js';
import { repairGroup } from '../../runtime/groups/repair.js';
import { out, withStore } from '../context.js';

export function register(program: Command): void {
  const groups = program.command('groups').description('groups in this namespace');
  groups
    .command('repair')
    .description(
      "list a group's keys that hold data Rebalancer cannot read (its coordinator stops while the state or a grant " +
        'is one of them); --delete deletes them (a lock only when no session holds it)',
    )
    .requiredOption('--group <name>', 'group name')
    .option('--delete', 'delete the unreadable keys (each only if unchanged since it was read)')
    .action(async ({ group, delete: del }: { group: string; delete?: boolean }) => {
      await withStore(program, async (store, opts) => {
        const steps = await repairGroup(store, group, { delete: del === true });
        if (opts.json === true) return out(JSON.stringify({ group, steps }));
        if (steps.length === 0) return out(`group ${group}: every key is readable; nothing to repair`);
        for (const s of steps) {
          out(`${s.key}: ${s.action}${s.why === undefined ? '' : ` (${s.why})`}`);
          out(`  problem: ${s.problem}`);
          if (s.action === 'would-delete') out(`  repair: ${s.repair}`);
        }
        if (steps.some((s) => s.action === 'would-delete')) out('run again with --delete to delete them');
      });
    });
  groups
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
