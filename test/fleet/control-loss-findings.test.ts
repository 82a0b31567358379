/**
 * Regression tests of findings F1 and F2 of spec/fleet/controlLoss.qnt (docs/protocol/specs.md, "Fleet: the control
 * store loses its data"), with real fleet nodes in this process on one SQLite control store whose records are deleted
 * by hand.
 *
 * F1: a round whose reads straddle a loss of the records (the group and desired records read before it, the meta
 * record after) must not act on the lost records: no replica of a lost group is opened (and later deleted).
 * F2: two losses and a group name added again in between: the name added again gets the very generation of the
 * orphan from before the first loss, so after the second loss two incarnations of one Raft group id ("a:1") are both
 * orphans. The one written back first must not be taken by the other's holder for its own: the group records carry
 * their incarnation (keys.ts GroupRecord.incarnation).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { createSqliteStore } from '../../src/backends/sqlite/index.js';
import { addGroup } from '../../src/protocol/fleet/io.js';
import { groupRaftId } from '../../src/protocol/fleet/keys.js';
import { joinFleet, type FleetNode } from '../../src/runtime/fleet/node.js';
import type { Store } from '../../src/store/contract.js';
import { allocatePorts } from '../harness/ports.js';
import { releasePort } from '../harness/processes.js';
import { counter } from '../harness/counter.js';
import { eventually } from '../harness/wait.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

/**
 * A SQLite control store in a temp dir, two ports, and `start(id, store?)`: a fleet node (through `store`, default the
 * shared one) whose errors, gained and lost groups go to `log`.
 */
async function fleetEnv(name: string): Promise<{
  store: Store;
  log: string[];
  start: (id: string, through?: Store) => Promise<FleetNode>;
}> {
  const dir = await mkdtemp(join(tmpdir(), `fleet-${name}-`));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const store: Store = await createSqliteStore({ path: join(dir, 'control.db'), namespace: name });
  cleanups.push(() => store.close());
  const ports = await allocatePorts(2);
  cleanups.push(async () => ports.forEach((p) => releasePort(p)));
  const log: string[] = [];
  const start = async (id: string, through: Store = store): Promise<FleetNode> => {
    const i = Number(id.slice(1)) - 1;
    const node = await joinFleet({
      store: through,
      fleet: 'f',
      node: { id, zone: `z${i + 1}`, address: `127.0.0.1:${ports[i]}` },
      dataDir: join(dir, id),
      secret: 'a fleet test secret of enough bytes',
      machines: { counter },
      sessionTtlMs: 2000,
      gracePeriodMs: 1000,
      tickMs: 50,
    });
    node.on('error', ({ context, error }) => log.push(`${id} ${context}: ${String(error).slice(0, 300)}`));
    node.on('groupGained', ({ group, mode }) => log.push(`${id} groupGained ${group} ${mode}`));
    node.on('groupLost', ({ group, reason }) => log.push(`${id} groupLost ${group} ${reason}`));
    cleanups.push(() => node.close());
    return node;
  };
  return { store, log, start };
}

