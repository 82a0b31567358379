/**
 * A Raft node: one process's share of a Raft cluster. It owns one write-ahead log (every group's entries and hard
 * state, group commit: one fdatasync per batch for all of them), one transport (one authenticated connection per
 * peer node, carrying every group's messages), one ticker, and the replicas of the groups opened on it.
 *
 * Everything with a clock, a disk, a network or randomness is injected through `io` (real ones by default), so the
 * simulator runs this very code on virtual time, a simulated disk and a simulated network (src/sim/raft.ts).
 *
 * Idle groups cost little: a leader whose group has been idle for `quiesceAfterTicks` stops heartbeating it
 * (followers stop their election timers), and any request, message or a peer connection going down or up wakes it.
 */
import { ClosedError, DiskStalledError, InvalidArgumentError, invariant } from '../../errors.js';
import { TypedEmitter, type ErrorEvent } from '../../events.js';
import { OptionReader } from '../../options.js';
import type { CoreOptions } from '../options.js';
import { NO_RAFT_MUTANTS, type RaftMutants } from '../mutants.js';
import type { Message, NodeId } from '../messages.js';
import {
  Transport,
  tcpNetwork,
  type Network,
  type PeerAddress,
  type PeerStats,
  type Timers,
  type TlsOptions,
} from '../transport/transport.js';
import type { Disk } from '../wal/disk.js';
import { FsDisk } from '../wal/fs-disk.js';
import { lockDataDir } from './data-dir-lock.js';
import { mkdir } from 'node:fs/promises';
import { Wal, type WalOptions } from '../wal/wal.js';
import { RaftGroup } from './group.js';
import { Replica, type ReplicaObserver } from './replica.js';
import { NodeIdentity } from './identity.js';
import { VoteGuard } from './vote-guard.js';
import { newIncarnation } from '../transport/auth.js';
import { jsonCodec, seedSnapshotData, type Codec, type StateMachine } from './state-machine.js';

/** What the simulator (or a test) injects instead of the real clock, disk, network and randomness. */
export interface RaftNodeIo {
  readonly disk?: Disk;
  readonly network?: Network;
  readonly timers?: Timers;
  /** Monotonic milliseconds. */
  readonly clock?: () => number;
  readonly random?: () => number;
  /** Every outgoing message goes through it (the simulator's message faults); `deliver` hands it to the transport. */
  readonly send?: (to: NodeId, groupId: string, message: Message, deliver: () => void) => void;
  /** Deliberately broken variants (the simulator's `--mutant`); never in production. */
  readonly mutants?: RaftMutants;
  /** @internal The simulator's invariant checker: sees every replica's Readies, applies and restores. */
  readonly observer?: ReplicaObserver;
}

export interface RaftNodeOptions {
  /** This node's id: stable across restarts, the same in every other node's `peers`. */
  readonly id: string;
  /** Where this node's write-ahead log and snapshots live (created when missing). One process per directory. */
  readonly dataDir?: string;
  /** The address to listen on for peers, `host:port` (port 0: any free port). */
  readonly listen: string;
  /**
   * The other nodes known at start: id → `host:port` (may be `{}`). More are added, moved or removed while the node
   * runs with `setPeer` and `removePeer`.
   */
  readonly peers: Readonly<Record<string, string>>;
  /** The cluster's shared secret (at least 16 bytes, the same on every node): peers prove they know it. */
  readonly secret: string | Uint8Array;
  /** The cluster's name (default 'rebalancer'): nodes of another cluster are refused even with the same secret. */
  readonly cluster?: string;
  /** Mutual TLS between nodes (PEM key, certificate and CA). */
  readonly tls?: TlsOptions;
  /** The Raft tick (default 100 ms). Election timeouts are electionTicks..2×electionTicks ticks. */
  readonly tickMs?: number;
  /** Default 10 (1–2 s with the default tick). */
  readonly electionTicks?: number;
  /** Default 1. */
  readonly heartbeatTicks?: number;
  /** A group idle for this many ticks stops heartbeating (default 2 × electionTicks). */
  readonly quiesceAfterTicks?: number;
  /** Default time of a command or query (default 5000 ms). */
  readonly requestTimeoutMs?: number;
  /**
   * Node-to-node requests (request/handleRequests), per peer: requests waiting for an answer from it, and its
   * requests run here at a time (default 1024).
   */
  readonly maxRequestsInFlight?: number;
  readonly wal?: WalOptions;
  readonly io?: RaftNodeIo;
}

