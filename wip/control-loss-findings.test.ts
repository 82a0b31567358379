/**
 * Reproductions of findings F1 and F2 of spec/fleet/controlLoss.qnt (docs/protocol/specs.md, "Fleet: the control
 * store loses its data") with real fleet nodes in this process. Not part of the suite: copy to test/fleet/ and run
 * `npx vitest run test/fleet/control-loss-findings.test.ts`; both pass while the bugs exist (each asserts the bug).
 *
 * F1: a round whose reads straddle a loss of the control store's records (the group and desired records read before
 * it, the meta record after) opens a replica of a lost group as an ordinary one, with no control id; the next round,
 * on records without it, deletes it.
 * F2: after two losses, two incarnations of one Raft group id ("a:1") are both orphans; one is written back and the
 * other's holder takes the record for its own replica; the first one's replica is then deleted (moved-away): an
 * acknowledged command is lost.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { createSqliteStore } from '../../src/backends/sqlite/index.js';
import { encodeRecord } from '../../src/protocol/fleet/keys.js';
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

it('F1: a loss between the group reads and the meta read of a round: a replica opened, then deleted', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'fleet-f1-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const store: Store = await createSqliteStore({ path: join(dir, 'control.db'), namespace: 'f1' });
  cleanups.push(() => store.close());
  const ports = await allocatePorts(2);
  cleanups.push(async () => ports.forEach((p) => releasePort(p)));
  const log: string[] = [];
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
  const start = async (id: string, s: Store): Promise<FleetNode> => {
    const i = Number(id.slice(1)) - 1;
    const node = await joinFleet({
      store: s,
      fleet: 'f',
      node: { id, zone: `z${i + 1}`, address: `127.0.0.1:${ports[i]}` },
      dataDir: join(dir, id),
      secret: 'a fleet test secret of enough bytes',
      machines: { counter },
      sessionTtlMs: 2000,
      gracePeriodMs: 1000,
      tickMs: 50,
    });
    node.on('error', ({ context, error }) => log.push(`${id} ${context}: ${String(error).slice(0, 140)}`));
    node.on('groupGained', ({ group, mode }) => log.push(`${id} groupGained ${group} ${mode}`));
    node.on('groupLost', ({ group, reason }) => log.push(`${id} groupLost ${group} ${reason}`));
    cleanups.push(() => node.close());
    return node;
  };

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
  await eventually(() => log.includes('n2 groupGained a join'), {
    what: 'n2 opened a from lost records',
    timeoutMs: 20_000,
  });
  expect(n2.orphans()).toEqual([]); // an ordinary replica, with no control id behind it
  // Someone adds "b": new records, without "a".
  await n2.addGroup('b', { replicas: 1, machine: 'counter' });
  await eventually(() => log.includes('n2 groupLost a group-removed'), {
    what: 'n2 deleted a',
    timeoutMs: 20_000,
  }).finally(() => console.log(log.join('\n'), JSON.stringify(n2.replicas().map((r) => [r.id, r.orphan]))));
}, 120_000);

it('F2: two losses and a name added again in between: one incarnation is taken for the other, the other deleted', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'fleet-f2-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const store: Store = await createSqliteStore({ path: join(dir, 'control.db'), namespace: 'f2' });
  cleanups.push(() => store.close());
  const ports = await allocatePorts(2);
  cleanups.push(async () => ports.forEach((p) => releasePort(p)));
  const log: string[] = [];
  const start = async (id: string, weight: number): Promise<FleetNode> => {
    const i = Number(id.slice(1)) - 1;
    const node = await joinFleet({
      store,
      fleet: 'f',
      node: { id, zone: `z${i + 1}`, weight, address: `127.0.0.1:${ports[i]}` },
      dataDir: join(dir, id),
      secret: 'a fleet test secret of enough bytes',
      machines: { counter },
      sessionTtlMs: 2000,
      gracePeriodMs: 1000,
      tickMs: 50,
    });
    node.on('error', ({ context, error }) => log.push(`${id} ${context}: ${String(error).slice(0, 160)}`));
    node.on('groupLost', ({ group, reason }) => log.push(`${id} groupLost ${group} ${reason}`));
    cleanups.push(() => node.close());
    return node;
  };
  const wipe = async (keys: FleetNode['keys'], extra: { key: string; value: string }[] = []): Promise<void> => {
    const doomed = [keys.meta];
    for (const prefix of [keys.groups, keys.desired, keys.observed]) {
      for (const kv of (await store.range(prefix)).kvs) doomed.push(kv.key);
    }
    await store.txn({
      compare: [],
      then: [
        ...doomed.filter((k) => !extra.some((e) => e.key === k)).map((key) => ({ op: 'delete' as const, key })),
        ...extra.map(({ key, value }) => ({ op: 'put' as const, key, value })),
      ],
    });
  };

  // Incarnation 1 of "a" (generation 1) on n1 alone; its state: 5.
  const n1 = await start('n1', 1);
  await n1.addGroup('a', { replicas: 1, machine: 'counter' });
  await eventually(async () => (await n1.command('a', { add: 5 }, { timeoutMs: 1000 })) === 5, {
    what: 'a on n1',
    timeoutMs: 20_000,
  });
  const keys = n1.keys;

  await n1.close();

  // Loss 1 (n1 down), and "a" added again: generation 1 again (the counter starts anew), issued by the new records.
  await wipe(keys, [
    {
      key: keys.meta,
      value: encodeRecord({ lastGeneration: 1, groups: 1, id: 'second-records', issued: [[1, 1]] }),
    },
    { key: keys.group('a'), value: encodeRecord({ name: 'a', replicas: 1, machine: 'counter', generation: 1 }) },
  ]);

  // Incarnation 2 of "a:1", on n2 (the only node up); its state: 100.
  const n2 = await start('n2', 1);
  await eventually(async () => (await n2.command('a', { add: 100 }, { timeoutMs: 1000 })) === 100, {
    what: 'the new a on n2',
    timeoutMs: 20_000,
  });

  // Loss 2; n2 keeps its a:1 as an orphan and writes it back (it leads it alone).
  await wipe(keys);
  await eventually(
    async () => n2.orphans().length === 0 && (await n2.query('a', 'total', { timeoutMs: 1000 })) === 100,
    {
      what: 'n2 wrote its a:1 back',
      timeoutMs: 20_000,
    },
  );

  // n1 comes back: its orphan a:1 (incarnation 1) meets the record a:1 written back from incarnation 2; generation 1
  // was not issued by these records, so n1 takes the record for its own replica.
  const again = await start('n1', 1);
  await eventually(() => again.orphans().length === 0 && again.replicas().some((r) => r.id === 'a:1'), {
    what: 'n1 took a:1 back',
    timeoutMs: 20_000,
  });
  // ...and the group it serves as "a" is incarnation 1 (state 5); n2's replica of incarnation 2 is no longer a
  // member of "that" group (n1's reports), so n2 deletes it: the acknowledged add of 100 is gone.
  await eventually(() => log.includes('n2 groupLost a moved-away'), { what: 'n2 dropped its a:1', timeoutMs: 20_000 });
  expect(await again.query('a', 'total')).toBe(5);
  expect(await n2.query('a', 'total')).toBe(5);
  expect(n2.replicas().map((r) => r.id)).toEqual([]);
  console.log(log.join('\n'));
}, 120_000);
