/**
 * Corrupt data in a group's keys, on the memory store, a SQLite file and private Redis, PostgreSQL, etcd and
 * ZooKeeper servers (issue 12 item 8).
 *
 * Two members run six resources; then junk is planted where the protocol keeps its state: a `state` value that
 * is not Rebalancer's JSON (every backend), the same key with the wrong Redis type (SET / LPUSH on its hash), and
 * junk in the Redis namespace's revision counter. Each must give a CorruptDataError naming the key on every
 * member's `error` event and in groupStatus, and a safe outcome: what could not be read is never overwritten,
 * the members keep what they own (no resource stops, none runs twice), and once the key is repaired (deleted) the
 * group moves on.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStore } from '../../src/backends/memory/store.js';
import { createRedisStore, type RedisStore } from '../../src/backends/redis/index.js';
import { createSqliteStore } from '../../src/backends/sqlite/index.js';
import { CorruptDataError } from '../../src/errors.js';
import { joinGroup, type GroupMember } from '../../src/runtime/groups/member.js';
import { GroupAdmin } from '../../src/runtime/groups/registry.js';
import { repairGroup } from '../../src/runtime/groups/repair.js';
import { groupStatus } from '../../src/runtime/groups/status.js';
import type { Store } from '../../src/store/contract.js';
import { createEtcdStore } from '../../src/backends/etcd/index.js';
import { createPostgresStore } from '../../src/backends/postgres/index.js';
import { createZookeeperStore } from '../../src/backends/zookeeper/index.js';
import { startEtcd, startPostgres, startRedis, startZookeeper, type ServerHandle } from '../harness/servers.js';
import { cliAsync } from '../unit/cli-process.js';
import { eventually, sleep } from '../harness/wait.js';

const GROUP = 'cg';
const STATE_KEY = `g/${GROUP}/state`;
const TTL_MS = 2000;
const RESOURCES = ['r0', 'r1', 'r2', 'r3', 'r4', 'r5'];

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

/** Who runs what, from the handlers themselves (the oracle). */
class Running {
  readonly owners = new Map<string, Set<string>>();
  doubles = 0;
  start(node: string, resource: string): void {
    const s = this.owners.get(resource) ?? new Set<string>();
    s.add(node);
    if (s.size > 1) this.doubles++;
    this.owners.set(resource, s);
  }
  stop(node: string, resource: string): void {
    this.owners.get(resource)?.delete(node);
  }
  /** resource → its single owner; undefined if any resource has none or several. */
  each(resources: readonly string[]): boolean {
    return resources.every((r) => this.owners.get(r)?.size === 1);
  }
}

interface Fixture {
  readonly store: Store;
  readonly members: GroupMember[];
  readonly running: Running;
  readonly errors: Map<string, CorruptDataError[]>;
  /** Starts and stops seen by the handlers since `mark()`. */
  changes(): number;
  mark(): void;
}

async function startGroup(store: Store): Promise<Fixture> {
  await new GroupAdmin(store, GROUP).add(RESOURCES);
  const running = new Running();
  const errors = new Map<string, CorruptDataError[]>();
  let changes = 0;
  const members: GroupMember[] = [];
  for (const id of ['a', 'b']) {
    const m = await joinGroup({
      store,
      group: GROUP,
      node: { id },
      sessionTtlMs: TTL_MS,
      reconcileIntervalMs: 100,
      rebalanceDebounceMs: 0,
      leaveTimeoutMs: 3000,
      handler: async (ctx) => {
        running.start(id, ctx.resource);
        changes++;
        await new Promise<void>((resolve) => ctx.signal.addEventListener('abort', () => resolve()));
        running.stop(id, ctx.resource);
        changes++;
      },
    });
    errors.set(id, []);
    m.on('error', (e) => {
      if (e.error instanceof CorruptDataError) errors.get(id)!.push(e.error);
    });
    members.push(m);
    cleanups.push(() => m.leave());
  }
  await eventually(() => running.each(RESOURCES) && members.every((m) => m.assignment().length === 3), {
    what: 'every resource running on exactly one member, three each',
    timeoutMs: 15_000,
  });
  let mark = 0;
  return {
    store,
    members,
    running,
    errors,
    changes: () => changes - mark,
    mark: () => (mark = changes),
  };
}

async function raw(store: Store, key: string): Promise<string | undefined> {
  return (await store.get(key))?.value;
}

/**
 * The common assertions once junk is in place: every member reports the key (typed, named), what the handlers
 * run does not change while the lease holds, groupStatus names the key, and nothing was overwritten.
 */
