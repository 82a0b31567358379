/**
 * docs/protocol/slots.md, "Using it": one node of a 1024-slot cluster with three replicas per slot that places
 * nothing until three nodes are live. Run it three times with different node ids (from the repository root):
 *
 *   NODE_ID=kv-1 npx tsx examples/docs/protocol/slots.ts
 *   NODE_ID=kv-2 npx tsx examples/docs/protocol/slots.ts
 *   NODE_ID=kv-3 npx tsx examples/docs/protocol/slots.ts
 *
 * SIGTERM (or Ctrl-C) leaves the cluster: the node serves until its slots are ready elsewhere, then exits.
 */
import { openStore } from 'rebalancer';
import { joinSlots } from 'rebalancer/slots';

const store = await openStore('sqlite:./rebalancer.db');
const member = await joinSlots({
  store,
  cluster: 'kv',
  node: { id: process.env['NODE_ID'] ?? 'kv-1', zone: 'a', address: '10.0.0.1:7000' },
  slotCount: 1024, // fixed for the cluster's life (default 16384, as in Redis Cluster)
  replicas: 3,
  minNodes: 3,
});
// Subscribe right after joinSlots() resolves: events are held until then, none is missed.
member.on('prepare', ({ slots }) => {
  for (const slot of slots) {
    migrateIn(slot)
      .then(() => member.markReady(slot))
      .then((r) => {
        if (!r.ready) dropData(slot); // { ready: false, reason: 'not-preparing' }: cancelled meanwhile
      })
      .catch((error: unknown) => console.error(`prepare ${slot}: ${String(error)}`)); // only a store failure rejects
  }
});
member.on('releasable', ({ slots }) => {
  for (const slot of slots) {
    member
      .release(slot) // keep the data until release() resolves: it may be refused
      .then((r) => {
        if (r.released) dropData(slot); // else { released: false, reason }: announced again when releasable
      })
      .catch((error: unknown) => console.error(`release ${slot}: ${String(error)}`)); // only a store failure rejects
  }
});
member.on('cancelled', ({ slots }) => slots.forEach((slot) => dropData(slot)));
member.on('primaryGained', ({ slots }) => slots.forEach(({ slot, epoch }) => serveWrites(slot, epoch)));
member.on('primaryLost', ({ slots }) => slots.forEach((slot) => stopWrites(slot))); // isPrimary(slot) is false now
member.on('slotsDropped', ({ slots }) => slots.forEach((slot) => dropData(slot))); // session lost or left: stale
member.on('error', ({ error, context }) => console.error(`${context}: ${String(error)}`));
const route = member.routeKey('user:42'); // { slot, primary: { id, address, epoch }, secondaries }: no store call
member.primary(route.slot); // { id, address, epoch } or undefined (during a fail-over); member.routingVersion

function shutdown(): void {
  member
    .leave() // serves until its slots are ready elsewhere, then releases them
    .finally(() => store.close()) // leave() does not close the store; an open store keeps the process alive
    .catch((error: unknown) => {
      console.error('shutdown failed', error);
      process.exitCode = 1;
    });
}
process.once('SIGTERM', shutdown);
process.once('SIGINT', shutdown);

// The application's side, in memory. Everything below runs from the member's events, which are delivered only
// once this module has run to its end, so the state declared here is initialised by then.
const held = new Set<number>();
const writable = new Map<number, number>();
let reportQueued = false;

/** Copy a slot's data in from its current replicas (here: nothing to copy). */
async function migrateIn(slot: number): Promise<void> {
  held.add(slot);
}

function dropData(slot: number): void {
  held.delete(slot);
  report();
}

/** Accept writes for `slot`, stamped with `epoch` so that replicas refuse a deposed primary's writes. */
function serveWrites(slot: number, epoch: number): void {
  writable.set(slot, epoch);
  report();
}

function stopWrites(slot: number): void {
  writable.delete(slot);
  report();
}

/** One line per batch of changes, not one per slot. */
function report(): void {
  if (reportQueued) return;
  reportQueued = true;
  setImmediate(() => {
    reportQueued = false;
    console.log(`primary of ${writable.size} slots, holding ${held.size}`);
  });
}