export interface GroupOptions<S, C, Q, R, A> {
  /**
   * The node ids of the group's founding voters, the same on every replica of the group, whenever it is opened
   * (ignored once the group has state on this node). Without `join`, each is this node or one of its peers.
   */
  readonly members: readonly string[];
  /**
   * This replica is new to a group that already runs: it starts from the founding membership (`members`) like every
   * replica, but holds its votes (grants none, never campaigns) until it has heard from a leader and caught up with
   * it (VoteHold 'leader-seen', docs/raft.md), and waits for that leader to add it (`changeMembership` addLearner,
   * then addVoter) and send it the log or a snapshot. Without the hold, new replicas started from the founding
   * membership could elect one of themselves with an empty log. A group with state on this node is recovered as
   * usual (no hold).
   */
  readonly join?: boolean;
  readonly stateMachine: StateMachine<S, C, Q, R, A>;
  /** How commands, results and the session table become bytes (default JSON). */
  readonly codec?: Codec;
  /** Let the leader serve `consistency: 'lease'` reads from its lease (default false; see docs/raft.md). */
  readonly leaseReads?: boolean;
  /** Snapshot the state machine and compact the log every this many applied entries (default 10 000). */
  readonly snapshotEntries?: number;
  /** Client sessions remembered for exactly-once commands (default 10 000; least recently used go first). */
  readonly maxSessions?: number;
  /** The largest command, encoded (default 1 MiB). */
  readonly maxCommandBytes?: number;
  /** Default time of a command or query on this group (default: the node's). */
  readonly requestTimeoutMs?: number;
  /** Flow-control limits of the core (maxInflightMessages, maxUncommittedBytes, …; see src/raft/options.ts). */
  readonly core?: Pick<
    CoreOptions,
    | 'maxMessageBytes'
    | 'maxInflightMessages'
    | 'maxInflightBytes'
    | 'maxUncommittedBytes'
    | 'maxApplyBytes'
    | 'snapshotChunkBytes'
  >;
}

export interface RaftNodeEvents {
  error: ErrorEvent;
  /** A group's leader (as this node knows it) changed; `leader` undefined while none is known. */
  leader: { readonly group: string; readonly leader: NodeId | undefined; readonly term: number };
}

const realTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout> | undefined),
};

export function parseAddress(value: string, where: string): PeerAddress {
  const m = /^(\[[^\]]+\]|[^:\s]+):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) {
    throw new InvalidArgumentError(`${where} must be host:port (e.g. 127.0.0.1:7001), got ${JSON.stringify(value)}`);
  }
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

interface Timing {
  readonly tickMs: number;
  readonly electionTicks: number;
  readonly heartbeatTicks: number;
  readonly quiesceAfterTicks: number;
  readonly requestTimeoutMs: number;
}

/**
 * Raft group names: 1–110 characters, so that a snapshot file's name (`snap-<name in hex>-<index>.snap.tmp`) stays
 * within the 255 bytes file systems allow.
 */
const GROUP_NAME = /^[A-Za-z0-9._:/-]{1,110}$/;
/** A log write on its way this long is reported (DiskStalledError): an fsync that long is no normal disk's. */
export const DISK_STALL_REPORT_MS = 5000;

export class RaftNode extends TypedEmitter<RaftNodeEvents> {
  readonly id: string;
  readonly #wal: Wal;
  readonly #transport: Transport;
  /** Holds the replicas' votes while this node cannot know whether it voted before (vote-guard.ts). */
  readonly #guard: VoteGuard;
  readonly #timers: Timers;
  readonly #clock: () => number;
  readonly #random: () => number;
  readonly #send: RaftNodeIo['send'];
  readonly #mutants: RaftMutants;
  readonly #observer: ReplicaObserver | undefined;
  readonly #peers: Map<string, string>;
  readonly #incarnation: string;
  readonly #replicas = new Map<string, Replica>();
  /** Groups whose dropGroup is on its way: openGroup refuses them meanwhile. */
  readonly #dropping = new Set<string>();
  readonly #o: Timing;
  #ticker: unknown;
  /** Releases the data directory's lock (real disks only). */
  #unlock: (() => Promise<void>) | undefined;
  /** When the last tick was due (monotonic ms): ticks follow elapsed time, see catchUp(). */
  #lastTickAt: number;
  /** The log's batch count when it was last seen moving (or idle), since when, and whether a stall was reported. */
  #disk = { batches: 0, sinceMs: 0, reported: false };
  #closed = false;
  #requestHandler: ((from: string, payload: Uint8Array) => Promise<Uint8Array>) | undefined;
  /** Messages for groups not open here (yet), dropped: Raft retransmits. */
  droppedMessages = 0;

