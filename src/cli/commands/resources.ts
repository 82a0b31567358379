/** `rebalancer resources add|remove|list`: a group's resource registry. */
import type { Command } from 'commander';
import { GroupAdmin } from '../../runtime/groups/registry.js';
import { EXIT, namesFrom, withStore } from '../context.js';

export function register(program: Command): void {
  const resources = program
    .command('resources')
    .description("operate a group's resource registry (what the coordinator assigns)");

  resources
    .command('add')
    .description('register resources (names as arguments, or - to read one per line from stdin)')
    .requiredOption('--group <name>', 'group name')
    .argument('<names...>')
    .action(async (names: string[], o: { group: string }) => {
      await withStore(program, async (store, opts) => {
        const r = await new GroupAdmin(store, o.group).add(namesFrom(names));
        if (opts.json === true) process.stdout.write(`${JSON.stringify({ group: o.group, ...r })}\n`);
        else process.stdout.write(`group ${o.group}: ${r.added} added, ${r.existing} already registered\n`);
      });
    });

  resources
    .command('remove')
    .description('unregister resources; their owners stop them and release their locks')
    .requiredOption('--group <name>', 'group name')
    .argument('<names...>')
    .action(async (names: string[], o: { group: string }) => {
      await withStore(program, async (store, opts) => {
        const r = await new GroupAdmin(store, o.group).remove(namesFrom(names));
        if (opts.json === true) process.stdout.write(`${JSON.stringify({ group: o.group, ...r })}\n`);
        else process.stdout.write(`group ${o.group}: ${r.removed} removed, ${r.missing} were not registered\n`);
        if (r.missing > 0) process.exitCode = EXIT.failed;
      });
    });

  resources
    .command('list')
    .description("list a group's registered resources, one per line")
    .requiredOption('--group <name>', 'group name')
    .action(async (o: { group: string }) => {
      await withStore(program, async (store, opts) => {
        const list = await new GroupAdmin(store, o.group).list();
        if (opts.json === true) process.stdout.write(`${JSON.stringify({ group: o.group, resources: list })}\n`);
        else for (const r of list) process.stdout.write(`${r}\n`);
      });
    });
}
