/**
 * The network the Raft simulation runs on (issue 13, item 5): the real transport's `Network` and `Timers` on
 * virtual time, with no sockets.
 *
 * A node is named by its listen address (`host:port`); `node(address, clock)` is that node's view of the network,
 * which the node's `Transport` gets as its `network`. Every event a node sees (an accepted connection, data, a
 * close, a connect settling) runs on the node's own clock, so that a paused node (NodeClock.pause) sees nothing
 * until it resumes and a killed one never again — as with a real process under SIGSTOP or kill -9.
 *
 * Message faults (MessageFaults) are in raft-faults.ts and slow or hung disks (SlowDisk) in raft-disk.ts; both are
 * re-exported here.
 *
 * Like TCP, bytes on one connection arrive in order (each write after a latency drawn from the seeded random, never
 * before an earlier write); connections are independent of each other.
 */
import type { Message } from '../raft/messages.js';
import type { Conn, Network, PeerAddress, Timers } from '../raft/transport/transport.js';
import type { Disk } from '../raft/wal/disk.js';
import type { Clock, TimerHandle } from '../store/contract.js';
import { NodeClock } from './node-clock.js';
import { SimConn, type NetEvent, type Pipe, type Wire } from './raft-conn.js';
import { SlowDisk } from './raft-disk.js';
import type { MessageFaults } from './raft-faults.js';
import type { Random } from './random.js';

export {
  MessageFaults,
  NO_FAULTS,
  type MessageFaultRates,
  type MessageFaultStats,
  type SendFn,
} from './raft-faults.js';
export type { NetEvent } from './raft-conn.js';
export { SlowDisk, type SlowDiskOptions, type SlowDiskStats } from './raft-disk.js';

/** The transport's `Timers` on a clock of the simulation (the world's VirtualClock or a node's NodeClock). */
export function virtualTimers(clock: Pick<Clock, 'setTimeout' | 'clearTimeout'>): Timers {
  return {
    setTimeout: (fn, ms) => clock.setTimeout(fn, ms),
    // The transport clears handles it may never have set (undefined): a no-op, as with Node's clearTimeout.
    clearTimeout: (handle) => {
      if (handle !== undefined) clock.clearTimeout(handle as TimerHandle);
    },
  };
}

/** `host:port`, the key a node is known by. */
export function addressKey(address: PeerAddress | string): string {
  return typeof address === 'string' ? address : `${address.host}:${address.port}`;
}

export interface SimNetworkOptions {
  /** The world's clock: packets travel on it (a node's pause does not stop the wire). */
  readonly clock: Clock;
  /** The network's own generator (fork one: its draws then do not shift anyone else's). */
  readonly random: Random;
  /** One-way latency of each write and of each connect step, drawn uniformly (default 0.5–5 ms). */
  readonly latencyMs?: { readonly min: number; readonly max: number };
  /** Bytes in flight on one direction of a connection before write() returns false (default 4 MiB). */
  readonly bufferBytes?: number;
  /** Every connect, refusal, delivery and close, for traces (a test compares two runs of one seed). */
  readonly trace?: (event: NetEvent) => void;
}

export interface SimNetworkStats {
  /** Connections established, refused (nobody listening, or blocked), and currently open. */
  connects: number;
  refused: number;
  open: number;
  /** Writes and bytes that arrived, and those lost with a connection that was cut. */
  deliveries: number;
  bytes: number;
  lost: number;
}

type Listener = (conn: Conn, remote: string) => void;

/**
 * An in-memory network on virtual time. It is itself a `Network` for an anonymous client (a stranger dialing a
 * node, named `stranger:N`); nodes use `node(address, clock)`.
 */
export class SimNetwork implements Network, Wire {
  readonly stats: SimNetworkStats = { connects: 0, refused: 0, open: 0, deliveries: 0, bytes: 0, lost: 0 };
  readonly clock: Clock;
  readonly #random: Random;
  readonly #latency: { readonly min: number; readonly max: number };
  readonly bufferBytes: number;
  readonly #trace: ((event: NetEvent) => void) | undefined;
  readonly #listeners = new Map<string, { onConn: Listener; clock: Clock }>();
  readonly #pipes = new Set<Pipe>();
  /** `from>to`: connects from `from` to `to` fail. */
  readonly #blocked = new Set<string>();
  /** Nodes whose process is dead (down() until they listen again): their connects in flight go nowhere. */
  readonly #down = new Set<string>();
  #nextPort = 20_000;
  #strangers = 0;