async function expectHeld(f: Fixture, key: string, stillThere: () => Promise<void>): Promise<void> {
  await eventually(() => f.members.every((m) => f.errors.get(m.nodeId)!.some((e) => e.key === key)), {
    what: `every member reporting CorruptDataError for ${key}`,
    timeoutMs: 10_000,
  });
  for (const m of f.members) {
    const e = f.errors.get(m.nodeId)!.find((x) => x.key === key)!;
    expect(e.code).toBe('CORRUPT_DATA');
    expect(e.message).toContain(key);
  }
  // A few rounds and keep-alives later: the same handlers run, nothing was started or stopped, nothing twice.
  await sleep(1500);
  expect(f.changes()).toBe(0);
  expect(f.running.each(RESOURCES)).toBe(true);
  expect(f.running.doubles).toBe(0);
  await stillThere();
}

async function expectRepaired(f: Fixture, repair: () => Promise<void>): Promise<void> {
  await repair();
  // The coordinator coordinates again: a new resource is placed and started.
  await new GroupAdmin(f.store, GROUP).add(['r6']);
  await eventually(() => f.running.each([...RESOURCES, 'r6']), {
    what: 'r6 placed and running after the repair',
    timeoutMs: 15_000,
  });
  const s = await groupStatus(f.store, GROUP);
  expect(s.corruptKeys).toEqual([]);
  expect(s.protocol).toBe('resource-barrier');
  expect(f.running.doubles).toBe(0);
}

const JUNK = '{"v":1,"generation":"this is not Rebalancer\'s'; // not even JSON

async function junkStateScenario(store: Store): Promise<void> {
  const f = await startGroup(store);
  f.mark();
  await store.txn({ compare: [], then: [{ op: 'put', key: STATE_KEY, value: JUNK }] });
  await expectHeld(f, STATE_KEY, async () => {
    expect(await raw(store, STATE_KEY)).toBe(JUNK);
    const s = await groupStatus(store, GROUP);
    expect(s.corruptKeys).toContain(STATE_KEY);
    expect(s.problems.some((p) => p.key === STATE_KEY && /delete/.test(p.repair))).toBe(true);
  });
  await expectRepaired(f, async () => {
    // The repair tool: first it only says what it would do, then it deletes exactly the unreadable key.
    const dry = await repairGroup(store, GROUP, { delete: false });
    expect(dry.map((x) => [x.key, x.action])).toEqual([[STATE_KEY, 'would-delete']]);
    expect(await raw(store, STATE_KEY)).toBe(JUNK);
    const done = await repairGroup(store, GROUP, { delete: true });
    expect(done.map((x) => [x.key, x.action])).toEqual([[STATE_KEY, 'deleted']]);
  });
}

/**
 * Junk in a grant. The coordinator reads grants in full only now and then (it is their only writer), so the junk is
 * seen by its grantee at once and by the next coordinator's first read: here the coordinator leaves (its last
 * moves come from its cache) and its successor finds it. The grantee keeps running the resource, the successor
 * neither deletes nor replaces the grant, and after the repair everything runs on the remaining member.
 */
async function junkGrantScenario(store: Store): Promise<void> {
  const f = await startGroup(store);
  const leaver = f.members.find((m) => m.isCoordinator)!;
  const stayer = f.members.find((m) => m !== leaver)!;
  const mine = stayer.assignment().map((a) => a.resource);
  const grant = `g/${GROUP}/grants/${stayer.nodeId}/${mine[0]}`;
  f.mark();
  await store.txn({ compare: [], then: [{ op: 'put', key: grant, value: JUNK }] });
  await eventually(() => f.errors.get(stayer.nodeId)!.some((e) => e.key === grant), {
    what: 'the grantee reporting its unreadable grant',
    timeoutMs: 10_000,
  });
  await leaver.leave();
  await eventually(
    () => f.errors.get(stayer.nodeId)!.some((e) => e.key === grant && /stopped coordinating/.test(e.message)),
    { what: 'the new coordinator reporting that it stopped coordinating', timeoutMs: 10_000 },
  );
  await sleep(1500);
  expect(await raw(store, grant)).toBe(JUNK);
  // The stayer still runs what it ran, the unreadable grant's resource included, under the same locks.
  for (const r of mine) expect([...(f.running.owners.get(r) ?? [])]).toEqual([stayer.nodeId]);
  expect(f.running.doubles).toBe(0);
  expect((await groupStatus(store, GROUP)).problems.map((p) => p.key)).toEqual([grant]);
  expect((await repairGroup(store, GROUP, { delete: true })).map((x) => x.action)).toEqual(['deleted']);
  await eventually(() => stayer.assignment().length === RESOURCES.length && f.running.each(RESOURCES), {
    what: 'every resource on the remaining member after the repair',
    timeoutMs: 15_000,
  });
  expect(f.running.doubles).toBe(0);
}

