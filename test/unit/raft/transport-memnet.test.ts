/**
 * The transport on an in-memory Network (no sockets): the seam the simulation will use. Here it makes the socket's
 * backpressure controllable: after write() returns false, nothing more is written until 'drain'.
 */
import { EventEmitter } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import type { Message } from '../../../src/raft/messages.js';
import {
  Transport,
  reconnectDelayMs,
  type Conn,
  type Network,
  type PeerAddress,
  type Timers,
} from '../../../src/raft/transport/index.js';
import { SECRET, heartbeat, waitFor } from './transport-helpers.js';

class MemConn extends EventEmitter implements Conn {
  other: MemConn | undefined;
  /** While true, write() accepts the bytes but returns false (a full socket buffer). */
  full = false;
  writes = 0;
  destroyed = false;

  write(chunk: Uint8Array): boolean {
    if (this.destroyed) return false;
    this.writes++;
    const copy = Buffer.from(chunk);
    setImmediate(() => this.other?.emit('data', copy));
    return !this.full;
  }

  cork(): void {}
  uncork(): void {}

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    setImmediate(() => this.emit('close'));
    this.other?.destroy();
  }
}

class MemNetwork implements Network {
  readonly #listeners = new Map<number, (conn: Conn, remote: string) => void>();
  readonly dialed: MemConn[] = [];
  #nextPort = 1000;

  async listen(address: PeerAddress, onConn: (conn: Conn, remote: string) => void) {
    const port = address.port || this.#nextPort++;
    this.#listeners.set(port, onConn);
    return { port, close: () => this.#listeners.delete(port) };
  }

  async connect(address: PeerAddress): Promise<Conn> {
    const onConn = this.#listeners.get(address.port);
    if (!onConn) throw new Error('connection refused');
    const a = new MemConn();
    const b = new MemConn();
    a.other = b;
    b.other = a;
    this.dialed.push(a);
    onConn(b, 'mem');
    return a;
  }
}

let ts: Transport[] = [];
afterEach(async () => {
  for (const t of ts) await t.close();
  ts = [];
});

describe('raft transport on an in-memory network', () => {
  it('stops writing when the connection is full and resumes on drain', async () => {
    const network = new MemNetwork();
    const got: Message[] = [];
    const b = await Transport.start({
      id: 'b',
      clusterId: 'c',
      secret: SECRET,
      listen: { host: 'mem', port: 2 },
      peers: { a: { host: 'mem', port: 1 } },
      network,
      onMessage: (_f, _g, m) => got.push(m),
    });
    const a = await Transport.start({
      id: 'a',
      clusterId: 'c',
      secret: SECRET,
      listen: { host: 'mem', port: 1 },
      peers: { b: { host: 'mem', port: 2 } },
      network,
      onMessage: () => undefined,
    });
    ts = [a, b];
    await waitFor(() => a.stats('b').connected && b.stats('a').connected, 'the handshake');
    const conn = network.dialed[0]!;
    conn.full = true;
    a.send('b', 'g', heartbeat('a', 'b', 1));
    await waitFor(() => got.length === 1, 'the first message');
    const writesWhenFull = conn.writes;
    for (let i = 2; i <= 10; i++) {
      a.send('b', 'g', heartbeat('a', 'b', i));
      await new Promise((r) => setImmediate(r));
    }
    // Nothing written while the connection is full; the messages wait in the (bounded) queue.
    expect(conn.writes).toBe(writesWhenFull);
    expect(a.stats('b').queuedMessages).toBe(9);
    conn.full = false;
    conn.emit('drain');
    await waitFor(() => got.length === 10, 'the rest after drain');
    expect(got.map((m) => (m as { round: number }).round)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    // All nine left in one batch once drained.
    expect(a.stats('b').sentFrames).toBe(2);
  });

  it('schedules its handshake timeout and its redials on the injected timers only (a simulator drives them)', async () => {
    const network = new MemNetwork();
    const scheduled: number[] = [];
    const pending = new Map<number, () => void>();
    let next = 0;
    const timers: Timers = {
      setTimeout: (fn, ms) => {
        scheduled.push(ms);
        pending.set(++next, fn);
        return next;
      },
      clearTimeout: (h) => void pending.delete(h as number),
    };
    // Nobody listens on port 9: the dial fails and a redial is scheduled, on the injected timers.
    const a = await Transport.start({
      id: 'a',
      clusterId: 'c',
      secret: SECRET,
      listen: { host: 'mem', port: 1 },
      peers: { b: { host: 'mem', port: 9 } },
      network,
      timers,
      random: () => 0,
      reconnectBaseMs: 40,
      onMessage: () => undefined,
    });
    ts = [a];
    await waitFor(() => scheduled.length >= 1, 'a redial scheduled');
    expect(scheduled[0]).toBe(20);
    // A stranger that connects and says nothing: the handshake timeout is scheduled on the same timers and, fired
    // by hand, closes the connection.
    const stranger = await network.connect({ host: 'mem', port: 1 });
    await waitFor(() => scheduled.length >= 2, 'a handshake timeout scheduled');
    let closed = false;
    (stranger as MemConn).other!.on('close', () => (closed = true));
    for (const [h, fn] of [...pending]) if (h === next) fn();
    await waitFor(() => closed, 'the silent connection closed');
  });

  it('redials with exponential backoff, jittered from the injected source, bounded by reconnectMaxMs', () => {
    const at = (r: number) => Array.from({ length: 12 }, (_, f) => reconnectDelayMs(f, 50, 5000, () => r));
    expect(at(0)).toEqual([25, 50, 100, 200, 400, 800, 1600, 2500, 2500, 2500, 2500, 2500]);
    expect(at(0.999999).map(Math.round)).toEqual([50, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000, 5000]);
    expect(reconnectDelayMs(1e9, 50, 5000, () => 0.5)).toBe(3750);
  });
});
