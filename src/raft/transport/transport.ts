/**
 * The Raft transport (docs/raft.md, "Transport"): one authenticated connection per pair of nodes, carrying every
 * group's messages in batch frames. The node with the lower id dials; the other accepts. Per peer: a bounded
 * two-level queue (peer-queue.ts), one write per event-loop turn, socket backpressure respected, reconnection with
 * exponential backoff and jitter from an injected random source.
 *
 * The sockets sit behind `Network` (TCP or TLS by default), so a simulated network can replace them; the codec and
 * the queues are pure.
 *
 * Clients: a process that is not a node (an operator's CLI, an application's FleetClient) sends requests to nodes
 * without being one of their peers. Its transport runs with `client: true` and an id under CLIENT_ID_PREFIX; it
 * dials (it never listens) and proves the same secret. A node accepts such a connection from an id it does not
 * know, serves its requests and answers on the same connection, but drops its Raft messages (reported once), never
 * dials it, never records its incarnation, and forgets it when the connection closes. At most `maxClients` at once.
 */
import * as net from 'node:net';
import * as tls from 'node:tls';
import {
  ClosedError,
  InvalidArgumentError,
  LimitExceededError,
  ListenerError,
  PeerAuthError,
  PeerUnavailableError,
  RebalancerError,
  RemoteFailedError,
  TimeoutError,
  TransportFrameError,
  describe,
} from '../../errors.js';
import { OptionReader } from '../../options.js';
import type { Message } from '../messages.js';
import { newIncarnation, nonce, proof, proofMatches, type ProofFields } from './auth.js';
import {
  DEFAULT_MAX_FRAME_BYTES,
  FEATURES_GROUP_ID,
  FRAME_HEADER_BYTES,
  FEATURE_REQUESTS,
  FrameDecoder,
  FrameType,
  REQUEST_OVERHEAD_BYTES,
  ResponseStatus,
  batchBodyParts,
  decodeBatch,
  decodeRequestBody,
  decodeResponseBody,
  encodeBatch,
  encodeEnvelope,
  encodeFrame,
  encodeRequestBody,
  encodeResponseBody,
  frameHeader,
  type Envelope,
  type Frame,
  type Response,
} from './codec.js';
import {
  INCARNATION_BYTES,
  decodeAuth,
  decodeHello,
  decodeHelloAck,
  encodeAuth,
  encodeHello,
  encodeHelloAck,
} from './handshake.js';
import { PeerQueue, type PeerQueueStats } from './peer-queue.js';

/** A byte stream to a peer (a net.Socket or tls.TLSSocket satisfies it; a simulated network may provide its own). */
export interface Conn {
  write(chunk: Uint8Array): boolean;
  cork(): void;
  uncork(): void;
  destroy(): void;
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
  on(event: 'drain' | 'close', listener: () => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
}

export interface PeerAddress {
  readonly host: string;
  readonly port: number;
}

/** How the transport reaches peers and accepts them. */
export interface Network {
  listen(address: PeerAddress, onConn: (conn: Conn, remote: string) => void): Promise<{ port: number; close(): void }>;
  connect(address: PeerAddress): Promise<Conn>;
}

export interface TlsOptions {
  /** PEM: this node's private key, its certificate, and the CA that signs every node's certificate. */
  readonly key: string | Buffer;
  readonly cert: string | Buffer;
  readonly ca: string | Buffer;
}

/**
 * A deadline with less than this left has passed. Timers count whole milliseconds (Node waits at least 1 ms); on
 * the simulator's virtual clock a leftover such as 1e-13 ms is lost to rounding when added to the time, so a loop
 * that waited "what is left" waited for nothing, forever, at one instant (found by the fleet simulation, seed 30).
 */
export const MIN_WAIT_MS = 1;

/** Timers the transport schedules on (a virtual clock in the simulator). */
export interface Timers {
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle | undefined): void;
}

/** Opaque: whatever the Timers implementation returns. */
export type TimerHandle = unknown;

/** What an authenticated peer said of itself and of this node in the handshake. */
export interface PeerIdentity {
  /** The peer's incarnation (16 bytes). */
  readonly incarnation: Uint8Array;
  /** The incarnation under which the peer last knew this node; undefined when it never saw it. */
  readonly knewMeAs: Uint8Array | undefined;
}

const GLOBAL_TIMERS: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout> | undefined),
};

/**
 * Ids under this prefix are clients (see the file's comment), never nodes: a node may not use one, and a node
 * accepts a connection from one without knowing it as a peer. Node ids of the library's runtimes cannot contain `~`.
 */
export const CLIENT_ID_PREFIX = '~client.';

/** Whether `id` names a client (a connection that sends requests only), not a node. */
export function isClientId(id: string): boolean {
  return id.startsWith(CLIENT_ID_PREFIX);
}

export interface TransportOptions {
  /** This node's id (unique in the cluster); with `client: true`, CLIENT_ID_PREFIX followed by a unique suffix. */
  readonly id: string;
  /**
   * Client mode: this process is not a node. It does not listen, dials every peer (whatever the ids' order), and
   * is only meant to send requests (Raft messages it sends are dropped by the nodes). Default false.
   */
  readonly client?: boolean;
  /** Clients (connections from CLIENT_ID_PREFIX ids) this node serves at once; beyond, new ones are refused. 0 refuses all. Default 1024. */
  readonly maxClients?: number;
  /** Bound into every proof: nodes of two clusters sharing a secret do not talk. */
  readonly clusterId: string;
  /** The shared secret (at least 16 bytes; a string is taken as UTF-8). */
  readonly secret: string | Uint8Array;
  /** Where to listen (port 0: any). Default 127.0.0.1:0. */
  readonly listen?: PeerAddress;
  /** Every other node: id → address. */
  readonly peers: Readonly<Record<string, PeerAddress>>;
  /** Called for every message received from an authenticated peer. */
  readonly onMessage: (from: string, groupId: string, message: Message) => void;
  /**
   * Serve a request of an authenticated peer (Transport.request on its side): resolve with the answer's bytes.
   * Returning undefined says "no handler here"; a throw or a rejection goes back to the caller as RemoteFailedError.
   */
  readonly onRequest?: (from: string, payload: Uint8Array) => Promise<Uint8Array> | undefined;
  /**
   * Per peer: requests this node waits for (beyond: LimitExceededError at once), and requests of that peer it runs
   * at a time (beyond: the peer gets LimitExceededError). Default 1024.
   */
  readonly maxRequestsInFlight?: number;
  /** Per peer: payload bytes of the requests this node waits for (beyond: LimitExceededError). Default 64 MiB. */
  readonly maxRequestBytesInFlight?: number;
  /**
   * @internal Tests only: behave as the release before requests — announce no features, deliver an announcement
   * like any message, and close the connection on a request frame (an unknown frame type there).
   */
  readonly legacyWithoutRequests?: boolean;
  /** Errors: an unauthenticated peer (once per peer until it authenticates), a peer's bad frame, a throwing onMessage. */
  readonly onError?: (error: RebalancerError) => void;
  /** A peer's authenticated connection came up (true) or went down (false): hosts wake quiesced groups on it. */
  readonly onPeerState?: (peer: string, connected: boolean) => void;
  /**
   * This node's incarnation: 16 random bytes made with its data directory, sent (authenticated) in every
   * handshake. Default: a new one per start (a transport without a data directory is a new node every time).
   */
  readonly incarnation?: Uint8Array;
  /** The incarnation this node last knew of `peer` (undefined: never seen), told to the peer in the handshake. */
  readonly knownIncarnation?: (peer: string) => Uint8Array | undefined;
  /**
   * A peer authenticated: its incarnation and what it knew of this node. No message of the connection is delivered
   * (nor sent) before the returned promise resolves (a node records the peer's incarnation durably first); a
   * rejection closes the connection.
   */
  readonly onPeerIdentity?: (peer: string, identity: PeerIdentity) => void | Promise<void>;
  /** Reconnection jitter: a number in [0, 1) (default Math.random). */
  readonly random?: () => number;
  /** The handshake timeout and the redial delays run on these (default the global timers; a simulator passes its own). */
  readonly timers?: Timers;
  /** Mutual TLS (node:tls, requestCert + rejectUnauthorized) under the secret's handshake; default plain TCP. */
  readonly tls?: TlsOptions;
  /** A replacement for TCP/TLS (a simulated network). */
  readonly network?: Network;
  /** Largest frame sent or accepted (default 16 MiB). */
  readonly maxFrameBytes?: number;
  /** Per peer: messages queued before new ones are dropped (default 65 536). */
  readonly maxQueuedMessages?: number;
  /** Per peer: encoded bytes queued before new ones are dropped (default 64 MiB). */
  readonly maxQueuedBytes?: number;
  /** A connection that has not authenticated within this is closed (default 5000 ms). */
  readonly handshakeTimeoutMs?: number;
  /** First reconnection delay (default 50 ms), doubled per failure up to reconnectMaxMs (default 5000 ms). */
  readonly reconnectBaseMs?: number;
  readonly reconnectMaxMs?: number;
}