  private constructor(
    id: string,
    wal: Wal,
    transport: Transport,
    io: Required<Omit<RaftNodeIo, 'disk' | 'network' | 'send' | 'mutants' | 'observer'>> & {
      send: RaftNodeIo['send'] | undefined;
      observer: ReplicaObserver | undefined;
    },
    mutants: RaftMutants,
    peers: Map<string, string>,
    o: Timing,
    guard: VoteGuard,
    incarnation: string,
  ) {
    super();
    this.id = id;
    this.#wal = wal;
    this.#transport = transport;
    this.#guard = guard;
    this.#timers = io.timers;
    this.#clock = io.clock;
    this.#random = io.random;
    this.#send = io.send;
    this.#observer = io.observer;
    this.#mutants = mutants;
    this.#peers = peers;
    this.#incarnation = incarnation;
    this.#o = o;
    this.#lastTickAt = io.clock();
  }

  /** Open the log in `dataDir` (recovering it), listen for peers and start ticking. */
  static async start(options: RaftNodeOptions): Promise<RaftNode> {
    const r = new OptionReader(options, 'startRaftNode options');
    const id = r.string('id', '', 256);
    if (id === '') throw new InvalidArgumentError('startRaftNode options.id must be a non-empty string (this node)');
    const dataDir = r.string('dataDir', undefined, 4096);
    const listen = parseAddress(r.string('listen', '127.0.0.1:0'), 'startRaftNode options.listen');
    const rawPeers = r.required<Record<string, string>>('peers', (v) =>
      v !== null && typeof v === 'object' && !Array.isArray(v) ? undefined : "must be an object: node id → 'host:port'",
    );
    const secret = r.required<string | Uint8Array>('secret', (v) =>
      typeof v === 'string' || v instanceof Uint8Array ? undefined : 'must be a string or bytes',
    );
    const cluster = r.string('cluster', 'rebalancer', 256);
    const tls = r.optional<TlsOptions>('tls', (v) =>
      v !== null && typeof v === 'object' ? undefined : 'must be { key, cert, ca }',
    );
    const tickMs = r.integer('tickMs', 100, { min: 1, max: 60_000 });
    const electionTicks = r.integer('electionTicks', 10, { min: 3, max: 10_000 });
    const heartbeatTicks = r.integer('heartbeatTicks', 1, { min: 1, max: electionTicks - 1 });
    const quiesceAfterTicks = r.integer('quiesceAfterTicks', 2 * electionTicks, { min: 1 });
    const requestTimeoutMs = r.integer('requestTimeoutMs', 5000, { min: 1 });
    const maxRequestsInFlight = r.integer('maxRequestsInFlight', 1024, { min: 1, max: 1_000_000 });
    const walOptions = r.optional<WalOptions>('wal', (v) =>
      v !== null && typeof v === 'object' ? undefined : 'must be an object',
    );
    const io =
      r.optional<RaftNodeIo>('io', (v) => (v !== null && typeof v === 'object' ? undefined : 'must be an object')) ??
      {};
    r.done();
    const peers = new Map<string, string>();
    const peerAddresses: Record<string, PeerAddress> = {};
    for (const [peer, addr] of Object.entries(rawPeers)) {
      if (peer === id) throw new InvalidArgumentError(`startRaftNode options.peers must not list this node (${id})`);
      if (typeof addr !== 'string') {
        throw new InvalidArgumentError(`startRaftNode options.peers.${peer} must be 'host:port', got ${typeof addr}`);
      }
      peerAddresses[peer] = parseAddress(addr, `startRaftNode options.peers.${peer}`);
      peers.set(peer, addr);
    }
    if (io.disk === undefined && dataDir === undefined) {
      throw new InvalidArgumentError("startRaftNode options.dataDir is required: the directory of this node's log");
    }
    let unlock: (() => Promise<void>) | undefined;
    if (io.disk === undefined) {
      await mkdir(dataDir!, { recursive: true });
      unlock = await lockDataDir(dataDir!);
    }
    const disk = io.disk ?? (await FsDisk.open(dataDir!));
    const mutants = io.mutants ?? NO_RAFT_MUTANTS;
    let wal: Wal;
    try {
      wal = await Wal.open(disk, { ...(walOptions ?? {}), ...(mutants.size > 0 ? { mutants } : {}) });
    } catch (err) {
      await unlock?.();
      throw err;
    }
    const timers = io.timers ?? realTimers;
    const random = io.random ?? Math.random;
    const clock = io.clock ?? (() => performance.now());
    // The transport starts before the node exists: its callbacks reach the node through this holder.
    const holder: { node?: RaftNode } = {};
    let transport: Transport;
    let guard: VoteGuard;
    let incarnation = '';
    try {
      // The incarnation of this data directory: from the injected randomness when there is one (the simulator).
      const identity = await NodeIdentity.open(disk, () =>
        io.random === undefined ? newIncarnation() : Uint8Array.from({ length: 16 }, () => (random() * 256) | 0),
      );
      incarnation = Buffer.from(identity.incarnation).toString('hex');
      guard = new VoteGuard({
        nodeId: id,
        identity,
        peers: [...peers.keys()],
        report: (e, context) => holder.node?.reportError(e, context),
        peerLostData: (peer) => {
          if (holder.node !== undefined) holder.node.#peerLostData(peer);
        },
      });
      transport = await Transport.start({
        incarnation: identity.incarnation,
        knownIncarnation: (peer) => identity.known(peer),
        onPeerIdentity: (peer, identity) => guard.onPeerIdentity(peer, identity),
        id,
        clusterId: cluster,
        secret,
        listen,
        peers: peerAddresses,
        onMessage: (from, groupId, m) => {
          if (holder.node !== undefined) holder.node.#receive(from, groupId, m);
        },
        onError: (e) => holder.node?.reportError(e, 'raft transport'),
        onRequest: (from, payload) =>
          holder.node === undefined ? undefined : holder.node.#serveRequest(from, payload),
        maxRequestsInFlight,
        onPeerState: (peer, connected) => {
          if (holder.node === undefined) return;
          holder.node.#wakeLedBy(peer);
          if (!connected) holder.node.#leaderUnreachable(peer);
          // A peer (re)connected may have restarted and recovered less than it acknowledged (a torn tail on a disk
          // that lied about fsync): re-probe its log rather than trust the match recorded before.
          if (connected) holder.node.#peerLostData(peer);
        },
        random,
        timers,
        ...(tls !== undefined ? { tls } : {}),
        network: io.network ?? tcpNetwork(),
      });
    } catch (err) {
      await wal.close();
      await unlock?.();
      throw err;
    }
    const node = new RaftNode(
      id,
      wal,
      transport,
      { timers, clock, random, send: io.send, observer: io.observer },
      mutants,
      peers,
      {
        tickMs,
        electionTicks,
        heartbeatTicks,
        quiesceAfterTicks,
        requestTimeoutMs,
      },
      guard,
      incarnation,
    );
    holder.node = node;
    node.#unlock = unlock;
    node.#schedule();
    return node;
  }