describe('junk in a group state key', () => {
  it('memory store: reported by every member, never overwritten, members keep their resources', async () => {
    const store = new MemoryStore();
    cleanups.push(() => store.close());
    await junkStateScenario(store);
  }, 60_000);

  it('memory store: junk in a grant is not replaced; the group waits for the repair', async () => {
    const store = new MemoryStore();
    cleanups.push(() => store.close());
    await junkGrantScenario(store);
  }, 60_000);

  it('SQLite file: the same', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rb-corrupt-'));
    cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
    const store = await createSqliteStore({ path: join(dir, 'rb.db') });
    cleanups.push(() => store.close());
    await junkStateScenario(store);
  }, 60_000);
});

describe('junk in a group state key on PostgreSQL, etcd and ZooKeeper (private servers)', () => {
  const servers: ServerHandle[] = [];
  afterAll(async () => {
    for (const s of servers) await s.stop().catch(() => undefined);
  });
  const server = async (start: () => Promise<ServerHandle>): Promise<ServerHandle> => {
    const s = await start();
    servers.push(s);
    return s;
  };

  it('PostgreSQL', async () => {
    const s = await server(startPostgres);
    const store = await createPostgresStore({ connectionString: s.url, namespace: 'corrupt', maxSessionTtlMs: TTL_MS });
    cleanups.push(() => store.close());
    await junkStateScenario(store);
  }, 90_000);

  it('etcd', async () => {
    const s = await server(startEtcd);
    const store = await createEtcdStore({ url: s.url, namespace: 'corrupt', maxSessionTtlMs: TTL_MS });
    cleanups.push(() => store.close());
    await junkStateScenario(store);
  }, 90_000);

  it('ZooKeeper', async () => {
    const s = await server(() => startZookeeper({ tickTimeMs: 500 }));
    const store = await createZookeeperStore({
      connectString: `127.0.0.1:${s.port}`,
      namespace: 'corrupt',
      maxSessionTtlMs: TTL_MS,
    });
    cleanups.push(() => store.close());
    await junkStateScenario(store);
  }, 90_000);
});

describe('Redis: wrong types and a junk revision counter', () => {
  let server: ServerHandle;
  let admin: Redis;
  let n = 0;
  beforeAll(async () => {
    server = await startRedis();
    admin = new Redis(server.port, '127.0.0.1');
  });
  afterAll(async () => {
    admin?.disconnect();
    await server?.stop();
  });

  async function redisStore(): Promise<RedisStore> {
    const s = await createRedisStore({ url: server.url, namespace: `corrupt${++n}`, maxSessionTtlMs: TTL_MS });
    cleanups.push(() => s.close());
    return s;
  }

  it('junk JSON in the state key: the same as on the other backends', async () => {
    await junkStateScenario(await redisStore());
  }, 60_000);

  for (const [how, plant] of [
    ['SET', (name: string) => admin.set(name, 'junk')],
    ['LPUSH', (name: string) => admin.lpush(name, 'junk')],
  ] as const) {
    it(`the state key's record with the wrong type (${how}): reported, not overwritten, the group keeps running`, async () => {
      const store = await redisStore();
      const f = await startGroup(store);
      const name = `${store.layout.base}k:${STATE_KEY}`;
      f.mark();
      await admin.del(name);
      await plant(name);
      const type = await admin.type(name);
      await expectHeld(f, STATE_KEY, async () => {
        expect(await admin.type(name)).toBe(type);
        const s = await groupStatus(store, GROUP);
        expect(s.corruptKeys).toContain(STATE_KEY);
        expect(s.nodes.map((x) => x.id)).toEqual(['a', 'b']);
        expect(s.counts.active).toBe(RESOURCES.length);
      });
      await expectRepaired(f, async () => void (await admin.del(name)));
    }, 60_000);
  }

  it('junk in the namespace revision counter: reported, sessions and resources kept; repaired by the CLI', async () => {
    const store = await redisStore();
    const f = await startGroup(store);
    const rev = store.layout.revision;
    f.mark();
    await admin.set(rev, 'junk');
    await expectHeld(f, rev, async () => {
      expect(await admin.get(rev)).toBe('junk');
      // Past the TTL: the sessions were kept alive, no member lost its resources.
      await sleep(TTL_MS);
      expect(f.changes()).toBe(0);
      const err = await store.get(STATE_KEY).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(CorruptDataError);
      expect((err as CorruptDataError).key).toBe(rev);
      expect((err as CorruptDataError).message).toContain('rebalancer store repair-revision');
    });
    await expectRepaired(f, async () => {
      const r = await cliAsync(['--store', server.url, '--namespace', store.namespace, 'store', 'repair-revision']);
      expect(r.err).toBe('');
      expect(r.out).toMatch(/revision counter of namespace \S+ repaired: it held "junk", now \d+/);
      // A second run leaves a readable counter alone.
      expect((await store.repairRevision()).repaired).toBe(false);
    });
    expect(Number(await admin.get(rev))).toBeGreaterThan(0);
  }, 60_000);
});
