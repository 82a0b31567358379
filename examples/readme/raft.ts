/**
 * README, "Raft groups": one node of a three-node Raft cluster holding a replicated counter. Start it three times
 * (three terminals), one per node id; each node adds 1 every second, and every node's total goes up by 3 a second:
 * every command is applied exactly once, on every node, in the same order.
 *
 *   NODE_ID=n1 npx tsx examples/readme/raft.ts        # from the repository root
 *   NODE_ID=n2 npx tsx examples/readme/raft.ts
 *   NODE_ID=n3 npx tsx examples/readme/raft.ts
 *
 * Ports 7001–7003 (PORTS=a,b,c moves them); the log is kept in ./raft-data/<id>. SIGTERM (or Ctrl-C) stops a node:
 * the other two go on, and it catches up when started again.
 */
import { startRaftNode, type StateMachine } from 'rebalancer/raft';

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

const ids = ['n1', 'n2', 'n3'];
const id = process.env['NODE_ID'] ?? 'n1';
const ports = (process.env['PORTS'] ?? '7001,7002,7003').split(',');
const address = (node: string): string => `127.0.0.1:${ports[ids.indexOf(node)]}`;

const node = await startRaftNode({
  id,
  dataDir: `./raft-data/${id}`,
  listen: address(id),
  peers: Object.fromEntries(ids.filter((n) => n !== id).map((n) => [n, address(n)])),
  secret: process.env['RAFT_SECRET'] ?? 'use 32 random bytes, the same on every node',
});
const group = node.openGroup('counter', { members: ids, stateMachine: counter });
// The first time, all three must run (new nodes check with their peers that none lost its data); then any two.
await group.ready({ timeoutMs: 60_000 });
console.log(`${id} ready, leader ${group.status().leader}`);

let stopping = false;
const timer = setInterval(() => {
  group.command({ add: 1 }).then(
    (total) => console.log(`${id} added 1: total ${total}`),
    (error: unknown) => stopping || console.error(`${id}: ${String(error)}`), // e.g. NoQuorumError: retried next second
  );
}, 1000);

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    stopping = true;
    clearInterval(timer);
    void node.close();
  });
}
