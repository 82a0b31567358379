/**
 * A fleet client: commands, queries and group changes from a process that is not a fleet node (an operator's CLI,
 * a web service in front of the fleet). It reads the fleet's records from the store (where each group's members
 * and leader are, each node's address) and sends requests to nodes over the Raft transport in client mode
 * (src/raft/transport/transport.ts): it proves the fleet's secret, is never dialed, and holds no replica. Each
 * group is reached through a RemoteGroupClient (src/raft/node/remote-client.ts): exactly-once commands with its own
 * client session, retried on the next node with the same command id.
 *
 *     const client = await connectFleet({ store, fleet: 'orders', secret });
 *     await client.command('eu', { add: 1 });
 *     await client.close();
 */
import { randomBytes } from 'node:crypto';
import {
  ClosedError,
  FleetGroupNotFoundError,
  InvalidArgumentError,
  NoQuorumError,
  PeerAuthError,
  PeerUnavailableError,
  TimeoutError,
} from '../../errors.js';
import { TypedEmitter, type ErrorEvent } from '../../events.js';
import { checkCallOptions, OptionReader } from '../../options.js';
import {
  addGroup,
  checkMachineRunners,
  FleetRecordCache,
  readFleetView,
  removeGroup,
  type FleetView,
} from '../../protocol/fleet/io.js';
import {
  FleetKeys,
  groupRaftId,
  validateFleetGroupName,
  validateMachineName,
  type GroupRecord,
} from '../../protocol/fleet/keys.js';
import { fleetStatus, groupInfos, type FleetStatus } from '../../protocol/fleet/status.js';
import type { Consistency } from '../../raft/node/group.js';
import { parseAddress } from '../../raft/node/node.js';
import type { RemoteGroupClient } from '../../raft/node/remote-client.js';
import type { Codec } from '../../raft/node/state-machine.js';
import { CLIENT_ID_PREFIX, MIN_WAIT_MS, Transport, type TlsOptions } from '../../raft/transport/transport.js';
import type { Store } from '../../store/contract.js';
import { readStore } from '../common-options.js';
import { CorruptionReports } from '../corruption.js';
import {
  QUERY_OPTIONS,
  REQUEST_OPTIONS,
  type FleetGroupInfo,
  type FleetQueryOptions,
  type FleetRequestOptions,
} from './node.js';
import { GroupRoutes } from './routing.js';

export interface ConnectFleetOptions {
  /** The fleet's control store (the caller's: close() leaves it open). */
  readonly store: Store;
  readonly fleet: string;
  /** The fleet's shared secret (the nodes' `secret`). */
  readonly secret: string | Uint8Array;
  /** Default time of command() and query() (default 5000 ms). */
  readonly requestTimeoutMs?: number;
  /** Codecs by state machine name, for machines whose nodes do not use JSON (default JSON for every machine). */
  readonly codecs?: Readonly<Record<string, Codec>>;
  /** Mutual TLS, when the nodes use it: a certificate signed by the nodes' CA. */
  readonly tls?: TlsOptions;
}

export interface FleetClientEvents {
  /** Failures not tied to one call: a node that refused this client's secret, an unreadable record. */
  error: ErrorEvent;
}

/** The fleet view is read again before a request once it is this old (a request that finds no node re-reads at once). */
const VIEW_MAX_AGE_MS = 1000;
/** A request to a node not connected yet waits this long for the connection before it tries another. */
const CONNECT_WAIT_MS = 1000;

/** Open a fleet client. Resolves at once: nodes are connected to when a request first needs them. */
export async function connectFleet(options: ConnectFleetOptions): Promise<FleetClient> {
  const r = new OptionReader(options, 'connectFleet options');
  const store = readStore(r);
  const keys = new FleetKeys(r.string('fleet', '', 64));
  const secret = r.required<string | Uint8Array>('secret', (v) =>
    typeof v === 'string' || v instanceof Uint8Array ? undefined : 'must be a string or bytes (the nodes’ secret)',
  );
  const requestTimeoutMs = r.integer('requestTimeoutMs', 5000, { min: 1, max: 3_600_000 });
  const codecs = r.optional<Readonly<Record<string, Codec>>>('codecs', (v) =>
    v !== null &&
    typeof v === 'object' &&
    Object.values(v).every(
      (c) =>
        c !== null &&
        typeof c === 'object' &&
        typeof (c as Codec).encode === 'function' &&
        typeof (c as Codec).decode === 'function',
    )
      ? undefined
      : 'must map state machine names to codecs ({ encode, decode })',
  );
  const tls = r.optional<TlsOptions>('tls', (v) =>
    v !== null && typeof v === 'object' ? undefined : 'must be { key, cert, ca } (PEM)',
  );
  r.done();
  const client = new FleetClient(store, keys, requestTimeoutMs, codecs ?? {});
  await client.start(secret, tls);
  return client;
}

