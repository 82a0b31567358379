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
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { createPostgresStore } from '../../src/backends/postgres/index.js';
import { createRedisStore } from '../../src/backends/redis/index.js';
import { FleetControlLostError, FleetGroupExistsError, FleetGroupNotFoundError } from '../../src/errors.js';
import { decodeDesired, FleetKeys } from '../../src/protocol/fleet/keys.js';
import { connectFleet } from '../../src/runtime/fleet/client.js';
import { joinFleet, type FleetNode } from '../../src/runtime/fleet/node.js';
import type { Store } from '../../src/store/contract.js';
import { allocatePorts } from '../harness/ports.js';
import { releasePort } from '../harness/processes.js';
import { startPostgres, startRedis, type ServerHandle } from '../harness/servers.js';
import { counter } from '../harness/counter.js';
import { eventually } from '../harness/wait.js';

const TTL_MS = 2000;
const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

interface LossFleet {
  start: (id: string) => Promise<FleetNode>;
  nodes: Map<string, FleetNode>;
  stores: Map<string, Store>;
  lost: string[];
  dropped: string[];
}

/** Three in-process fleet nodes on one private Redis (each its own client, as separate processes would have). */
async function lossFleet(): Promise<LossFleet & { redis: ServerHandle }> {
  const redis: ServerHandle = await startRedis({ appendOnly: false });
  cleanups.push(() => redis.stop());
  const fleet = await fleetOn(() =>
    createRedisStore({ url: redis.url, namespace: 'fleet-loss', maxSessionTtlMs: TTL_MS }),
  );
  return { redis, ...fleet };
}

