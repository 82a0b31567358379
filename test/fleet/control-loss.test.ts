/**
 * A fleet whose control store loses its data (docs/fleet.md, "The control store loses its data"; ADR 0023): three
 * in-process fleet nodes on a private Redis without persistence, which is restarted — every record is gone, the
 * generation counter with them. No node may delete a replica: each keeps what it held as orphans and reports
 * FleetControlLostError; each group's leader writes its group back under its own generation, and every command
 * acknowledged before is still there — also when every node was down through the loss and comes back with its
 * replicas only stored. (test/fleet/fleet.test.ts covers a name added again before the write-back.)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createRedisStore } from '../../src/backends/redis/index.js';
import { FleetControlLostError } from '../../src/errors.js';
import { joinFleet, type FleetNode } from '../../src/runtime/fleet/node.js';
import type { Store } from '../../src/store/contract.js';
import { allocatePorts } from '../harness/ports.js';
import { releasePort } from '../harness/processes.js';
import { startRedis, type ServerHandle } from '../harness/servers.js';
import { counter } from '../harness/counter.js';
import { eventually } from '../harness/wait.js';

const TTL_MS = 2000;
const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

describe('fleet: the control store loses its data', () => {
  it('a Redis restarted without persistence: no replica deleted, every group written back whole', async () => {
    const redis: ServerHandle = await startRedis({ appendOnly: false });
    cleanups.push(() => redis.stop());
    const dir = await mkdtemp(join(tmpdir(), 'fleet-loss-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const ports = await allocatePorts(3);
    cleanups.push(async () => ports.forEach((p) => releasePort(p)));

    const lost: string[] = [];
    const dropped: string[] = [];
    const nodes = new Map<string, FleetNode>();
    const start = async (id: string): Promise<FleetNode> => {
      // Each node its own client, as separate processes would have; the delayed restart after a lost server
      // (docs/adr/0009) waits out the longest TTL of the namespace.
      const store: Store = await createRedisStore({ url: redis.url, namespace: 'fleet-loss', maxSessionTtlMs: TTL_MS });
      const i = Number(id.slice(1)) - 1;
      const node = await eventually(
        () =>
          joinFleet({
            store,
            fleet: 'f',
            node: { id, zone: `z${i + 1}`, address: `127.0.0.1:${ports[i]}` },
            dataDir: join(dir, id),
            secret: 'a fleet test secret of enough bytes',
            machines: { counter },
            sessionTtlMs: TTL_MS,
            gracePeriodMs: 1000,
            tickMs: 50,
          }).catch(() => false as const),
        { what: `${id} to join (a young namespace waits first)`, timeoutMs: 20_000, intervalMs: 200 },
      );
      node.on('error', ({ error }) => {
        if (error instanceof FleetControlLostError) lost.push(id);
      });
      node.on('groupLost', ({ group }) => dropped.push(`${id} ${group}`));
      nodes.set(id, node);
      cleanups.push(async () => {
        await node.close().catch(() => undefined);
        await store.close().catch(() => undefined);
      });
      return node;
    };
    const [n1, n2, n3] = [await start('n1'), await start('n2'), await start('n3')];
    for (const g of ['a', 'b']) await n1.addGroup(g, { replicas: 3, machine: 'counter' });
    await eventually(async () => (await n1.command('a', { add: 5 }, { timeoutMs: 2000 })) === 5, {
      what: 'a placed and answering',
      timeoutMs: 30_000,
    });
    expect(await n2.command('b', { add: 7 }, { timeoutMs: 10_000 })).toBe(7);
    await eventually(() => [n1, n2, n3].every((n) => n.replicas().length === 2), {
      what: 'three replicas of each group',
      timeoutMs: 30_000,
    });

    // The server restarts with nothing: records, sessions and the namespace's incarnation are gone.
    await redis.restart();
    await eventually(() => new Set(lost).size === 3, {
      what: 'every node to report the lost records (after the delayed restart)',
      timeoutMs: 30_000,
      intervalMs: 100,
    });
    // Nothing was deleted: each group's leader writes its group back under its own generation, and every command
    // acknowledged before the loss is still there.
    await eventually(
      async () =>
        (await Promise.all(['a', 'b'].map((g) => n3.query<number>(g, 'total', { timeoutMs: 2000 })))).join() === '5,7',
      { what: 'a and b written back with their state', timeoutMs: 30_000, intervalMs: 200 },
    );
    expect(await n3.command('a', { add: 1 })).toBe(6);
    await eventually(() => [n1, n2, n3].every((n) => n.orphans().length === 0), {
      what: 'no orphan left',
      timeoutMs: 10_000,
    });
    // The counter passed the old generations: a new group gets a new one.
    expect((await n2.addGroup('c', { replicas: 3, machine: 'counter' })).generation).toBe(3);
    expect(await n2.command('c', { add: 4 }, { timeoutMs: 10_000 })).toBe(4);

    // Worse: the whole fleet is down when the records go (a power cut that also took the store's memory). The nodes
    // come back to nothing in the records and only stored replicas: each opens its orphans from its data directory's
    // catalog, and each group's new leader writes it back.
    await Promise.all([...nodes.values()].map((n) => n.close()));
    nodes.clear();
    await redis.restart();
    const [m1, m2, m3] = await Promise.all([start('n1'), start('n2'), start('n3')]);
    const totals = async (): Promise<number[]> =>
      Promise.all(['a', 'b', 'c'].map((g) => m2.query<number>(g, 'total', { timeoutMs: 2000 })));
    await eventually(async () => (await totals()).join() === '6,7,4', {
      what: 'every group written back again, from replicas that were only stored',
      timeoutMs: 30_000,
      intervalMs: 200,
    });
    expect(await m1.command('c', { add: 1 })).toBe(5);
    await eventually(() => [m1, m2, m3].every((n) => n.orphans().length === 0), {
      what: 'no orphan left after the restart',
      timeoutMs: 10_000,
    });
    expect(dropped).toEqual([]);
  });
});
