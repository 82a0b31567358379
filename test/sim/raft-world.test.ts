/**
 * The simulated world of the Raft simulation: connections in order with latency on virtual time, cuts, blocks,
 * dead and paused nodes; per-message faults; slow and hung disks; and the real transport and write-ahead log
 * running on them, deterministic per seed.
 */
import { describe, expect, it } from 'vitest';
import type { Message } from '../../src/raft/messages.js';
import { Transport, type Conn } from '../../src/raft/transport/index.js';
import { SimDisk, Wal } from '../../src/raft/wal/index.js';
import { NodeClock } from '../../src/sim/node-clock.js';
import { SlowDisk } from '../../src/sim/raft-disk.js';
import { MessageFaults } from '../../src/sim/raft-faults.js';
import { SimNetwork, virtualTimers, type NetEvent } from '../../src/sim/raft-world.js';
import { Random } from '../../src/sim/random.js';
import { SimWorld } from '../../src/sim/world.js';

const A = { host: 'a', port: 1 };
const B = { host: 'b', port: 2 };
const bytes = (n: number): Uint8Array => Uint8Array.of(n & 0xff, n >> 8);
const num = (b: Buffer): number => b[0]! | (b[1]! << 8);

/** Run the world for `ms` of virtual time (timers and the promise callbacks between them). */
async function run(world: SimWorld, ms: number): Promise<void> {
  await world.runUntil(world.now() + ms, () => true);
}

/** b listens, a dials; both ends once connected. */
async function pair(world: SimWorld, net: SimNetwork): Promise<{ a: Conn; b: Conn }> {
  let b: Conn | undefined;
  await net.node(B).listen(B, (c) => (b = c));
  const a = await world.drive(net.node(A).connect(B));
  await run(world, 1);
  if (b === undefined) throw new Error('not accepted');
  return { a, b };
}

function collect(conn: Conn, world: SimWorld): { got: { n: number; atMs: number }[]; closed: boolean } {
  const r = { got: [] as { n: number; atMs: number }[], closed: false };
  conn.on('data', (chunk) => {
    for (let i = 0; i < chunk.byteLength; i += 2) r.got.push({ n: num(chunk.subarray(i)), atMs: world.now() });
  });
  conn.on('close', () => (r.closed = true));
  return r;
}

describe('SimNetwork', () => {
  it('delivers each connection’s bytes in order, each after a latency in the configured range', async () => {
    const world = new SimWorld();
    const net = new SimNetwork({ clock: world.clock, random: new Random(7), latencyMs: { min: 2, max: 20 } });
    const { a, b } = await pair(world, net);
    const rx = collect(b, world);
    const sentAt: number[] = [];
    for (let i = 0; i < 200; i++) {
      sentAt.push(world.now());
      expect(a.write(bytes(i))).toBe(true);
      await run(world, 0.5);
    }
    await run(world, 100);
    expect(rx.got.map((g) => g.n)).toEqual(Array.from({ length: 200 }, (_, i) => i));
    const delays = rx.got.map((g, i) => g.atMs - sentAt[i]!);
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(2);
    // In order behind a slow one: a write may wait for the one before it, never more than the latency bound.
    expect(Math.max(...delays)).toBeLessThanOrEqual(20);
    // And the latencies vary (not one fixed delay).
    expect(new Set(delays.map((d) => Math.round(d))).size).toBeGreaterThan(5);
    // Writes between cork() and uncork() arrive together.
    a.cork();
    a.write(bytes(1000));
    a.write(bytes(1001));
    a.uncork();
    await run(world, 30);
    const last = rx.got.slice(-2);
    expect(last.map((g) => g.n)).toEqual([1000, 1001]);
    expect(last[0]!.atMs).toBe(last[1]!.atMs);
  });

  it('cut breaks a connection both ways, losing what was in flight; the nodes may dial again', async () => {
    const world = new SimWorld();
    const net = new SimNetwork({ clock: world.clock, random: new Random(1), latencyMs: { min: 5, max: 5 } });
    const { a, b } = await pair(world, net);
    const rxA = collect(a, world);
    const rxB = collect(b, world);
    a.write(bytes(1));
    expect(net.cut('a:1', B)).toBe(1);
    await run(world, 20);
    expect(rxB.got).toEqual([]);
    expect(rxA.closed && rxB.closed).toBe(true);
    expect(net.stats.lost).toBe(1);
    expect(a.write(bytes(2))).toBe(false);
    const again = await world.drive(net.node(A).connect(B));
    expect(again).toBeDefined();
    expect(net.stats.open).toBe(1);
  });

  it('block refuses connects one way and cuts the connections between the two; unblock lets them dial', async () => {
    const world = new SimWorld();
    const net = new SimNetwork({ clock: world.clock, random: new Random(2) });
    const { a, b } = await pair(world, net);
    const rxA = collect(a, world);
    collect(b, world);
    await net.node(A).listen(A, () => undefined);
    net.block(A, B);
    await run(world, 20);
    expect(rxA.closed).toBe(true);
    await expect(world.drive(net.node(A).connect(B))).rejects.toThrow(/refused/);
    // The other way still works (TCP cannot be one-way: MessageFaults models one-way loss).
    await expect(world.drive(net.node(B).connect(A))).resolves.toBeDefined();
    net.unblock(A, B);
    await expect(world.drive(net.node(A).connect(B))).resolves.toBeDefined();
    expect(net.stats.refused).toBe(1);
  });

  it('a node that is down refuses connects and its peers see the close; a paused node gets its data on resume', async () => {
    const world = new SimWorld();
    const net = new SimNetwork({ clock: world.clock, random: new Random(3) });
    const bClock = new NodeClock(world.clock);
    let b: Conn | undefined;
    await net.node(B, bClock).listen(B, (c) => (b = c));
    const a = await world.drive(net.node(A).connect(B));
    await run(world, 10);
    const rxB = collect(b!, world);
    bClock.pause();
    for (let i = 0; i < 5; i++) a.write(bytes(i));
    await run(world, 50);
    expect(rxB.got).toEqual([]);
    bClock.resume();
    await run(world, 1);
    expect(rxB.got.map((g) => g.n)).toEqual([0, 1, 2, 3, 4]);
    const rxA = collect(a, world);
    bClock.kill();
    net.down(B);
    await run(world, 10);
    expect(rxA.closed).toBe(true);
    await expect(world.drive(net.node(A).connect(B))).rejects.toThrow(/refused/);
  });

  it('write() returns false past bufferBytes in flight and drain follows once it has arrived', async () => {
    const world = new SimWorld();
    const net = new SimNetwork({ clock: world.clock, random: new Random(4), bufferBytes: 10 });
    const { a } = await pair(world, net);
    let drained = 0;
    a.on('drain', () => drained++);
    expect(a.write(new Uint8Array(8))).toBe(true);
    expect(a.write(new Uint8Array(8))).toBe(false);
    await run(world, 20);
    expect(drained).toBe(1);
  });
});

