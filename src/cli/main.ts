/**
 * The `rebalancer` command line. Exit codes:
 *   0 success · 1 the check failed · 2 bad usage or invalid argument ·
 *   69 store unavailable · 70 internal error.
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { RebalancerError } from '../errors.js';
import { openStore } from '../store/open.js';

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
      err.code === 'STORE_UNAVAILABLE' ? EXIT.unavailable : err.code === 'INVALID_ARGUMENT' ? EXIT.usage : EXIT.failed,
    );
  }
  process.stderr.write(
    `rebalancer: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exit(EXIT.internal);
}