  /** The port peers reach this node on (useful with listen port 0). */
  get port(): number {
    return this.#transport.port;
  }

  /**
   * The incarnation of this node's data directory (32 hex digits): made with the directory, the same across
   * restarts, new after the directory is wiped (docs/raft.md, "A node that lost its data").
   */
  get incarnation(): string {
    return this.#incarnation;
  }

  /** The peers known now: id → `host:port`. */
  peers(): Record<string, string> {
    return Object.fromEntries(this.#peers);
  }

  /**
   * Each known peer's connection now (connected, messages and frames sent and received, what waits in its queue and
   * what was dropped), for status pages and for whoever reads a failure: one-way traffic shows here.
   */
  peerStats(): Record<string, PeerStats & { readonly address: string }> {
    const out: Record<string, PeerStats & { readonly address: string }> = {};
    for (const [id, address] of this.#peers) out[id] = { address, ...this.#transport.stats(id) };
    return out;
  }

  /**
   * Add peer `id` at `address` (`host:port`), or move it there: a changed address closes its connection, which is
   * dialed again at the new one. Both nodes must know each other before they connect; the order does not matter
   * (the one that dials retries with its backoff until the other knows it).
   */
  setPeer(id: string, address: string): void {
    if (this.#closed) throw new ClosedError(`raft node ${this.id}`);
    if (typeof id !== 'string' || id === '' || id.length > 256 || id === this.id) {
      throw new InvalidArgumentError(
        `setPeer: the id must be another node's non-empty id (at most 256 characters), got ${JSON.stringify(id)}`,
      );
    }
    const parsed = parseAddress(address, `setPeer(${id}) address`);
    this.#transport.setPeer(id, parsed);
    this.#peers.set(id, address);
    this.#guard.addPeer(id);
  }

  /**
   * Forget peer `id`: its connection closes and messages to it are dropped. Replicas of groups it is a member of
   * keep working (remove it from their memberships first when it is gone for good). Unknown ids are a no-op.
   */
  removePeer(id: string): void {
    if (this.#closed) throw new ClosedError(`raft node ${this.id}`);
    if (!this.#peers.has(id)) return;
    this.#peers.delete(id);
    this.#transport.removePeer(id);
    this.#guard.removePeer(id);
  }

  /** The groups this node has state for in its log (open them again after a restart). */
  storedGroups(): string[] {
    return this.#wal.groups();
  }

  /**
   * Open (create, or recover from the log) this node's replica of group `name`. Open it on every member node with
   * the same `members` and an equivalent state machine.
   */
  openGroup<S, C, Q, R, A>(name: string, options: GroupOptions<S, C, Q, R, A>): RaftGroup<C, Q, R, A> {
    if (this.#closed) throw new ClosedError(`raft node ${this.id}`);
    if (typeof name !== 'string' || !GROUP_NAME.test(name)) {
      throw new InvalidArgumentError(
        `a raft group name must be 1–110 characters of letters, digits and . _ : / -, got ${JSON.stringify(name)}`,
      );
    }
    if (this.#replicas.has(name)) throw new InvalidArgumentError(`raft group ${name} is already open on ${this.id}`);
    if (this.#dropping.has(name)) {
      throw new InvalidArgumentError(
        `raft group ${name} is being dropped on ${this.id}: await dropGroup, then open it`,
      );
    }
    const r = new OptionReader(options, `openGroup(${name}) options`);
    const members = r.stringList('members', []);
    const join = r.boolean('join', false);
    if (members.length === 0) {
      throw new InvalidArgumentError(
        `openGroup(${name}) options.members must list the group's founding voters (the same on every replica${
          join ? ', also when joining' : ''
        })`,
      );
    }
    // A joining replica's founding members may be long gone: it never sends to them (it holds its votes), and the
    // log it receives tells it the membership in force.
    if (!join) {
      for (const m of members) {
        if (m !== this.id && !this.#peers.has(m)) {
          throw new InvalidArgumentError(`openGroup(${name}): member ${m} is neither this node nor one of its peers`);
        }
      }
    }
    const { stateMachine, codec, leaseReads, snapshotEntries, maxSessions, maxCommandBytes } = readMachineOptions<
      S,
      C,
      Q,
      R,
      A
    >(r);
    const requestTimeoutMs = r.integer('requestTimeoutMs', this.#o.requestTimeoutMs, { min: 1 });
    const core = r.optional<GroupOptions<S, C, Q, R, A>['core']>('core', (v) =>
      v !== null && typeof v === 'object' ? undefined : 'must be an object',
    );
    r.done();
    const fresh = !this.#wal.groups().includes(name);
    const storage = this.#wal.group(name, { voters: [...new Set(members)], learners: [] });
    const replica = new Replica({
      nodeId: this.id,
      groupId: name,
      storage,
      stateMachine: stateMachine as StateMachine<unknown, unknown, unknown, unknown>,
      codec,
      maxSessions,
      snapshotEntries,
      core: {
        ...(core ?? {}),
        random: this.#random,
        electionTicks: this.#o.electionTicks,
        heartbeatTicks: this.#o.heartbeatTicks,
        readMode: leaseReads ? 'lease' : 'safe',
        maxProposalBytes: maxCommandBytes,
        ...(this.#mutants.size > 0 ? { mutants: this.#mutants } : {}),
      },
      send: (m) => this.#sendOut(name, m),
      onChange: (rep) => this.#changed(rep),
      onError: (error, context) => this.reportError(error, context),
      observer: this.#observer,
    });
    this.#replicas.set(name, replica);
    this.#guard.attach(replica.core);
    if (join && fresh) replica.core.holdVotes('leader-seen');
    replica.process();
    return new RaftGroup<C, Q, R, A>(name, {
      replica,
      nodeId: this.id,
      codec,
      timers: this.#timers,
      now: this.#clock,
      random: this.#random,
      tickMs: this.#o.tickMs,
      electionTicks: this.#o.electionTicks,
      requestTimeoutMs,
      maxCommandBytes,
      addressOf: (node) => (node === this.id ? undefined : this.#peers.get(node)),
      catchUp: () => this.#catchUp(),
    });
  }

  /**
   * Create group `name` on this node from a state instead of the state machine's `initial()`: durably write a
   * snapshot at index 1 holding `state` (the state machine's snapshot() bytes, restored with its restore()), with
   * `members` as its voters and no client session; then `openGroup(name, …)` recovers it like any stored group.
   * Every other replica of the group must join it (`join: true`): one that started from `initial()` would apply the
   * log to another state. Replicas added later receive the snapshot from the leader (the log starts after it).
   * Refused with InvalidArgumentError when the group is open, being dropped, or already has state on this node.
   * This is how the fleet recovers a group that lost its majority from one surviving replica (docs/fleet.md, "A group that lost its majority").
   */
  async seedGroup(
    name: string,
    options: { readonly members: readonly string[]; readonly state: Uint8Array; readonly codec?: Codec },
  ): Promise<void> {
    if (this.#closed) throw new ClosedError(`raft node ${this.id}`);
    if (typeof name !== 'string' || !GROUP_NAME.test(name)) {
      throw new InvalidArgumentError(
        `a raft group name must be 1–110 characters of letters, digits and . _ : / -, got ${JSON.stringify(name)}`,
      );
    }
    if (this.#replicas.has(name) || this.#dropping.has(name) || this.#wal.groups().includes(name)) {
      throw new InvalidArgumentError(
        `seedGroup(${name}): the group already has state on node ${this.id}; a group is seeded only when it is new ` +
          'here (drop it first to seed it again)',
      );
    }
    const r = new OptionReader(options, `seedGroup(${name}) options`);
    const members = [...new Set(r.stringList('members', []))];
    const state = r.required<Uint8Array>('state', (v) =>
      v instanceof Uint8Array ? undefined : "must be bytes: the state machine's snapshot() of the state",
    );
    const codec = r.optional<Codec>('codec', (v) =>
      v !== null && typeof v === 'object' && typeof (v as Codec).encode === 'function'
        ? undefined
        : 'must be { encode, decode }',
    );
    r.done();
    if (members.length === 0) {
      throw new InvalidArgumentError(`seedGroup(${name}) options.members must list the group's voters`);
    }
    const membership = { voters: members, learners: [] };
    const storage = this.#wal.group(name, membership);
    // Term 1 for the snapshot and the hard state: the replica's first election is then in term 2, and its log (the
    // snapshot's last term 1) is as up to date as any joining replica's (empty) one.
    await storage.persist({
      snapshot: {
        meta: { index: 1, term: 1, membership },
        data: seedSnapshotData(state, codec ?? jsonCodec),
      },
      hardState: { term: 1, vote: '', commit: 1 },
    });
  }

  /**
   * Close this node's replica of group `name` without deleting anything: pending calls on it fail with
   * ClosedError; `openGroup` recovers it later. Not open: a no-op.
   */
  async closeGroup(name: string): Promise<void> {
    const r = this.#replicas.get(name);
    if (r === undefined) return;
    this.#replicas.delete(name);
    this.#guard.detach(r.core);
    await r.close(new ClosedError(`raft group ${name} on node ${this.id}`));
  }

  /**
   * Close this node's replica of group `name` (as closeGroup) and delete its state durably: a drop record in the
   * log, so that no recovery brings it back, then its snapshot files. It is no longer in `storedGroups()`; an
   * `openGroup` of the name afterwards starts a new, empty replica. Remove this node from the group's membership
   * first: a replica dropped while still a member is, to the others, a member that lost its log.
   */
  async dropGroup(name: string): Promise<void> {
    if (this.#closed) throw new ClosedError(`raft node ${this.id}`);
    if (this.#dropping.has(name)) {
      throw new InvalidArgumentError(`raft group ${name} is already being dropped on ${this.id}`);
    }
    this.#dropping.add(name);
    try {
      await this.closeGroup(name);
      if (this.#closed) throw new ClosedError(`raft node ${this.id}`);
      await this.#wal.drop(name);
    } finally {
      this.#dropping.delete(name);
    }
  }

  /**
   * Serve other nodes' `request()`s with `handler` (one handler per node; a second call replaces the first). What it
   * resolves with goes back to the caller; a throw or rejection reaches the caller as RemoteFailedError with its
   * code and message. Until a handler is set, callers get PeerUnavailableError (reason 'no-handler').
   */
  handleRequests(handler: (from: string, payload: Uint8Array) => Promise<Uint8Array>): void {
    if (this.#closed) throw new ClosedError(`raft node ${this.id}`);
    if (typeof handler !== 'function') {
      throw new InvalidArgumentError('handleRequests(handler): handler must be a function (from, payload) => bytes');
    }
    this.#requestHandler = handler;
  }

  /**
   * Send `payload` to `peer`'s request handler over the cluster's authenticated connection and resolve with its
   * answer. Never retried here (the caller picks where to go next). Rejects with PeerUnavailableError (no
   * connection now: nothing sent; the connection dropped: `outcome` 'unknown'; no handler there; an older release
   * there), RemoteFailedError (its handler threw), TimeoutError after `timeoutMs` (default requestTimeoutMs; outcome
   * 'unknown'), LimitExceededError (maxRequestsInFlight to that peer, or a payload or answer above a frame), or
   * ClosedError when this node closes.
   */
  request(peer: string, payload: Uint8Array, options: { readonly timeoutMs?: number } = {}): Promise<Uint8Array> {
    if (this.#closed) return Promise.reject(new ClosedError(`raft node ${this.id}`));
    if (!this.#peers.has(peer)) {
      return Promise.reject(
        new InvalidArgumentError(`raft node ${this.id}: request to ${JSON.stringify(peer)}, which is not a peer`),
      );
    }
    if (!(payload instanceof Uint8Array)) {
      return Promise.reject(new InvalidArgumentError('raft node request: payload must be a Uint8Array'));
    }
    return this.#transport.request(peer, payload, options.timeoutMs ?? this.#o.requestTimeoutMs);
  }

  /** Stop ticking, fail pending requests with ClosedError, close the transport and the log. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#timers.clearTimeout(this.#ticker);
    await Promise.all([...this.#replicas.values()].map((r) => r.close(new ClosedError(`raft node ${this.id}`))));
    await this.#transport.close();
    await this.#wal.close();
    await this.#unlock?.();
  }

  // ---- internals ----

  #serveRequest(from: string, payload: Uint8Array): Promise<Uint8Array> | undefined {
    const handler = this.#requestHandler;
    if (handler === undefined || this.#closed) return undefined;
    return handler(from, payload);
  }

  #schedule(): void {
    this.#ticker = this.#timers.setTimeout(() => {
      if (this.#closed) return;
      this.#catchUp();
      this.#watchDisk();
      this.#schedule();
    }, this.#o.tickMs);
  }

  /**
   * A log write that does not complete makes every replica here silent (each waits for its persist) and its leaders
   * step down (Core's persistStallTicks): the groups recover without this node, but nothing would say why. Said once
   * per stall, after DISK_STALL_REPORT_MS without a batch completing while one is on its way.
   */
  #watchDisk(): void {
    const now = this.#clock();
    const batches = this.#wal.stats.batches;
    if (!this.#wal.writing || batches !== this.#disk.batches) {
      this.#disk = { batches, sinceMs: now, reported: false };
      return;
    }
    const stalledMs = now - this.#disk.sinceMs;
    if (this.#disk.reported || stalledMs < DISK_STALL_REPORT_MS) return;
    this.#disk.reported = true;
    this.reportError(new DiskStalledError(this.id, Math.round(stalledMs)), 'raft log');
  }

  /**
   * Tick once per tick interval elapsed on the monotonic clock since the last tick, not once per timer callback: a
   * process that was paused (SIGSTOP, a long GC, a blocked event loop) must age its leases and timers by the time
   * that really passed before it steps a message or serves a read (docs/raft.md, "Lease reads"). Called by the
   * timer, before every received message and before every read. Bounded: beyond a few election timeouts more ticks
   * change nothing.
   */
  #catchUp(): void {
    if (this.#closed) return;
    const now = this.#clock();
    const due = Math.floor((now - this.#lastTickAt) / this.#o.tickMs);
    if (due <= 0) return;
    const cap = 4 * this.#o.electionTicks;
    this.#lastTickAt = due > cap ? now : this.#lastTickAt + due * this.#o.tickMs;
    this.#tick(Math.min(due, cap));
  }

  /**
   * `n` ticks. Leaders (and the vote guard) count every one: a lease must age by the time that really passed. Other
   * replicas count at most one per catch-up, as a Go ticker that drops ticks would: after a stall the timer runs
   * before the sockets are read, and counting the whole stall made every follower of thousands of groups campaign
   * although its leader's heartbeats were waiting unread (an election storm, seen at 10 000 groups on a loaded
   * box). Counting fewer ticks only delays a follower's election, which is always safe.
   */
  #tick(n: number): void {
    for (let i = 0; i < n; i++) this.#guard.tick();
    for (const r of this.#replicas.values()) {
      for (let i = 0; i < n; i++) {
        if (i > 0 && r.core.role !== 'leader') break;
        r.tick();
        if (
          r.core.role === 'leader' &&
          !r.core.quiesced &&
          r.idleTicks >= this.#o.quiesceAfterTicks &&
          r.core.quiesce()
        ) {
          r.process();
        }
      }
    }
  }

  #receive(from: string, groupId: string, m: Message): void {
    if (this.#closed) return;
    this.#catchUp();
    const r = this.#replicas.get(groupId);
    if (r === undefined || m.to !== this.id || m.from !== from) {
      this.droppedMessages++;
      return;
    }
    r.step(m);
  }

  #sendOut(groupId: string, m: Message): void {
    // No closure per message on this path (every message of every group goes through it): only the simulator's
    // hook gets one.
    if (m.from !== this.id) invariant(false, `node ${this.id} sending a message from ${m.from}`);
    if (this.#closed) return;
    if (this.#send === undefined) {
      this.#transport.send(m.to, groupId, m);
      return;
    }
    this.#send(m.to, groupId, m, () => {
      if (!this.#closed) this.#transport.send(m.to, groupId, m);
    });
  }

  /** A peer's connection went down or came (back) up: quiesced groups it led must watch their leader again. */
  #wakeLedBy(peer: string): void {
    for (const r of this.#replicas.values()) {
      if (r.core.quiesced && r.core.lead === peer) {
        r.core.wake();
        r.process();
      }
    }
  }

  /** The connection to `peer` went down: groups it led elect another leader soon (Core.leaderUnreachable). */
  #leaderUnreachable(peer: string): void {
    for (const r of this.#replicas.values()) {
      if (r.core.lead !== peer) continue;
      r.core.leaderUnreachable(peer);
      r.process();
    }
  }

  /** `peer` came back with another incarnation: the groups this node leads replicate to it from the start. */
  #peerLostData(peer: string): void {
    for (const r of this.#replicas.values()) {
      r.core.peerLostData(peer);
      r.process();
    }
  }

  #changed(r: Replica): void {
    this.emit('leader', { group: r.groupId, leader: r.lead === '' ? undefined : r.lead, term: r.core.term });
  }
}

/** What runs a group and how, read from `r` (openGroup, and the fleet's `machines`): one set of checks and defaults. */
export function readMachineOptions<S, C, Q, R, A>(
  r: OptionReader,
): {
  stateMachine: StateMachine<S, C, Q, R, A>;
  codec: Codec;
  leaseReads: boolean;
  snapshotEntries: number;
  maxSessions: number;
  maxCommandBytes: number;
} {
  const stateMachine = r.required<StateMachine<S, C, Q, R, A>>('stateMachine', (v) =>
    isStateMachine(v) ? undefined : 'must be { initial, command, query, snapshot, restore } (functions)',
  );
  const codec =
    r.optional<Codec>('codec', (v) =>
      v !== null &&
      typeof v === 'object' &&
      typeof (v as Codec).encode === 'function' &&
      typeof (v as Codec).decode === 'function'
        ? undefined
        : 'must be { encode, decode }',
    ) ?? jsonCodec;
  return {
    stateMachine,
    codec,
    leaseReads: r.boolean('leaseReads', false),
    snapshotEntries: r.integer('snapshotEntries', 10_000, { min: 1 }),
    maxSessions: r.integer('maxSessions', 10_000, { min: 1 }),
    maxCommandBytes: r.integer('maxCommandBytes', 1 << 20, { min: 64, max: 64 << 20 }),
  };
}

/** Whether `v` has the five functions of a StateMachine. */
export function isStateMachine(v: unknown): v is StateMachine<unknown, unknown, unknown, unknown, unknown> {
  return (
    v !== null &&
    typeof v === 'object' &&
    ['initial', 'command', 'query', 'snapshot', 'restore'].every(
      (k) => typeof (v as Record<string, unknown>)[k] === 'function',
    )
  );
}

/** Start a Raft node (see RaftNodeOptions): `const node = await startRaftNode({ id, dataDir, listen, peers, secret })`. */
export function startRaftNode(options: RaftNodeOptions): Promise<RaftNode> {
  return RaftNode.start(options);
}