export interface PeerStats extends PeerQueueStats {
  readonly connected: boolean;
  readonly sentMessages: number;
  readonly sentFrames: number;
  /** Snapshot chunks written (they go at a lower priority than every other message). */
  readonly sentSnapshotChunks: number;
  readonly receivedMessages: number;
  /** Messages received whose `from` was not the peer or whose `to` was not this node (dropped, not delivered). */
  readonly droppedMisaddressed: number;
  /** Connections (dialed or accepted) that authenticated. */
  readonly connections: number;
}

interface Resolved {
  id: string;
  client: boolean;
  maxClients: number;
  clusterId: string;
  secret: Uint8Array;
  listen: PeerAddress;
  peers: ReadonlyMap<string, PeerAddress>;
  onMessage: TransportOptions['onMessage'];
  onRequest: (from: string, payload: Uint8Array) => Promise<Uint8Array> | undefined;
  maxRequestsInFlight: number;
  maxRequestBytesInFlight: number;
  legacyWithoutRequests: boolean;
  onError: (error: RebalancerError) => void;
  onPeerState: (peer: string, connected: boolean) => void;
  incarnation: Uint8Array;
  knownIncarnation: (peer: string) => Uint8Array | undefined;
  onPeerIdentity: (peer: string, identity: PeerIdentity) => void | Promise<void>;
  random: () => number;
  timers: Timers;
  network: Network;
  maxFrameBytes: number;
  maxQueuedMessages: number;
  maxQueuedBytes: number;
  handshakeTimeoutMs: number;
  reconnectBaseMs: number;
  reconnectMaxMs: number;
}

function checkAddress(v: unknown): string | undefined {
  const a = v as PeerAddress;
  return a !== null &&
    typeof a === 'object' &&
    typeof a.host === 'string' &&
    Number.isInteger(a.port) &&
    a.port >= 0 &&
    a.port < 65536
    ? undefined
    : 'must be { host: string, port: integer 0–65535 }';
}

function readOptions(options: TransportOptions): Resolved {
  const r = new OptionReader(options, 'raft transport options');
  const id = r.string('id', '', 256);
  if (id === '') throw new InvalidArgumentError('raft transport options.id must be a non-empty string');
  const client = r.boolean('client', false);
  if (client !== isClientId(id)) {
    throw new InvalidArgumentError(
      client
        ? `raft transport options.id must start with ${JSON.stringify(CLIENT_ID_PREFIX)} with client: true, got ${JSON.stringify(id)}`
        : `raft transport options.id ${JSON.stringify(id)}: ids starting with ${JSON.stringify(CLIENT_ID_PREFIX)} are ` +
            'reserved for clients (client: true); give this node another id',
    );
  }
  const maxClients = r.integer('maxClients', 1024, { min: 0, max: 1_000_000 });
  const clusterId = r.string('clusterId', '', 256);
  if (clusterId === '') throw new InvalidArgumentError('raft transport options.clusterId must be a non-empty string');
  const rawSecret = r.required<string | Uint8Array>('secret', (v) =>
    typeof v === 'string' || v instanceof Uint8Array ? undefined : 'must be a string or bytes',
  );
  const secret = typeof rawSecret === 'string' ? Buffer.from(rawSecret, 'utf8') : rawSecret;
  if (secret.byteLength < 16) {
    throw new InvalidArgumentError(
      `raft transport options.secret has ${secret.byteLength} bytes; use at least 16 random bytes (e.g. 32 from ` +
        '`openssl rand -hex 32`), the same on every node',
    );
  }
  const listen = r.optional<PeerAddress>('listen', checkAddress) ?? { host: '127.0.0.1', port: 0 };
  const rawPeers = r.required<Record<string, PeerAddress>>('peers', (v) =>
    v !== null && typeof v === 'object' ? undefined : 'must be an object: node id → { host, port }',
  );
  const peers = new Map<string, PeerAddress>();
  for (const [peer, addr] of Object.entries(rawPeers)) {
    const bad = checkAddress(addr);
    if (bad !== undefined) throw new InvalidArgumentError(`raft transport options.peers.${peer} ${bad}`);
    if (peer === '' || peer === id || isClientId(peer)) {
      throw new InvalidArgumentError(
        `raft transport options.peers must not list this node (${id}), an empty id or a client id (${peer})`,
      );
    }
    peers.set(peer, addr);
  }
  const onMessage = r.fn<TransportOptions['onMessage']>('onMessage');
  const onRequest = r.fn<(from: string, payload: Uint8Array) => Promise<Uint8Array> | undefined>(
    'onRequest',
    () => undefined,
  );
  const onError = r.fn<(error: RebalancerError) => void>('onError', () => undefined);
  const onPeerState = r.fn<(peer: string, connected: boolean) => void>('onPeerState', () => undefined);
  const incarnation =
    r.optional<Uint8Array>('incarnation', (v) =>
      v instanceof Uint8Array && v.byteLength === INCARNATION_BYTES ? undefined : `must be ${INCARNATION_BYTES} bytes`,
    ) ?? newIncarnation();
  const knownIncarnation = r.fn<(peer: string) => Uint8Array | undefined>('knownIncarnation', () => undefined);
  const onPeerIdentity = r.fn<(peer: string, identity: PeerIdentity) => void | Promise<void>>(
    'onPeerIdentity',
    () => undefined,
  );
  const random = r.fn<() => number>('random', Math.random);
  const tlsOptions = r.optional<TlsOptions>('tls', (v) =>
    v !== null && typeof v === 'object' && 'key' in v && 'cert' in v && 'ca' in v
      ? undefined
      : 'must be { key, cert, ca } (PEM)',
  );
  const network = r.optional<Network>('network', (v) =>
    v !== null && typeof v === 'object' && typeof (v as Network).connect === 'function'
      ? undefined
      : 'must implement Network',
  );
  const timers =
    r.optional<Timers>('timers', (v) =>
      v !== null &&
      typeof v === 'object' &&
      typeof (v as Timers).setTimeout === 'function' &&
      typeof (v as Timers).clearTimeout === 'function'
        ? undefined
        : 'must be { setTimeout(fn, ms), clearTimeout(handle) }',
    ) ?? GLOBAL_TIMERS;
  const maxFrameBytes = r.integer('maxFrameBytes', DEFAULT_MAX_FRAME_BYTES, { min: 4096, max: 2 ** 31 });
  const maxQueuedMessages = r.integer('maxQueuedMessages', 65_536, { min: 1 });
  const maxQueuedBytes = r.integer('maxQueuedBytes', 64 * 1024 * 1024, { min: 1 });
  const maxRequestsInFlight = r.integer('maxRequestsInFlight', 1024, { min: 1 });
  const maxRequestBytesInFlight = r.integer('maxRequestBytesInFlight', 64 * 1024 * 1024, { min: 1 });
  const legacyWithoutRequests = r.boolean('legacyWithoutRequests', false);
  const handshakeTimeoutMs = r.ms('handshakeTimeoutMs', 5000, { min: 1 });
  const reconnectBaseMs = r.ms('reconnectBaseMs', 50, { min: 1 });
  const reconnectMaxMs = r.ms('reconnectMaxMs', 5000, { min: reconnectBaseMs });
  r.done();
  return {
    id,
    client,
    maxClients,
    clusterId,
    secret,
    listen,
    peers,
    onMessage,
    onRequest,
    maxRequestsInFlight,
    maxRequestBytesInFlight,
    legacyWithoutRequests,
    onError,
    onPeerState,
    incarnation,
    knownIncarnation,
    onPeerIdentity,
    random,
    timers,
    network: network ?? (tlsOptions ? tlsNetwork(tlsOptions) : tcpNetwork()),
    maxFrameBytes,
    maxQueuedMessages,
    maxQueuedBytes,
    handshakeTimeoutMs,
    reconnectBaseMs,
    reconnectMaxMs,
  };
}