export class FleetClient extends TypedEmitter<FleetClientEvents> {
  readonly fleet: string;
  /** This client's id on the nodes' connections (CLIENT_ID_PREFIX + random). */
  readonly id = `${CLIENT_ID_PREFIX}${randomBytes(8).toString('hex')}`;
  readonly #store: Store;
  readonly #keys: FleetKeys;
  readonly #requestTimeoutMs: number;
  readonly #codecs: Readonly<Record<string, Codec>>;
  readonly #corruption: CorruptionReports;
  /** Decoded control-plane records, reused while unchanged (io.ts FleetRecordCache). */
  readonly #records = new FleetRecordCache();
  #transport: Transport | undefined;
  #view: FleetView | undefined;
  #viewAtMs = 0;
  /** The read of the fleet that retries of calls share (#sharedRefresh). */
  #retryRead: Promise<FleetView> | undefined;
  /** Node addresses given to the transport, by node id. */
  readonly #addresses = new Map<string, string>();
  readonly #routes: GroupRoutes;
  /** Nodes that refused this client's proof (wrong secret), until one connects. */
  readonly #refusedBy = new Map<string, PeerAuthError>();
  /** Requests waiting for a node's connection, by node id. */
  readonly #waiting = new Map<string, Set<() => void>>();
  /** A re-read of the fleet started by a request's retry round (at most one at a time). */
  #refreshing: Promise<unknown> | undefined;
  #closed = false;

