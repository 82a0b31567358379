/**
 * The linearizability checker on a real history: clients of the memory store (the simulator's store) on virtual
 * time, with random latency and requests that fail before or after they apply (outcome not-applied or unknown),
 * doing get / put / cas / delete on a few keys through the store contract. The store must come out linearizable;
 * a client that serves reads from a local cache (a deliberate bug) must be caught.
 */
import { describe, expect, it } from 'vitest';
import { MemoryServer, MemoryStore } from '../../src/backends/memory/index.js';
import { StoreUnavailableError } from '../../src/errors.js';
import { checkOperations, HistoryRecorder } from '../../src/sim/linearizability.js';
import { kvModel, type KvInput, type KvOperation, type KvOutput } from '../../src/sim/linearizability-models.js';
import { Random } from '../../src/sim/random.js';
import { SimWorld, newFaultyNode, nodeFaults } from '../../src/sim/world.js';
import type { Store } from '../../src/store/contract.js';

const CLIENTS = 4;
const KEYS = 3;
const OPS_PER_CLIENT = 60;

async function perform(store: Store, input: KvInput): Promise<KvOutput> {
  switch (input.op) {
    case 'get':
      return (await store.get(input.key))?.value ?? null;
    case 'put':
      await store.txn({ compare: [], then: [{ op: 'put', key: input.key, value: input.value }] });
      return null;
    case 'delete':
      await store.txn({ compare: [], then: [{ op: 'delete', key: input.key }] });
      return null;
    case 'cas': {
      const compare =
        input.expected === null
          ? [{ key: input.key, target: 'exists' as const, exists: false }]
          : [{ key: input.key, target: 'value' as const, op: '=' as const, value: input.expected }];
      const r = await store.txn({ compare, then: [{ op: 'put', key: input.key, value: input.value }] });
      return r.succeeded;
    }
    case 'append':
      throw new Error('append is not a store operation');
  }
}

/** Run the clients to completion in virtual time; `staleCache`: each client answers half its reads from memory. */
async function storeHistory(seed: number, staleCache: boolean): Promise<KvOperation[]> {
  const world = new SimWorld();
  const rng = new Random(seed);
  const server = new MemoryServer({ clock: world.clock });
  const history = new HistoryRecorder<KvInput, KvOutput>(() => world.now());
  const clients = Array.from({ length: CLIENTS }, async (_, c) => {
    const node = newFaultyNode(world, 1);
    node.up = true;
    node.latencyMs = rng.range(1, 40);
    node.errorRate = rng.pick([0, 0.1, 0.3]);
    const store = new MemoryStore({
      server,
      namespace: 'lin',
      clock: world.clock,
      requestTimeoutMs: 5000,
      faults: nodeFaults(node, rng.fork()),
    });
    const mine = rng.fork();
    const cache = new Map<string, string | null>();
    for (let i = 0; i < OPS_PER_CLIENT; i++) {
      await new Promise<void>((resolve) => world.clock.setTimeout(resolve, mine.range(0, 20)));
      const key = `k${mine.int(0, KEYS - 1)}`;
      const value = `c${c}-${i}`;
      const kind = mine.next();
      const input: KvInput =
        kind < 0.45
          ? { op: 'get', key }
          : kind < 0.75
            ? { op: 'put', key, value }
            : kind < 0.95
              ? {
                  op: 'cas',
                  key,
                  expected: mine.chance(0.5) ? null : `c${mine.int(0, CLIENTS - 1)}-${mine.int(0, i)}`,
                  value,
                }
              : { op: 'delete', key };
      const op = history.call(c, input);
      if (staleCache && input.op === 'get' && cache.has(key) && mine.chance(0.5)) {
        op.ok(cache.get(key)!);
        continue;
      }
      try {
        const out = await perform(store, input);
        op.ok(out);
        if (input.op === 'get') cache.set(key, out as string | null);
        if (input.op === 'put') cache.set(key, input.value);
      } catch (e) {
        if (e instanceof StoreUnavailableError && e.outcome === 'not-applied') op.failed();
        else op.unknown();
      }
    }
    await store.close();
  });
  await world.drive(Promise.all(clients), 600_000);
  return history.operations();
}

describe('linearizability of the memory store under simulated faults', () => {
  it('is linearizable across seeds, with lost answers as unknown outcomes', async () => {
    let unknown = 0;
    for (let seed = 1; seed <= 8; seed++) {
      const h = await storeHistory(seed, false);
      unknown += h.filter((o) => o.returnTime === undefined).length;
      const r = checkOperations(kvModel(), h, { maxStepsPerPartition: 500_000 });
      if (r.result !== 'ok') throw new Error(`seed ${seed}: ${r.message}`);
    }
    expect(unknown).toBeGreaterThan(0);
  });

  it('catches a client that answers reads from a stale local cache', async () => {
    for (let seed = 1; seed <= 8; seed++) {
      const r = checkOperations(kvModel(), await storeHistory(seed, true), { maxStepsPerPartition: 500_000 });
      expect(r.result, `seed ${seed}`).toBe('illegal');
    }
  });
});
