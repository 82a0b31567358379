/**
 * A small in-process TCP proxy for fault injection between a client and a
 * server: added delay, a silent partition (blackhole) and connection resets.
 */
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';

/**
 * 'blackhole-to-server' / 'blackhole-to-client': drop the bytes of one direction only (client → server, or
 * server → client); the other direction passes. One TCP connection often carries both directions of a link (the
 * Raft transport keeps one per pair of nodes), so a one-way network loss is a one-way blackhole on the stream.
 */
export type ProxyMode = 'pass' | 'blackhole' | 'blackhole-to-server' | 'blackhole-to-client';

type Direction = 'toServer' | 'toClient';

/** Whether `mode` drops the bytes going `direction`. */
function drops(mode: ProxyMode, direction: Direction): boolean {
  if (mode === 'pass') return false;
  if (mode === 'blackhole') return true;
  return mode === (direction === 'toServer' ? 'blackhole-to-server' : 'blackhole-to-client');
}

export interface TcpProxy {
  readonly host: string;
  readonly port: number;
  /**
   * 'pass' forwards; 'blackhole' keeps connections open but silently drops
   * all bytes both ways (a silent partition); new connections are accepted
   * and also blackholed.
   *
   * Dropped bytes are gone, unlike in a real partition where TCP would
   * retransmit them: after switching back to 'pass', streams that lost bytes
   * are garbage, so heal with resetAll() unless the test means otherwise.
   * A close by either side during a blackhole is withheld from the other
   * side until the mode is 'pass' again.
   *
   * The one-way modes drop one direction's bytes (and withhold its ends and
   * closes) and pass the other's. In a real one-way loss TCP would stall the
   * dropped direction (unacknowledged segments retransmitted until the
   * kernel gives up) while the other keeps flowing; here the bytes are gone
   * and the sender does not notice: heal with resetAll() as well.
   */
  setMode(mode: ProxyMode): void;
  /** Extra one-way delay per chunk in ms (0 = none). */
  setDelayMs(ms: number): void;
  /** Destroy all current connections with a TCP RST. */
  resetAll(): void;
  /** Client connections currently open. */
  readonly connectionCount: number;
  close(): Promise<void>;
}

const HOST = '127.0.0.1';

/** One direction of a connection: keeps chunk order even when the delay changes. */
class Lane {
  #lastDeliveryAtMs = 0;
  readonly #timers = new Set<NodeJS.Timeout>();

  constructor(
    private readonly proxy: ProxyState,
    private readonly direction: Direction,
    private readonly to: () => Socket | undefined,
  ) {}

  /** Whether this direction's bytes are dropped now. */
  get blocked(): boolean {
    return drops(this.proxy.mode, this.direction);
  }

  forward(chunk: Buffer): void {
    if (this.blocked) return;
    const delayMs = this.proxy.delayMs;
    if (delayMs <= 0 && this.#timers.size === 0) {
      this.to()?.write(chunk);
      return;
    }
    // Never before an earlier chunk: lowering the delay must not reorder.
    const deliverAtMs = Math.max(Date.now() + delayMs, this.#lastDeliveryAtMs);
    this.#lastDeliveryAtMs = deliverAtMs;
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      // A blackhole that began while the chunk was in flight swallows it too.
      if (!this.blocked) this.to()?.write(chunk);
    }, deliverAtMs - Date.now());
    this.#timers.add(timer);
  }

  /** Run `action` (an end) after the chunks still in flight, not before them. */
  afterPending(action: () => void): void {
    if (this.#timers.size === 0) {
      action();
      return;
    }
    const timer = setTimeout(
      () => {
        this.#timers.delete(timer);
        action();
      },
      Math.max(0, this.#lastDeliveryAtMs - Date.now()),
    );
    this.#timers.add(timer);
  }

  clear(): void {
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
  }
}

interface ProxyState {
  mode: ProxyMode;
  delayMs: number;
}

/**
 * A client connection and its upstream twin. Backpressure is not propagated
 * (test traffic is small); ordering and half-closes are.
 */