describe('MessageFaults', () => {
  const msg = (round: number): Message => ({
    type: 'heartbeat',
    from: 'a',
    to: 'b',
    term: 1,
    commit: 0,
    round,
    quiesce: false,
  });

  async function trace(seed: number): Promise<{ got: number[]; stats: MessageFaults['stats'] }> {
    const world = new SimWorld();
    const faults = new MessageFaults(new Random(seed), { loss: 0.2, duplicate: 0.1, delay: 0.3, maxDelayMs: 50 });
    const got: number[] = [];
    const send = faults.sender('a', (_p, _g, m) => got.push((m as { round: number }).round) > 0, world.clock);
    for (let i = 0; i < 500; i++) {
      send('b', 'g', msg(i));
      await run(world, 1);
    }
    await run(world, 100);
    return { got, stats: { ...faults.stats } };
  }

  it('loses, duplicates and delays (reorders) messages at the configured rates, the same way for one seed', async () => {
    const one = await trace(11);
    expect(one.stats.sent).toBe(500);
    expect(one.stats.lost).toBeGreaterThan(60);
    expect(one.stats.lost).toBeLessThan(140);
    expect(one.stats.duplicated).toBeGreaterThan(20);
    expect(one.stats.delayed).toBeGreaterThan(80);
    expect(one.got.length).toBe(500 - one.stats.lost + one.stats.duplicated);
    // Reordered: some message arrives after a later one.
    expect(one.got.some((r, i) => i > 0 && r < one.got[i - 1]!)).toBe(true);
    expect(await trace(11)).toEqual(one);
    expect((await trace(12)).got).not.toEqual(one.got);
  });

  it('a one-way partition drops a→b while b→a flows; heal() lifts partitions and rates', () => {
    const faults = new MessageFaults(new Random(1));
    const world = new SimWorld();
    const got: string[] = [];
    const transport = (from: string) => (to: string) => got.push(`${from}>${to}`) > 0;
    const fromA = faults.sender('a', transport('a'), world.clock);
    const fromB = faults.sender('b', transport('b'), world.clock);
    faults.partition('a', 'b');
    fromA('b', 'g', msg(1));
    fromB('a', 'g', msg(2));
    fromA('c', 'g', msg(3));
    expect(got).toEqual(['b>a', 'a>c']);
    expect(faults.stats.partitioned).toBe(1);
    faults.set({ loss: 1 });
    faults.heal();
    fromA('b', 'g', msg(4));
    expect(got).toEqual(['b>a', 'a>c', 'a>b']);
  });

  it('ioSend is the node runtime’s io.send: deliver() zero, one or two times, now or later, as sender() sends', async () => {
    const world = new SimWorld();
    const runs: number[][] = [];
    for (const shape of ['sender', 'io'] as const) {
      const faults = new MessageFaults(new Random(3), { loss: 0.3, duplicate: 0.3, delay: 0.3, maxDelayMs: 20 });
      const got: number[] = [];
      const sendA = faults.sender('a', (_p, _g, m) => got.push((m as { round: number }).round) > 0, world.clock);
      const ioA = faults.ioSend('a', world.clock);
      for (let i = 0; i < 100; i++) {
        if (shape === 'sender') sendA('b', 'g', msg(i));
        else ioA('b', 'g', msg(i), () => got.push(i));
        await run(world, 1);
      }
      await run(world, 50);
      runs.push(got);
    }
    expect(runs[1]).toEqual(runs[0]);
    expect(runs[0]!.length).not.toBe(100);
  });
});