/** An accepted socket: no Nagle delay (heartbeats are small), named by its remote address. */
function accepted(s: net.Socket, onConn: (socket: net.Socket, remote: string) => void): void {
  s.setNoDelay(true);
  onConn(s, `${s.remoteAddress}:${s.remotePort}`);
}

/** Listen on `address`; a failure to bind rejects, later server errors are the sockets' business. */
function listenOn(
  server: net.Server,
  address: { readonly host: string; readonly port: number },
): Promise<{ port: number; close: () => void }> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(address.port, address.host, () => {
      server.off('error', reject);
      server.on('error', () => undefined);
      resolve({ port: (server.address() as net.AddressInfo).port, close: () => server.close() });
    });
  });
}

/** Plain TCP (no encryption: the handshake authenticates, but the bytes can be read on the wire). */
export function tcpNetwork(): Network {
  return {
    listen: (address, onConn) =>
      listenOn(
        net.createServer((s) => accepted(s, onConn)),
        address,
      ),
    connect: (address) =>
      new Promise((resolve, reject) => {
        const s = net.connect(address.port, address.host);
        s.once('error', reject);
        s.once('connect', () => {
          s.off('error', reject);
          s.setNoDelay(true);
          resolve(s);
        });
      }),
  };
}

/** Mutual TLS: both sides present a certificate signed by `ca`, or the connection fails before any frame. */
export function tlsNetwork(o: TlsOptions): Network {
  return {
    listen: (address, onConn) => {
      const server = tls.createServer(
        { key: o.key, cert: o.cert, ca: o.ca, requestCert: true, rejectUnauthorized: true },
        (s) => accepted(s, onConn),
      );
      server.on('tlsClientError', () => undefined);
      return listenOn(server, address);
    },
    connect: (address) =>
      new Promise((resolve, reject) => {
        const s = tls.connect({
          host: address.host,
          port: address.port,
          key: o.key,
          cert: o.cert,
          ca: o.ca,
          rejectUnauthorized: true,
        });
        s.once('error', reject);
        s.once('secureConnect', () => {
          s.off('error', reject);
          s.setNoDelay(true);
          resolve(s);
        });
      }),
  };
}

/** The largest frame accepted before a connection is authenticated (handshake frames are ~100 bytes). */
const HANDSHAKE_MAX_FRAME_BYTES = 4096;

/**
 * The wait before redialing after `failures` failures in a row: min(maxMs, baseMs × 2^failures), its second half
 * jittered by `random()` (in [0, 1)), so nodes restarting together do not redial in step.
 */
export function reconnectDelayMs(failures: number, baseMs: number, maxMs: number, random: () => number): number {
  const backoff = Math.min(maxMs, baseMs * 2 ** Math.min(failures, 30));
  return backoff / 2 + random() * (backoff / 2);
}

/** Distinct (peer, error code) pairs remembered as reported. */
const MAX_REPORTED = 10_000;

/** `identified`: authenticated, waiting for onPeerIdentity (frames stay buffered meanwhile). */
type ConnState = 'awaitHello' | 'awaitHelloAck' | 'awaitAuth' | 'identified' | 'ready' | 'closed';

/** One connection: the handshake, then frames both ways. */
class Link {
  state: ConnState;
  /** The peer's id once it said it (for an accepted connection) — authenticated only once `ready`. */
  peer: string | undefined;
  waitingDrain = false;
  /** Whether the host was told the peer is up through this connection. */
  announced = false;
  /** An accepted connection of a client (CLIENT_ID_PREFIX): requests only, not a peer. */
  client = false;
  /**
   * The peer's feature bits, from the first batch frame it sent on this connection (0: an older release that sent
   * none); undefined until that frame came.
   */
  features: number | undefined;
  readonly #t: Transport;
  readonly conn: Conn;
  readonly #decoder: FrameDecoder;
  readonly #label: string;
  readonly #myNonce = nonce();
  #peerNonce: Uint8Array | undefined;
  #peerIncarnation: Uint8Array | undefined;
  /** What the peer said it knew of us, and what we told it we knew of it. */
  #peerKnew: Uint8Array | undefined;
  #iKnew: Uint8Array | undefined;
  /** Whether this side dialed (fixed: the proof's field order depends on it). */
  readonly #dialing: boolean;
  /** The address dialed (the peer's address object then: a peer moved since is not connected through it). */
  readonly dialedTo: PeerAddress | undefined;
  #timer: TimerHandle | undefined;

