/**
 * What every backend shares from src/store: the one request deadline
 * (withTimeout), on virtual time, and the checking of options (every entry
 * point refuses an unknown or mistyped option by name before it connects).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createEtcdStore } from '../../src/backends/etcd/index.js';
import { createMemoryStore } from '../../src/backends/memory/index.js';
import { createPostgresStore } from '../../src/backends/postgres/index.js';
import { createRedisStore } from '../../src/backends/redis/index.js';
import { createSqliteStore } from '../../src/backends/sqlite/index.js';
import { createZookeeperStore } from '../../src/backends/zookeeper/index.js';
import { BrokerUnavailableError, InvalidArgumentError, StoreUnavailableError } from '../../src/errors.js';
import { withTimeout as brokerWithTimeout } from '../../src/integrations/rabbitmq/connection.js';
import { VirtualClock } from '../../src/store/clock.js';
import type { Clock, TimerHandle, TimerOptions } from '../../src/store/contract.js';
import { openStore } from '../../src/store/open.js';
import { withTimeout } from '../../src/store/timeout.js';

const settle = (p: Promise<unknown>): Promise<{ value?: unknown; error?: unknown }> =>
  p.then(
    (value) => ({ value }),
    (error: unknown) => ({ error }),
  );

/** A clock that records the options of every timer it is asked for. */
class RecordingClock implements Clock {
  readonly timers: { delayMs: number; background: boolean }[] = [];
  readonly #base = new VirtualClock();
  now(): number {
    return this.#base.now();
  }
  setTimeout(fn: () => void, delayMs: number, options?: TimerOptions): TimerHandle {
    this.timers.push({ delayMs, background: options?.background === true });
    return this.#base.setTimeout(fn, delayMs);
  }
  clearTimeout(handle: TimerHandle): void {
    this.#base.clearTimeout(handle);
  }
}

describe('withTimeout', () => {
  it('rejects when the injected clock reaches the deadline, not before', async () => {
    const clock = new VirtualClock();
    const pending = settle(withTimeout(new Promise<never>(() => undefined), 500, clock));
    await clock.runFor(499);
    let done = false;
    void pending.then(() => (done = true));
    await clock.runFor(0);
    expect(done).toBe(false);
    await clock.runFor(1);
    const { error } = await pending;
    expect(error).toBeInstanceOf(StoreUnavailableError);
    expect((error as StoreUnavailableError).outcome).toBe('unknown');
    expect((error as Error).message).toContain('500 ms');
  });

  it('settles like the request when it answers first, and leaves no timer behind', async () => {
    const clock = new VirtualClock();
    await expect(withTimeout(Promise.resolve(7), 500, clock)).resolves.toBe(7);
    await expect(withTimeout(Promise.reject(new Error('no')), 500, clock)).rejects.toThrow('no');
    // A rejection that is not an Error becomes one.
    const { error } = await settle(withTimeout(Promise.reject('text') as Promise<never>, 500, clock));
    expect(error).toBeInstanceOf(Error);
    expect(clock.pending).toBe(0);
  });

  it('asks onTimeout for the error only when the time is up, and ignores a late answer', async () => {
    const clock = new VirtualClock();
    let asked = 0;
    let answer!: (v: string) => void;
    const late = new Promise<string>((resolve) => (answer = resolve));
    const pending = settle(
      withTimeout(late, 100, clock, {
        onTimeout: () => {
          asked += 1;
          return new StoreUnavailableError('withdrawn before it was sent', { outcome: 'not-applied' });
        },
      }),
    );
    await clock.runFor(50);
    expect(asked).toBe(0);
    await clock.runFor(50);
    answer('too late');
    const { error, value } = await pending;
    expect(asked).toBe(1);
    expect(value).toBeUndefined();
    expect((error as StoreUnavailableError).outcome).toBe('not-applied');
  });

  it('keeps the process alive for a request deadline, not for a background one (Clock semantics)', async () => {
    const clock = new RecordingClock();
    await withTimeout(Promise.resolve(1), 100, clock);
    await withTimeout(Promise.resolve(1), 200, clock, { background: true });
    expect(clock.timers).toEqual([
      { delayMs: 100, background: false },
      { delayMs: 200, background: true },
    ]);
  });

  it('is the deadline of the RabbitMQ adapter too, with its own error and a background timer', async () => {
    const recording = new RecordingClock();
    void brokerWithTimeout(Promise.resolve(1), 300, recording, 'open channel');
    expect(recording.timers).toEqual([{ delayMs: 300, background: true }]);
    const clock = new VirtualClock();
    const pending = settle(brokerWithTimeout(new Promise<never>(() => undefined), 300, clock, 'open channel'));
    await clock.runFor(300);
    const { error } = await pending;
    expect(error).toBeInstanceOf(BrokerUnavailableError);
    expect((error as Error).message).toContain('open channel did not answer within 300 ms');
  });
});