  constructor(o: SimNetworkOptions) {
    this.clock = o.clock;
    this.#random = o.random;
    this.#latency = o.latencyMs ?? { min: 0.5, max: 5 };
    if (!(this.#latency.min >= 0 && this.#latency.max >= this.#latency.min)) {
      throw new RangeError(`latencyMs must be 0 ≤ min ≤ max, got ${JSON.stringify(this.#latency)}`);
    }
    this.bufferBytes = o.bufferBytes ?? 4 * 1024 * 1024;
    this.#trace = o.trace;
  }

  /** A node's view: it listens and dials as `address`; its events run on `clock` (default the world's). */
  node(address: PeerAddress | string, clock: Clock = this.clock): Network {
    const self = addressKey(address);
    return {
      listen: (at, onConn) => this.#listen(at, onConn, clock),
      connect: (to) => this.#connect(self, to, clock),
    };
  }

  listen(address: PeerAddress, onConn: Listener): Promise<{ port: number; close(): void }> {
    return this.#listen(address, onConn, this.clock);
  }

  connect(address: PeerAddress): Promise<Conn> {
    return this.#connect(`stranger:${++this.#strangers}`, address, this.clock);
  }

  /** Break every connection between `a` and `b` (in-flight bytes are lost; both ends see 'close'). They may redial. */
  cut(a: PeerAddress | string, b: PeerAddress | string): number {
    const x = addressKey(a);
    const y = addressKey(b);
    return this.#sever(
      (p) => (p.dialer.local === x && p.dialer.remote === y) || (p.dialer.local === y && p.dialer.remote === x),
    );
  }

  /**
   * Connects from `from` to `to` fail from now on, and the connections between the two are cut. One way only:
   * `to` may still dial `from` (block both ways for a full partition; for one-way message loss over a live
   * connection, see MessageFaults).
   */
  block(from: PeerAddress | string, to: PeerAddress | string): void {
    this.#blocked.add(`${addressKey(from)}>${addressKey(to)}`);
    this.cut(from, to);
  }

  unblock(from: PeerAddress | string, to: PeerAddress | string): void {
    this.#blocked.delete(`${addressKey(from)}>${addressKey(to)}`);
  }

  /** Lift every block. */
  heal(): void {
    this.#blocked.clear();
  }

  isBlocked(from: PeerAddress | string, to: PeerAddress | string): boolean {
    return this.#blocked.has(`${addressKey(from)}>${addressKey(to)}`);
  }

  /**
   * A node's process died: it stops listening and its connections break (the peers see 'close', as the kernel
   * closes a dead process's sockets). Its own side sees nothing more (its clock is dead anyway).
   */
  down(address: PeerAddress | string): void {
    const x = addressKey(address);
    this.#listeners.delete(x);
    this.#down.add(x);
    this.#sever((p) => p.dialer.local === x || p.acceptor.local === x, x);
  }

  // ---- internals ----

  latency(): number {
    return this.#random.range(this.#latency.min, this.#latency.max);
  }

  event(kind: NetEvent['kind'], from: string, to: string, bytes?: number): void {
    this.#trace?.({ atMs: this.clock.now(), kind, from, to, ...(bytes === undefined ? {} : { bytes }) });
  }