  constructor(t: Transport, conn: Conn, dialTo: string | undefined, label: string, dialedTo?: PeerAddress) {
    this.#t = t;
    this.dialedTo = dialedTo;
    this.conn = conn;
    this.peer = dialTo;
    this.#label = label;
    this.#dialing = dialTo !== undefined;
    this.#iKnew = dialTo === undefined ? undefined : t.options.knownIncarnation(dialTo);
    // A stranger may not make this node buffer more than a handshake frame.
    this.#decoder = new FrameDecoder(HANDSHAKE_MAX_FRAME_BYTES);
    this.state = dialTo === undefined ? 'awaitHello' : 'awaitHelloAck';
    this.#timer = t.options.timers.setTimeout(
      () => this.fail(new PeerAuthError(this.peer ?? label, 'no handshake within handshakeTimeoutMs')),
      t.options.handshakeTimeoutMs,
    );
    conn.on('data', (chunk) => this.#onData(chunk));
    conn.on('drain', () => {
      this.waitingDrain = false;
      if (this.state === 'ready' && this.peer !== undefined) t.flushPeer(this.peer);
    });
    conn.on('error', () => undefined);
    conn.on('close', () => this.#onClose());
    if (dialTo !== undefined) {
      const o = t.options;
      const hello = encodeHello({
        clusterId: o.clusterId,
        from: o.id,
        to: dialTo,
        nonce: this.#myNonce,
        incarnation: o.incarnation,
        knownIncarnation: this.#iKnew,
      });
      this.conn.write(encodeFrame(FrameType.hello, hello));
    }
  }

  fail(error: RebalancerError): void {
    if (this.state === 'closed') return;
    this.#t.report(this.peer ?? this.#label, error);
    this.close();
  }

  close(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.#t.options.timers.clearTimeout(this.#timer);
    this.conn.destroy();
  }

  #onClose(): void {
    const was = this.state;
    if (was === 'awaitAuth') {
      this.#t.report(this.peer!, new PeerAuthError(this.peer!, 'it left before proving it knows the secret'));
    }
    this.state = 'closed';
    this.#t.options.timers.clearTimeout(this.#timer);
    this.#t.linkClosed(this, was === 'ready');
  }

