/** `rebalancer ping`: is the store reachable, and how fast. */
import type { Command } from 'commander';
import { openStore } from '../../store/open.js';
import { globalOptions, round } from '../context.js';

export function register(program: Command): void {
  program
    .command('ping')
    .description('check that the store is reachable: open a session, write, read and watch once, and report latency')
    .action(async () => {
      const opts = globalOptions(program);
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
}
