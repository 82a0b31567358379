/**
 * The fleet's control plane on every backend the other fleet tests do not run it on: Redis, PostgreSQL, etcd and
 * ZooKeeper, each a private server (SQLite is the other fleet tests' store). Per backend, nodes in this process, each
 * with its own store client (as separate processes have), 12 counter groups × 3:
 *  1. three nodes over three zones: every group converges (desired members, desired leader);
 *  2. a fourth node joins: its share moves to it; then it drains and leaves;
 *  3. the store server restarts (with its data) while clients write: the nodes come back onto the store, and a node
 *     stopped without draining then is replaced. (A Redis
 *     restart changes its run id, which the Redis backend takes as a possible loss of writes (ADR 0009): the nodes
 *     keep their replicas as orphans and write their groups back, and no session is granted for the longest session
 *     TTL — that case takes about 40 s);
 *  4. the store server frozen (SIGSTOP) past the session TTL: the groups go on answering (Raft does not need the
 *     store); then resumed: the nodes register again, all converges;
 *  5. every command a client saw acknowledged is in the final totals, each once (a command that failed may or may
 *     not have been applied: the totals lie between the two counts).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readFleetView } from '../../src/protocol/fleet/io.js';
import { joinFleet, type FleetNode } from '../../src/runtime/fleet/node.js';
import type { Store } from '../../src/store/contract.js';
import { openStore } from '../../src/store/open.js';
import { counter } from '../harness/counter.js';
import { allocatePorts } from '../harness/ports.js';
import { releasePort } from '../harness/processes.js';
import { startEtcd, startPostgres, startRedis, startZookeeper, type ServerHandle } from '../harness/servers.js';
import { eventually } from '../harness/wait.js';

const SECRET = 'a fleet backends test secret, long enough';
const GROUPS = Array.from({ length: 12 }, (_, i) => `g${i + 1}`);
const ZONES = ['z1', 'z2', 'z3', 'z1'];
/** Bound for one convergence (session expiry, grace period, membership changes) on a loaded 2-core box. */
const CONVERGE_MS = 60_000;

const BACKENDS: { name: string; start: () => Promise<ServerHandle> }[] = [
  { name: 'redis', start: () => startRedis() },
  { name: 'postgres', start: () => startPostgres() },
  { name: 'etcd', start: () => startEtcd() },
  { name: 'zookeeper', start: () => startZookeeper() },
];

const cleanups: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

interface Env {
  server: ServerHandle;
  dir: string;
  ports: number[];
  namespace: string;
  nodes: Map<string, { node: FleetNode; store: Store }>;
  errors: string[];
}

async function start(e: Env, id: string): Promise<FleetNode> {
  const i = Number(id.slice(1)) - 1;
  const store = await openStore(e.server.url, { namespace: e.namespace });
  const node = await joinFleet({
    store,
    fleet: 'backends',
    node: { id, zone: ZONES[i]!, address: `127.0.0.1:${e.ports[i]}` },
    dataDir: join(e.dir, id),
    secret: SECRET,
    machines: { counter },
    sessionTtlMs: 3000,
    gracePeriodMs: 2000,
    tickMs: 50,
    minNodes: 3,
  }).catch(async (err: unknown) => {
    await store.close();
    throw err;
  });
  node.on('error', ({ error, context }) => e.errors.push(`${id} ${context}: ${String(error)}`));
  e.nodes.set(id, { node, store });
  return node;
}

async function stop(e: Env, id: string): Promise<void> {
  const n = e.nodes.get(id)!;
  e.nodes.delete(id);
  await n.node.close();
  await n.store.close();
}

/** Every group has its desired members as voters, no learners, and its desired leader leading (as reported). */
async function converged(e: Env, what: string, placedOn?: string): Promise<void> {
  const any = [...e.nodes.values()][0]!.node;
  await eventually(
    async () => {
      const s = await any.status();
      if (placedOn !== undefined) {
        expect(s.groups.filter((g) => g.desired.includes(placedOn)).length, `groups on ${placedOn}`).toBeGreaterThan(0);
      }
      expect(s.groups.map((g) => `${g.name} ${g.health}`).filter((g) => !g.endsWith(' converged'))).toEqual([]);
      expect(s.groups).toHaveLength(GROUPS.length);
      const live = new Set(e.nodes.keys());
      for (const g of s.groups) for (const m of g.desired) expect(live.has(m), `${g.name} on ${m}`).toBe(true);
      return true;
    },
    {
      what,
      timeoutMs: CONVERGE_MS,
      intervalMs: 200,
      context: () => e.errors.slice(-20).join('\n'),
    },
  );
}