it('F1: a loss between the group reads and the meta read of a round: nothing opened from the lost records', async () => {
  const { store, log, start } = await fleetEnv('f1');
  const prefix = 'f/f/';
  const wipe = async (): Promise<void> => {
    const kvs = (await store.range(prefix)).kvs.filter((kv) =>
      /^f\/f\/(meta|groups\/|desired\/|observed\/)/.test(kv.key),
    );
    await store.txn({ compare: [], then: kvs.map((kv) => ({ op: 'delete' as const, key: kv.key })) });
  };
  // n2's view of the store: once armed, the first round that reads a desired record of "a" naming n2 loses the
  // records between its range reads and its read of the meta record (readFleetView reads the meta record last).
  let armed = false;
  const up: { n1?: FleetNode } = {};
  let straddle = false;
  const n2Store = new Proxy(store, {
    get(target, prop) {
      if (prop === 'range') {
        return async (p: string) => {
          const r = await target.range(p);
          if (
            armed &&
            p === `${prefix}desired/` &&
            r.kvs.some((kv) => kv.key.endsWith('/a') && kv.value.includes('"n2"'))
          ) {
            straddle = true;
          }
          return r;
        };
      }
      if (prop === 'get') {
        return async (key: string) => {
          if (straddle && key === `${prefix}meta`) {
            straddle = false;
            armed = false;
            await up.n1?.close(); // down through the loss: nobody writes "a" back
            await wipe();
            log.push('store lost its records between n2 reads');
          }
          return target.get(key);
        };
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  // "a" with two replicas while only n1 runs: placed on n1 alone (its first desired record).
  const n1 = await start('n1', store);
  up.n1 = n1;
  await n1.addGroup('a', { replicas: 2, machine: 'counter' });
  await eventually(async () => (await n1.command('a', { add: 5 }, { timeoutMs: 1000 })) === 5, {
    what: 'a on n1',
    timeoutMs: 20_000,
  });
  // n2 joins; the coordinator places a's second replica on it (a later desired record: n2 joins the group). The
  // round of n2 that reads it loses the records before it reads the meta record.
  armed = true;
  const n2 = await start('n2', n2Store);
  await eventually(() => log.includes('store lost its records between n2 reads'), {
    what: 'the loss between the reads of a round of n2',
    timeoutMs: 20_000,
  });
  // Someone adds "b": new records, without "a". n2 opens b, and never opened a replica of the lost "a".
  await n2.addGroup('b', { replicas: 1, machine: 'counter' });
  await eventually(async () => (await n2.command('b', { add: 1 }, { timeoutMs: 1000 })) === 1, {
    what: 'b on n2',
    timeoutMs: 20_000,
  });
  await new Promise((resolve) => setTimeout(resolve, 500)); // a few more rounds
  expect(log.filter((l) => l.startsWith('n2 group'))).toEqual(['n2 groupGained b bootstrap']);
  expect(n2.replicas().map((r) => [r.id, r.orphan])).toEqual([
    [expect.stringMatching(/^b:1\.[A-Za-z0-9_-]{8}$/), false],
  ]);
}, 120_000);

it('F2: two losses and a name added again in between: both incarnations of a:1 are kept, neither taken for the other', async () => {
  const { store, log, start } = await fleetEnv('f2');
  // The store loses every control-plane record (meta, groups, desired, observed).
  const lose = async (keys: FleetNode['keys']): Promise<void> => {
    const doomed = [keys.meta];
    for (const prefix of [keys.groups, keys.desired, keys.observed]) {
      for (const kv of (await store.range(prefix)).kvs) doomed.push(kv.key);
    }
    await store.txn({ compare: [], then: doomed.map((key) => ({ op: 'delete' as const, key })) });
  };

  // Incarnation 1 of "a" (generation 1) on n1 alone; its state: 5.
  const n1 = await start('n1');
  await n1.addGroup('a', { replicas: 1, machine: 'counter' });
  await eventually(async () => (await n1.command('a', { add: 5 }, { timeoutMs: 1000 })) === 5, {
    what: 'a on n1',
    timeoutMs: 20_000,
  });
  const keys = n1.keys;
  const firstId = n1.replicas()[0]!.id;
  await n1.close();

  // Loss 1 (n1 down, so nobody writes a:1 back), and "a" added again: generation 1 again (the counter went with the
  // loss), another incarnation.
  await lose(keys);
  const second = await addGroup(store, keys, 'a', { replicas: 1, machine: 'counter' });
  expect(second.generation).toBe(1);
  // Another Raft group than the first "a:1" (the tag of its id): its replicas never exchange a message with the first's.
  const secondId = groupRaftId(second);
  expect(secondId).not.toBe(firstId);

  // Incarnation 2 of "a:1", on n2 (the only node up); its state: 100.
  const n2 = await start('n2');
  await eventually(async () => (await n2.command('a', { add: 100 }, { timeoutMs: 1000 })) === 100, {
    what: 'the new a on n2',
    timeoutMs: 20_000,
  });

  // Loss 2: n2 keeps its a:1 as an orphan and writes it back (it leads it alone), with its own incarnation.
  await lose(keys);
  await eventually(() => log.some((l) => l.startsWith('n2 fleet node: the control plane lost its records')), {
    what: 'n2 saw the loss',
    timeoutMs: 20_000,
  });
  await eventually(
    async () =>
      n2.orphans().length === 0 &&
      (await store.get(keys.group('a'))) !== undefined &&
      (await n2.query('a', 'total', { timeoutMs: 1000 })) === 100,
    { what: 'n2 wrote its a:1 back', timeoutMs: 20_000 },
  );
  const written = JSON.parse((await store.get(keys.group('a')))!.value) as { incarnation?: string };
  expect(written.incarnation).toBe(second.incarnation);

  // n1 comes back: its a:1 (incarnation 1) becomes an orphan and meets the record a:1 written back from incarnation
  // 2 — a generation these records did not hand out, but not its incarnation: it stays an orphan (kept, not served).
  const again = await start('n1');
  await eventually(
    () => log.some((l) => l.startsWith('n1 fleet node: writing an orphan group back') && l.includes('was added since')),
    { what: "n1 refuses to take the other incarnation's record", timeoutMs: 20_000 },
  );
  // A few more rounds of both nodes: nothing changes.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  expect(again.orphans()).toEqual([firstId]);
  // Beside its orphan, n1 may hold a replica of the group written back (another Raft group: the coordinator may
  // place it there); never the other way round.
  for (const r of again.replicas()) expect([r.id, r.orphan]).toEqual(r.orphan ? [firstId, true] : [secondId, false]);
  expect(n2.orphans()).toEqual([]);
  for (const r of n2.replicas()) expect([r.id, r.orphan]).toEqual([secondId, false]);
  // The group "a" is incarnation 2, with its acknowledged command; nothing was deleted anywhere.
  expect(await again.query('a', 'total')).toBe(100);
  expect(await n2.query('a', 'total')).toBe(100);
  expect(await n2.command('a', { add: 1 })).toBe(101);
  expect(log.filter((l) => l.includes('groupLost'))).toEqual([]);
}, 120_000);
