/**
 * The network the Raft simulation runs on (issue 13, item 5): the real transport's `Network` and `Timers` on
 * virtual time, with no sockets. Message-level faults are in raft-faults.ts, slow and hung disks in raft-disk.ts.
 *
 * A node is named by its listen address (`host:port`); `node(address, clock)` is that node's view of the network,
 * which the node's `Transport` gets as its `network`. Every event a node sees (an accepted connection, data, a
 * close, a connect settling) runs on the node's own clock, so that a paused node (NodeClock.pause) sees nothing
 * until it resumes and a killed one never again — as with a real process under SIGSTOP or kill -9.
 *
 * Like TCP, bytes on one connection arrive in order (each write after a latency drawn from the seeded random, never
 * before an earlier write); connections are independent of each other.
 */
import type { Conn, Network, PeerAddress, Timers } from '../raft/transport/transport.js';
import type { Clock, TimerHandle } from '../store/contract.js';
import type { Random } from './random.js';

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

export interface NetEvent {
  readonly atMs: number;
  readonly kind: 'connect' | 'refused' | 'data' | 'close' | 'cut';
  /** The dialing node's address (the writer's, for data). */
  readonly from: string;
  readonly to: string;
  readonly bytes?: number;
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

/** A connection between two endpoints: both ends, and whether the network broke it (in-flight bytes are lost). */
interface Pipe {
  readonly dialer: SimConn;
  readonly acceptor: SimConn;
  severed: boolean;
}

/**
 * An in-memory network on virtual time. It is itself a `Network` for an anonymous client (a stranger dialing a
 * node, named `stranger:N`); nodes use `node(address, clock)`.
 */
export class SimNetwork implements Network {
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

type Events = {
  data: ((chunk: Buffer) => void)[];
  drain: (() => void)[];
  close: (() => void)[];
  error: ((err: Error) => void)[];
};

/** One end of a simulated connection. */
class SimConn implements Conn {
  readonly local: string;
  readonly remote: string;
  readonly #net: SimNetwork;
  /** The owner's clock: every event of this end runs on it. */
  readonly #clock: Clock;
  #peer: SimConn | undefined;
  #pipe: Pipe | undefined;
  readonly #on: Events = { data: [], drain: [], close: [], error: [] };
  /** Data that arrived before anyone listened (the dialer learns of the connection a latency after the acceptor). */
  #early: Buffer[] = [];
  #destroyed = false;
  /** 'close' was delivered to the owner, or must never be (a dead owner). */
  #closeEmitted = false;
  /** 'close' is due but nobody listened yet (a connection cut before the dialer took it): sent on on('close'). */
  #closeDeferred = false;
  #corked: Buffer[] | undefined;
  /** Bytes written and not yet arrived, and the arrival time of the last write (in-order delivery). */
  #inFlight = 0;
  #lastArrivalMs = 0;
  #wantDrain = false;

  constructor(net: SimNetwork, local: string, remote: string, clock: Clock) {
    this.#net = net;
    this.local = local;
    this.remote = remote;
    this.#clock = clock;
  }

  attach(peer: SimConn, pipe: Pipe): void {
    this.#peer = peer;
    this.#pipe = pipe;
  }

  write(chunk: Uint8Array): boolean {
    if (this.#destroyed) return false;
    // A copy: the writer may reuse its buffer, as it may with a socket once write() returned.
    const copy = Buffer.from(chunk);
    if (this.#corked !== undefined) this.#corked.push(copy);
    else this.#send(copy);
    if (this.#inFlight + this.#corkedBytes() > this.#net.bufferBytes) {
      this.#wantDrain = true;
      return false;
    }
    return true;
  }

  /** Writes between cork() and uncork() leave as one segment. */
  cork(): void {
    this.#corked ??= [];
  }

  uncork(): void {
    const parts = this.#corked;
    this.#corked = undefined;
    if (parts !== undefined && parts.length > 0 && !this.#destroyed) this.#send(Buffer.concat(parts));
  }

  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#corked = undefined;
    this.#emitClose();
    const peer = this.#peer;
    const pipe = this.#pipe;
    if (peer === undefined || pipe === undefined) return;
    // FIN: after every byte already written, like TCP's orderly close.
    const at = Math.max(this.#net.clock.now() + this.#net.latency(), this.#lastArrivalMs);
    this.#lastArrivalMs = at;
    this.#net.clock.setTimeout(() => {
      if (pipe.severed) return;
      this.#net.event('close', this.local, this.remote);
      peer.broken(false);
      this.#net.closed(pipe);
    }, at - this.#net.clock.now());
  }

  on(event: 'data', listener: (chunk: Buffer) => void): this;
  on(event: 'drain' | 'close', listener: () => void): this;
  on(event: 'error', listener: (err: Error) => void): this;
  on(event: keyof Events, listener: (arg: never) => void): this {
    (this.#on[event] as ((arg: never) => void)[]).push(listener);
    if (event === 'close' && this.#closeDeferred) {
      this.#closeDeferred = false;
      this.#emitClose();
    }
    if (event === 'data' && this.#early.length > 0) {
      const early = this.#early;
      this.#early = [];
      this.#clock.setTimeout(() => {
        for (const chunk of early) this.#emitData(chunk);
      }, 0);
    }
    return this;
  }

  /** The connection ended under this end (cut, or the peer closed): it sees 'close' unless `silent` (dead). */
  broken(silent: boolean): void {
    const was = this.#destroyed;
    this.#destroyed = true;
    this.#corked = undefined;
    if (!silent && !was) this.#emitClose();
    if (silent) this.#closeEmitted = true;
  }

  #corkedBytes(): number {
    let n = 0;
    for (const c of this.#corked ?? []) n += c.byteLength;
    return n;
  }

  #send(bytes: Buffer): void {
    const net = this.#net;
    const peer = this.#peer!;
    const pipe = this.#pipe!;
    const now = net.clock.now();
    const at = Math.max(now + net.latency(), this.#lastArrivalMs);
    this.#lastArrivalMs = at;
    this.#inFlight += bytes.byteLength;
    net.clock.setTimeout(() => {
      this.#inFlight -= bytes.byteLength;
      if (pipe.severed) {
        net.stats.lost++;
        return;
      }
      net.stats.deliveries++;
      net.stats.bytes += bytes.byteLength;
      net.event('data', this.local, this.remote, bytes.byteLength);
      peer.#arrive(bytes);
      if (this.#wantDrain && this.#inFlight <= net.bufferBytes / 2 && !this.#destroyed) {
        this.#wantDrain = false;
        this.#clock.setTimeout(() => {
          for (const l of this.#on.drain) l();
        }, 0);
      }
    }, at - now);
  }

  #arrive(bytes: Buffer): void {
    // Bytes reach a socket its owner closed: dropped (a real kernel answers RST).
    if (this.#destroyed) return;
    this.#clock.setTimeout(() => this.#emitData(bytes), 0);
  }

  #emitData(bytes: Buffer): void {
    if (this.#closeEmitted) return;
    if (this.#on.data.length === 0) {
      this.#early.push(bytes);
      return;
    }
    for (const l of this.#on.data) l(bytes);
  }

  #emitClose(): void {
    this.#clock.setTimeout(() => {
      if (this.#closeEmitted) return;
      if (this.#on.close.length === 0) {
        this.#closeDeferred = true;
        return;
      }
      this.#closeEmitted = true;
      for (const l of this.#on.close) l();
    }, 0);
  }
}
