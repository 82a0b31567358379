/**
 * `npm run bench -- <name> [--json] [options]`
 *
 * Benchmarks measure speed and scale as ratios within one run (against the
 * store's raw round trip, a peer, or the ideal). They are not tests.
 */
const benches: Record<string, () => Promise<{ run(args: string[]): Promise<void> }>> = {
  store: () => import('./store.js'),
  'store-contention': () => import('./store-contention.js'),
  groups: () => import('./groups.js'),
  rabbitmq: () => import('./rabbitmq.js'),
  slots: () => import('./slots.js'),
  linearizability: () => import('./linearizability.js'),
  'raft-transport': () => import('./raft-transport.js'),
  'raft-log': () => import('./raft-log.js'),
  raft: () => import('./raft.js'),
  fleet: () => import('./fleet.js'),
};

const [name, ...args] = process.argv.slice(2);
const load = name === undefined ? undefined : benches[name];
if (load === undefined) {
  process.stderr.write(`usage: npm run bench -- <${Object.keys(benches).join('|')}> [--json]\n`);
  process.exit(2);
}
await (await load()).run(args);