/** Three in-process fleet nodes, each on a store client of its own from `openStore`. */
async function fleetOn(openStore: () => Promise<Store>): Promise<LossFleet> {
  const dir = await mkdtemp(join(tmpdir(), 'fleet-loss-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const ports = await allocatePorts(3);
  cleanups.push(async () => ports.forEach((p) => releasePort(p)));
  const lost: string[] = [];
  const dropped: string[] = [];
  const nodes = new Map<string, FleetNode>();
  const stores = new Map<string, Store>();
  const start = async (id: string): Promise<FleetNode> => {
    // The delayed restart after a lost server (docs/adr/0009) waits out the longest TTL of the namespace.
    const store: Store = await openStore();
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
    stores.set(id, store);
    cleanups.push(async () => {
      await node.close().catch(() => undefined);
      await store.close().catch(() => undefined);
    });
    return node;
  };
  return { start, nodes, stores, lost, dropped };
}

/**
 * Group `name` placed and answering through `node`: a first command adding `value` to its counter returned `value`
 * (retried until the group has a leader).
 */
async function answering(node: FleetNode, name: string, value: number): Promise<void> {
  await eventually(async () => (await node.command(name, { add: value }, { timeoutMs: 2000 })) === value, {
    what: `${name} placed and answering`,
    timeoutMs: 30_000,
  });
}

/** Each of `nodes` holds `count` replicas (`what` names it for a timeout). */
async function holding(nodes: readonly FleetNode[], count: number, what: string): Promise<void> {
  await eventually(() => nodes.every((n) => n.replicas().length === count), { what, timeoutMs: 30_000 });
}

/** The counters of `groups` as `node` reads them, joined ('5,7'). */
async function totals(node: FleetNode, groups: readonly string[]): Promise<string> {
  return (await Promise.all(groups.map((g) => node.query<number>(g, 'total', { timeoutMs: 2000 })))).join();
}

/** One request to the private Redis on a client of its own (a snapshot, a look at its keys). */
async function onRedis<T>(redis: ServerHandle, fn: (r: Redis) => Promise<T>): Promise<T> {
  const r = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
  await r.connect();
  try {
    return await fn(r);
  } finally {
    r.disconnect();
  }
}

describe('fleet: the control store loses its data', () => {
  it('a Redis that comes back older (its last snapshot): a group added since is written back, not deleted', async () => {
    const { redis, start, nodes, stores, dropped } = await lossFleet();
    const [n1, n2, n3] = [await start('n1'), await start('n2'), await start('n3')];
    await n1.addGroup('a', { replicas: 3, machine: 'counter' });
    await answering(n1, 'a', 5);
    // The server's snapshot is taken now (an RDB save, as Redis's default `save` points make now and then) …
    await onRedis(redis, (r) => r.save());
    // … then a group is added and written to, and the server dies (kill -9) and restarts from that snapshot: the
    // records are those of before the add, under the same control id — nothing says the records were lost except
    // the store's StoreDataLostError (its run id changed).
    await n2.addGroup('b', { replicas: 3, machine: 'counter' });
    await answering(n2, 'b', 7);
    await holding([n1, n2, n3], 2, 'three replicas of each group');
    await redis.kill();
    await redis.restart();
    const keys = await onRedis(redis, (r) => r.keys('*'));
    expect(keys.some((k) => k.includes('groups/a'))).toBe(true); // the snapshot came back …
    expect(keys.some((k) => k.includes('groups/b'))).toBe(false); // … without b
    // Every node's store client has found the loss (its sessions ended with StoreDataLostError; it registers again).
    await eventually(() => [...stores.values()].every((st) => st.dataLosses > 0), {
      what: "every node's store to find the loss",
      timeoutMs: 30_000,
    });
    await eventually(async () => (await n1.status()).nodes.length === 3, {
      what: 'every node registered again',
      timeoutMs: 60_000,
      intervalMs: 200,
    });
    // b's replicas are kept and b is written back with its state; a is as it was.
    await eventually(async () => (await totals(n3, ['a', 'b'])) === '5,7', {
      what: 'a and b answering with their state',
      timeoutMs: 60_000,
      intervalMs: 200,
    });
    expect(await n1.command('b', { add: 1 })).toBe(8);

    // Worse: the whole fleet is down when the store comes back older. The nodes start with new store clients, which
    // have no earlier server to compare with: nothing reports a loss. Each node sees it by itself — it holds a replica
    // of a generation above the records' counter — and c comes back instead of being deleted.
    await onRedis(redis, (r) => r.save());
    await n3.addGroup('c', { replicas: 3, machine: 'counter' });
    await answering(n3, 'c', 4);
    await holding([n1, n2, n3], 3, 'three replicas of c');
    await Promise.all([...nodes.values()].map((n) => n.close()));
    nodes.clear();
    await redis.kill();
    await redis.restart();
    const [m1, m2, m3] = await Promise.all([start('n1'), start('n2'), start('n3')]);
    await eventually(async () => (await totals(m2, ['a', 'b', 'c'])) === '5,8,4', {
      what: 'a, b and c answering with their state after the restart',
      timeoutMs: 60_000,
      intervalMs: 200,
    });
    expect(await m1.command('c', { add: 1 })).toBe(5);
    await eventually(() => [m1, m2, m3].every((n) => n.orphans().length === 0), {
      what: 'no orphan left',
      timeoutMs: 10_000,
    });
    expect(dropped).toEqual([]);
  }, 180_000);

  it('a Redis that comes back older than a removal: the removed group is not founded again, empty, by its old founders', async () => {
    const { redis, start, stores, dropped } = await lossFleet();
    const nodes = [await start('n1'), await start('n2'), await start('n3')];
    const [n1, n2] = nodes as [FleetNode, FleetNode, FleetNode];
    const waits: string[] = [];
    for (const n of nodes) n.on('error', ({ error }) => waits.push(String(error)));
    await n1.addGroup('a', { replicas: 3, machine: 'counter' });
    await n1.addGroup('gone', { replicas: 3, machine: 'counter' });
    await answering(n1, 'a', 5);
    await answering(n1, 'gone', 3);
    await holding(nodes, 2, 'three replicas of each group');
    // The snapshot holds gone's records as its founders first wrote them (the premise: its first desired record,
    // not rewritten since); then gone is removed and every replica deletes its data, and the server restarts from
    // the snapshot.
    const keys = new FleetKeys('f');
    const first = await stores.get('n1')!.get(keys.desiredOf('gone'));
    expect(decodeDesired(keys, first!.key, first!.value).version).toBe(1);
    await onRedis(redis, (r) => r.save());
    await n2.removeGroup('gone');
    await eventually(() => dropped.filter((d) => d.endsWith(' gone')).length === 3, {
      what: "gone's three replicas dropped",
      timeoutMs: 30_000,
    });
    await redis.kill();
    await redis.restart();
    await eventually(() => [...stores.values()].every((st) => st.dataLosses > 0), {
      what: "every node's store to find the loss",
      timeoutMs: 30_000,
    });
    await eventually(async () => (await totals(n2, ['a'])) === '5', {
      what: 'a answering with its state',
      timeoutMs: 60_000,
      intervalMs: 200,
    });
    // The records name n1–n3 gone's founders again. Each dropped that very Raft group: founding it anew would
    // bring the removed group back empty (a command would answer 1); each says so instead, and it stays unserved.
    await eventually(() => waits.filter((w) => w.includes('gone: not founded again from an empty log')).length >= 3, {
      what: 'each old founder to refuse founding gone again, and say so',
      timeoutMs: 30_000,
    });
    await expect(n1.command('gone', { add: 1 }, { timeoutMs: 3000 })).rejects.toThrow();
    expect(nodes.every((n) => n.replicas().every((r) => r.group !== 'gone'))).toBe(true);
    expect(waits.find((w) => w.includes('gone: not founded'))).toMatch(/remove the group \(rebalancer fleet remove\)/);
    // Removed again, it is gone; the name can be added anew.
    await n1.removeGroup('gone');
    await n1.addGroup('gone', { replicas: 3, machine: 'counter' });
    await answering(n2, 'gone', 2);
  }, 180_000);

  it('a PostgreSQL restored from a backup while the nodes run: a group added since is written back, not deleted', async () => {
    const server = await startPostgres();
    cleanups.push(() => server.stop());
    const schema = 'fleet_restore';
    const { start, stores, dropped } = await fleetOn(() =>
      createPostgresStore({ connectionString: server.url, schema, namespace: 'fleet-loss', maxSessionTtlMs: TTL_MS }),
    );
    const [n1, n2, n3] = [await start('n1'), await start('n2'), await start('n3')];
    await n1.addGroup('a', { replicas: 3, machine: 'counter' });
    await answering(n1, 'a', 5);
    // The backup: a copy of every table of the schema, as a restore of the whole database would bring back.
    const admin = new pg.Client(server.url);
    await admin.connect();
    cleanups.push(() => admin.end());
    const tables = ['namespaces', 'sessions', 'kv'];
    await admin.query(tables.map((t) => `CREATE TABLE ${schema}.bk_${t} AS SELECT * FROM ${schema}.${t}`).join('; '));
    await n2.addGroup('b', { replicas: 3, machine: 'counter' });
    await answering(n2, 'b', 7);
    await holding([n1, n2, n3], 2, 'three replicas of each group');
    // The restore, while the nodes run: the records are those of before b, under the same control id and the same
    // incarnation record — only the namespace's revision, gone back, says so.
    await admin.query(
      `BEGIN; LOCK TABLE ${tables.map((t) => `${schema}.${t}`).join(', ')} IN ACCESS EXCLUSIVE MODE; ` +
        `${[...tables]
          .reverse()
          .map((t) => `DELETE FROM ${schema}.${t}`)
          .join('; ')}; ` +
        `${tables.map((t) => `INSERT INTO ${schema}.${t} SELECT * FROM ${schema}.bk_${t}`).join('; ')}; COMMIT`,
    );
    await eventually(() => [...stores.values()].every((st) => st.dataLosses > 0), {
      what: "every node's store to find the restore",
      timeoutMs: 30_000,
    });
    // b may be in no record yet (its leader writes it back): a command on it waits for that (each node keeps a
    // replica).
    expect(await n1.command('b', { add: 1 }, { timeoutMs: 30_000 })).toBe(8);
    await eventually(async () => (await n1.status()).nodes.length === 3, {
      what: 'every node registered again',
      timeoutMs: 60_000,
      intervalMs: 200,
    });
    await eventually(async () => (await totals(n3, ['a', 'b'])) === '5,8', {
      what: 'a and b answering with their state',
      timeoutMs: 60_000,
      intervalMs: 200,
    });
    expect(dropped).toEqual([]);
  }, 180_000);

  it('an application that adds its groups at start-up (examples/fleet-kv): the adds are refused until the groups are back whole', async () => {
    const { redis, start, nodes, dropped } = await lossFleet();
    // What examples/fleet-kv/node.ts does when it starts: add every group it needs, a group that exists being fine.
    const ensureGroups = async (n: FleetNode): Promise<string[]> => {
      const refused: string[] = [];
      for (const g of ['a', 'b']) {
        await n.addGroup(g, { replicas: 3, machine: 'counter' }).catch((error: unknown) => {
          if (!(error instanceof FleetGroupExistsError)) throw error;
          if (error.restoring !== undefined) refused.push(g);
        });
      }
      return refused;
    };
    const first = [await start('n1'), await start('n2'), await start('n3')];
    for (const n of first) await ensureGroups(n);
    await answering(first[0]!, 'a', 5);
    expect(await first[1]!.command('b', { add: 7 }, { timeoutMs: 10_000 })).toBe(7);
    await holding(first, 2, 'three replicas of each group');

    // Every node stops, the store loses everything, and the nodes come back one by one, each adding its groups
    // first thing. n1 alone keeps replicas of a and b but cannot elect their leaders: its adds must be refused,
    // else new, empty groups a and b would take the names and the old ones (5 and 7) could never come back.
    await Promise.all([...nodes.values()].map((n) => n.close()));
    nodes.clear();
    await redis.restart();
    const m1 = await start('n1');
    expect(await ensureGroups(m1)).toEqual(['a', 'b']);
    await eventually(async () => (await m1.status()).restoring.map((r) => r.name).join() === 'a,b', {
      what: 'a and b claimed in the store, listed as on their way back',
      timeoutMs: 10_000,
    });
    // Meanwhile a or b is no "no such group": a query waits for it, within its time, on a node and from a client
    // outside the fleet; run out, it says the group is on its way back.
    const clientStore = await createRedisStore({ url: redis.url, namespace: 'fleet-loss', maxSessionTtlMs: TTL_MS });
    cleanups.push(() => clientStore.close());
    const client = await connectFleet({
      store: clientStore,
      fleet: 'f',
      secret: 'a fleet test secret of enough bytes',
    });
    cleanups.push(() => client.close());
    for (const asker of [m1, client]) {
      const err = await asker.query('a', 'total', { timeoutMs: 300 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(FleetGroupNotFoundError);
      expect((err as FleetGroupNotFoundError).restoring).toEqual({ node: 'n1' });
    }
    const waiting = client.query<number>('a', 'total', { timeoutMs: 30_000 });
    const m2 = await start('n2');
    await ensureGroups(m2);
    const m3 = await start('n3');
    await ensureGroups(m3);
    expect(await waiting).toBe(5);
    await eventually(async () => (await totals(m3, ['a', 'b'])) === '5,7', {
      what: 'a and b written back with their state',
      timeoutMs: 30_000,
      intervalMs: 200,
    });
    expect((await m1.status()).restoring).toEqual([]);
    await eventually(() => [m1, m2, m3].every((n) => n.orphans().length === 0), {
      what: 'no orphan left',
      timeoutMs: 10_000,
    });
    // Back, the names are groups like any other again.
    expect(await ensureGroups(m2)).toEqual([]);
    expect(await m2.command('a', { add: 1 })).toBe(6);
    expect(dropped).toEqual([]);
  });

  it('a Redis restarted without persistence: no replica deleted, every group written back whole', async () => {
    const { redis, start, nodes, lost, dropped } = await lossFleet();
    const [n1, n2, n3] = [await start('n1'), await start('n2'), await start('n3')];
    for (const g of ['a', 'b']) await n1.addGroup(g, { replicas: 3, machine: 'counter' });
    await answering(n1, 'a', 5);
    expect(await n2.command('b', { add: 7 }, { timeoutMs: 10_000 })).toBe(7);
    await holding([n1, n2, n3], 2, 'three replicas of each group');

    // The server restarts with nothing: records, sessions and the namespace's incarnation are gone.
    await redis.restart();
    await eventually(() => new Set(lost).size === 3, {
      what: 'every node to report the lost records (after the delayed restart)',
      timeoutMs: 30_000,
      intervalMs: 100,
    });
    // b is in no record now, but every node keeps a replica of it: a command waits until its leader wrote it back
    // (it used to fail at once with FleetGroupNotFoundError).
    expect(await n1.command('b', { add: 1 }, { timeoutMs: 30_000 })).toBe(8);
    // Nothing was deleted: each group's leader writes its group back under its own generation, and every command
    // acknowledged before the loss is still there.
    await eventually(async () => (await totals(n3, ['a', 'b'])) === '5,8', {
      what: 'a and b written back with their state',
      timeoutMs: 30_000,
      intervalMs: 200,
    });
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
    await eventually(async () => (await totals(m2, ['a', 'b', 'c'])) === '6,8,4', {
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