  /** @internal use connectFleet() */
  constructor(store: Store, keys: FleetKeys, requestTimeoutMs: number, codecs: Readonly<Record<string, Codec>>) {
    super();
    this.#store = store;
    this.#keys = keys;
    this.fleet = keys.fleet;
    this.#requestTimeoutMs = requestTimeoutMs;
    this.#codecs = codecs;
    this.#corruption = new CorruptionReports((error) =>
      this.emit('error', { error, context: 'fleet client: reading' }),
    );
    this.#routes = new GroupRoutes({
      clock: store.clock,
      requestTimeoutMs,
      request: (peer, payload, timeoutMs) => this.#request(peer, payload, timeoutMs),
      codecOf: (machine) => this.#codecs[machine],
      view: () => this.#freshView(),
      reachable: (n, view) => {
        const node = view?.nodes.get(n);
        return node !== undefined && this.#connectable(node.id, node.address);
      },
    });
  }

  /** @internal */
  async start(secret: string | Uint8Array, tls: TlsOptions | undefined): Promise<void> {
    this.#transport = await Transport.start({
      id: this.id,
      client: true,
      // The nodes' cluster id (src/runtime/fleet/node.ts): a client of another fleet is refused.
      clusterId: `fleet:${this.fleet}`,
      secret,
      peers: {},
      onMessage: () => undefined,
      onError: (error) => {
        if (error instanceof PeerAuthError) this.#refusedBy.set(error.peer, error);
        this.emit('error', { error, context: 'fleet client: connecting to nodes' });
      },
      onPeerState: (peer, connected) => {
        if (!connected) return;
        this.#refusedBy.delete(peer);
        const waiting = this.#waiting.get(peer);
        this.#waiting.delete(peer);
        for (const wake of waiting ?? []) wake();
      },
      ...(tls !== undefined ? { tls } : {}),
    });
  }

  /**
   * Apply `command` to group `name` exactly once; resolves with the state machine's result. Errors as
   * FleetNode.command: FleetGroupNotFoundError, NoQuorumError (no leader: not applied), TimeoutError (`outcome`
   * 'unknown' once it may have reached a replica), LimitExceededError, and PeerAuthError when the nodes refused
   * this client's secret.
   */
  async command<R = unknown>(name: string, command: unknown, options: FleetRequestOptions = {}): Promise<R> {
    const timeoutMs = this.#timeout(options);
    return this.#call(
      name,
      timeoutMs,
      (c, remainingMs) => c.command(command, { timeoutMs: remainingMs }) as Promise<R>,
    );
  }

  /** Read group `name` with its state machine's `query` (default consistency 'linearizable'). */
  async query<A = unknown>(name: string, query: unknown, options: FleetQueryOptions = {}): Promise<A> {
    const timeoutMs = this.#timeout(options, QUERY_OPTIONS);
    const consistency: Consistency = options.consistency ?? 'linearizable';
    return this.#call(
      name,
      timeoutMs,
      (c, remainingMs) => c.query(query, { timeoutMs: remainingMs, consistency }) as Promise<A>,
    );
  }

  /** Every group of the fleet, read from the store now. */
  async groups(): Promise<FleetGroupInfo[]> {
    return groupInfos(await this.#refresh());
  }

  /** The fleet as the store says now (src/protocol/fleet/status.ts). */
  async status(): Promise<FleetStatus> {
    return fleetStatus(this.fleet, await this.#refresh());
  }

  /**
   * Add a group running state machine `machine` (a name in the nodes' `machines`). While nodes are live and none
   * runs it (a misspelt name, most likely), InvalidArgumentError naming the machines they run, unless
   * `machineCheck: false`; with no node live yet (groups added before the fleet starts) nothing is checked. The
   * coordinator places the group on the nodes that run its machine; while none does, status says it is unplaced
   * and why. FleetGroupExistsError when the name is taken.
   */
  async addGroup(
    name: string,
    options: { readonly replicas: number; readonly machine: string; readonly machineCheck?: boolean },
  ): Promise<GroupRecord> {
    this.#check();
    validateFleetGroupName(name);
    checkCallOptions(options, ['replicas', 'machine', 'machineCheck'], `addGroup(${name}) options`);
    const machine = validateMachineName(options.machine);
    if (options.machineCheck !== undefined && typeof options.machineCheck !== 'boolean') {
      throw new InvalidArgumentError(`addGroup(${name}) options.machineCheck must be true or false`);
    }
    if (options.machineCheck !== false) {
      checkMachineRunners(await this.#refresh(), this.fleet, name, machine, 'pass machineCheck: false');
    }
    const g = await addGroup(this.#store, this.#keys, name, { replicas: options.replicas, machine });
    // The next request reads the fleet again: it may be for this group.
    this.#view = undefined;
    return g;
  }

  /** Remove a group: its replicas stop and delete their data on every node. FleetGroupNotFoundError when absent. */
  async removeGroup(name: string): Promise<GroupRecord> {
    this.#check();
    const g = await removeGroup(this.#store, this.#keys, validateFleetGroupName(name));
    this.#view = undefined;
    return g;
  }

  /** Close the connections to the nodes; calls in flight fail with ClosedError. The store stays open. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const waiting of this.#waiting.values()) for (const wake of waiting) wake();
    this.#waiting.clear();
    await this.#transport?.close();
  }

  // ---- internals ----

  #check(): void {
    if (this.#closed) throw new ClosedError(`fleet client of ${this.fleet}`);
  }

  #timeout(options: FleetRequestOptions, known: readonly string[] = REQUEST_OPTIONS): number {
    this.#check();
    checkCallOptions(options, known, `fleet ${this.fleet}: the call's options`);
    const t = options.timeoutMs ?? this.#requestTimeoutMs;
    if (!Number.isFinite(t) || t <= 0) {
      throw new InvalidArgumentError(`fleet ${this.fleet}: timeoutMs must be a positive number of ms, got ${t}`);
    }
    return t;
  }

  /** A read of the fleet already on its way, or a new one (for retries: not for "perhaps added since"). */
  #sharedRefresh(): Promise<FleetView> {
    this.#retryRead ??= this.#refresh().finally(() => {
      this.#retryRead = undefined;
    });
    return this.#retryRead;
  }

  async #refresh(): Promise<FleetView> {
    this.#check();
    const view = await readFleetView(this.#store, this.#keys, this.#corruption.report, this.#records);
    this.#corruption.endRound();
    this.#view = view;
    this.#viewAtMs = this.#store.clock.now();
    // Nodes that left are forgotten (their connections closed); the others are connected to when needed.
    for (const id of [...this.#addresses.keys()]) {
      if (!view.nodes.has(id)) {
        this.#addresses.delete(id);
        this.#transport?.removePeer(id);
      }
    }
    return view;
  }

  /**
   * Run `fn` on the group's remote client, once some live node is known to hold the group: while none is (it is
   * being placed), read the fleet again, within `timeoutMs` (NoQuorumError when it runs out). A call that ran out
   * of time while every node refused this client's proof throws that refusal instead: the secret is wrong.
   */
  async #call<T>(
    name: string,
    timeoutMs: number,
    fn: (client: RemoteGroupClient, remainingMs: number) => Promise<T>,
  ): Promise<T> {
    validateFleetGroupName(name);
    const start = this.#store.clock.now();
    let id = '';
    for (let attempt = 0; ; attempt++) {
      let view = this.#view;
      let fresh = false;
      if (view === undefined || attempt > 0 || this.#store.clock.now() - this.#viewAtMs > VIEW_MAX_AGE_MS) {
        // A retry joins a read already on its way (many calls waiting for one group read the fleet once at a time).
        view = await (attempt > 0 ? this.#sharedRefresh() : this.#refresh());
        fresh = true;
      }
      let g = view.groups.get(name);
      // Perhaps added since the view was read: read again before saying it does not exist.
      if (g === undefined && !fresh) {
        view = await this.#refresh();
        g = view.groups.get(name);
      }
      if (g === undefined) {
        // Claimed: a node keeps a replica of it after the control store lost its records; it comes back — wait.
        const claim = view.claims.get(name);
        if (claim === undefined) throw new FleetGroupNotFoundError(name, this.fleet);
        const remainingMs = timeoutMs - (this.#store.clock.now() - start);
        if (remainingMs < MIN_WAIT_MS) throw new FleetGroupNotFoundError(name, this.fleet, { node: claim.node });
        this.#check();
        await new Promise<void>((resolve) => this.#store.clock.setTimeout(resolve, Math.min(100, remainingMs)));
        continue;
      }
      id = groupRaftId(g);
      const remainingMs = timeoutMs - (this.#store.clock.now() - start);
      if (this.#routes.candidates(name, id).length > 0) {
        try {
          return await fn(this.#routes.client(id, g.machine), remainingMs);
        } catch (err) {
          throw this.#refusal(err) ?? err;
        }
      }
      if (remainingMs < MIN_WAIT_MS) throw new NoQuorumError(id, this.#store.clock.now() - start);
      this.#check();
      await new Promise<void>((resolve) => this.#store.clock.setTimeout(resolve, Math.min(100, remainingMs)));
    }
  }

  /** The nodes' refusal of this client's proof, when that is why `err` happened. */
  #refusal(err: unknown): PeerAuthError | undefined {
    if (!(err instanceof TimeoutError || err instanceof NoQuorumError || err instanceof PeerUnavailableError)) {
      return undefined;
    }
    const refused = this.#refusedBy.values().next().value;
    if (refused === undefined) return undefined;
    return new PeerAuthError(
      refused.peer,
      `it refused this client's proof: give connectFleet (or --secret-file) the fleet nodes' secret`,
      { cause: err },
    );
  }

  /**
   * The view, asked at every retry round of a call: a call that outlives it (its members moved, a node died) gets a
   * fresh one for its next round.
   */
  #freshView(): FleetView | undefined {
    if (this.#refreshing === undefined && !this.#closed && this.#store.clock.now() - this.#viewAtMs > VIEW_MAX_AGE_MS) {
      this.#refreshing = this.#refresh()
        .catch((error: unknown) => this.emit('error', { error, context: 'fleet client: reading the fleet' }))
        .finally(() => (this.#refreshing = undefined));
    }
    return this.#view;
  }

  /** Give the transport the node's address (it dials at once); false when the address cannot be used. */
  #connectable(id: string, address: string): boolean {
    if (this.#addresses.get(id) === address) return true;
    let parsed;
    try {
      parsed = parseAddress(address, `node ${id}'s address`);
    } catch (error) {
      this.emit('error', { error, context: `fleet client: node ${id}` });
      return false;
    }
    this.#transport?.setPeer(id, parsed);
    this.#addresses.set(id, address);
    return true;
  }

  /** One request to a node; one not connected yet gets a moment to connect (a new client has no connection). */
  async #request(peer: string, payload: Uint8Array, timeoutMs: number): Promise<Uint8Array> {
    const t = this.#transport;
    if (t === undefined || this.#closed) throw new ClosedError(`fleet client of ${this.fleet}`);
    if (t.peerIds().includes(peer) && !t.stats(peer).connected) {
      await new Promise<void>((resolve) => {
        let waiting = this.#waiting.get(peer);
        if (waiting === undefined) this.#waiting.set(peer, (waiting = new Set()));
        const done = (): void => {
          this.#store.clock.clearTimeout(timer);
          waiting.delete(done);
          resolve();
        };
        const timer = this.#store.clock.setTimeout(done, Math.min(CONNECT_WAIT_MS, timeoutMs / 2));
        waiting.add(done);
      });
    }
    if (this.#closed) throw new ClosedError(`fleet client of ${this.fleet}`);
    return t.request(peer, payload, timeoutMs);
  }
}
