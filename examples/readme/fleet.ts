/**
 * README, "Fleet: many Raft groups": one node of a fleet holding three replicated counters (`eu`, `us`, `asia`),
 * each a Raft group of three replicas placed by the fleet. Start it once per node id, with a Raft port of its own;
 * each node adds 1 to every counter once a second, through whichever node holds the group's leader.
 *
 *   NODE_ID=n1 RAFT_PORT=7101 npx tsx examples/readme/fleet.ts     # from the repository root
 *   NODE_ID=n2 RAFT_PORT=7102 npx tsx examples/readme/fleet.ts
 *   NODE_ID=n3 RAFT_PORT=7103 npx tsx examples/readme/fleet.ts
 *
 * One node alone already serves (each group with one replica); every node that joins takes replicas over, up to
 * three per group. The control records live in ./rebalancer.db (REBALANCER_STORE=redis://… etc. for several
 * hosts), each node's Raft log in ./fleet-data/<id>. SIGTERM (or Ctrl-C) drains the node: its replicas move to the
 * others first, then it leaves; the last node leaves at once (there is nowhere to move to).
 */
import { openStore } from 'rebalancer';
import { FleetGroupExistsError, joinFleet, type StateMachine } from 'rebalancer/fleet';

interface Counter {
  readonly total: number;
}
// Deterministic, never throws: every replica computes the same totals.
const counter: StateMachine<Counter, { add: number }, 'total', number, number> = {
  initial: () => ({ total: 0 }),
  command: (state, command) => {
    const total = state.total + command.add;
    return { state: { total }, result: total };
  },
  query: (state) => state.total,
  snapshot: (state) => new TextEncoder().encode(JSON.stringify(state)),
  restore: (bytes) => JSON.parse(new TextDecoder().decode(bytes)) as Counter,
};

const id = process.env['NODE_ID'] ?? 'n1';
const store = await openStore(process.env['REBALANCER_STORE'] ?? 'sqlite:./rebalancer.db');
const node = await joinFleet({
  store,
  fleet: 'counters',
  node: { id, address: `127.0.0.1:${process.env['RAFT_PORT'] ?? '7101'}` }, // where its Raft transport listens
  dataDir: `./fleet-data/${id}`,
  secret: process.env['FLEET_SECRET'] ?? 'use 32 random bytes, the same on every node',
  machines: { counter },
});
node.on('error', (e) => console.error(`${id}: ${e.context}: ${String(e.error)}`));
node.on('groupGained', ({ group }) => console.log(`${id} holds a replica of ${group}`));
node.on('groupLost', ({ group, reason }) => console.log(`${id} dropped its replica of ${group} (${reason})`));
// A group is added once for the whole fleet; any node may do it (the others are refused, harmlessly).
for (const name of ['eu', 'us', 'asia']) {
  await node.addGroup(name, { replicas: 3, machine: 'counter' }).catch((error: unknown) => {
    if (!(error instanceof FleetGroupExistsError)) throw error;
  });
}
// From any node: sent to a replica of the group (its leader first), applied exactly once. (The first time, the
// groups are still being placed and their replicas created: allow more than the default 5 s.)
const total = await node.command<number>('eu', { add: 1 }, { timeoutMs: 30_000 });
console.log(`${id} added 1 to eu: total ${total}`);

let stopping = false;
/** Groups with a command in flight: one at a time each, so that a slow group is not sent more than it can take. */
const busy = new Set<string>();
const timer = setInterval(() => {
  for (const name of ['eu', 'us', 'asia']) {
    if (busy.has(name)) continue;
    busy.add(name);
    node
      .command<number>(name, { add: 1 }, { timeoutMs: 15_000 }) // rides out a leader moving on a busy machine
      .then(
        (t) => console.log(`${id} added 1 to ${name}: total ${t}`),
        // e.g. NoQuorumError while a group elects a leader: tried again next second.
        (error: unknown) => stopping || console.error(`${id}: ${String(error)}`),
      )
      .finally(() => busy.delete(name));
  }
}, 1000);

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    stopping = true;
    clearInterval(timer);
    void leave();
  });
}

async function leave(): Promise<void> {
  // Draining needs another active node to move to; the last one leaves at once.
  const others = (await node.status()).nodes.filter((n) => n.id !== id && n.state === 'active');
  if (others.length === 0) await node.close();
  else await node.deactivate({ timeoutMs: 60_000 }).catch(() => node.close());
  await store.close();
  console.log(`${id} left`);
}
