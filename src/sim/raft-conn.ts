/**
 * One end of a simulated connection (raft-world.ts's SimNetwork): in-order delivery after a latency on the world's
 * clock, events on the owner's clock, a bounded send buffer with 'drain', an orderly close (FIN after the bytes in
 * flight) and a broken one (a cut: the bytes in flight are lost).
 */
import type { Conn } from '../raft/transport/transport.js';
import type { Clock } from '../store/contract.js';

export interface NetEvent {
  readonly atMs: number;
  readonly kind: 'connect' | 'refused' | 'data' | 'close' | 'cut';
  /** The dialing node's address (the writer's, for data). */
  readonly from: string;
  readonly to: string;
  readonly bytes?: number;
}

/** A connection between two endpoints: both ends, and whether the network broke it (in-flight bytes are lost). */
export interface Pipe {
  readonly dialer: SimConn;
  readonly acceptor: SimConn;
  severed: boolean;
}

/** What a connection needs of its network. */
export interface Wire {
  readonly clock: Clock;
  readonly bufferBytes: number;
  readonly stats: { deliveries: number; bytes: number; lost: number };
  /** One latency draw. */
  latency(): number;
  event(kind: NetEvent['kind'], from: string, to: string, bytes?: number): void;
  /** The connection is gone (both ends closed, or cut). */
  closed(pipe: Pipe): void;
}

type Events = {
  data: ((chunk: Buffer) => void)[];
  drain: (() => void)[];
  close: (() => void)[];
  error: ((err: Error) => void)[];
};

/** One end of a simulated connection. */
export class SimConn implements Conn {
  readonly local: string;
  readonly remote: string;
  readonly #net: Wire;
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

  constructor(net: Wire, local: string, remote: string, clock: Clock) {
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