/** Clients: one per group, sequential `add: 1` through a node chosen in turn, counting outcomes. */
function writers(e: Env): {
  stop: () => Promise<void>;
  acked: Map<string, number>;
  failed: Map<string, number>;
  ackedTotal: () => number;
} {
  const acked = new Map(GROUPS.map((g) => [g, 0]));
  const failed = new Map(GROUPS.map((g) => [g, 0]));
  let running = true;
  const loops = GROUPS.map(async (g, i) => {
    for (let k = i; running; k++) {
      const nodes = [...e.nodes.values()];
      const via = nodes[k % nodes.length]?.node;
      if (via === undefined) break;
      try {
        await via.command(g, { add: 1 }, { timeoutMs: 5000 });
        acked.set(g, acked.get(g)! + 1);
      } catch {
        failed.set(g, failed.get(g)! + 1);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  });
  return {
    acked,
    failed,
    ackedTotal: () => [...acked.values()].reduce((a, b) => a + b, 0),
    stop: async () => {
      running = false;
      await Promise.all(loops);
    },
  };
}

describe.each(BACKENDS)('fleet control plane on $name (private server)', ({ name, start: startServer }) => {
  it('converges, takes a node in and out, rides a store restart, a node stopped without draining and the store frozen past the TTL, loses no acknowledged command', async () => {
    const server = await startServer();
    cleanups.push(() => server.kill());
    const dir = await mkdtemp(join(tmpdir(), `fleet-${name}-`));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const ports = await allocatePorts(4);
    cleanups.push(async () => ports.forEach(releasePort));
    const e: Env = { server, dir, ports, namespace: `fleet-${name}`, nodes: new Map(), errors: [] };
    cleanups.push(async () => {
      for (const id of [...e.nodes.keys()]) await stop(e, id).catch(() => undefined);
    });

    // 1. Three nodes, twelve groups.
    for (const id of ['n1', 'n2', 'n3']) await start(e, id);
    const n1 = e.nodes.get('n1')!.node;
    for (const g of GROUPS) await n1.addGroup(g, { replicas: 3, machine: 'counter' });
    await converged(e, `${name}: 12 groups on three nodes`);
    const w = writers(e);

    // 2. A fourth node joins (it gets a share), then drains and leaves.
    await start(e, 'n4');
    await converged(e, `${name}: n4 joined`, 'n4');
    expect(e.nodes.get('n4')!.node.replicas().length, 'n4 took a share').toBeGreaterThan(0);
    await e.nodes.get('n4')!.node.deactivate({ timeoutMs: CONVERGE_MS });
    await stop(e, 'n4');
    await converged(e, `${name}: n4 drained`);

    // 3. The store restarts with its data while the clients write; then n3 stops without draining and is replaced by
    // n4 (its share placed on the live nodes once the grace period is over).
    await server.restart();
    await stop(e, 'n3');
    await start(e, 'n4');
    await converged(e, `${name}: after the store's restart, n3 replaced`, 'n4');

    // 4. The store frozen (SIGSTOP) past every session's TTL, then resumed: the groups answer while it is frozen, the
    // sessions are lost and the nodes register again, and nothing moves for good.
    const registrations = async (): Promise<Map<string, number>> => {
      const { store } = e.nodes.get('n1')!;
      const view = await readFleetView(store, e.nodes.get('n1')!.node.keys, () => undefined);
      return new Map([...view.nodes].map(([id, n]) => [id, n.registeredRevision]));
    };
    const before = await registrations();
    expect([...before.keys()].sort()).toEqual(['n1', 'n2', 'n4']);
    server.pause();
    const ackedAtPause = w.ackedTotal();
    await new Promise((resolve) => setTimeout(resolve, 3000 + 1500));
    const ackedWhileFrozen = w.ackedTotal() - ackedAtPause;
    server.resume();
    expect(ackedWhileFrozen, 'commands acknowledged while the store was frozen').toBeGreaterThan(0);
    await eventually(
      async () => {
        const after = await registrations();
        for (const [id, rev] of before) expect(after.get(id), `${id} registered again`).toBeGreaterThan(rev);
        return true;
      },
      { what: `${name}: every node registered again after the freeze`, timeoutMs: CONVERGE_MS, intervalMs: 200 },
    );
    await converged(e, `${name}: after the store was frozen past the session TTL`);

    // 5. Every acknowledged command is in the totals, once.
    await w.stop();
    for (const g of GROUPS) {
      const total = await n1.query<number>(g, 'total', { consistency: 'linearizable' });
      const acked = w.acked.get(g)!;
      expect(total, `${g}: acknowledged ${acked}, failed ${w.failed.get(g)}`).toBeGreaterThanOrEqual(acked);
      expect(total, `${g}: acknowledged ${acked}, failed ${w.failed.get(g)}`).toBeLessThanOrEqual(
        acked + w.failed.get(g)!,
      );
    }
    expect(w.ackedTotal()).toBeGreaterThan(GROUPS.length * 5);
  }, 300_000);
});
