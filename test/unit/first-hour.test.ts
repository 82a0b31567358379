/**
 * What a new user meets in the first hour, each found by trying the library as one would: misspelt and mistyped
 * options, a string where a list is expected, events emitted while joining, throwing listeners, routine outcomes
 * that must not be exceptions, a handler that returns when stillOwner() turns false, a graceful leave that must
 * not report fencing, and the error types' codes.
 */
import { spawn } from 'node:child_process';
import { describe, expect, it, vi } from 'vitest';
import { MemoryServer } from '../../src/backends/memory/server.js';
import { MemoryStore } from '../../src/backends/memory/store.js';
import {
  InvalidArgumentError,
  ListenerError,
  NodeIdInUseError,
  RebalancerError,
  RevokedError,
} from '../../src/errors.js';
import { GroupAdmin, joinGroup, type ResourceContext } from '../../src/groups/index.js';
import { joinSlots } from '../../src/slots/index.js';
import { VirtualClock } from '../../src/store/clock.js';
import { drive, until } from '../harness/virtual-time.js';

const waitForever = (c: ResourceContext): Promise<void> =>
  new Promise((resolve) => c.signal.addEventListener('abort', () => resolve()));

describe('options are checked by name, type and range', () => {
  const store = new MemoryStore();
  const group = { store, group: 'g', node: { id: 'n1' }, handler: waitForever };
  const slots = { store, cluster: 'c', node: { id: 'n1' } };

  it.each([
    [
      'a misspelt option',
      { ...group, sesionTtlMs: 3000 },
      /unknown option "sesionTtlMs" \(did you mean "sessionTtlMs"\?\)/,
    ],
    [
      'a misspelt node field',
      { ...group, node: { id: 'n1', zome: 'a' } },
      /options\.node has an unknown option "zome"/,
    ],
    ['a numeric zone', { ...group, node: { id: 'n1', zone: 3 } }, /node\.zone must be a string/],
    [
      'reconcileIntervalMs 0',
      { ...group, reconcileIntervalMs: 0 },
      /reconcileIntervalMs must be a number of milliseconds from 10/,
    ],
    ['a margin above TTL/2', { ...group, sessionTtlMs: 2000, selfFenceMarginMs: 1500 }, /at most half/],
    ['no handler', { ...group, handler: undefined }, /handler must be a function/],
  ])('joinGroup refuses %s', async (_what, options, message) => {
    await expect(joinGroup(options as never)).rejects.toThrow(message);
    await expect(joinGroup(options as never)).rejects.toBeInstanceOf(InvalidArgumentError);
  });

  it.each([
    ['a misspelt option', { ...slots, replicaz: 2 }, /unknown option "replicaz" \(did you mean "replicas"\?\)/],
    ['the former site option', { store, cluster: 'c', site: { id: 'n1' } }, /"site" is now called "node"/],
    ['reconcileIntervalMs -5', { ...slots, reconcileIntervalMs: -5 }, /reconcileIntervalMs/],
    ['leaveTimeoutMs NaN', { ...slots, leaveTimeoutMs: Number.NaN }, /leaveTimeoutMs must be a number/],
    ['a numeric zone', { ...slots, node: { id: 'n1', zone: 1 } }, /node\.zone must be a string/],
    ['a fractional slot count', { ...slots, slotCount: 10.5 }, /slotCount must be a whole number/],
  ])('joinSlots refuses %s', async (_what, options, message) => {
    await expect(joinSlots(options as never)).rejects.toThrow(message);
  });

  it('GroupAdmin.add refuses a single string (it would register its characters) and writes nothing', async () => {
    const admin = new GroupAdmin(store, 'strings');
    await expect(admin.add('queue-1' as never)).rejects.toThrow(/wrap it in an array: \["queue-1"\]/);
    expect(await admin.list()).toEqual([]);
    await admin.add(['queue-1']);
    expect(await admin.list()).toEqual(['queue-1']);
  });
});

describe('errors say whether retrying helps', () => {
  it('NodeIdInUseError is a CONFLICT, RevokedError a RebalancerError with code REVOKED', () => {
    const inUse = new NodeIdInUseError('n1', 'group g');
    expect(inUse).toBeInstanceOf(RebalancerError);
    expect(inUse.code).toBe('CONFLICT');
    expect(inUse.retryable).toBe(false);
    const revoked = new RevokedError('r', 'fenced');
    expect(revoked).toBeInstanceOf(RebalancerError);
    expect(revoked.code).toBe('REVOKED');
  });
});