describe('SlowDisk', () => {
  it('syncs take virtual time, one at a time in order; a stalled disk hangs them until unstall', async () => {
    const world = new SimWorld();
    const disk = new SlowDisk(new SimDisk(() => 0.5), {
      clock: world.clock,
      random: new Random(5),
      syncMs: { min: 5, max: 10 },
    });
    await disk.append('f', Uint8Array.of(1));
    const done: string[] = [];
    const t0 = world.now();
    void disk.sync('f').then(() => done.push(`1@${world.now() - t0}`));
    void disk.sync('f').then(() => done.push(`2@${world.now() - t0}`));
    await run(world, 30);
    expect(done.length).toBe(2);
    const [d1, d2] = done.map((d) => Number(d.split('@')[1]));
    expect(d1).toBeGreaterThanOrEqual(5);
    expect(d2! - d1!).toBeGreaterThanOrEqual(5);
    expect(done[0]!.startsWith('1@')).toBe(true);
    disk.stall();
    let synced = false;
    void disk.sync('f').then(() => (synced = true));
    await run(world, 1000);
    expect(synced).toBe(false);
    expect(disk.waiting).toBe(1);
    disk.unstall();
    await run(world, 1);
    expect(synced).toBe(true);
    expect(disk.stats.maxSyncMs).toBeGreaterThanOrEqual(1000);
  });

  it('under the write-ahead log: a persist resolves only after the slow sync; a crash meanwhile loses it', async () => {
    const world = new SimWorld();
    const sim = new SimDisk(() => 0);
    const clock = new NodeClock(world.clock);
    const disk = new SlowDisk(sim.view(), { clock, random: new Random(6), syncMs: { min: 50, max: 50 } });
    const wal = await world.drive(Wal.open(disk));
    const g = wal.group('g', { voters: ['a'], learners: [] });
    let durable = false;
    const entry = { term: 1, index: 1, type: 'normal' as const, data: Uint8Array.of(9) };
    void g.persist({ entries: [entry], hardState: { term: 1, vote: 'a', commit: 0 } }).then(() => (durable = true));
    await run(world, 20);
    expect(durable).toBe(false);
    clock.kill();
    sim.crash(); // the random source keeps no unsynced write
    const again = await world.drive(Wal.open(sim.view()));
    expect(again.group('g', { voters: ['a'], learners: [] }).lastIndex()).toBe(0);
  });
});

describe('the real transport on the simulated network', () => {
  async function exchange(seed: number): Promise<{ events: string[]; got: number[] }> {
    const world = new SimWorld();
    const rng = new Random(seed);
    const events: string[] = [];
    const net = new SimNetwork({
      clock: world.clock,
      random: rng.fork(),
      trace: (e: NetEvent) => events.push(`${e.atMs.toFixed(3)} ${e.kind} ${e.from}>${e.to} ${e.bytes ?? ''}`),
    });
    const got: number[] = [];
    const start = (
      id: string,
      me: { host: string; port: number },
      peer: string,
      at: { host: string; port: number },
    ) => {
      const clock = new NodeClock(world.clock);
      const r = rng.fork();
      return Transport.start({
        id,
        clusterId: 'c',
        secret: 'a shared secret of enough bytes',
        listen: me,
        peers: { [peer]: at },
        network: net.node(me, clock),
        timers: virtualTimers(clock),
        random: () => r.next(),
        onMessage: (_f, _g, m) => got.push((m as { round: number }).round),
      });
    };
    const ta = await start('a', A, 'b', B);
    const tb = await start('b', B, 'a', A);
    await run(world, 50);
    for (let i = 0; i < 20; i++) {
      ta.send('b', 'g', { type: 'heartbeat', from: 'a', to: 'b', term: 1, commit: 0, round: i, quiesce: false });
      await run(world, 1);
    }
    await run(world, 50);
    // A cut: the dialer (a, the lower id) redials after its backoff, on virtual time.
    net.cut(A, B);
    await run(world, 500);
    ta.send('b', 'g', { type: 'heartbeat', from: 'a', to: 'b', term: 1, commit: 0, round: 99, quiesce: false });
    await run(world, 50);
    expect(ta.stats('b').connections).toBe(2);
    await ta.close();
    await tb.close();
    return { events, got };
  }

  it('connects, authenticates and delivers in order on virtual time, redials after a cut; one seed, one trace', async () => {
    const one = await exchange(21);
    expect(one.got).toEqual([...Array.from({ length: 20 }, (_, i) => i), 99]);
    expect(one.events.filter((e) => e.includes(' connect '))).toHaveLength(2);
    expect(await exchange(21)).toEqual(one);
    expect((await exchange(22)).events).not.toEqual(one.events);
  });
});
