/** `rebalancer resources add|remove|list`: a group's resource registry. */
import type { Command } from 'commander';
import { GroupAdmin, type RegistryChangeOptions } from '../../runtime/groups/registry.js';
import { EXIT, out, withStore } from '../context.js';
import { resourceNames } from '../input.js';

/** Above this many names to write, `add` and `remove` report progress on stderr. */
const PROGRESS_FROM = 5000;
/** …at most this often. */
const PROGRESS_EVERY_MS = 1000;

/** A progress reporter for many names: a line on stderr at most every second, and one at the end. */
function progress(group: string, verb: 'add' | 'remove'): (written: number, total: number) => void {
  let lastMs = Date.now();
  return (written, total) => {
    if (total < PROGRESS_FROM) return;
    const now = Date.now();
    if (written < total && now - lastMs < PROGRESS_EVERY_MS) return;
    lastMs = now;
    const done = verb === 'add' ? 'registered' : 'unregistered';
    process.stderr.write(`group ${group}: ${written} of ${total} ${done} (${Math.floor((written / total) * 100)} %)\n`);
  };
}

export function register(program: Command): void {
  const resources = program
    .command('resources')
    .description("operate a group's resource registry (what the coordinator assigns)");

  /** `add` and `remove`: names from the arguments or stdin, one registry call, one line of result. */
  const change = <R extends object>(
    name: 'add' | 'remove',
    description: string,
    apply: (admin: GroupAdmin, names: string[], options: RegistryChangeOptions) => Promise<R>,
    result: (r: R) => { text: string; failed: boolean },
  ): void => {
    resources
      .command(name)
      .description(description)
      .requiredOption('--group <name>', 'group name')
      .argument(
        '<names...>',
        'resource names (white space around each is trimmed), or - to read one per line from stdin',
      )
      .action(async (args: string[], o: { group: string }) => {
        // The names are read and checked before the store is opened: bad input changes nothing.
        const names = resourceNames(args);
        await withStore(program, async (store, opts) => {
          const r = await apply(new GroupAdmin(store, o.group), names, { onProgress: progress(o.group, name) });
          const { text, failed } = result(r);
          out(opts.json === true ? JSON.stringify({ group: o.group, ...r }) : `group ${o.group}: ${text}`);
          if (failed) process.exitCode = EXIT.failed;
        });
      });
  };

  change(
    'add',
    'register resources (names as arguments, or - to read one per line from stdin)',
    (admin, names, options) => admin.add(names, options),
    (r) => ({ text: `${r.added} added, ${r.existing} already registered`, failed: false }),
  );
  change(
    'remove',
    'unregister resources; their owners stop them and release their locks',
    (admin, names, options) => admin.remove(names, options),
    // A name that was not registered is something asked for that was not there.
    (r) => ({ text: `${r.removed} removed, ${r.missing} were not registered`, failed: r.missing > 0 }),
  );

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
