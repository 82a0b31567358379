/**
 * The `rebalancer` command line. Exit codes:
 *   0 success · 1 the check failed (or something asked for was not there) ·
 *   2 bad usage, invalid argument or a limit exceeded (e.g. an oversized name) ·
 *   69 store unavailable · 70 internal error.
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { InvalidArgumentError, RebalancerError } from '../errors.js';
import { openStore } from '../store/open.js';
import type { Store } from '../store/contract.js';
import { GroupAdmin, listGroups } from '../runtime/registry.js';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

export const EXIT = { ok: 0, failed: 1, usage: 2, unavailable: 69, internal: 70 } as const;

const program = new Command()
  .name('rebalancer')
  .description('Share work among the live instances of a service, on the coordination store you already run.')
  .version(pkg.version)
  .option(
    '--store <url>',
    'store URL: sqlite:PATH, postgres://…, redis://…, etcd://host:port, zk://host:port',
    'sqlite:./rebalancer.db',
  )
  .option('--namespace <ns>', 'namespace (key prefix) shared by the group', 'rebalancer')
  .option('--json', 'machine-readable output')
  .exitOverride();

program
  .command('ping')
  .description('check that the store is reachable: open a session, write, read and watch once, and report latency')
  .action(async () => {
    const opts = program.opts<{ store: string; namespace: string; json?: boolean }>();
    const started = performance.now();
    const store = await openStore(opts.store, { namespace: opts.namespace });
    try {
      const openedMs = performance.now() - started;
      const t0 = performance.now();
      const session = await store.openSession({ ttlMs: 5000 });
      const sessionMs = performance.now() - t0;
      const t1 = performance.now();
      const key = `ping/${session.id}`;
      await store.txn({ compare: [], then: [{ op: 'put', key, value: new Date().toISOString(), session }] });
      const writeMs = performance.now() - t1;
      const t2 = performance.now();
      await store.get(key);
      const readMs = performance.now() - t2;
      await session.close();
      const result = {
        backend: store.backend,
        namespace: store.namespace,
        connectMs: round(openedMs),
        openSessionMs: round(sessionMs),
        writeMs: round(writeMs),
        readMs: round(readMs),
        limits: store.limits,
      };
      if (opts.json === true) process.stdout.write(`${JSON.stringify(result)}\n`);
      else {
        process.stdout.write(
          `${result.backend} store at ${opts.store} (namespace ${result.namespace}) is reachable: ` +
            `connect ${result.connectMs} ms, session ${result.openSessionMs} ms, write ${result.writeMs} ms, read ${result.readMs} ms\n`,
        );
      }
    } finally {
      await store.close();
    }
  });

program
  .command('sim')
  .description('run the deterministic simulator: the real protocol code on virtual time, under faults drawn from seeds')
  .option('--scenario <name>', 'scenario: groups', 'groups')
  .option('--protocol <name>', 'resource-barrier | global-barrier', 'resource-barrier')
  .option('--seeds <n>', 'how many seeds to run', '100')
  .option('--seed <s>', 'first seed (with --seeds 1: replay exactly this seed)', '1')
  .option('--nodes <n>', 'simulated nodes (default 5)')
  .option('--resources <k>', 'resources at the start (default 12)')
  .option('--strategy <name>', 'placement: sticky-balanced | round-robin | rendezvous')
  .option('--mutant <name>', 'run a deliberately broken variant (see --list-mutants); the checker must catch it')
  .option('--list-mutants', 'print the mutant names and what each breaks')
  .action(async (o: Record<string, string | boolean | undefined>) => {
    const json = program.opts<{ json?: boolean }>().json === true;
    const { MUTANTS, isMutantName } = await import('../protocol/mutants.js');
    if (o['listMutants'] === true) {
      if (json) process.stdout.write(`${JSON.stringify({ mutants: MUTANTS })}\n`);
      else for (const [name, what] of Object.entries(MUTANTS)) process.stdout.write(`${name.padEnd(24)} ${what}\n`);
      return;
    }
    const int = (name: string, v: unknown, min: number, max: number): number | undefined => {
      if (v === undefined) return undefined;
      const n = Number(v);
      if (!Number.isInteger(n) || n < min || n > max)
        throw new InvalidArgumentError(`--${name} must be an integer from ${min} to ${max}`);
      return n;
    };
    if (o['scenario'] !== 'groups')
      throw new InvalidArgumentError(`unknown --scenario ${String(o['scenario'])}: use groups`);
    const protocol = o['protocol'];
    if (protocol !== 'resource-barrier' && protocol !== 'global-barrier') {
      throw new InvalidArgumentError('--protocol must be resource-barrier or global-barrier');
    }
    const mutant = o['mutant'];
    if (mutant !== undefined && (typeof mutant !== 'string' || !isMutantName(mutant))) {
      throw new InvalidArgumentError(`unknown --mutant ${String(mutant)}; see rebalancer sim --list-mutants`);
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
    const { runSimulation } = await import('../sim/run.js');
    const seeds = int('seeds', o['seeds'], 1, 1_000_000)!;
    const tty = process.stderr.isTTY && !json;
    let shown = 0;
    const summary = await runSimulation({
      scenario: 'groups',
      protocol,
      seeds,
      seed: int('seed', o['seed'], 0, 2 ** 32 - 1),
      nodes: int('nodes', o['nodes'], 1, 50),
      resources: int('resources', o['resources'], 0, 5000),
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

type GlobalOptions = { store: string; namespace: string; json?: boolean };

/** Open the store named by --store, run `fn`, close it. */
async function withStore<T>(fn: (store: Store, opts: GlobalOptions) => Promise<T>): Promise<T> {
  const opts = program.opts<GlobalOptions>();
  const store = await openStore(opts.store, { namespace: opts.namespace });
  try {
    return await fn(store, opts);
  } finally {
    await store.close();
  }
}