describe('events', () => {
  it('what happens while joining reaches a caller who subscribes right after the await (real time)', async () => {
    const store = new MemoryStore();
    await new GroupAdmin(store, 'ev').add(['r1']);
    const member = await joinGroup({
      store,
      group: 'ev',
      node: { id: 'n1' },
      handler: waitForever,
      sessionTtlMs: 1000,
    });
    const seen: string[] = [];
    member.on('joined', () => seen.push('joined'));
    member.on('coordinatorElected', () => seen.push('coordinatorElected'));
    member.on('assigned', ({ resource }) => seen.push(`assigned ${resource}`));
    await vi.waitFor(() => expect(seen).toContain('assigned r1'), { timeout: 5000 });
    expect(seen[0]).toBe('joined');
    await member.leave();
    await store.close();
  });

  it('a throwing listener is reported as an error event (ListenerError) and the protocol goes on', async () => {
    const clock = new VirtualClock(1000);
    const store = new MemoryStore({ clock });
    await drive(clock, new GroupAdmin(store, 'ev').add(['r1', 'r2']));
    const errors: unknown[] = [];
    let running = 0;
    const member = await drive(
      clock,
      joinGroup({
        store,
        group: 'ev',
        node: { id: 'n1' },
        clock,
        sessionTtlMs: 2000,
        handler: (c) => {
          running++;
          return waitForever(c);
        },
      }).then((m) => {
        m.on('assigned', () => {
          throw new Error('listener bug');
        });
        m.on('error', ({ error }) => errors.push(error));
        return m;
      }),
    );
    await until(clock, () => running === 2, 'both resources run');
    expect(errors.length).toBeGreaterThanOrEqual(2);
    expect(errors[0]).toBeInstanceOf(ListenerError);
    expect((errors[0] as ListenerError).event).toBe('assigned');
    expect((errors[0] as ListenerError).cause).toEqual(new Error('listener bug'));
    await drive(clock, member.leave());
  });

  it('a throwing slots prepare listener reaches error; the other slots still get ready', async () => {
    const clock = new VirtualClock(1000);
    const store = new MemoryStore({ clock });
    const errors: unknown[] = [];
    const member = await drive(
      clock,
      joinSlots({ store, cluster: 'c', node: { id: 'n1' }, slotCount: 8, replicas: 1, clock }).then((m) => {
        m.on('prepare', ({ slots }) => {
          for (const s of slots) void m.markReady(s);
          throw new Error('listener bug after the work was started');
        });
        m.on('error', ({ error }) => errors.push(error));
        return m;
      }),
    );
    await until(clock, () => [...member.slots().values()].filter((x) => x === 'ready').length === 8, 'all ready');
    await until(clock, () => member.isPrimary(7), 'primary of slot 7');
    expect(errors.some((e) => e instanceof ListenerError && e.event === 'prepare')).toBe(true);
    await drive(clock, member.leave());
  });

  it('an error nobody listens for becomes a process warning (once per context), not silence', async () => {
    const warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    try {
      const clock = new VirtualClock(1000);
      const store = new MemoryStore({ clock });
      await drive(clock, new GroupAdmin(store, 'w').add(['r1']));
      const member = await drive(
        clock,
        joinGroup({ store, group: 'w', node: { id: 'n1' }, clock, handler: waitForever }).then((m) => {
          m.on('assigned', () => {
            throw new Error('listener bug');
          });
          return m;
        }),
      );
      await until(clock, () => warn.mock.calls.length > 0, 'a warning');
      expect(String(warn.mock.calls[0]![0])).toMatch(/listener of assigned: .*listener bug/);
      await drive(clock, member.leave());
    } finally {
      warn.mockRestore();
    }
  });
});

describe('routine outcomes are results, not exceptions', () => {
  it('markReady for a slot that is not being prepared resolves { ready: false }', async () => {
    const clock = new VirtualClock(1000);
    const store = new MemoryStore({ clock });
    const member = await drive(
      clock,
      joinSlots({ store, cluster: 'c', node: { id: 'n1' }, slotCount: 8, replicas: 1, clock }),
    );
    expect(
      await drive(
        clock,
        member.markReady(3).then((r) => r),
      ),
    ).toMatchObject({ ready: expect.any(Boolean) });
    // Slot 3 is marked ready now (it was being prepared); asking again is routine, not an error.
    await until(clock, () => member.slots().get(3) === 'ready', 'slot 3 ready');
    expect(await drive(clock, member.markReady(3))).toEqual({ ready: false, reason: 'not-preparing' });
    await expect(drive(clock, member.markReady(99))).rejects.toBeInstanceOf(InvalidArgumentError);
    await drive(clock, member.leave());
  });
});