class Connection {
  upstream: Socket | undefined;
  #clientEnded = false;
  #clientClosed: 'no' | 'clean' | 'error' = 'no';
  #upstreamEnded = false;
  #upstreamClosed: 'no' | 'clean' | 'error' = 'no';
  readonly #toUpstream: Lane;
  readonly #toClient: Lane;

  constructor(
    readonly client: Socket,
    private readonly state: ProxyState,
    private readonly target: { host: string; port: number },
    private readonly onGone: (conn: Connection) => void,
  ) {
    this.#toUpstream = new Lane(state, 'toServer', () => this.upstream);
    this.#toClient = new Lane(state, 'toClient', () => this.client);
    client.setNoDelay(true);
    client.on('data', (chunk: Buffer) => this.#toUpstream.forward(chunk));
    client.on('end', () => {
      this.#clientEnded = true;
      this.sync();
    });
    client.on('error', () => undefined);
    client.on('close', (hadError) => {
      this.#clientClosed = hadError ? 'error' : 'clean';
      this.sync();
    });
    // In a blackhole the server does not even see the connection until healed.
    this.sync();
  }

  #connectUpstream(): void {
    const upstream = connect(this.target);
    this.upstream = upstream;
    upstream.setNoDelay(true);
    upstream.on('data', (chunk: Buffer) => this.#toClient.forward(chunk));
    upstream.on('end', () => {
      this.#upstreamEnded = true;
      this.sync();
    });
    upstream.on('error', () => undefined);
    upstream.on('close', (hadError) => {
      this.#upstreamClosed = hadError ? 'error' : 'clean';
      this.sync();
    });
  }

  /**
   * Bring the connection in line with the mode. Unless in a full blackhole:
   * connect upstream (late for a connection accepted during a blackhole).
   * Ends and closes pass only in a direction that is not dropped (withheld,
   * as a partition would, until that direction passes again).
   */
  sync(): void {
    if (this.state.mode === 'blackhole') return;
    const clientGone = this.#clientEnded || this.#clientClosed !== 'no';
    if (this.upstream === undefined && !clientGone) this.#connectUpstream();
    const upstream = this.upstream;
    if (upstream !== undefined && !this.#toUpstream.blocked) {
      if (this.#clientClosed === 'error') upstream.destroy();
      else if (clientGone) this.#toUpstream.afterPending(() => upstream.end());
    }
    if (!this.#toClient.blocked) {
      if (this.#upstreamClosed === 'error') this.client.destroy();
      else if (this.#upstreamEnded || this.#upstreamClosed === 'clean')
        this.#toClient.afterPending(() => this.client.end());
    }
    if (this.#clientClosed !== 'no' && (upstream === undefined || this.#upstreamClosed !== 'no')) this.#finish();
  }

  reset(): void {
    // RST, not FIN: the peers see ECONNRESET, as after a crashed middlebox.
    if (!this.client.destroyed) this.client.resetAndDestroy();
    if (this.upstream !== undefined && !this.upstream.destroyed) this.upstream.resetAndDestroy();
    this.#finish();
  }

  #finish(): void {
    this.#toUpstream.clear();
    this.#toClient.clear();
    this.onGone(this);
  }
}

export async function startProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  const state: ProxyState = { mode: 'pass', delayMs: 0 };
  const connections = new Set<Connection>();
  const server = createServer((client) => {
    connections.add(new Connection(client, state, target, (conn) => connections.delete(conn)));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // Port 0 is fine here: the proxy binds in-process, so nothing can take
    // the port between choosing and binding it.
    server.listen({ host: HOST, port: 0 }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const resetAll = (): void => {
    for (const conn of [...connections]) conn.reset();
  };
  return {
    host: HOST,
    port,
    setMode(mode) {
      state.mode = mode;
      for (const conn of [...connections]) conn.sync();
    },
    setDelayMs(ms) {
      state.delayMs = Math.max(0, ms);
    },
    resetAll,
    get connectionCount() {
      let open = 0;
      for (const conn of connections) if (!conn.client.destroyed) open += 1;
      return open;
    },
    close() {
      resetAll();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