describe('options of openStore and of every backend', () => {
  const dir = mkdtempSync(join(tmpdir(), 'rebalancer-options-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** Options are checked before anything connects: these addresses are never dialled. */
  const factories: [string, (extra: Record<string, unknown>) => Promise<unknown>][] = [
    ['openStore', (extra) => openStore('memory:', extra)],
    ['openStore', (extra) => openStore('redis://127.0.0.1:1', extra)],
    ['MemoryStore', async (extra) => createMemoryStore(extra)],
    ['createSqliteStore', (extra) => createSqliteStore({ path: join(dir, 'x.db'), ...extra })],
    ['createPostgresStore', (extra) => createPostgresStore({ connectionString: 'postgres://127.0.0.1:1/x', ...extra })],
    ['createRedisStore', (extra) => createRedisStore({ url: 'redis://127.0.0.1:1', ...extra })],
    ['createEtcdStore', (extra) => createEtcdStore({ url: 'etcd://127.0.0.1:1', ...extra })],
    ['createZookeeperStore', (extra) => createZookeeperStore({ connectString: '127.0.0.1:1', ...extra })],
  ];

  it.each(factories)('%s refuses a misspelt option by name, with the closest known one', async (where, create) => {
    const { error } = await settle(create({ namespac: 'orders' }));
    expect(error).toBeInstanceOf(InvalidArgumentError);
    const message = (error as Error).message;
    expect(message).toContain(`${where} options has an unknown option "namespac" (did you mean "namespace"?)`);
    expect(message).toContain('known options:');
  });

  it.each(factories)('%s refuses a value of the wrong type, naming the option', async (where, create) => {
    for (const [name, value] of [
      ['requestTimeoutMs', '500'],
      ['namespace', 7],
      ['maxClockDriftRate', 0.5],
      ['clock', { now: () => 0 }],
    ] as const) {
      const { error } = await settle(create({ [name]: value }));
      expect(error, name).toBeInstanceOf(InvalidArgumentError);
      expect((error as Error).message, name).toContain(name);
    }
    // "Not set" spelt out is fine.
    const { error } = await settle(create({ namespace: undefined, requestTimeoutMs: 'x' }));
    expect((error as Error).message).toContain(`${where} options.requestTimeoutMs must be a number`);
  });

  it('refuses the backends’ own misspelt or mistyped options', async () => {
    const cases: [Promise<unknown>, string][] = [
      [createRedisStore({ url: 'redis://127.0.0.1:1', maintenanceInterval: 100 } as never), '"maintenanceIntervalMs"'],
      [createSqliteStore({ path: join(dir, 'y.db'), pollInterval: 10 } as never), '"pollIntervalMs"'],
      [createSqliteStore({ path: join(dir, 'y.db'), driver: { verbos: true } } as never), '"verbose"'],
      [
        createPostgresStore({ connectionString: 'postgres://127.0.0.1:1/x', listen: 'no' } as never),
        'options.listen must be true or false',
      ],
      [createPostgresStore({ connectionString: 'postgres://127.0.0.1:1/x', shema: 'x' } as never), '"schema"'],
      [createEtcdStore({ url: 'etcd://127.0.0.1:1', etcd: { auht: {} } } as never), '"auth"'],
      [createEtcdStore({ hosts: 'http://a:1,http://b:1' }), 'http://host:port'],
      [createZookeeperStore({ connectString: '127.0.0.1:1', spinDelay: 5 } as never), '"spinDelayMs"'],
      [createZookeeperStore({ connectString: '127.0.0.1:1', revRolloverVersion: 1.5 }), 'revRolloverVersion'],
    ];
    for (const [p, expected] of cases) {
      const { error } = await settle(p);
      expect(error, expected).toBeInstanceOf(InvalidArgumentError);
      expect((error as Error).message).toContain(expected);
    }
  });
});
