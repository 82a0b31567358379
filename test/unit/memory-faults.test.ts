/** The memory store's fault hooks, which the simulator relies on, do what they say. */
import { describe, expect, it } from 'vitest';
import { MemoryServer, MemoryStore } from '../../src/backends/memory/index.js';
import { VirtualClock } from '../../src/store/clock.js';
import type { WatchHint } from '../../src/store/contract.js';
import { StoreUnavailableError } from '../../src/errors.js';

async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}

function setup(): { clock: VirtualClock; server: MemoryServer; a: MemoryStore; b: MemoryStore } {
  const clock = new VirtualClock();
  const server = new MemoryServer({ clock });
  return {
    clock,
    server,
    a: new MemoryStore({ server, namespace: 'n' }),
    b: new MemoryStore({ server, namespace: 'n' }),
  };
}

const put = (s: MemoryStore, key: string, value: string) => s.txn({ compare: [], then: [{ op: 'put', key, value }] });

describe('memory store faults', () => {
  it('fails a request before it applies, or applies it and loses the response', async () => {
    const { a, b } = setup();
    a.faults = { request: () => ({ fail: 'before' }) };
    const e1 = await put(a, 'k', '1').catch((e: unknown) => e);
    expect(e1).toBeInstanceOf(StoreUnavailableError);
    expect((e1 as StoreUnavailableError).outcome).toBe('not-applied');
    expect(await b.get('k')).toBeUndefined();
    a.faults = { request: () => ({ fail: 'after' }) };
    const e2 = await put(a, 'k', '2').catch((e: unknown) => e);
    expect((e2 as StoreUnavailableError).outcome).toBe('unknown');
    expect((await b.get('k'))?.value).toBe('2');
  });

  it('delays requests by half the latency each way', async () => {
    const { clock, a, b } = setup();
    a.faults = { request: () => ({ latencyMs: 100 }) };
    let done = false;
    void put(a, 'k', '1').then(() => (done = true));
    await settle();
    expect(await b.get('k')).toBeUndefined();
    clock.advance(50);
    await settle();
    expect((await b.get('k'))?.value).toBe('1');
    expect(done).toBe(false);
    clock.advance(50);
    await settle();
    expect(done).toBe(true);
  });

  it('drops, delays and coalesces watch notifications', async () => {
    const { clock, a, b } = setup();
    const hints: WatchHint[] = [];
    await b.watch('', (h) => hints.push(h));
    b.faults = { notification: () => ({ drop: true }) };
    await put(a, 'x', '1');
    await settle();
    expect(hints).toEqual([]);
    b.faults = { notification: () => ({ delayMs: 100 }) };
    const r2 = await put(a, 'x', '2');
    const r3 = await put(a, 'x', '3');
    await settle();
    expect(hints).toEqual([]);
    clock.advance(100);
    await settle();
    // Two changes, one coalesced hint carrying the newer revision.
    expect(hints).toEqual([{ revision: r3.revision, reason: 'change' }]);
    expect(r3.revision).toBeGreaterThan(r2.revision);
  });

  it('assembles non-snapshot prefix reads that can mix states', async () => {
    const { clock, a, b } = setup();
    await put(a, 'p/1', 'old');
    await put(a, 'p/2', 'old');
    b.faults = { nonSnapshotRangeDelayMs: 10 };
    const reading = b.range('p/');
    await settle();
    await a.txn({
      compare: [],
      then: [
        { op: 'delete', key: 'p/1' },
        { op: 'put', key: 'p/2', value: 'new' },
      ],
    });
    clock.advance(10);
    await settle();
    const r = await reading;
    expect(r.snapshot).toBe(false);
    expect(r.kvs.map((kv) => [kv.key, kv.value])).toEqual([['p/2', 'new']]);
  });

  it('expires a crashed client by TTL on the server clock, and watchers hear', async () => {
    const { clock, server, a, b } = setup();
    const opening = a.openSession({ ttlMs: 1000 });
    await settle();
    const session = await opening;
    await a.txn({ compare: [], then: [{ op: 'put', key: 'held', value: '1', session }] });
    const hints: WatchHint[] = [];
    await b.watch('held', (h) => hints.push(h));
    await clock.runFor(5000); // keep-alives keep it
    expect(server.liveSessionIds()).toContain(session.id);
    a.crash();
    expect(await b.get('held')).toBeDefined();
    await clock.runFor(1000); // at most one TTL after the last keep-alive
    expect(await b.get('held')).toBeUndefined();
    expect(hints.length).toBe(1);
  });
});
