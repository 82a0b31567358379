/**
 * README, "Resource groups in code": three queues shared by every process that runs this file; each queue is
 * worked on by exactly one of them at a time, with a fencing token that grows with every new owner.
 *
 *   npx tsx examples/readme/groups.ts                  # from the repository root; run it in two or three terminals
 *   HOSTNAME=node-2 npx tsx examples/readme/groups.ts  # node ids must differ between live processes
 *
 * REBALANCER_STORE=redis://… (or postgres://…, etcd://…, zk://…) shares the queues between hosts.
 * SIGTERM (or Ctrl-C) leaves the group: the queues move to the other processes, then the process exits.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { openStore } from 'rebalancer';
import { GroupAdmin, joinGroup } from 'rebalancer/groups';

const store = await openStore(process.env['REBALANCER_STORE'] ?? 'sqlite:./rebalancer.db');
await new GroupAdmin(store, 'orders').add(['queue-1', 'queue-2', 'queue-3']);

const member = await joinGroup({
  store,
  group: 'orders',
  node: { id: process.env['HOSTNAME'] ?? 'node-1' },
  async handler({ resource, fencingToken, signal, stillOwner }) {
    while (!signal.aborted) {
      if (!stillOwner()) break; // cheap, synchronous: check before each side effect
      await consumeOne(resource, fencingToken, signal); // pass the token to whatever you write to
    }
  },
});
// Events are held until joinGroup() resolves: listeners added right after it miss nothing.
member.on('assigned', ({ resource, fencingToken }) => console.log('running', resource, fencingToken));
member.on('revoked', ({ resource, reason }) => console.log('stopped', resource, reason));
member.on('error', ({ error, context }) => console.error(`${context}: ${String(error)}`));

function shutdown(): void {
  member
    .leave() // hands everything over before returning
    .finally(() => store.close()) // leave() does not close the store; an open store keeps the process alive
    .catch((error: unknown) => {
      console.error('shutdown failed', error);
      process.exitCode = 1;
    });
}
process.once('SIGTERM', shutdown);
process.once('SIGINT', shutdown);

/** Stands in for the application's work: take one message off `_queue`, write it fenced by `_fencingToken`. */
async function consumeOne(_queue: string, _fencingToken: number, signal: AbortSignal): Promise<void> {
  // Aborted when the queue is revoked: the handler stops, and its rejection is then expected (not reported).
  await sleep(100, undefined, { signal });
}