  #onData(chunk: Buffer): void {
    if (this.state === 'closed') return;
    try {
      this.#decoder.write(chunk);
      for (;;) {
        // Closed, or waiting for onPeerIdentity: bytes stay in the decoder until it is done.
        if ((this.state as ConnState) === 'closed' || (this.state as ConnState) === 'identified') return;
        const f = this.#decoder.next();
        if (!f) return;
        this.#onFrame(f);
      }
    } catch (e) {
      if (e instanceof PeerAuthError) return this.fail(e);
      // Before authentication the peer is a stranger: name its address, not a node id it merely claimed.
      const who = this.state === 'ready' ? this.peer! : this.#label;
      const why = e instanceof TransportFrameError ? e.reason : describe(e);
      this.fail(new TransportFrameError(why, { cause: e, peer: who }));
    }
  }

  #onFrame(f: Frame): void {
    const o = this.#t.options;
    if (this.state === 'ready') {
      if (o.legacyWithoutRequests && f.type !== FrameType.batch) {
        throw new TransportFrameError(`unknown frame type ${f.type}`);
      }
      if (o.legacyWithoutRequests) return this.#t.deliver(this.peer!, decodeBatch(f.body));
      if (f.type === FrameType.request) {
        const req = decodeRequestBody(f.body);
        this.#t.serveRequest(this, req.id, req.payload);
        return;
      }
      if (f.type === FrameType.response) {
        this.#t.answered(this, decodeResponseBody(f.body));
        return;
      }
      if (f.type !== FrameType.batch)
        throw new TransportFrameError(`a handshake frame (${f.type}) after the handshake`);
      let envs: Envelope[] = decodeBatch(f.body);
      if (this.features === undefined) {
        const first = envs[0];
        const announced = first?.groupId === FEATURES_GROUP_ID && first.message.type === 'heartbeatResponse';
        this.features = announced ? first.message.round : 0;
        if (announced) envs = envs.slice(1);
        this.#t.featuresKnown(this);
      }
      this.#t.deliver(this.peer!, envs, this.client);
      return;
    }
    // Until authenticated: handshake frames only; anything else is ignored (the peer gets nothing either).
    if (this.state === 'awaitHello' && f.type === FrameType.hello) {
      const h = decodeHello(f.body, this.#label);
      const from = h.from;
      const who = this.#t.knows(from) ? from : this.#label;
      if (h.clusterId !== o.clusterId) throw new PeerAuthError(who, `cluster id ${JSON.stringify(h.clusterId)}`);
      if (h.to !== o.id) throw new PeerAuthError(who, `it dialed node ${JSON.stringify(h.to)}, this is ${o.id}`);
      // A client is accepted without being a peer (it proves the secret below like a node); a client does not
      // accept clients.
      this.client = isClientId(from) && !o.client;
      if (this.client) {
        const refused = this.#t.refusesClient(from);
        if (refused !== undefined) return this.fail(refused);
      } else if (!this.#t.knows(from)) {
        // A node we do not know (yet) is refused; it redials by its own backoff, so a peer added here later connects.
        throw new PeerAuthError(who, `unknown node id ${JSON.stringify(from)}`);
      }
      this.peer = from;
      this.#peerNonce = h.nonce;
      this.#peerIncarnation = h.incarnation;
      this.#peerKnew = h.knownIncarnation;
      // Not authenticated yet, but our answer is covered by our proof, and an impostor learns only an id it could
      // not use without the secret.
      this.#iKnew = o.knownIncarnation(from);
      const ack = encodeHelloAck({
        nonce: this.#myNonce,
        incarnation: o.incarnation,
        knownIncarnation: this.#iKnew,
        mac: proof(o.secret, 'acceptor', this.#fields()),
      });
      this.conn.write(encodeFrame(FrameType.helloAck, ack));
      this.state = 'awaitAuth';
      return;
    }
    if (this.state === 'awaitHelloAck' && f.type === FrameType.helloAck) {
      let ack;
      try {
        ack = decodeHelloAck(f.body);
      } catch (e) {
        throw new PeerAuthError(this.peer!, `a malformed answer (${describe(e)})`, { cause: e });
      }
      this.#peerNonce = ack.nonce;
      this.#peerIncarnation = ack.incarnation;
      this.#peerKnew = ack.knownIncarnation;
      if (!proofMatches(ack.mac, proof(o.secret, 'acceptor', this.#fields()))) {
        throw new PeerAuthError(this.peer!, 'its proof does not match this node’s secret and cluster id');
      }
      this.conn.write(encodeFrame(FrameType.auth, encodeAuth(proof(o.secret, 'dialer', this.#fields()))));
      this.#identified();
      return;
    }
    if (this.state === 'awaitAuth' && f.type === FrameType.auth) {
      const mac = decodeAuth(f.body);
      if (!proofMatches(mac, proof(o.secret, 'dialer', this.#fields()))) {
        throw new PeerAuthError(this.peer!, 'its proof does not match this node’s secret and cluster id');
      }
      this.#identified();
      return;
    }
    // A frame out of turn before authentication: ignored.
    this.#t.ignoredFrames++;
  }

  /** The proof's fields: the dialer's first, whichever side this is. */
  #fields(): ProofFields {
    const o = this.#t.options;
    const dialing = this.#dialing;
    const mine = { nonce: this.#myNonce, incarnation: o.incarnation, knew: this.#iKnew };
    const theirs = { nonce: this.#peerNonce!, incarnation: this.#peerIncarnation!, knew: this.#peerKnew };
    const [d, a] = dialing ? [mine, theirs] : [theirs, mine];
    return {
      clusterId: o.clusterId,
      dialer: dialing ? o.id : this.peer!,
      acceptor: dialing ? this.peer! : o.id,
      dialerNonce: d.nonce,
      acceptorNonce: a.nonce,
      dialerIncarnation: d.incarnation,
      acceptorIncarnation: a.incarnation,
      dialerKnew: d.knew,
      acceptorKnew: a.knew,
    };
  }

  /** Authenticated: let the host learn the peer's identity (and record it) before any message flows. */
  #identified(): void {
    this.#t.options.timers.clearTimeout(this.#timer);
    this.#decoder.maxFrameBytes = this.#t.options.maxFrameBytes;
    this.state = 'identified';
    const peer = this.peer!;
    // A client's incarnation is nobody's business: it holds no Raft state (and is not recorded durably).
    if (this.client) return this.#ready();
    let done: void | Promise<void>;
    try {
      done = this.#t.options.onPeerIdentity(peer, { incarnation: this.#peerIncarnation!, knewMeAs: this.#peerKnew });
    } catch (err) {
      return this.fail(new ListenerError('raft transport onPeerIdentity', err));
    }
    if (done === undefined) return this.#ready();
    done.then(
      () => this.#ready(),
      (err: unknown) => this.fail(new ListenerError('raft transport onPeerIdentity', err)),
    );
  }

  #ready(): void {
    if (this.state !== 'identified') return; // closed meanwhile
    this.state = 'ready';
    this.#t.linkReady(this);
    // Frames that came while the identity was being recorded.
    this.#onData(Buffer.alloc(0));
  }
}

interface Peer {
  readonly id: string;
  address: PeerAddress;
  readonly queue: PeerQueue;
  /** Whether this node dials the peer (the lower id dials). */
  readonly dialer: boolean;
  link: Link | undefined;
  dialing: boolean;
  failures: number;
  timer: TimerHandle | undefined;
  sentMessages: number;
  sentFrames: number;
  sentSnapshotChunks: number;
  receivedMessages: number;
  droppedMisaddressed: number;
  connections: number;
  /** Requests this node waits for from the peer, by id. */
  readonly pending: Map<number, PendingRequest>;
  /** Their payload bytes. */
  pendingBytes: number;
  /** Requests of the peer this node is running now. */
  serving: number;
}

/** A request sent (or about to be: `link` undefined while the peer's features are not known yet). */
interface PendingRequest {
  readonly frame: Buffer;
  readonly bytes: number;
  link: Link | undefined;
  readonly timer: TimerHandle;
  resolve(payload: Uint8Array): void;
  reject(error: unknown): void;
}

export class Transport {
  readonly options: Resolved;
  /** Frames received before authentication (ignored). */
  ignoredFrames = 0;
  readonly #peers = new Map<string, Peer>();
  /** Clients connected now (accepted connections of CLIENT_ID_PREFIX ids), by id; each goes with its connection. */
  readonly #clients = new Map<string, Peer>();
  readonly #links = new Set<Link>();
  readonly #dirty = new Set<Peer>();
  readonly #reported = new Set<string>();
  #flushScheduled = false;
  #server: { port: number; close(): void } | undefined;
  #closed = false;
  #nextRequestId = 0;

  private constructor(options: Resolved) {
    this.options = options;
    for (const [id, address] of options.peers) this.#peers.set(id, this.#newPeer(id, address));
  }

  #newPeer(id: string, address: PeerAddress, dialer = this.options.client || this.options.id < id): Peer {
    return {
      id,
      address,
      queue: new PeerQueue(this.options),
      // A client dials every node; a node never dials a client (it has no address).
      dialer,
      link: undefined,
      dialing: false,
      failures: 0,
      timer: undefined,
      sentMessages: 0,
      sentFrames: 0,
      sentSnapshotChunks: 0,
      receivedMessages: 0,
      droppedMisaddressed: 0,
      connections: 0,
      pending: new Map(),
      pendingBytes: 0,
      serving: 0,
    };
  }

  /** Whether `peer` is one of this node's peers now (the handshake refuses the others). */
  knows(peer: string): boolean {
    return this.#peers.has(peer);
  }

  /** The peers known now. */
  peerIds(): string[] {
    return [...this.#peers.keys()];
  }

  /** The clients connected now (ids under CLIENT_ID_PREFIX). */
  clientIds(): string[] {
    return [...this.#clients.keys()];
  }

  /** Why a client `id` that proved nothing yet is refused now (undefined: it may go on with the handshake). */
  refusesClient(id: string): RebalancerError | undefined {
    const max = this.options.maxClients;
    if (this.#clients.has(id) || this.#clients.size < max) return undefined;
    return new LimitExceededError(
      'raft clients',
      this.#clients.size + 1,
      max,
      `raft node ${this.options.id} serves ${this.#clients.size} clients, its maxClients; client ${id} was refused. ` +
        'Close clients that are done, or raise maxClients',
    );
  }

  /** The peer (or client) an authenticated connection belongs to, while it does. */
  #peerOf(link: Link): Peer | undefined {
    return link.client ? this.#clients.get(link.peer!) : this.#peers.get(link.peer!);
  }

  /**
   * Add `peer` at `address`, or move it there. A new peer with a higher id is dialed at once; a moved one has its
   * connection closed and is dialed again at the new address (by whichever side dials). The same address changes
   * nothing.
   */
  setPeer(peer: string, address: PeerAddress): void {
    if (this.#closed) return;
    const bad = checkAddress(address);
    if (bad !== undefined) throw new InvalidArgumentError(`raft transport setPeer(${peer}): the address ${bad}`);
    if (typeof peer !== 'string' || peer === '' || peer === this.options.id || isClientId(peer)) {
      throw new InvalidArgumentError(
        `raft transport setPeer: the peer must be another node's non-empty id (not a client's), got ${JSON.stringify(peer)}`,
      );
    }
    const p = this.#peers.get(peer);
    if (p === undefined) {
      const q = this.#newPeer(peer, { host: address.host, port: address.port });
      this.#peers.set(peer, q);
      if (q.dialer) this.#dial(q);
      return;
    }
    if (p.address.host === address.host && p.address.port === address.port) return;
    p.address = { host: address.host, port: address.port };
    this.options.timers.clearTimeout(p.timer);
    p.timer = undefined;
    p.failures = 0;
    const link = p.link;
    p.link = undefined;
    // Every connection of the peer goes, those still in their handshake too (they may lead to the old address).
    for (const l of [...this.#links]) if (l.peer === peer) l.close();
    // linkClosed no longer finds the link as the peer's: report the peer down here.
    if (link?.announced) this.#peerState(peer, false);
    if (p.dialer && !p.dialing) this.#dial(p);
  }

  /**
   * Forget `peer`: its connection is closed, what was queued for it dropped, and later messages to it are refused
   * (`send` returns false). A connection it opens again is refused in the handshake as from an unknown node.
   */
  removePeer(peer: string): void {
    const p = this.#peers.get(peer);
    if (p === undefined) return;
    this.#peers.delete(peer);
    this.options.timers.clearTimeout(p.timer);
    p.timer = undefined;
    p.queue.clear();
    this.#dirty.delete(p);
    const link = p.link;
    p.link = undefined;
    for (const l of [...this.#links]) if (l.peer === peer) l.close();
    if (link?.announced) this.#peerState(peer, false);
  }

  /** Listen, then dial every peer with a higher id (and keep redialing them). */
  static async start(options: TransportOptions): Promise<Transport> {
    const t = new Transport(readOptions(options));
    // A client is never dialed: it has nothing to listen for.
    if (!t.options.client) {
      t.#server = await t.options.network.listen(t.options.listen, (conn, remote) => t.#accept(conn, remote));
    }
    for (const p of t.#peers.values()) if (p.dialer) t.#dial(p);
    return t;
  }

  /** The port listened on. */
  get port(): number {
    return this.#server?.port ?? 0;
  }

  /**
   * Queue `message` of `groupId` for `peer`; it leaves with everything else queued for that peer in this event-loop
   * turn. False when it was dropped (queue full or too large for a frame): Raft retransmits.
   */
  send(peer: string, groupId: string, message: Message): boolean {
    if (this.#closed) return false;
    const p = this.#peers.get(peer);
    // A peer removed (or not yet added) gets nothing: Raft retransmits once it is known again.
    if (!p) return false;
    const ok = p.queue.push(encodeEnvelope({ groupId, message }), message.type === 'snapshot');
    if (ok) this.#markDirty(p);
    return ok;
  }

  stats(peer: string): PeerStats {
    const p = this.#peers.get(peer);
    if (!p) throw new InvalidArgumentError(`raft transport: unknown peer ${JSON.stringify(peer)}`);
    return {
      ...p.queue.stats(),
      connected: p.link?.state === 'ready',
      sentMessages: p.sentMessages,
      sentFrames: p.sentFrames,
      sentSnapshotChunks: p.sentSnapshotChunks,
      receivedMessages: p.receivedMessages,
      droppedMisaddressed: p.droppedMisaddressed,
      connections: p.connections,
    };
  }

  /**
   * Send `payload` to `peer`'s request handler (its `onRequest`) and resolve with its answer. Rejects with
   * PeerUnavailableError (no connection now; the connection dropped; no handler there; an older release there),
   * RemoteFailedError (the handler threw), TimeoutError after `timeoutMs` (outcome 'unknown': it may have run),
   * LimitExceededError (too many requests or bytes in flight to the peer, a payload or an answer above a frame), or
   * ClosedError once this transport closes. Never retried here: the caller decides where to go next.
   */
  request(peer: string, payload: Uint8Array, timeoutMs: number): Promise<Uint8Array> {
    if (this.#closed) return Promise.reject(new ClosedError('raft transport'));
    const p = this.#peers.get(peer);
    if (!p) {
      return Promise.reject(
        new InvalidArgumentError(`raft transport: unknown peer ${JSON.stringify(peer)} (not in options.peers)`),
      );
    }
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
      return Promise.reject(new InvalidArgumentError(`raft request timeoutMs must be above 0, got ${timeoutMs}`));
    }
    const o = this.options;
    const frameBytes = REQUEST_OVERHEAD_BYTES + payload.byteLength;
    if (frameBytes > o.maxFrameBytes) {
      return Promise.reject(
        new LimitExceededError(
          'raft request bytes',
          payload.byteLength,
          o.maxFrameBytes - REQUEST_OVERHEAD_BYTES,
          `a raft request of ${payload.byteLength} bytes does not fit in a transport frame (maxFrameBytes ` +
            `${o.maxFrameBytes}): send less per request`,
        ),
      );
    }
    if (p.pending.size >= o.maxRequestsInFlight || p.pendingBytes + payload.byteLength > o.maxRequestBytesInFlight) {
      const byCount = p.pending.size >= o.maxRequestsInFlight;
      return Promise.reject(
        new LimitExceededError(
          byCount ? 'raft requests in flight' : 'raft request bytes in flight',
          byCount ? p.pending.size + 1 : p.pendingBytes + payload.byteLength,
          byCount ? o.maxRequestsInFlight : o.maxRequestBytesInFlight,
          `raft node ${peer} already has ${p.pending.size} requests (${p.pendingBytes} bytes) of this node in flight ` +
            `(at most ${o.maxRequestsInFlight} and ${o.maxRequestBytesInFlight} bytes): wait for some to finish, or ` +
            'send to another node',
        ),
      );
    }
    const link = p.link;
    if (link === undefined || link.state !== 'ready') {
      return Promise.reject(new PeerUnavailableError(peer, 'not-connected', 'not-applied'));
    }
    if (link.features !== undefined && (link.features & FEATURE_REQUESTS) === 0) {
      return Promise.reject(new PeerUnavailableError(peer, 'unsupported', 'not-applied'));
    }
    const id = ++this.#nextRequestId;
    const frame = encodeFrame(FrameType.request, encodeRequestBody(id, payload), o.maxFrameBytes);
    return new Promise<Uint8Array>((resolve, reject) => {
      const timer = o.timers.setTimeout(() => {
        const req = this.#settle(p, id);
        if (req === undefined) return;
        const sent = req.link !== undefined;
        req.reject(
          new TimeoutError('', 'a request', timeoutMs, sent ? 'unknown' : 'not-applied', {
            subject: `raft request to node ${peer}`,
          }),
        );
      }, timeoutMs);
      p.pending.set(id, { frame, bytes: payload.byteLength, link: undefined, timer, resolve, reject });
      p.pendingBytes += payload.byteLength;
      // Known to serve requests: send now. Features not known yet (a connection just up): sent once they are.
      if (link.features !== undefined) this.#sendRequest(link, p.pending.get(id)!);
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#server?.close();
    for (const p of this.#peers.values()) {
      this.options.timers.clearTimeout(p.timer);
      p.queue.clear();
      this.#failPending(p, undefined, () => new ClosedError('raft transport'));
    }
    for (const l of this.#links) l.close();
    await new Promise((resolve) => setImmediate(resolve));
  }

  // ---- internals used by Link ----

  /**
   * Report an error once per peer and code (until that peer authenticates again). A stranger (not a known node id)
   * counts by its address without the port, and at most MAX_REPORTED keys are kept: a flood of connections cannot
   * flood the log or grow this set.
   */
  report(peer: string, error: RebalancerError): void {
    const who = this.#peers.has(peer) || this.#clients.has(peer) ? peer : `stranger ${peer.replace(/:\d+$/, '')}`;
    const key = `${who}\u0000${error.code}`;
    if (this.#reported.has(key) || this.#reported.size >= MAX_REPORTED) return;
    this.#reported.add(key);
    this.options.onError(error);
  }

  deliver(from: string, envs: readonly { groupId: string; message: Message }[], client = false): void {
    if (client) {
      // A client is no member of any group: what it sends as Raft messages never reaches a core.
      const c = this.#clients.get(from);
      if (c === undefined || envs.length === 0) return;
      c.receivedMessages += envs.length;
      c.droppedMisaddressed += envs.length;
      this.report(
        from,
        new TransportFrameError(`Raft messages from client ${from}, which may only send requests`, {
          peer: from,
          dropped: true,
        }),
      );
      return;
    }
    const p = this.#peers.get(from);
    if (p === undefined) return; // removed while this frame was on its way
    p.receivedMessages += envs.length;
    for (const e of envs) {
      const { from: claimed, to } = e.message;
      if (claimed !== from || to !== this.options.id) {
        // An authenticated peer speaks for itself only, to us only: a message it claims another node sent (a vote
        // in that node's name) or meant for another node must not reach a core. Dropped; reported once per peer.
        p.droppedMisaddressed++;
        const why = claimed !== from ? `from ${JSON.stringify(claimed)}` : `to ${JSON.stringify(to)}`;
        this.report(
          from,
          new TransportFrameError(`a message ${why} on the connection of ${from} to ${this.options.id}`, {
            peer: from,
            dropped: true,
          }),
        );
        continue;
      }
      try {
        this.options.onMessage(from, e.groupId, e.message);
      } catch (err) {
        this.options.onError(new ListenerError('raft transport onMessage', err));
      }
    }
  }

  linkReady(link: Link): void {
    if (link.client) return this.#clientReady(link);
    const p = this.#peers.get(link.peer!);
    // Closed, or the peer removed (or moved: a dialed link to its old address) while the handshake went on.
    if (this.#closed || p === undefined || (link.dialedTo !== undefined && link.dialedTo !== p.address)) {
      return link.close();
    }
    // A newer authenticated connection replaces an older one (a peer that restarted, a half-open socket).
    if (p.link && p.link !== link) p.link.close();
    p.link = link;
    link.announced = true;
    // The first frame on the connection: the features announcement (see FEATURES_GROUP_ID).
    if (!this.options.legacyWithoutRequests) this.#announce(link, p);
    p.failures = 0;
    p.connections++;
    for (const key of this.#reported) if (key.startsWith(`${p.id}\u0000`)) this.#reported.delete(key);
    this.#markDirty(p);
    this.#peerState(p.id, true);
  }

  /** The features announcement: the first frame on a connection (see FEATURES_GROUP_ID). */
  #announce(link: Link, p: Peer): void {
    const announce: Envelope = {
      groupId: FEATURES_GROUP_ID,
      message: { type: 'heartbeatResponse', from: this.options.id, to: p.id, term: 0, round: FEATURE_REQUESTS },
    };
    link.conn.write(encodeBatch([announce], this.options.maxFrameBytes));
  }

  /** A client authenticated: serve its requests on this connection (a newer one of the same id replaces it). */
  #clientReady(link: Link): void {
    const id = link.peer!;
    if (this.#closed) return link.close();
    // Several clients may have been in their handshakes at once: the limit holds here too.
    const refused = this.refusesClient(id);
    if (refused !== undefined) return link.fail(refused);
    let c = this.#clients.get(id);
    if (c === undefined) {
      c = this.#newPeer(id, { host: '', port: 0 }, false);
      this.#clients.set(id, c);
    }
    if (c.link && c.link !== link) c.link.close();
    c.link = link;
    c.connections++;
    // The client learns that this node serves requests from the features announcement, as a node does.
    this.#announce(link, c);
  }

  #peerState(peer: string, connected: boolean): void {
    try {
      this.options.onPeerState(peer, connected);
    } catch (err) {
      this.options.onError(new ListenerError('raft transport onPeerState', err));
    }
  }

  linkClosed(link: Link, _wasReady: boolean): void {
    this.#links.delete(link);
    if (link.client) {
      const c = this.#clients.get(link.peer!);
      if (c?.link !== link) return;
      // Forgotten with its connection: nothing is queued for a client, and nodes never send it requests.
      this.#clients.delete(c.id);
      this.#failPending(c, undefined, () => new PeerUnavailableError(c.id, 'disconnected', 'unknown'));
      return;
    }
    const p = link.peer === undefined ? undefined : this.#peers.get(link.peer);
    if (p && p.link !== link) {
      // An older connection replaced by a newer one: what was sent on it alone is lost.
      for (const [id, req] of [...p.pending]) {
        if (req.link === link) this.#settle(p, id)?.reject(new PeerUnavailableError(p.id, 'disconnected', 'unknown'));
      }
    }
    if (!p || p.link !== link) {
      if (p && p.dialer && !p.link && !p.dialing) this.#redial(p);
      return;
    }
    p.link = undefined;
    // Requests sent on it may have run there; those not sent yet were not.
    this.#failPending(
      p,
      link,
      (sent) =>
        new PeerUnavailableError(p.id, sent ? 'disconnected' : 'not-connected', sent ? 'unknown' : 'not-applied'),
    );
    if (p.dialer) this.#redial(p);
    this.#peerState(p.id, false);
  }

  /** The peer's first batch on `link` said what it supports: send the requests waiting for that, or fail them. */
  featuresKnown(link: Link): void {
    const p = this.#peerOf(link);
    if (p === undefined || p.link !== link) return;
    const supported = ((link.features ?? 0) & FEATURE_REQUESTS) !== 0;
    for (const [id, req] of [...p.pending]) {
      if (req.link !== undefined) continue;
      if (supported) this.#sendRequest(link, req);
      else this.#settle(p, id)?.reject(new PeerUnavailableError(p.id, 'unsupported', 'not-applied'));
    }
  }

  #sendRequest(link: Link, req: PendingRequest): void {
    req.link = link;
    link.conn.write(req.frame);
  }

  /** Take request `id` out of the peer's pending table (undefined when already settled). */
  #settle(p: Peer, id: number): PendingRequest | undefined {
    const req = p.pending.get(id);
    if (req === undefined) return undefined;
    p.pending.delete(id);
    p.pendingBytes -= req.bytes;
    this.options.timers.clearTimeout(req.timer);
    return req;
  }

  /** Fail the peer's pending requests (those sent on `link`, or not sent yet; every one when `link` is undefined). */
  #failPending(p: Peer, link: Link | undefined, error: (sent: boolean) => unknown): void {
    for (const [id, req] of [...p.pending]) {
      if (link !== undefined && req.link !== undefined && req.link !== link) continue;
      this.#settle(p, id)?.reject(error(req.link !== undefined));
    }
  }

  /** An answer came on `link`. One for a request this node no longer waits for (timed out) is ignored. */
  answered(link: Link, res: Response): void {
    const p = this.#peerOf(link);
    if (p === undefined) return;
    const req = this.#settle(p, res.id);
    if (req === undefined) return;
    switch (res.status) {
      case ResponseStatus.ok:
        return req.resolve(res.payload);
      case ResponseStatus.failed:
        return req.reject(new RemoteFailedError(p.id, res.code, res.message));
      case ResponseStatus.noHandler:
        return req.reject(new PeerUnavailableError(p.id, 'no-handler', 'not-applied'));
      case ResponseStatus.busy:
        return req.reject(
          new LimitExceededError(
            'raft requests in flight',
            0,
            this.options.maxRequestsInFlight,
            `raft node ${p.id} is running as many requests of this node as it allows (${res.message}): retry later or ` +
              'elsewhere',
          ),
        );
      case ResponseStatus.tooLarge:
        return req.reject(
          new LimitExceededError(
            'raft response bytes',
            0,
            this.options.maxFrameBytes,
            `raft node ${p.id} ran the request, but its answer does not fit in a transport frame (${res.message})`,
          ),
        );
    }
  }

  /** Run a peer's request and send back the answer on the same connection (dropped if that one is gone). */
  serveRequest(link: Link, id: number, payload: Uint8Array): void {
    const p = this.#peerOf(link);
    if (p === undefined) return; // removed (or a client replaced) while this frame was on its way
    const o = this.options;
    const reply = (res: Response): void => {
      if (link.state !== 'ready' || this.#closed) return;
      let body = encodeResponseBody(res);
      if (FRAME_HEADER_BYTES + body.byteLength > o.maxFrameBytes) {
        body = encodeResponseBody({
          id,
          status: ResponseStatus.tooLarge,
          code: 'LIMIT_EXCEEDED',
          message: `an answer of ${body.byteLength} bytes, above maxFrameBytes ${o.maxFrameBytes}`,
        });
      }
      link.conn.write(encodeFrame(FrameType.response, body, o.maxFrameBytes));
    };
    if (p.serving >= o.maxRequestsInFlight) {
      return reply({ id, status: ResponseStatus.busy, code: 'LIMIT_EXCEEDED', message: `${p.serving} running` });
    }
    let answer: Promise<Uint8Array> | undefined;
    try {
      answer = o.onRequest(p.id, payload);
    } catch (err) {
      answer = Promise.reject(err);
    }
    if (answer === undefined) {
      return reply({ id, status: ResponseStatus.noHandler, code: 'PEER_UNAVAILABLE', message: 'no handler' });
    }
    p.serving++;
    answer.then(
      (bytes) => {
        p.serving--;
        if (!(bytes instanceof Uint8Array)) {
          reply({
            id,
            status: ResponseStatus.failed,
            code: 'INVALID_ARGUMENT',
            message: 'the handler did not resolve with bytes',
          });
        } else reply({ id, status: ResponseStatus.ok, payload: bytes });
      },
      (err: unknown) => {
        p.serving--;
        const code = err instanceof RebalancerError ? err.code : 'ERROR';
        reply({ id, status: ResponseStatus.failed, code, message: describe(err) });
      },
    );
  }

  flushPeer(id: string): void {
    const p = this.#peers.get(id);
    if (p) this.#markDirty(p);
  }

  // ---- connections ----

  #accept(conn: Conn, remote: string): void {
    if (this.#closed) return conn.destroy();
    const link = new Link(this, conn, undefined, remote);
    this.#links.add(link);
  }

  #dial(p: Peer): void {
    if (this.#closed || p.dialing || p.link) return;
    p.dialing = true;
    const address = p.address;
    this.options.network.connect(address).then(
      (conn) => {
        p.dialing = false;
        // Closed, removed or moved meanwhile: this connection goes to a peer or an address we no longer want.
        if (this.#closed || this.#peers.get(p.id) !== p || p.address !== address) {
          conn.destroy();
          if (!this.#closed && this.#peers.get(p.id) === p && !p.link) this.#dial(p);
          return;
        }
        const link = new Link(this, conn, p.id, `${p.address.host}:${p.address.port}`, address);
        this.#links.add(link);
      },
      () => {
        p.dialing = false;
        if (this.#peers.get(p.id) === p) this.#redial(p);
      },
    );
  }

  /** Dial again after min(reconnectMaxMs, reconnectBaseMs × 2^failures), half of it jittered. */
  #redial(p: Peer): void {
    if (this.#closed || p.timer !== undefined || this.#peers.get(p.id) !== p) return;
    const o = this.options;
    const delay = reconnectDelayMs(p.failures, o.reconnectBaseMs, o.reconnectMaxMs, o.random);
    p.failures++;
    p.timer = o.timers.setTimeout(() => {
      p.timer = undefined;
      this.#dial(p);
    }, delay);
  }

  // ---- sending ----

  #markDirty(p: Peer): void {
    this.#dirty.add(p);
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    setImmediate(() => {
      this.#flushScheduled = false;
      const peers = [...this.#dirty];
      this.#dirty.clear();
      for (const q of peers) this.#flush(q);
    });
  }

  /**
   * Write batches to the peer while the socket takes them. A batch holding a snapshot chunk ends the turn: small
   * messages queued meanwhile go first in the next one.
   */
  #flush(p: Peer): void {
    const link = p.link;
    if (!link || link.state !== 'ready' || link.waitingDrain) return;
    for (;;) {
      const batch = p.queue.nextBatch();
      if (!batch) return;
      const parts = batchBodyParts(batch.parts);
      const header = frameHeader(FrameType.batch, 4 + batch.bytes, this.options.maxFrameBytes);
      let ok: boolean;
      if (batch.bulk) {
        // A snapshot chunk: not copied again, its parts go out corked (one segment).
        link.conn.cork();
        ok = link.conn.write(header);
        for (const part of parts) ok = link.conn.write(part) && ok;
        link.conn.uncork();
      } else {
        // Small messages: one copy into one buffer costs less than a stream write per message.
        ok = link.conn.write(Buffer.concat([header, ...parts], FRAME_HEADER_BYTES + 4 + batch.bytes));
      }
      p.sentFrames++;
      p.sentMessages += batch.parts.length;
      if (batch.bulk) p.sentSnapshotChunks++;
      if (!ok) {
        link.waitingDrain = true;
        return;
      }
      if (batch.bulk) {
        if (p.queue.size > 0) this.#markDirty(p);
        return;
      }
    }
  }
}