describe('a handler that returns because stillOwner() turned false', () => {
  it('is started again as soon as the lease is trusted again: no backoff, no failure', async () => {
    const clock = new VirtualClock(1000);
    const server = new MemoryServer({ clock });
    const store = new MemoryStore({ server, clock, requestTimeoutMs: 500 });
    await drive(clock, new GroupAdmin(store, 'h').add(['r1']));
    const starts: number[] = [];
    const failures: unknown[] = [];
    const member = await drive(
      clock,
      joinGroup({
        store,
        group: 'h',
        node: { id: 'n1' },
        clock,
        sessionTtlMs: 3000,
        selfFenceMarginMs: 1500,
        restartBackoff: { initialMs: 5000, maxMs: 30_000 },
        // The README's loop: work while stillOwner(), return when it turns false.
        handler: async ({ stillOwner, signal }) => {
          starts.push(clock.now());
          while (stillOwner() && !signal.aborted) await new Promise<void>((r) => clock.setTimeout(r, 10));
        },
      }).then((m) => {
        m.on('handlerFailed', ({ error }) => failures.push(error));
        return m;
      }),
    );
    await until(clock, () => starts.length === 1, 'started');
    for (let round = 0; round < 3; round++) {
      // A slow store: keep-alives time out until the lease deadline passes (the session itself survives).
      store.faults = { request: () => ({ latencyMs: 800 }) };
      const fencedAt = clock.now();
      await until(clock, () => member.leaseDeadlineMs < clock.now(), 'lease deadline passed');
      store.faults = {};
      await until(clock, () => starts.length === round + 2, `restart ${round + 1}`);
      // Restarted once the lease is trusted again, well before even the first backoff step (5 s).
      expect(starts[round + 1]! - fencedAt).toBeLessThan(4000);
    }
    expect(failures).toEqual([]);
    await drive(clock, member.leave());
  });
});

describe('a graceful leave', () => {
  it('reports no fencing (groups and slots)', async () => {
    const clock = new VirtualClock(1000);
    const store = new MemoryStore({ clock });
    await drive(clock, new GroupAdmin(store, 'l').add(['r1', 'r2']));
    const seen: string[] = [];
    const group = await drive(
      clock,
      joinGroup({ store, group: 'l', node: { id: 'n1' }, clock, handler: waitForever }).then((m) => {
        m.on('fenced', () => seen.push('group fenced'));
        return m;
      }),
    );
    const slots = await drive(
      clock,
      joinSlots({ store, cluster: 'l', node: { id: 'n1' }, slotCount: 8, replicas: 1, clock }).then((m) => {
        m.on('fenced', () => seen.push('slots fenced'));
        m.on('prepare', ({ slots: ss }) => ss.forEach((s) => void m.markReady(s)));
        return m;
      }),
    );
    await until(clock, () => group.assignment().length === 2 && slots.isPrimary(0), 'running');
    await drive(clock, Promise.all([group.leave(), slots.leave()]));
    await clock.runFor(30_000);
    expect(seen).toEqual([]);
  });
});

describe('a member keeps its process alive until it leaves', () => {
  it('a slots member on the memory store does not let the process exit (it did: its timers were all background)', async () => {
    const script = `
      import { openStore } from './src/index.ts';
      import { joinSlots } from './src/slots/index.ts';
      const store = await openStore('memory:');
      const member = await joinSlots({ store, cluster: 'c', node: { id: 'n1' }, slotCount: 8, replicas: 1 });
      process.on('SIGTERM', async () => { await member.leave(); await store.close(); process.stdout.write('left\\n'); });
      process.stdout.write('joined\\n');`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await vi.waitFor(() => expect(out).toContain('joined'), { timeout: 15_000 });
    const early = await Promise.race([
      exited.then(() => 'exited'),
      new Promise<string>((r) => setTimeout(() => r('alive'), 1500)),
    ]);
    expect(early).toBe('alive');
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(out).toContain('left');
  }, 30_000);
});