  closed(pipe: Pipe): void {
    if (this.#pipes.delete(pipe)) this.stats.open--;
  }

  #listen(address: PeerAddress, onConn: Listener, clock: Clock): Promise<{ port: number; close(): void }> {
    const port = address.port === 0 ? this.#nextPort++ : address.port;
    const key = `${address.host}:${port}`;
    if (this.#listeners.has(key)) return Promise.reject(new Error(`simulated network: ${key} is already in use`));
    const entry = { onConn, clock };
    this.#listeners.set(key, entry);
    this.#down.delete(key);
    return Promise.resolve({
      port,
      close: () => {
        if (this.#listeners.get(key) === entry) this.#listeners.delete(key);
      },
    });
  }

  /**
   * SYN after one latency: refused (nobody listens, or blocked), or accepted there; the dialer learns either one
   * latency later (SYN-ACK or RST).
   */
  #connect(from: string, address: PeerAddress, clock: Clock): Promise<Conn> {
    const to = addressKey(address);
    return new Promise<Conn>((resolve, reject) => {
      this.clock.setTimeout(() => {
        if (this.#down.has(from)) return; // dialed by a process that died since: nobody answers it
        const listener = this.#listeners.get(to);
        const back = this.latency();
        if (listener === undefined || this.#blocked.has(`${from}>${to}`)) {
          this.stats.refused++;
          this.event('refused', from, to);
          this.clock.setTimeout(() => {
            clock.setTimeout(() => reject(new Error(`simulated network: connection to ${to} refused`)), 0);
          }, back);
          return;
        }
        const dialer = new SimConn(this, from, to, clock);
        const acceptor = new SimConn(this, to, from, listener.clock);
        const pipe: Pipe = { dialer, acceptor, severed: false };
        dialer.attach(acceptor, pipe);
        acceptor.attach(dialer, pipe);
        this.#pipes.add(pipe);
        this.stats.connects++;
        this.stats.open++;
        this.event('connect', from, to);
        listener.clock.setTimeout(() => listener.onConn(acceptor, from), 0);
        this.clock.setTimeout(() => clock.setTimeout(() => resolve(dialer), 0), back);
      }, this.latency());
    });
  }

  /** Break the matching connections; `dead` names an endpoint that must see nothing (a killed process). */
  #sever(match: (p: Pipe) => boolean, dead?: string): number {
    let n = 0;
    for (const p of [...this.#pipes]) {
      if (!match(p)) continue;
      n++;
      p.severed = true;
      this.event('cut', p.dialer.local, p.acceptor.local);
      for (const end of [p.dialer, p.acceptor]) end.broken(end.local === dead);
      this.closed(p);
    }
    return n;
  }
}

/** What a simulated node process runs on: its clock and the pieces of the node runtime's `io` (RaftNodeIo). */
export interface SimNodeProcess {
  /** The process's clock (pause() for SIGSTOP); its events and timers run on it. */
  readonly clock: NodeClock;
  readonly disk: SlowDisk;
  readonly io: {
    readonly disk: SlowDisk;
    readonly network: Network;
    readonly timers: Timers;
    readonly clock: () => number;
    readonly random: () => number;
    readonly send: (to: string, groupId: string, message: Message, deliver: () => void) => void;
  };
  /** kill -9: its timers never fire again, its address stops listening, its connections break. */
  kill(): void;
}

/**
 * One incarnation of a node process at `address` in the world: a fresh NodeClock, a SlowDisk over `disk` (a
 * `SimDisk.view()`, so that the process's writes fail once the disk crashed), its view of the network, its timers,
 * a generator forked from `random`, and its send path through `faults`. A power loss is `kill()` then
 * `simDisk.crash()`; a restart is another `simNodeProcess` over the same SimDisk.
 */
export function simNodeProcess(o: {
  readonly world: Clock;
  readonly net: SimNetwork;
  readonly faults: MessageFaults;
  /** The node's id (MessageFaults' partitions name ids) and its listen address (the network's name for it). */
  readonly id: string;
  readonly address: string;
  readonly disk: Disk;
  readonly random: Random;
  readonly syncMs?: { readonly min: number; readonly max: number };
}): SimNodeProcess {
  const clock = new NodeClock(o.world);
  const r = o.random.fork();
  const disk = new SlowDisk(o.disk, {
    clock,
    random: r.fork(),
    ...(o.syncMs === undefined ? {} : { syncMs: o.syncMs }),
  });
  return {
    clock,
    disk,
    io: {
      disk,
      network: o.net.node(o.address, clock),
      timers: virtualTimers(clock),
      clock: () => clock.now(),
      random: () => r.next(),
      send: o.faults.ioSend(o.id, clock),
    },
    kill: () => {
      clock.kill();
      o.net.down(o.address);
    },
  };
}