/** Names from the arguments, or one per line from standard input when the only argument is `-`. */
function namesFrom(args: readonly string[]): string[] {
  if (args.length === 1 && args[0] === '-') {
    return readFileSync(0, 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '');
  }
  return [...args];
}

const resources = program
  .command('resources')
  .description("operate a group's resource registry (what the coordinator assigns)");

resources
  .command('add')
  .description('register resources (names as arguments, or - to read one per line from stdin)')
  .requiredOption('--group <name>', 'group name')
  .argument('<names...>')
  .action(async (names: string[], o: { group: string }) => {
    await withStore(async (store, opts) => {
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
    await withStore(async (store, opts) => {
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
    await withStore(async (store, opts) => {
      const list = await new GroupAdmin(store, o.group).list();
      if (opts.json === true) process.stdout.write(`${JSON.stringify({ group: o.group, resources: list })}\n`);
      else for (const r of list) process.stdout.write(`${r}\n`);
    });
  });

program
  .command('groups')
  .description('groups in this namespace')
  .command('list')
  .description('list the groups that have members or resources, with their counts')
  .action(async () => {
    await withStore(async (store, opts) => {
      const groups = await listGroups(store);
      if (opts.json === true) process.stdout.write(`${JSON.stringify({ groups })}\n`);
      else if (groups.length === 0) process.stdout.write(`no groups in namespace ${store.namespace}\n`);
      else {
        for (const g of groups)
          process.stdout.write(`${g.group.padEnd(24)} ${g.members} members  ${g.resources} resources\n`);
      }
    });
  });

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? EXIT.ok : EXIT.usage);
  if (err instanceof RebalancerError) {
    process.stderr.write(`rebalancer: ${err.message}\n`);
    process.exit(
      err.code === 'STORE_UNAVAILABLE'
        ? EXIT.unavailable
        : err.code === 'INVALID_ARGUMENT' || err.code === 'LIMIT_EXCEEDED'
          ? EXIT.usage
          : EXIT.failed,
    );
  }
  process.stderr.write(
    `rebalancer: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exit(EXIT.internal);
}
