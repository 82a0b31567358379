/** `rebalancer store repair-revision`: repair a Redis namespace's revision counter that holds junk. */
import type { Command } from 'commander';
import { out, withStore } from '../context.js';

interface RepairsRevision {
  repairRevision(): Promise<{ readonly repaired: boolean; readonly revision: number; readonly previous?: string }>;
}

export function register(program: Command): void {
  program
    .command('store')
    .description('repairs of the store itself')
    .command('repair-revision')
    .description(
      "Redis: replace the namespace's revision counter when it is not a positive integer (every call refuses it " +
        'then) by a value above every revision the namespace holds; a readable counter is left as it is',
    )
    .action(async () => {
      await withStore(program, async (store, opts) => {
        if (!('repairRevision' in store)) {
          out(`the ${store.backend} store keeps no separate revision counter that could be repaired; nothing to do`);
          return;
        }
        const r = await (store as unknown as RepairsRevision).repairRevision();
        if (opts.json === true) return out(JSON.stringify(r));
        out(
          r.repaired
            ? `revision counter of namespace ${store.namespace} repaired: it held ${JSON.stringify(r.previous)}, ` +
                `now ${r.revision}`
            : `revision counter of namespace ${store.namespace} is readable (${r.revision}); left as it is`,
        );
      });
    });
}
