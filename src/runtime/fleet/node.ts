/**
 * A fleet node: one process's share of a fleet (docs/fleet.md). It joins the control plane (FleetControl: its node
 * record on a store session, the coordinator election, the coordinator while elected) and runs a Raft node holding
 * the replicas the coordinator's desired records give it. Three loops, none of which blocks another:
 *
 * 1. The round (on every watch hint under the fleet's prefix and the tick, paced by its cost): read the fleet's
 *    records, learn peers' addresses, and open or drop replicas as `decideReplicas` says
 *    (src/protocol/fleet/replicas.ts).
 * 2. The steps (over every replica after each round and every five ticks; over one replica after its leader
 *    changed or its membership change finished): for each group this node leads, one membership change or
 *    leadership transfer toward the desired record, chosen by `nextStep` (src/protocol/fleet/plan.ts), carried out
 *    through Raft itself, at most `maxConcurrentChanges` at once on this node (a freed slot goes to a replica that
 *    waited for one).
 * 3. The reports: each group's leader writes what it sees (`observed/<name>`) when it changes shape, and its lag at
 *    most every `REPORT_LAG_EVERY_MS`, through a bounded queue.
 *
 * Safety never depends on the control plane: Raft decides membership, one change at a time, and `nextStep` never
 * takes a group below a quorum of caught-up voters. The control plane only says where replicas should be; a store
 * that is down stops moves, never a group.
 */
import { rm, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  ClosedError,
  FleetControlLostError,
  FleetGroupNotFoundError,
  InvalidArgumentError,
  NoQuorumError,
  NotLeaderError,
  PeerAuthError,
  StoreDataLostError,
  TimeoutError,
} from '../../errors.js';
import { TypedEmitter, type ErrorEvent } from '../../events.js';
import { checkCallOptions, OptionReader } from '../../options.js';
import {
  addGroup,
  adoptGroup,
  claimGroup,
  ensureControlId,
  FleetRecordCache,
  machineRunners,
  noRunnerError,
  readFleetView,
  removeGroup,
  reportObservedMany,
  reserveGenerations,
  type FleetGroupView,
  type FleetView,
} from '../../protocol/fleet/io.js';
import {
  decodeDesired,
  MAX_NODE_MACHINES,
  parseRaftGroupId,
  isIncarnation,
  groupRaftId,
  sameIncarnation,
  validateFleetGroupName,
  validateMachineName,
  wasIssued,
  type GroupRecord,
  type MetaRecord,
  type ObservedRecord,
  type ObservedStatus,
} from '../../protocol/fleet/keys.js';
import { membershipChangeOf, nextStep, quorum, type PlanStep } from '../../protocol/fleet/plan.js';
import { recoverGroup, type RecoverGroupResult } from '../../protocol/fleet/recover.js';
import { fleetStatus, groupInfos, type FleetGroupInfo, type FleetStatus } from '../../protocol/fleet/status.js';
import { decideReplicas, type OpenReplica, type ReplicaAction } from '../../protocol/fleet/replicas.js';
import { NO_MUTANTS, type Mutants } from '../../protocol/mutants.js';
import type { MembershipChange } from '../../raft/messages.js';
import { answerGroupRequest, type RemoteGroupClient, serveGroupRequest } from '../../raft/node/remote-client.js';
import { GroupRoutes } from './routing.js';
import {
  isStateMachine,
  readMachineOptions,
  startRaftNode,
  type RaftNode,
  type RaftNodeIo,
} from '../../raft/node/node.js';
import type { Consistency, GroupBrief, GroupStatus, RaftGroup } from '../../raft/node/group.js';
import { jsonCodec, type Codec, type StateMachine } from '../../raft/node/state-machine.js';
import { MIN_WAIT_MS, type TlsOptions } from '../../raft/transport/transport.js';
import type { TimerHandle } from '../../store/contract.js';
import type { MemberOptions, RuntimeInternals } from '../common-options.js';
import { CorruptionReports } from '../corruption.js';
import { Loop } from '../loop.js';
import { Watches } from '../watches.js';
import { FleetControl, readFleetControl, type ResolvedFleetControlOptions } from './member.js';

/** A state machine and how this fleet runs it (the same on every node). */
export interface FleetMachine<S = unknown, C = unknown, Q = unknown, R = unknown, A = unknown> {
  readonly stateMachine: StateMachine<S, C, Q, R, A>;
  /** How commands, queries and results become bytes (default JSON). */
  readonly codec?: Codec;
  /** Let leaders serve `consistency: 'lease'` reads from their lease (default false). */
  readonly leaseReads?: boolean;
  /** Snapshot and compact every this many applied entries (default 10 000). */
  readonly snapshotEntries?: number;
  /** Client sessions remembered for exactly-once commands (default 10 000). */
  readonly maxSessions?: number;
  /** The largest command, encoded (default 1 MiB). */
  readonly maxCommandBytes?: number;
}

export interface JoinFleetOptions extends MemberOptions {
  /** The fleet's name (1–64 of A-Z a-z 0-9 . _ -). Every node of the fleet uses the same store and name. */
  readonly fleet: string;
  /** This node's data directory (its Raft log and snapshots). One node per directory; keep it across restarts. */
  readonly dataDir: string;
  /** The fleet's shared secret for node-to-node connections (at least 16 bytes, the same on every node). */
  readonly secret: string | Uint8Array;
  /**
   * The state machines groups can run, by name (`addGroup(name, { machine })` names one). Every node needs every
   * machine of the fleet. A value is a StateMachine or a FleetMachine (with its codec and settings).
   */
  readonly machines: Readonly<Record<string, StateMachine<unknown, unknown, unknown, unknown, unknown> | FleetMachine>>;
  /** Where the Raft transport listens (default: node.address). */
  readonly listen?: string;
  /** Mutual TLS between nodes. */
  readonly tls?: TlsOptions;
  /** The Raft tick (default 100 ms); election timeouts are electionTicks..2×electionTicks ticks. */
  readonly tickMs?: number;
  /** Default 10. */
  readonly electionTicks?: number;
  /** Default time of command() and query() (default 5000 ms). */
  readonly requestTimeoutMs?: number;
  /** How long a node whose session ended keeps its members before they are placed elsewhere (default 5000 ms). */
  readonly gracePeriodMs?: number;
  /** Desired records the coordinator writes per round at most (default 500). */
  readonly maxDesiredWritesPerRound?: number;
  /** New groups are placed only once this many nodes are active (default 1). */
  readonly minNodes?: number;
  /** Membership changes this node runs at once, over all the groups it leads (default 16). */
  readonly maxConcurrentChanges?: number;
  /** A replica within this many entries of the leader counts as caught up (default 256). */
  readonly catchUpLagEntries?: number;
}

export interface FleetNodeEvents {
  /** A replica of `group` was opened here (created, joined, or recovered from the log). */
  groupGained: { readonly group: string; readonly mode: 'recover' | 'bootstrap' | 'join' };
  /**
   * This node's replica of `group` was closed and its data deleted: removed from the group, or the group removed or
   * recovered into a new generation (also for a replica found only on disk, when its node comes back).
   */
  groupLost: { readonly group: string; readonly reason: 'group-removed' | 'moved-away' };
  /** This node became the leader of `group`. */
  led: { readonly group: string; readonly term: number };
  /** A membership change this node (as leader) made in `group` took effect. */
  moved: { readonly group: string; readonly change: MembershipChange };
  /**
   * `group` lost a majority of its voters: nothing is changed until they come back (docs/fleet.md). Said by its
   * leader when it cannot make a change, and by any other replica that has had no leader for two election timeouts
   * while a majority of its voters is not live; once per episode and replica.
   */
  stuck: { readonly group: string; readonly detail: string };
  error: ErrorEvent;
  left: Record<string, never>;
}

export type { FleetGroupInfo };

export interface FleetRequestOptions {
  /** The whole call's time, from now (default: requestTimeoutMs). */
  readonly timeoutMs?: number;
}

export interface FleetQueryOptions extends FleetRequestOptions {
  readonly consistency?: Consistency;
}

/** The keys of FleetRequestOptions and FleetQueryOptions (a misspelt one is refused). */
export const REQUEST_OPTIONS: readonly string[] = ['timeoutMs'];
export const QUERY_OPTIONS: readonly string[] = ['timeoutMs', 'consistency'];

// A membership change is one small log entry: its latency is the group's commit latency, whatever else runs. 16 at
// once left 1000 moving groups queued behind each other (deactivating a node leading 250 groups: 18 s); 128 brought
// it under 10 s on the same box (bench/README.md).
const DEFAULT_MAX_CONCURRENT_CHANGES = 128;
const DEFAULT_CATCH_UP_LAG_ENTRIES = 256;
/** A leader reports a group whose shape did not change (only its lag) at most this often. */
const REPORT_LAG_EVERY_MS = 10_000;
/** Report writes in flight at once (each a batch of up to REPORT_BATCH groups). */
const REPORT_CONCURRENCY = 4;
/** The most groups one report write carries (reportObservedMany splits it into transactions that fit). */
const REPORT_BATCH = 126;
/** The longest stretch of synchronous work a round or a step pass does before it lets timers and sockets run. */
const ROUND_SLICE_MS = 20;
const IDENTITY_FILE = 'fleet.json';
/** Orphan groups one round writes back at most (one store transaction each). */
const ADOPT_PER_ROUND = 64;
/** Names of orphan groups one round claims at most (two store round trips each). */
const CLAIMS_PER_ROUND = 256;

/** Knobs only the simulator uses (src/sim/fleet.ts); not part of the public options. */
export interface FleetInternals extends RuntimeInternals {
  /**
   * The Raft node's io (disk, network, timers, clock, randomness). With `raftIo.disk` the node keeps everything on
   * that disk: `dataDir` is only a name then, and no file is read or written (a simulated node has no directory).
   */
  readonly raftIo?: RaftNodeIo | undefined;
  /**
   * With `raftIo.disk`, where the data directory's `fleet.json` lives instead (the simulator keeps it per node, as a
   * file that was synced: it survives a crash). Without either, it lives in memory only.
   */
  readonly identityFile?: { read(): DataDirIdentity | undefined; write(identity: DataDirIdentity): void } | undefined;
}

function isMember(held: Held, nodeId: string): boolean {
  // Asked for every request (routing, serving): the membership alone, not a whole status().
  const m = held.group.membership();
  return m.voters.includes(nodeId) || m.learners.includes(nodeId);
}

interface Resolved {
  readonly control: ResolvedFleetControlOptions;
  readonly dataDir: string;
  readonly secret: string | Uint8Array;
  readonly machines: ReadonlyMap<string, Required<Pick<FleetMachine, 'stateMachine' | 'codec'>> & FleetMachine>;
  readonly listen: string;
  readonly tls: TlsOptions | undefined;
  readonly tickMs: number;
  readonly electionTicks: number;
  readonly requestTimeoutMs: number;
  readonly maxConcurrentChanges: number;
  readonly catchUpLagEntries: number;
}

/** One replica open on this node. */
interface Held {
  readonly id: string;
  readonly name: string;
  readonly generation: number;
  readonly machine: string;
  readonly group: RaftGroup<unknown, unknown, unknown, unknown>;
  changing: boolean;
  /** When a leadership transfer was last asked (not again within two election timeouts). */
  transferAtMs: number;
  /** Transfers asked in a row without leadership moving (reset when this node becomes leader again). */
  transferTries: number;
  /** The node those tries were aimed at: the backoff is per target. */
  transferTarget: string | undefined;
  /** Since when the planner has said `stuck` (reported once it lasts two election timeouts). */
  stuckSinceMs: number | undefined;
  stuckReported: boolean;
  wasLeader: boolean;
  /** Set when a step found the group converged: passes skip it while stillQuiet() holds (#stepAll). */
  quiet: Quiet | undefined;
  /** The shape of the last report written (JSON of everything but the lag), and when. */
  /** Per learner: the commit index it must reach before it can vote, and when it reached it (#votingProgress). */
  readonly learnerGates: Map<string, { readonly index: number; reachedAtMs: number | undefined }>;
  reportedShape: string;
  /** The lag of the last report written (JSON). */
  reportedLag: string;
  reportedAtMs: number;
}

/**
 * What a converged leader's next step depends on: its term and membership, the group's generation and desired
 * record. Numbers compared in place: a key string per replica per pass was most of a pass's cost at 10 000 groups.
 */
interface Quiet {
  readonly term: number;
  readonly membershipIndex: number;
  readonly generation: number;
  readonly desiredRevision: number;
  readonly atMs: number;
}

function quietOf(b: GroupBrief, g: FleetGroupView | undefined, atMs: number): Quiet {
  return {
    term: b.term,
    membershipIndex: b.membershipIndex,
    generation: g?.generation ?? 0,
    desiredRevision: g?.desiredRevision ?? 0,
    atMs,
  };
}

function stillQuiet(q: Quiet, b: GroupBrief, g: FleetGroupView | undefined): boolean {
  return (
    q.term === b.term &&
    q.membershipIndex === b.membershipIndex &&
    q.generation === (g?.generation ?? 0) &&
    q.desiredRevision === (g?.desiredRevision ?? 0)
  );
}

function readMachines(r: OptionReader): Resolved['machines'] {
  const raw = r.required<Record<string, unknown>>('machines', (v) =>
    v !== null && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length > 0
      ? undefined
      : 'must be an object: state machine name → state machine ({ initial, command, query, snapshot, restore })',
  );
  const out = new Map<string, Required<Pick<FleetMachine, 'stateMachine' | 'codec'>> & FleetMachine>();
  if (Object.keys(raw).length > MAX_NODE_MACHINES) {
    throw new InvalidArgumentError(
      `joinFleet options.machines: ${Object.keys(raw).length} state machines; at most ${MAX_NODE_MACHINES} per node ` +
        '(their names go in the node record)',
    );
  }
  for (const [name, value] of Object.entries(raw)) {
    validateMachineName(name);
    if (isStateMachine(value)) {
      out.set(name, { stateMachine: value, codec: jsonCodec });
      continue;
    }
    const m = new OptionReader(value, `machines.${name}`);
    const { stateMachine, codec, leaseReads, snapshotEntries, maxSessions, maxCommandBytes } = readMachineOptions<
      unknown,
      unknown,
      unknown,
      unknown,
      unknown
    >(m);
    m.done();
    out.set(name, { stateMachine, codec, leaseReads, snapshotEntries, maxSessions, maxCommandBytes });
  }
  return out;
}

/**
 * Join a fleet: start this node's Raft node on `dataDir`, register in the fleet's control plane and serve the
 * replicas placed here. Resolves once registered; replicas open as the coordinator places them (`groupGained`).
 */
export async function joinFleet(options: JoinFleetOptions, internals: FleetInternals = {}): Promise<FleetNode> {
  // Read and check every option before touching the disk or the network.
  const r = new OptionReader(options, 'joinFleet options');
  const dataDir = r.string('dataDir', undefined, 4096);
  if (dataDir === undefined || dataDir === '') {
    throw new InvalidArgumentError("joinFleet options.dataDir is required: the directory of this node's Raft log");
  }
  const secret = r.required<string | Uint8Array>('secret', (v) =>
    typeof v === 'string' || v instanceof Uint8Array ? undefined : 'must be a string or bytes (at least 16 bytes)',
  );
  const machines = readMachines(r);
  const tls = r.optional<TlsOptions>('tls', (v) =>
    v !== null && typeof v === 'object' ? undefined : 'must be { key, cert, ca }',
  );
  const tickMs = r.integer('tickMs', 100, { min: 1, max: 60_000 });
  const electionTicks = r.integer('electionTicks', 10, { min: 3, max: 10_000 });
  const requestTimeoutMs = r.integer('requestTimeoutMs', 5000, { min: 1, max: 3_600_000 });
  const maxConcurrentChanges = r.integer('maxConcurrentChanges', DEFAULT_MAX_CONCURRENT_CHANGES, {
    min: 1,
    max: 10_000,
  });
  const catchUpLagEntries = r.integer('catchUpLagEntries', DEFAULT_CATCH_UP_LAG_ENTRIES, { min: 0 });
  const listenOption = r.string('listen', undefined, 512);
  // The incarnation comes from the Raft data directory, opened below; the control options are checked now.
  const control = readFleetControl(r, 'pending');
  r.done();
  const resolved: Resolved = {
    control,
    dataDir,
    secret,
    machines,
    listen: listenOption ?? control.address,
    tls,
    tickMs,
    electionTicks,
    requestTimeoutMs,
    maxConcurrentChanges,
    catchUpLagEntries,
  };
  const onDisk = internals.raftIo?.disk === undefined;
  const identity = onDisk
    ? await checkDataDirIdentity(dataDir, control.fleet, control.node.id)
    : (internals.identityFile?.read() ?? { control: undefined, orphans: {}, catalog: {} });
  const raft = await startRaftNode({
    id: control.node.id,
    ...(onDisk ? { dataDir: join(dataDir, 'raft') } : {}),
    listen: resolved.listen,
    peers: {},
    secret,
    // Nodes of another fleet are refused even with the same secret.
    cluster: `fleet:${control.fleet}`,
    tickMs,
    electionTicks,
    requestTimeoutMs,
    ...(tls !== undefined ? { tls } : {}),
    ...(internals.raftIo !== undefined ? { io: internals.raftIo } : {}),
  });
  let node: FleetNode | undefined;
  try {
    if (onDisk) await writeDataDirIdentity(dataDir, control.fleet, control.node.id, identity);
    const save = onDisk
      ? (id: DataDirIdentity) => writeDataDirIdentity(dataDir, control.fleet, control.node.id, id)
      : async (id: DataDirIdentity) => internals.identityFile?.write(id);
    node = new FleetNode(resolved, raft, { ...control, incarnation: raft.incarnation }, internals, {
      identity,
      save,
    });
    await node.start();
    return node;
  } catch (err) {
    if (node !== undefined) await node.close().catch(() => undefined);
    else await raft.close().catch(() => undefined);
    throw err;
  }
}

/**
 * What a data directory remembers of its fleet (`fleet.json`): whose it is, the control plane's id it last worked
 * with (the meta record's, keys.ts MetaRecord.id) and its orphans — replicas held when it found that id gone
 * (docs/fleet.md, "The control store loses its data").
 */
export interface DataDirIdentity {
  readonly control: string | undefined;
  /** Orphan Raft group ids, each with the control id that was lost when it became one. */
  readonly orphans: Readonly<Record<string, string>>;
  /**
   * Each replica's state machine and founding members, by Raft group id: what opening it needs and only the records
   * say otherwise — so that an orphan only stored (its node restarted after the loss) can still be opened.
   */
  readonly catalog: Readonly<Record<string, CatalogEntry>>;
  /**
   * Raft group ids of replicas this node dropped (their group removed, or moved away), oldest first, at most
   * MAX_DROPPED_IDS: it never founds one of them again from an empty log. Only records older than the ones it
   * dropped them by (a restored backup) can name it a founder of such a group again, and an empty founder would
   * then bring back a removed group empty, or start a second group under the id of one that moved.
   */
  readonly dropped?: readonly string[] | undefined;
}

/** The dropped ids fleet.json keeps (DataDirIdentity.dropped): about 40 bytes each. */
const MAX_DROPPED_IDS = 20_000;

interface CatalogEntry {
  readonly machine: string;
  readonly initial: readonly string[];
  /** The group's replica count (its record's), for writing it back as it was. */
  readonly replicas?: number | undefined;
  /**
   * The incarnation of the group record it was opened from (keys.ts GroupRecord.incarnation): it is that group's
   * replica only while the record has it too, and an orphan is written back with it. Absent (a catalog of an older
   * release, or a record without one): matches any record.
   */
  readonly incarnation?: string | undefined;
}

function readCatalog(raw: unknown): Record<string, CatalogEntry> {
  const out: Record<string, CatalogEntry> = {};
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return out;
  for (const [id, e] of Object.entries(raw as Record<string, unknown>)) {
    const { machine, initial, replicas, incarnation } = (e ?? {}) as {
      machine?: unknown;
      initial?: unknown;
      replicas?: unknown;
      incarnation?: unknown;
    };
    if (typeof machine !== 'string' || !Array.isArray(initial) || !initial.every((m) => typeof m === 'string'))
      continue;
    const count = typeof replicas === 'number' && Number.isSafeInteger(replicas) && replicas > 0 ? replicas : undefined;
    out[id] = {
      machine,
      initial: initial as string[],
      ...(count !== undefined ? { replicas: count } : {}),
      // A malformed one is dropped (unknown: matches any record), as a malformed replica count is.
      ...(isIncarnation(incarnation) ? { incarnation } : {}),
    };
  }
  return out;
}

/** A data directory belongs to one node of one fleet: refuse another's (its replicas are not this node's). */
async function checkDataDirIdentity(dataDir: string, fleet: string, nodeId: string): Promise<DataDirIdentity> {
  let text: string;
  try {
    text = await readFile(join(dataDir, IDENTITY_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { control: undefined, orphans: {}, catalog: {} };
    throw err;
  }
  let id: {
    fleet?: unknown;
    node?: unknown;
    control?: unknown;
    orphans?: unknown;
    catalog?: unknown;
    dropped?: unknown;
  };
  try {
    id = JSON.parse(text) as typeof id;
  } catch {
    id = {};
  }
  if (id.fleet !== fleet || id.node !== nodeId) {
    throw new InvalidArgumentError(
      `joinFleet: data directory ${dataDir} belongs to node ${JSON.stringify(id.node)} of fleet ` +
        `${JSON.stringify(id.fleet)}, not to node ${nodeId} of fleet ${fleet}. Give each node its own directory ` +
        '(keep it across restarts); delete it only if that node is gone for good',
    );
  }
  const orphans: Record<string, string> = {};
  if (id.orphans !== null && typeof id.orphans === 'object' && !Array.isArray(id.orphans)) {
    for (const [o, from] of Object.entries(id.orphans as Record<string, unknown>)) {
      if (typeof from === 'string') orphans[o] = from;
    }
  }
  return {
    control: typeof id.control === 'string' ? id.control : undefined,
    orphans,
    catalog: readCatalog(id.catalog),
    dropped: Array.isArray(id.dropped) ? id.dropped.filter((x): x is string => typeof x === 'string') : [],
  };
}

async function writeDataDirIdentity(
  dataDir: string,
  fleet: string,
  nodeId: string,
  identity: DataDirIdentity,
): Promise<void> {
  await mkdir(dataDir, { recursive: true });
  const file = join(dataDir, IDENTITY_FILE);
  const tmp = `${file}.tmp`;
  const body = {
    fleet,
    node: nodeId,
    control: identity.control,
    orphans: identity.orphans,
    catalog: identity.catalog,
    dropped: identity.dropped ?? [],
  };
  // Written before the node acts on it (an orphan must stay one after a crash): renamed into place, then synced.
  await writeFile(tmp, JSON.stringify(body) + '\n', { flush: true });
  await rename(tmp, file);
  await rm(tmp, { force: true });
}

export class FleetNode extends TypedEmitter<FleetNodeEvents> {
  readonly nodeId: string;
  readonly fleet: string;
  readonly #o: Resolved;
  readonly #raft: RaftNode;
  readonly #control: FleetControl;
  readonly #loop: Loop;
  readonly #watches: Watches;
  readonly #corruption: CorruptionReports;
  /** Decoded control-plane records, reused while unchanged (io.ts FleetRecordCache). */
  readonly #records = new FleetRecordCache();
  readonly #held = new Map<string, Held>();
  /** The last address seen for each other node (kept after it vanishes: it may come back). */
  readonly #addresses = new Map<string, string>();
  /** Reports waiting to be written, by group name (only the newest of a group is kept). */
  readonly #reports = new Map<string, ObservedRecord>();
  #reporting = 0;
  /** Groups whose report is being written. */
  readonly #reportingNames = new Set<string>();
  /** Requests for groups this node holds no member replica of. */
  readonly #routes: GroupRoutes;
  #changes = 0;
  #view: FleetView | undefined;
  #stepTimer: TimerHandle | undefined;
  /** A #stepSoon pass is scheduled and has not run yet. */
  #stepQueued = false;
  /** The replicas (Raft group ids) the scheduled #stepSoon pass steps: those an event was about. */
  readonly #stepDirty = new Set<string>();
  /** Replicas whose next membership change waited for a free slot (maxConcurrentChanges): stepped when one frees. */
  readonly #stepBlocked = new Set<string>();
  #waitsReported = '';
  #lastCostMs = 0;
  #closed = false;
  #deactivating = false;
  readonly #drained = new Set<() => void>();
  /** The control plane's id this node works with (the meta record's; undefined before it saw one). */
  #controlId: string | undefined;
  /** The read of the fleet that retrying calls share (#sharedRead). */
  #retryRead: Promise<FleetView> | undefined;
  /**
   * The store's count of data losses (Store.dataLosses) as of this node's last round. When it grows, the records
   * may have come back older under the same control id (a Redis restarted from its last snapshot): treated as a loss.
   */
  #lossesSeen: number;
  /**
   * Replicas (Raft group ids, open or stored) held when the control plane's records were found lost, each with the
   * control id that was lost then (records of that id read again, with the orphan's generation, take it back:
   * #reclaimOrphans).
   */
  readonly #orphans = new Map<string, string>();
  /** The data directory's fleet.json is behind #controlId/#orphans: no round acts until it is written. */
  #identityUnsaved = false;
  readonly #saveIdentity: (identity: DataDirIdentity) => Promise<void>;
  /** The data directory's catalog (DataDirIdentity.catalog), kept in step with the replicas opened and dropped. */
  readonly #catalog = new Map<string, CatalogEntry>();
  /** DataDirIdentity.dropped, in insertion order (oldest first). */
  readonly #dropped = new Set<string>();
  /** Orphans whose write-back was refused (reported once each). */
  readonly #adoptRefused = new Set<string>();
  /** Orphans whose name this node claimed (or found claimed or taken) under the present control id. */
  readonly #claimed = new Set<string>();
  readonly #mutants: Mutants;

  /** Use joinFleet(). */
  constructor(
    o: Resolved,
    raft: RaftNode,
    control: ResolvedFleetControlOptions,
    internals: RuntimeInternals,
    dataDir: { identity: DataDirIdentity; save: (identity: DataDirIdentity) => Promise<void> },
  ) {
    super({ held: true });
    this.#o = o;
    this.#raft = raft;
    this.#controlId = dataDir.identity.control;
    this.#lossesSeen = control.store.dataLosses;
    for (const [id, from] of Object.entries(dataDir.identity.orphans)) this.#orphans.set(id, from);
    for (const [id, e] of Object.entries(dataDir.identity.catalog)) this.#catalog.set(id, e);
    for (const id of dataDir.identity.dropped ?? []) this.#dropped.add(id);
    this.#saveIdentity = dataDir.save;
    this.nodeId = control.node.id;
    this.fleet = control.fleet;
    // The node record says which state machines this node runs: the coordinator places groups accordingly.
    this.#control = new FleetControl({ ...control, machines: [...o.machines.keys()] }, internals);
    this.#mutants = internals.mutants ?? NO_MUTANTS;
    this.#corruption = new CorruptionReports((error) => this.reportError(error, 'fleet node: reading'));
    this.#routes = new GroupRoutes({
      clock: control.clock,
      requestTimeoutMs: o.requestTimeoutMs,
      // This node's own replica is served in the process, as a peer's request would be (#serve).
      request: (peer, payload, timeoutMs) =>
        peer === this.nodeId ? this.#serve(payload) : this.#raft.request(peer, payload, { timeoutMs }),
      // The same requests, served without their bytes (the common case: a command on a group this node holds).
      inProcess: (peer, req) =>
        peer === this.nodeId ? answerGroupRequest((id) => this.#memberReplica(id), req) : undefined,
      codecOf: (machine) => this.#o.machines.get(machine)?.codec,
      view: () => this.#view,
      reachable: (n) => n !== this.nodeId && this.#addresses.has(n),
      self: { id: this.nodeId, holds: (id) => this.#memberReplica(id) !== undefined },
    });
    this.#loop = new Loop(
      () => this.#round(),
      (error) => {
        if (!this.#closed) this.reportError(error, 'fleet node round');
      },
      { clock: control.clock, spacingMs: () => Math.min(1000, 2 * this.#lastCostMs) },
    );
    this.#watches = new Watches(
      control.store,
      () => this.#loop.kick(),
      (error) => this.reportError(error, 'fleet node: watching'),
    );
    this.#control.on('error', (e) => this.emit('error', e));
    this.#raft.on('error', (e) => {
      // Nodes learn each other's addresses from the store at slightly different times: a node that dials this one
      // first is refused once as unknown and redials. Not worth an error when it is a node of this fleet.
      // Said only if the id is still no live node of the fleet a few seconds later.
      const unknown = e.error instanceof PeerAuthError ? /unknown node id "([^"]+)"/.exec(e.error.message) : null;
      if (unknown === null) return this.emit('error', e);
      this.#o.control.clock.setTimeout(
        () => {
          if (!this.#closed && this.#view?.nodes.has(unknown[1]!) !== true) this.emit('error', e);
        },
        3000,
        { background: true },
      );
    });
    this.#raft.on('leader', (e) => {
      const held = this.#held.get(e.group);
      if (held === undefined) return;
      if (e.leader === this.nodeId && !held.wasLeader) {
        held.wasLeader = true;
        held.transferTries = 0;
        this.emit('led', { group: held.name, term: e.term });
      } else if (e.leader !== this.nodeId) held.wasLeader = false;
      this.#stepSoon(held.id);
    });
  }

  /** The store's fleet keys (for tools). */
  get keys(): FleetControl['keys'] {
    return this.#control.keys;
  }

  /** Whether this node is the fleet's coordinator now. */
  get isCoordinator(): boolean {
    return this.#control.isCoordinator;
  }

  /** Whether deactivate() was called (the node drains). */
  get deactivating(): boolean {
    return this.#deactivating;
  }

  /** The Raft port this node listens on (useful with port 0). */
  get port(): number {
    return this.#raft.port;
  }

  /** Use joinFleet(), which calls this. */
  async start(): Promise<void> {
    this.#raft.handleRequests((_from, payload) => this.#serve(payload));
    await this.#control.start();
    const k = this.#control.keys;
    await this.#watches.set([k.nodes, k.groups, k.desired, k.observed]);
    this.#loop.kick();
    this.#scheduleStep();
    this.#o.control.clock.setTimeout(() => this.openEvents(), 0);
  }

  // ---- the API ----

  /**
   * Add a group running state machine `machine` with `replicas` members, placed on the nodes that run it. The
   * machine must be one of this node's `machines` or one a live node of the fleet runs (InvalidArgumentError
   * otherwise: a group nobody can run would only wait, unplaced).
   */
  async addGroup(name: string, options: { readonly replicas: number; readonly machine: string }): Promise<GroupRecord> {
    this.#check();
    validateFleetGroupName(name);
    checkCallOptions(options, ['replicas', 'machine'], `addGroup(${name}) options`);
    const machine = validateMachineName(options.machine);
    if (!this.#o.machines.has(machine)) {
      const view = await readFleetView(
        this.#o.control.store,
        this.#control.keys,
        this.#corruption.report,
        this.#records,
      );
      this.#view = view;
      if (machineRunners(view, machine).length === 0) throw noRunnerError(view, this.fleet, name, machine);
    }
    const g = await addGroup(this.#o.control.store, this.#control.keys, name, {
      replicas: options.replicas,
      machine,
      claimedHere: (n, meta) => this.#keptOrphanOf(n, meta),
    });
    this.#loop.kick();
    return g;
  }

  /** Remove a group: its replicas stop and delete their data on every node. Its name may be added again later. */
  async removeGroup(name: string): Promise<GroupRecord> {
    this.#check();
    const g = await removeGroup(this.#o.control.store, this.#control.keys, validateFleetGroupName(name));
    this.#loop.kick();
    return g;
  }

  /** Every group of the fleet, read from the store now. */
  async groups(): Promise<FleetGroupInfo[]> {
    this.#check();
    const view = await readFleetView(this.#o.control.store, this.#control.keys, this.#corruption.report, this.#records);
    return groupInfos(view);
  }

  /** The fleet as the store says now: nodes, groups, their health (src/protocol/fleet/status.ts). */
  async status(): Promise<FleetStatus> {
    this.#check();
    const view = await readFleetView(this.#o.control.store, this.#control.keys, this.#corruption.report, this.#records);
    return fleetStatus(this.fleet, view);
  }

  /**
   * Unsafe: recover group `name`, which lost its majority, from node `from`'s replica (any live node of the fleet
   * holding one; often this one). The group starts a new generation from the state that replica applied; entries
   * the lost voters committed that it had not applied are lost for good, and the old replicas are dropped wherever
   * they are (also when their nodes come back). Refused with FleetRecoveryRefusedError unless `unsafe: true`, when
   * the group has not lost its majority (unless `force: true`), or when `from` is not live or holds no replica.
   * Resolves with the new record and a warning to show. docs/fleet.md, "A group that lost its majority".
   */
  async recoverGroup(
    name: string,
    options: { readonly from: string; readonly unsafe: true; readonly force?: boolean },
  ): Promise<RecoverGroupResult> {
    this.#check();
    const r = await recoverGroup(this.#o.control.store, this.#control.keys, validateFleetGroupName(name), options);
    this.#loop.kick();
    return r;
  }

  /**
   * This node's replicas and their Raft status. `orphan`: held from before the control plane lost its records
   * (docs/fleet.md, "The control store loses its data"); `id` is the Raft group id (`<name>:<generation>`).
   */
  replicas(): {
    readonly group: string;
    readonly id: string;
    readonly orphan: boolean;
    readonly status: GroupStatus;
  }[] {
    return [...this.#held.values()].map((h) => ({
      group: h.name,
      id: h.id,
      orphan: this.#orphans.has(h.id),
      status: h.group.status(),
    }));
  }

  /** This node's Raft connections to the other nodes, per peer (RaftNode.peerStats). */
  peerStats(): ReturnType<RaftNode['peerStats']> {
    return this.#raft.peerStats();
  }

  /** Raft group ids of this node's orphans, open or only stored (see replicas()). */
  orphans(): string[] {
    return [...this.#orphans.keys()].sort();
  }

  /**
   * Apply `command` to group `name` exactly once, from any node; resolves with the state machine's result. On a node
   * holding a member replica it goes through that replica; elsewhere it is sent to a node that holds one (the
   * group's leader first, from the last report, then the other members), retried on the next with the same
   * command id, within `timeoutMs` in all (also when this node's replica is dropped under the call). Errors:
   * FleetGroupNotFoundError, NoQuorumError (no leader during the call: not applied), TimeoutError (`outcome`
   * 'unknown' once it may have been handed over; also when every replica asked had stopped, a state machine that
   * threw for example), LimitExceededError.
   */
  async command<R = unknown>(name: string, command: unknown, options: FleetRequestOptions = {}): Promise<R> {
    this.#check();
    const { timeoutMs } = this.#timeout(options);
    const t = await this.#target(name, timeoutMs);
    return (await t.client.command(command, { timeoutMs: t.remainingMs })) as R;
  }

  /** Read group `name` with its state machine's `query`, from any node (routed as command() is). */
  async query<A = unknown>(name: string, query: unknown, options: FleetQueryOptions = {}): Promise<A> {
    this.#check();
    const { timeoutMs } = this.#timeout(options, QUERY_OPTIONS);
    const consistency = options.consistency ?? 'linearizable';
    const t = await this.#target(name, timeoutMs);
    return (await t.client.query(query, { timeoutMs: t.remainingMs, consistency })) as A;
  }

  /**
   * Drain and leave: this node's record turns `deactivating`, the coordinator places its members elsewhere, the
   * groups it leads hand leadership over, and each group's leader removes it; once it holds no replica it leaves
   * the fleet. Rejects with TimeoutError after `timeoutMs` (default 120 s) and stays up, still draining: call it
   * again, or close() to leave anyway (its replicas are then replaced after the grace period).
   */
  async deactivate(options: { readonly timeoutMs?: number } = {}): Promise<void> {
    this.#check();
    checkCallOptions(options, REQUEST_OPTIONS, 'deactivate options');
    const timeoutMs = options.timeoutMs ?? 120_000;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
      throw new InvalidArgumentError(`deactivate: timeoutMs must be a positive number of ms, got ${timeoutMs}`);
    }
    this.#deactivating = true;
    await this.#control.markDeactivating();
    this.#loop.kick();
    const clock = this.#o.control.clock;
    const start = clock.now();
    await new Promise<void>((resolve, reject) => {
      const done = (): void => {
        if (this.#placedCount() > 0 && !this.#closed) return;
        this.#drained.delete(done);
        clock.clearTimeout(timer);
        resolve();
      };
      const timer: TimerHandle = clock.setTimeout(() => {
        this.#drained.delete(done);
        reject(
          new TimeoutError(
            `fleet ${this.fleet}`,
            `draining node ${this.nodeId} (${this.#placedCount()} replica(s) left: ${[...this.#held.values()]
              .filter((h) => !this.#orphans.has(h.id))
              .slice(0, 5)
              .map((h) => h.name)
              .join(', ')})`,
            Math.round(clock.now() - start),
            'not-applied',
            // A node drains, not a Raft group: "fleet f: draining node n … did not complete within 120000 ms".
            { subject: `fleet ${this.fleet}` },
          ),
        );
      }, timeoutMs);
      this.#drained.add(done);
      done();
    });
    await this.close();
  }

  /** Leave at once (no draining): stop every replica and the Raft node, end the session. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#stepTimer !== undefined) this.#o.control.clock.clearTimeout(this.#stepTimer);
    this.#loop.cancel();
    await this.#watches.close();
    await this.#control.close().catch((e: unknown) => this.reportError(e, 'fleet node: leaving the control plane'));
    await this.#raft.close();
    for (const d of [...this.#drained]) d();
    this.emit('left', {});
  }

  // ---- the round: records in, replicas opened and dropped ----

  async #round(): Promise<void> {
    if (this.#closed) return;
    const clock = this.#o.control.clock;
    const startedAtMs = clock.now();
    const store = this.#o.control.store;
    const losses = store.dataLosses;
    const view = await readFleetView(store, this.#control.keys, this.#corruption.report, this.#records);
    this.#corruption.endRound();
    if (this.#closed) return;
    this.#view = view;
    this.#syncPeers(view);
    if (this.#checkControl(view, losses)) {
      // The id changed (or is the first this node sees) between the previous read and this one, so this read's group
      // records may be from before the change: readFleetView reads the meta record last, and a loss between the two
      // reads pairs lost records with the new id. Acting on them would open replicas of lost groups as ordinary ones
      // (and delete them a round later). Record the id, and act on the next read, all of which follows the change.
      await this.#saveIdentityIfNeeded();
      this.#loop.kick();
      return;
    }
    this.#reclaimOrphans(view);
    // Nothing is opened or dropped on a decision the data directory could forget: the next round tries again.
    if (!(await this.#saveIdentityIfNeeded())) return;
    const open = new Map<string, OpenReplica>();
    for (const h of this.#held.values()) {
      const s = h.group.status();
      open.set(h.id, {
        id: h.id,
        voters: s.membership.voters,
        learners: s.membership.learners,
        membershipIndex: s.membershipIndex,
        committed: s.committed,
      });
    }
    const decision = decideReplicas(
      {
        nodeId: this.nodeId,
        groups: view.groups,
        open,
        stored: new Set(this.#raft.storedGroups().filter((id) => !this.#held.has(id))),
        machines: new Set(this.#o.machines.keys()),
        addressable: (n) => this.#addresses.has(n),
        orphans: new Set(this.#orphans.keys()),
        incarnations: new Map([...this.#catalog].map(([id, e]) => [id, e.incarnation])),
      },
      this.#mutants,
    );
    if (view.meta !== undefined && view.meta.id === undefined) {
      // A meta record of an older release: give it its id, so that a loss of the records can be told from now on.
      await ensureControlId(this.#o.control.store, this.#control.keys).catch((error: unknown) =>
        this.reportError(error, 'fleet node: giving the meta record an id'),
      );
    }
    await this.#adoptOrphans(view);
    await this.#claimOrphans(view);
    let founding: ReadonlySet<string> = new Set();
    const refounds: string[] = [];
    try {
      founding = await this.#stillFounding(decision.actions, refounds);
    } catch (error) {
      this.reportError(error, 'fleet node: reading desired records before bootstrapping'); // the next round retries
    }
    let actions = decision.actions;
    const irreversible = (a: ReplicaAction): boolean =>
      (a.type === 'drop' && a.reason === 'group-removed') || (a.type === 'open' && a.mode === 'bootstrap');
    if (actions.some(irreversible)) {
      // Deleting a replica because its group's record is gone, and starting a group from an empty log as a founder,
      // are what a read of older records (a store that came back from its last snapshot: a group added since is
      // missing, a group moved since has its first desired record again) would make irreversible: make sure the
      // read came from the data this node worked in. A loss found now is acted on by the next round (every replica
      // an orphan).
      let verified = this.#mutants.has('fleet-drop-on-lost-records');
      if (!verified) {
        try {
          await store.verifyData();
          verified = store.dataLosses === losses;
        } catch (error) {
          if (!(error instanceof StoreDataLostError) && !this.#closed) {
            this.reportError(error, 'fleet node: checking the store before deleting or founding replicas');
          }
        }
      }
      if (!verified) {
        if (store.dataLosses !== losses) {
          this.#loop.kick();
          return;
        }
        actions = actions.filter((a) => !irreversible(a));
      }
    }
    if (actions.some((a) => a.type === 'drop')) {
      // Written down before any replica's data is deleted: a crash in between must not forget a dropped id.
      for (const a of actions) if (a.type === 'drop') this.#noteDropped(a.id);
      if (!(await this.#saveIdentityIfNeeded())) actions = actions.filter((a) => a.type !== 'drop');
    }
    this.#lastCostMs = clock.now() - startedAtMs;
    let ranSinceMs = clock.now();
    for (const a of actions) {
      if (this.#closed) return;
      try {
        await this.#act(a, founding);
      } catch (error) {
        this.reportError(error, `fleet node: ${a.type} ${a.id}`);
      }
      // Opening a replica is synchronous work and awaiting a settled promise does not let timers or sockets run:
      // a round opening thousands stalled the event loop past the session TTL. Let them run every 20 ms.
      if (clock.now() - ranSinceMs >= ROUND_SLICE_MS) {
        await new Promise<void>((resolve) => clock.setTimeout(resolve, 0));
        ranSinceMs = clock.now();
      }
    }
    // Waiting for a founder's address is transient (it is read from the store soon, or the coordinator places the
    // group again): not an error. A missing state machine or seed needs someone to act: said once per set.
    const waits = [
      ...decision.waits.filter((w) => w.reason !== 'unknown-address').map((w) => w.detail),
      ...refounds,
    ].join('\n');
    if (waits !== this.#waitsReported && waits !== '') {
      this.reportError(
        new InvalidArgumentError(`fleet ${this.fleet}, node ${this.nodeId}: group(s) wait: ${waits}`),
        'fleet node: groups waiting',
      );
    }
    this.#waitsReported = waits;
    // The catalog of what this round opened and dropped, before a crash can lose it (#openStoredOrphans needs it).
    await this.#saveIdentityIfNeeded();
    this.#stepAll();
  }

  /** Write fleet.json if it is behind (control id, orphans, catalog); false when that failed (reported). */
  async #saveIdentityIfNeeded(): Promise<boolean> {
    if (!this.#identityUnsaved) return true;
    this.#identityUnsaved = false;
    try {
      await this.#saveIdentity({
        control: this.#controlId,
        orphans: Object.fromEntries([...this.#orphans].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))),
        catalog: Object.fromEntries(this.#catalog),
        dropped: [...this.#dropped],
      });
      return !this.#closed;
    } catch (error) {
      this.#identityUnsaved = true;
      this.reportError(error, 'fleet node: writing the data directory identity (fleet.json)');
      return false;
    }
  }

  /**
   * Compare the control plane's id (the meta record's) with the one this node worked with. Another one, or none, means
   * the records its replicas were placed by are gone (the store lost its data, or someone deleted them): a missing
   * group record then proves nothing about its group, and a name added since may carry an old generation again. So
   * every replica held now becomes an orphan — kept, never dropped, not served by name — and the data directory is
   * told before the round goes on (docs/fleet.md, "The control store loses its data"). True when the id changed
   * (or is the first seen): the round then acts on nothing of this read.
   */
  #checkControl(view: FleetView, losses: number): boolean {
    if (view.metaRevision !== 0 && view.meta === undefined) return false; // unreadable: reported; nothing to conclude
    const id = view.meta?.id;
    // The store found its data lost or replaced since the last round (before this read began): under the same id,
    // the records may be older ones — a group added since the store's last snapshot is missing, not removed.
    // Or, found by this node itself (its store client may be new — the node restarted — and have nothing to compare
    // with): it holds a replica of a generation above the counter, which no group record could have been written
    // with — the records are older than that replica.
    const sameId = id !== undefined && id === this.#controlId && !this.#mutants.has('fleet-drop-on-lost-records');
    const aboveCounter = sameId ? this.#generationAbove(view.meta?.lastGeneration ?? 0) : undefined;
    const rolledBack = sameId && (losses !== this.#lossesSeen || aboveCounter !== undefined);
    this.#lossesSeen = losses;
    if (id === this.#controlId && !rolledBack) return false;
    if (this.#controlId === undefined) {
      // The first id seen (a new node, or records of an older release that had none until now).
      this.#controlId = id;
      this.#identityUnsaved = true;
      return true;
    }
    if (this.#mutants.has('fleet-drop-on-lost-records')) {
      // The mutant: the new records are believed as they are (what every release before ADR 0023 did).
      this.#controlId = id;
      this.#identityUnsaved = true;
      return false;
    }
    const lostId = this.#controlId;
    const added: string[] = [];
    for (const replica of this.#replicaIds()) {
      if (this.#orphans.has(replica)) continue;
      this.#orphans.set(replica, lostId);
      added.push(replica);
    }
    added.sort();
    this.#controlId = id;
    this.#identityUnsaved = true;
    this.#claimed.clear(); // the claims, if any, went with the records
    for (const h of this.#held.values()) {
      if (!this.#orphans.has(h.id)) continue;
      this.#reports.delete(h.name);
      // Its observed record went with the others: once the group is back, its leader reports again even if the
      // shape it last reported has not changed (else the group stays "unknown" while idle).
      h.reportedShape = '';
      h.quiet = undefined;
    }
    this.reportError(
      new FleetControlLostError(
        this.fleet,
        this.nodeId,
        rolledBack
          ? aboveCounter !== undefined
            ? `its records are older than replica ${aboveCounter} held here (the meta record's counter is ` +
              `${view.meta?.lastGeneration ?? 0}), under the same id ${id}: the store came back from an older state`
            : `the store found its data lost or replaced (StoreDataLostError): its records may be older ones, under ` +
              `the same id ${id}`
          : id === undefined
            ? `the fleet's meta record, id ${lostId}, is gone`
            : `the fleet's meta record has id ${id}, not ${lostId}`,
        added,
      ),
      'fleet node: the control plane lost its records',
    );
    return true;
  }

  /** The Raft group ids of every replica this node holds, open or only stored. */
  #replicaIds(): Set<string> {
    return new Set([...this.#held.keys(), ...this.#raft.storedGroups()]);
  }

  /** A replica (open or stored, not an orphan) of a generation above `lastGeneration`, if this node holds one. */
  #generationAbove(lastGeneration: number): string | undefined {
    for (const id of this.#replicaIds()) {
      if (this.#orphans.has(id)) continue;
      const p = parseRaftGroupId(id);
      if (p !== undefined && p.generation > lastGeneration) return id;
    }
    return undefined;
  }

  /**
   * An orphan whose group is in the records again under its own generation and incarnation is a replica like any
   * other again when the present records never handed that generation out (so adoptGroup wrote it back, it was not
   * added since the loss), or when they are the very records it was orphaned from (its id is back: a read from before,
   * not a loss). Another incarnation under its generation is another group of its name (added again after one loss
   * and written back after another): the orphan stays one (finding F2 of the control-loss spec).
   */
  #reclaimOrphans(view: FleetView): void {
    const meta = view.meta;
    if (this.#orphans.size === 0 || meta === undefined) return;
    for (const [id, from] of [...this.#orphans]) {
      const p = parseRaftGroupId(id);
      const g = p === undefined ? undefined : view.groups.get(p.name);
      if (p === undefined || g === undefined || groupRaftId(g) !== id) continue;
      if (!sameIncarnation(this.#catalog.get(id)?.incarnation, g.incarnation)) continue;
      if (wasIssued(meta, p.generation) && meta.id !== from) continue;
      this.#orphans.delete(id);
      this.#identityUnsaved = true;
    }
  }

  /**
   * Write back the groups whose orphans this node leads (io.ts adoptGroup): the leader holds every committed entry,
   * so the group comes back whole, under its own generation, and its other replicas follow (#reclaimOrphans). Only
   * from a committed membership; at most ADOPT_PER_ROUND per round (each write wakes the next round).
   */
  async #adoptOrphans(view: FleetView): Promise<void> {
    if (this.#orphans.size === 0) return;
    await this.#openStoredOrphans();
    let tries = 0;
    for (const h of this.#held.values()) {
      if (tries >= ADOPT_PER_ROUND || this.#closed) return;
      if (!this.#orphans.has(h.id)) continue;
      const g = view.groups.get(h.name);
      const refusal =
        view.meta !== undefined && wasIssued(view.meta, h.generation)
          ? 'its generation was handed out again since the control store lost its records: it stays an orphan (kept, not served)'
          : g !== undefined &&
              (groupRaftId(g) !== h.id || !sameIncarnation(this.#catalog.get(h.id)?.incarnation, g.incarnation))
            ? `a group ${h.name} was added since the control store lost its records: it stays an orphan (kept, not ` +
              'served) until that group is removed'
            : undefined;
      if (refusal !== undefined) {
        if (!this.#adoptRefused.has(h.id)) {
          this.#adoptRefused.add(h.id);
          this.reportError(
            new InvalidArgumentError(
              `fleet ${this.fleet}: orphan ${h.id} cannot be written back: ${refusal} (docs/fleet.md, "The control ` +
                'store loses its data")',
            ),
            'fleet node: writing an orphan group back',
          );
        }
        continue;
      }
      this.#adoptRefused.delete(h.id);
      if (g !== undefined) continue; // written back already: #reclaimOrphans takes it next round
      const s = h.group.status();
      if (s.role !== 'leader' || s.membershipIndex > s.committed || s.failed !== undefined) continue;
      tries++;
      try {
        await adoptGroup(this.#o.control.store, this.#control.keys, {
          name: h.name,
          generation: h.generation,
          machine: h.machine,
          members: s.membership.voters,
          leader: this.nodeId,
          replicas: this.#catalog.get(h.id)?.replicas,
          incarnation: this.#catalog.get(h.id)?.incarnation,
          tag: parseRaftGroupId(h.id)?.tag,
        });
        // 'taken' or 'issued' (records changed since the read): the next round reports it.
      } catch (error) {
        this.reportError(error, `fleet node: writing orphan ${h.id} back`);
      }
    }
  }

  /**
   * Claim the names of this node's orphans that have no record (keys.ts ClaimRecord): until its leader writes a group
   * back, an add of its name is refused, from any process — else an application that creates its groups at start-up
   * makes a new, empty group of the name first, and the old one, with every command acknowledged before the loss,
   * can never come back (it stays an orphan: kept, unreachable). Not for a generation the present records handed out
   * (it cannot come back either way), nor for an orphan whose machine and replica count this node does not know.
   */
  async #claimOrphans(view: FleetView): Promise<void> {
    if (this.#orphans.size === 0) return;
    const store = this.#o.control.store;
    const keys = this.#control.keys;
    const todo: { id: string; name: string; generation: number; entry: CatalogEntry }[] = [];
    for (const id of this.#orphans.keys()) {
      if (this.#claimed.has(id)) continue;
      const p = parseRaftGroupId(id);
      const entry = this.#catalog.get(id);
      if (p === undefined || entry === undefined || view.groups.has(p.name)) continue;
      if (view.meta !== undefined && wasIssued(view.meta, p.generation)) continue;
      todo.push({ id, name: p.name, generation: p.generation, entry });
    }
    if (todo.length === 0) return;
    try {
      // First the counter past every generation to claim: an add of another name must not take one of them.
      const highest = Math.max(...todo.map((t) => t.generation));
      if ((view.meta?.lastGeneration ?? 0) < highest && !(await reserveGenerations(store, keys, highest))) {
        this.#loop.kick(); // the meta record kept changing: next round
        return;
      }
    } catch (error) {
      this.reportError(error, 'fleet node: reserving the generations of orphan groups');
      return;
    }
    for (const t of todo.slice(0, CLAIMS_PER_ROUND)) {
      if (this.#closed) return;
      try {
        const outcome = await claimGroup(store, keys, {
          name: t.name,
          generation: t.generation,
          machine: t.entry.machine,
          replicas: t.entry.replicas ?? Math.max(1, t.entry.initial.length),
          ...(t.entry.incarnation !== undefined ? { incarnation: t.entry.incarnation } : {}),
          node: this.nodeId,
        });
        // Written, or claimed or added by someone else first: either way the name is no longer free for an add.
        if (outcome !== 'busy') this.#claimed.add(t.id);
      } catch (error) {
        this.reportError(error, `fleet node: claiming the name of orphan ${t.id}`);
      }
    }
    if (todo.length > CLAIMS_PER_ROUND) this.#loop.kick();
  }

  /**
   * For addGroup: the generation of a replica of a group named `name` this node keeps as an orphan, or would the
   * moment its next round sees `meta` (another control id than the one it worked with: the records it was placed by
   * are gone) — and which could still be written back. Undefined when it keeps none.
   */
  #keptOrphanOf(name: string, meta: MetaRecord | undefined): { generation: number; node: string } | undefined {
    // A loss this node has not acted on yet: the records it reads now may be the older ones (a restored backup
    // under the same id), and every replica it holds is about to be an orphan.
    const lossPending =
      (this.#controlId !== undefined && meta?.id !== this.#controlId) ||
      this.#o.control.store.dataLosses !== this.#lossesSeen;
    let generation: number | undefined;
    for (const id of this.#replicaIds()) {
      const p = parseRaftGroupId(id);
      if (p === undefined || p.name !== name) continue;
      if (!lossPending && !this.#orphans.has(id)) continue;
      if (meta !== undefined && wasIssued(meta, p.generation)) continue;
      generation = Math.max(generation ?? 0, p.generation);
    }
    return generation === undefined ? undefined : { generation, node: this.nodeId };
  }

  /**
   * Open the orphans this node only stores (it restarted after the loss): from the catalog, as the records would
   * have said, so that they take part in their groups again and one of them can write its group back. An orphan
   * whose machine this node does not know (opened by an older release) stays stored.
   */
  async #openStoredOrphans(): Promise<void> {
    const stored = new Set(this.#raft.storedGroups());
    for (const id of this.#orphans.keys()) {
      if (this.#held.has(id) || !stored.has(id) || this.#closed) continue;
      const e = this.#catalog.get(id);
      const p = parseRaftGroupId(id);
      if (e === undefined || p === undefined || !this.#o.machines.has(e.machine)) continue;
      try {
        await this.#act(
          { type: 'open', id, name: p.name, machine: e.machine, mode: 'recover', members: e.initial },
          new Set(),
        );
      } catch (error) {
        this.reportError(error, `fleet node: opening orphan ${id}`);
      }
    }
  }

  /** Tell the Raft node every live node's address (kept after a node vanishes: Raft still needs to reach it). */
  #syncPeers(view: FleetView): void {
    for (const n of view.nodes.values()) {
      if (n.id === this.nodeId || this.#addresses.get(n.id) === n.address) continue;
      this.#addresses.set(n.id, n.address);
      try {
        this.#raft.setPeer(n.id, n.address);
      } catch (error) {
        this.reportError(error, `fleet node: the address of node ${n.id}`);
      }
    }
  }

  async #act(a: ReplicaAction, founding: ReadonlySet<string>): Promise<void> {
    if (a.type === 'drop') {
      const held = this.#held.get(a.id);
      this.#held.delete(a.id);
      // A seeded group's old replica goes while its new one runs: keep the new one's pending report.
      if (held !== undefined && !this.#holdsName(held.name)) {
        this.#reports.delete(held.name);
      }
      await this.#raft.dropGroup(a.id);
      if (this.#catalog.delete(a.id)) this.#identityUnsaved = true;
      // Also a replica only stored (a node back after its group was removed or recovered): its data is deleted.
      const name = held?.name ?? parseRaftGroupId(a.id)?.name;
      if (name !== undefined) this.emit('groupLost', { group: name, reason: a.reason });
      if (this.#placedCount() === 0) for (const d of [...this.#drained]) d();
      return;
    }
    if (a.mode === 'bootstrap' && !founding.has(a.id)) return; // the next round decides again
    const m = this.#o.machines.get(a.machine)!;
    const settings = {
      stateMachine: m.stateMachine,
      codec: m.codec,
      ...(m.leaseReads !== undefined ? { leaseReads: m.leaseReads } : {}),
      ...(m.snapshotEntries !== undefined ? { snapshotEntries: m.snapshotEntries } : {}),
      ...(m.maxSessions !== undefined ? { maxSessions: m.maxSessions } : {}),
      ...(m.maxCommandBytes !== undefined ? { maxCommandBytes: m.maxCommandBytes } : {}),
    };
    if (a.seedFrom !== undefined && !(await this.#seed(a, m.codec))) return; // the next round decides again
    const group =
      a.mode === 'bootstrap'
        ? this.#raft.openGroup(a.id, { ...settings, members: a.members })
        : this.#raft.openGroup(a.id, { ...settings, members: a.members, join: true });
    const generation = parseRaftGroupId(a.id)!.generation;
    this.#held.set(a.id, {
      id: a.id,
      name: a.name,
      generation,
      machine: a.machine,
      group,
      changing: false,
      transferAtMs: Number.NEGATIVE_INFINITY,
      transferTries: 0,
      transferTarget: undefined,
      stuckSinceMs: undefined,
      stuckReported: false,
      wasLeader: false,
      quiet: undefined,
      learnerGates: new Map(),
      reportedShape: '',
      reportedLag: '',
      reportedAtMs: Number.NEGATIVE_INFINITY,
    });
    const listed = this.#catalog.get(a.id);
    const record = this.#view?.groups.get(a.name);
    // The record it is opened from: of its generation and incarnation (another incarnation's is another group's).
    const ofRecord =
      record !== undefined && groupRaftId(record) === a.id && sameIncarnation(listed?.incarnation, record.incarnation);
    const replicas = ofRecord ? record.replicas : listed?.replicas;
    // The incarnation it was listed with stays; else the record's — not for an orphan (opened from the catalog
    // whatever the records say: a record of its generation may be another incarnation's that it would then match).
    const incarnation = listed?.incarnation ?? (ofRecord && !this.#orphans.has(a.id) ? record.incarnation : undefined);
    if (
      listed === undefined ||
      listed.machine !== a.machine ||
      listed.initial.join() !== a.members.join() ||
      listed.replicas !== replicas ||
      listed.incarnation !== incarnation
    ) {
      this.#catalog.set(a.id, {
        machine: a.machine,
        initial: a.members,
        replicas,
        ...(incarnation !== undefined ? { incarnation } : {}),
      });
      this.#identityUnsaved = true;
    }
    this.emit('groupGained', { group: a.name, mode: a.mode });
  }

  /**
   * The unsafe recovery (docs/fleet.md, "A group that lost its majority"): create the new generation's replica from the state this node's
   * replica of the old generation has applied. Only once that replica applied every entry it knows is committed
   * (else the next round tries again). The old replica is dropped by a later round, once the new one is held.
   */
  async #seed(a: ReplicaAction & { type: 'open' }, codec: Codec): Promise<boolean> {
    const old = this.#held.get(a.seedFrom!);
    if (old === undefined) return false;
    const s = old.group.status();
    if (s.failed !== undefined) {
      throw new InvalidArgumentError(
        `group ${a.name} cannot be recovered from node ${this.nodeId}: its replica ${old.id} stopped ` +
          `(${s.failed.message}); recover it from another node`,
      );
    }
    if (s.applied < s.committed) return false;
    const state = old.group.exportState();
    await this.#raft.seedGroup(a.id, { members: a.members, state, codec });
    return true;
  }

  /**
   * Of the bootstrap actions, those whose desired record, read again now, is still its generation's first record
   * naming this node a founder: a founder bootstraps only from that record, and a round that read it long ago (a
   * slow store, a paused process) must not bootstrap from a record rewritten since. One read for the whole round,
   * in transactions of up to maxTxnOps gets: a cold start bootstraps thousands of replicas, and a read each made a
   * round last half a minute.
   */
  async #stillFounding(actions: readonly ReplicaAction[], refused: string[]): Promise<Set<string>> {
    const founding = new Set<string>();
    const boots = actions.filter((a): a is ReplicaAction & { type: 'open' } => {
      if (a.type !== 'open' || a.mode !== 'bootstrap') return false;
      if (!this.#dropped.has(a.id) || this.#mutants.has('fleet-bootstrap-always')) return true;
      refused.push(
        `${a.name}: not founded again from an empty log — this node held replica ${a.id} and dropped it (the ` +
          'group was removed or moved away since), yet the records name it a founder again: they are older than ' +
          "this node's (a restored backup?). Its data is not here; remove the group (rebalancer fleet remove) or " +
          'recover it from a node that still holds it (docs/fleet.md, "The control store loses its data")',
      );
      return false;
    });
    const store = this.#o.control.store;
    const perTxn = Math.max(1, store.limits.maxTxnOps);
    for (let i = 0; i < boots.length; i += perTxn) {
      const batch = boots.slice(i, i + perTxn);
      const r = await store.txn({
        compare: [],
        then: batch.map((a) => ({ op: 'get' as const, key: this.#control.keys.desiredOf(a.name) })),
      });
      batch.forEach((a, j) => {
        const res = r.results[j];
        const kv = res?.op === 'get' ? res.kv : undefined;
        if (kv === undefined) return;
        let d;
        try {
          d = decodeDesired(this.#control.keys, kv.key, kv.value);
        } catch (error) {
          this.reportError(error, `fleet node: bootstrapping ${a.id}`); // not bootstrapped on a record unread
          return;
        }
        const first = d.version === 1 || this.#mutants.has('fleet-bootstrap-always');
        const p = parseRaftGroupId(a.id);
        if (first && p?.name === a.name && p.generation === d.generation && d.initial.includes(this.nodeId)) {
          founding.add(a.id);
        }
      });
    }
    return founding;
  }

  /** Remember a dropped replica's id (DataDirIdentity.dropped), the oldest forgotten beyond MAX_DROPPED_IDS. */
  #noteDropped(id: string): void {
    this.#dropped.delete(id);
    this.#dropped.add(id);
    for (const old of this.#dropped) {
      if (this.#dropped.size <= MAX_DROPPED_IDS) break;
      this.#dropped.delete(old);
    }
    this.#identityUnsaved = true;
  }

  /** Replicas held other than orphans: what draining waits for (orphans stay in the data directory). */
  #placedCount(): number {
    let n = this.#held.size;
    if (this.#orphans.size > 0) for (const id of this.#held.keys()) if (this.#orphans.has(id)) n--;
    return n;
  }

  #holdsName(name: string): boolean {
    for (const h of this.#held.values()) if (h.name === name) return true;
    return false;
  }

  // ---- the steps: each led group one change closer to its desired record ----

  #electionTimeoutMs(): number {
    return this.#o.tickMs * this.#o.electionTicks;
  }

  /**
   * Step replica `id` soon: the one an event (a leader change, a membership change done) was about. One pass pending
   * at most, over the replicas named since it was scheduled — not over every held replica: a node holding 10 000
   * replicas gets hundreds of such events a second while a node joins, and a full pass each was a fifth of its CPU
   * (bench/fleet.ts, 10 000 groups). Everything else is stepped by the full passes (after each round, and every five
   * ticks).
   */
  #stepSoon(id: string): void {
    if (this.#closed) return;
    this.#stepDirty.add(id);
    if (this.#stepQueued) return;
    this.#stepQueued = true;
    this.#o.control.clock.setTimeout(
      () => {
        this.#stepQueued = false;
        const ids = [...this.#stepDirty];
        this.#stepDirty.clear();
        this.#stepSome(ids);
        // Free slots go to the replicas that waited for one, oldest first: each either takes a slot, or needs none
        // any more, or waits again once the slots are taken (which ends the loop).
        for (const id of this.#stepBlocked) {
          if (this.#changes >= this.#o.maxConcurrentChanges) break;
          this.#stepBlocked.delete(id);
          this.#stepSome([id]);
        }
      },
      0,
      { background: true },
    );
  }

  #scheduleStep(): void {
    if (this.#closed) return;
    // Five ticks: a learner's catch-up and a transfer are noticed within half a second, and an idle fleet costs a
    // pass over its held replicas (no store access) twice a second.
    this.#stepTimer = this.#o.control.clock.setTimeout(
      () => {
        this.#stepAll();
        this.#scheduleStep();
      },
      this.#o.tickMs * 5,
      { background: true },
    );
  }

  #stepAll(): void {
    this.#stepBlocked.clear(); // all of them are stepped now
    this.#stepSome(this.#held.values());
  }

  /** Step the replicas given (Raft group ids, or held replicas), those still held. */
  #stepSome(replicas: Iterable<string | Held>): void {
    if (this.#closed || this.#view === undefined) return;
    const view = this.#view;
    const now = this.#o.control.clock.now();
    for (const r of replicas) {
      const h = typeof r === 'string' ? this.#held.get(r) : r;
      if (h === undefined) continue;
      if (this.#orphans.size > 0 && this.#orphans.has(h.id)) {
        // Nothing in the records is about it; but once it leads, a round can write its group back (#adoptOrphans).
        // (Not one whose write-back was refused: that would read the whole fleet every pass, for nothing.)
        if (!view.groups.has(h.name) && !this.#adoptRefused.has(h.id) && h.group.brief().role === 'leader') {
          this.#loop.kick();
        }
        continue;
      }
      try {
        // Most of thousands of replicas have nothing to do: a follower with a leader, a leader converged on the
        // same term, membership and desired record (its lag is looked at every REPORT_LAG_EVERY_MS). brief() tells
        // without status()'s allocations, which made a pass over 10 000 replicas cost 50 ms.
        const b = h.group.brief();
        if (b.role !== 'leader' && b.leader !== undefined && !b.failed) {
          h.stuckSinceMs = undefined;
          h.stuckReported = false;
          continue;
        }
        if (
          b.role === 'leader' &&
          h.quiet !== undefined &&
          now - h.quiet.atMs < REPORT_LAG_EVERY_MS &&
          stillQuiet(h.quiet, b, view.groups.get(h.name))
        ) {
          continue;
        }
        h.quiet = undefined;
        this.#step(h, view);
      } catch (error) {
        this.reportError(error, `fleet node: stepping group ${h.name}`);
      }
    }
  }

  #step(h: Held, view: FleetView): void {
    const s = h.group.status();
    if (s.failed !== undefined) return;
    if (s.role !== 'leader') {
      this.#watchLeaderless(h, s, view);
      return;
    }
    const g = view.groups.get(h.name);
    const d = g?.desired;
    if (g === undefined || groupRaftId(g) !== h.id || d === undefined) return;
    // Plan and report only from a committed membership (nextStep's contract): a report of one merely appended would
    // let a replica it excludes drop its data, and the entry may yet be overwritten by another leader.
    if (s.membershipIndex > s.committed) return;
    const now = this.#o.control.clock.now();
    const voters = s.membership.voters;
    const converged =
      voters.length === d.members.length &&
      d.members.every((m) => voters.includes(m)) &&
      s.membership.learners.length === 0 &&
      d.leader === this.nodeId;
    if (converged) {
      h.stuckSinceMs = undefined;
      this.#report(h, s, 'converged', 'the group has its desired members and leader', now);
      h.quiet = quietOf(h.group.brief(), g, now);
      return;
    }
    if (h.changing) return;
    if (s.quiesced) {
      h.group.wake();
      return;
    }
    const live = new Set(view.nodes.keys());
    const step: PlanStep = nextStep(
      {
        membership: s.membership,
        desired: { members: d.members, leader: d.leader },
        leader: this.nodeId,
        progress: this.#votingProgress(h, s, now),
        lastIndex: s.lastIndex,
        live,
        catchUpLagEntries: this.#o.catchUpLagEntries,
      },
      this.#mutants,
    );
    if (step.type === 'stuck') {
      // A new leader has not heard from anyone yet: only a loss that lasts is reported.
      h.stuckSinceMs ??= now;
      const lasting = now - h.stuckSinceMs >= 2 * this.#electionTimeoutMs();
      if (lasting && !h.stuckReported) {
        h.stuckReported = true;
        this.emit('stuck', { group: h.name, detail: step.detail });
      }
      this.#report(h, s, lasting ? 'stuck' : 'moving', step.detail, now);
      return;
    }
    h.stuckSinceMs = undefined;
    h.stuckReported = false;
    if (step.type === 'none') {
      this.#report(h, s, step.reason === 'converged' ? 'converged' : 'moving', step.detail, now);
      return;
    }
    this.#report(h, s, 'moving', `next: ${step.type} ${step.node}`, now);
    if (step.type === 'transferLeader') {
      // A transfer holds new commands back until it happens or is aborted (an election timeout): a target that
      // keeps falling behind under load is asked again later and later (2, 4, 8… election timeouts, at most 30 s).
      // Per target: a new one (the old one died, or the desired leader changed) is asked at once, not after the
      // old one's backoff — a draining node waited out 30 s gaps that way, once per group it led.
      if (step.node !== h.transferTarget) {
        h.transferTarget = step.node;
        h.transferTries = 0;
        h.transferAtMs = Number.NEGATIVE_INFINITY;
      }
      const backoffMs = Math.min(30_000, 2 ** Math.min(h.transferTries, 10) * 2 * this.#electionTimeoutMs());
      if (now - h.transferAtMs < backoffMs) return;
      h.transferAtMs = now;
      h.transferTries++;
      try {
        h.group.transferLeadership(step.node);
      } catch (error) {
        if (!(error instanceof NotLeaderError)) throw error;
      }
      return;
    }
    const change = membershipChangeOf(step)!;
    if (this.#changes >= this.#o.maxConcurrentChanges) {
      this.#stepBlocked.add(h.id); // stepped again once a change finishes
      return;
    }
    h.changing = true;
    this.#changes++;
    h.group
      .changeMembership(change, { timeoutMs: 3 * this.#electionTimeoutMs() })
      .then(
        () => this.emit('moved', { group: h.name, change }),
        (error: unknown) => {
          // Leadership moved, a quorum is briefly missing, or the node closes: the next pass decides again.
          if (
            error instanceof NotLeaderError ||
            error instanceof NoQuorumError ||
            error instanceof TimeoutError ||
            error instanceof ClosedError
          ) {
            return;
          }
          this.reportError(error, `fleet node: ${change.type} ${change.node} in group ${h.name}`);
        },
      )
      .finally(() => {
        h.changing = false;
        this.#changes--;
        this.#stepSoon(h.id); // and the pass gives the free slot to a replica that waited for one
      });
  }

  /**
   * A replica that is not the leader reports a lost majority too: no leader known for two election timeouts while
   * fewer than a majority of its voters are live nodes of the fleet (a group whose leader died with the majority has
   * nobody left to say it). `stuck` once per episode; nothing else is done (docs/fleet.md, "A group that lost its majority").
   */
  #watchLeaderless(h: Held, s: GroupStatus, view: FleetView): void {
    const g = view.groups.get(h.name);
    if (g === undefined || groupRaftId(g) !== h.id) return; // an old replica on its way out
    // A replica still joining (not yet added) knows only the founding members: not its group to judge.
    if (!isMember(h, this.nodeId)) return;
    const voters = s.membership.voters;
    const live = voters.filter((v) => v === this.nodeId || view.nodes.has(v));
    if (s.leader !== undefined || voters.length === 0 || live.length >= quorum(voters.length)) {
      h.stuckSinceMs = undefined;
      h.stuckReported = false;
      return;
    }
    const now = this.#o.control.clock.now();
    h.stuckSinceMs ??= now;
    if (h.stuckReported || now - h.stuckSinceMs < 2 * this.#electionTimeoutMs()) return;
    h.stuckReported = true;
    const gone = voters.filter((v) => !live.includes(v));
    this.emit('stuck', {
      group: h.name,
      detail:
        `group ${h.name} has had no leader for ${Math.round(now - h.stuckSinceMs)} ms and only ${live.length} of its ` +
        `${voters.length} voters are live (gone: ${gone.join(', ')}): it waits for them to come back, nothing is ` +
        'removed. If they are gone for good, see `rebalancer fleet recover` (unsafe, docs/fleet.md, "A group that lost its majority")',
    });
  }

  /**
   * The progress the planner may count: a learner only once it can vote. A joining replica holds its votes until
   * its log holds what a leader had committed when it first heard from one, and then for two more election timeouts
   * (src/raft/core.ts, VoteHold 'leader-seen'); promoted before that, it is a voter that cannot vote, and one other
   * voter lost leaves the group without a majority for ever — its leader is gone, so the new voter never sees one
   * again (found by bench/fleet.ts: a kill -9 right after moves, a learner promoted with an empty log because its
   * lag was under catchUpLagEntries). So a learner counts as caught up only once its match reached the commit index
   * the leader had when it first heard from it, and three election timeouts have passed since.
   */
  #votingProgress(h: Held, s: GroupStatus, nowMs: number): GroupStatus['progress'] {
    for (const id of h.learnerGates.keys()) if (!s.membership.learners.includes(id)) h.learnerGates.delete(id);
    if (s.membership.learners.length === 0) return s.progress;
    const out = new Map(s.progress);
    for (const id of s.membership.learners) {
      const p = s.progress.get(id);
      if (p === undefined) continue;
      let gate = h.learnerGates.get(id);
      if (gate === undefined && p.recentActive) {
        // It has answered this leader, so it heard from it at a commit index no higher than this one.
        gate = { index: s.committed, reachedAtMs: undefined };
        h.learnerGates.set(id, gate);
      }
      if (gate !== undefined && gate.reachedAtMs === undefined && p.match >= gate.index) gate.reachedAtMs = nowMs;
      const votes = gate?.reachedAtMs !== undefined && nowMs - gate.reachedAtMs >= 3 * this.#electionTimeoutMs();
      if (!votes) out.set(id, { ...p, recentActive: false });
    }
    return out;
  }

  // ---- reports ----

  #report(h: Held, s: GroupStatus, status: ObservedStatus, detail: string, nowMs: number): void {
    const lag: Record<string, number> = {};
    for (const [id, p] of s.progress) lag[id] = Math.max(0, s.lastIndex - p.match);
    const shape = {
      name: h.name,
      generation: h.generation,
      reporter: this.nodeId,
      term: s.term,
      leader: this.nodeId,
      voters: [...s.membership.voters].sort(),
      learners: [...s.membership.learners].sort(),
      membershipIndex: s.membershipIndex,
      status,
      detail,
    };
    const key = JSON.stringify(shape);
    // The lag alone is reported at most every REPORT_LAG_EVERY_MS, and only when it changed: every report wakes a
    // round on every node (a read of the whole fleet), so an idle fleet's unchanged reports were its main cost.
    const lagKey = JSON.stringify(lag);
    if (key === h.reportedShape && (lagKey === h.reportedLag || nowMs - h.reportedAtMs < REPORT_LAG_EVERY_MS)) return;
    h.reportedShape = key;
    h.reportedLag = lagKey;
    h.reportedAtMs = nowMs;
    this.#reports.set(h.name, { ...shape, committed: s.committed, lag });
    this.#drainReports();
  }

  #drainReports(): void {
    while (this.#reporting < REPORT_CONCURRENCY && this.#reports.size > 0 && !this.#closed) {
      // One write per group at a time: two in flight may land in either order, and an older shape of the same term
      // would then stand until the next lag report (found by the fleet simulation). Up to REPORT_BATCH groups per
      // write (reportObservedMany): a cold start of thousands of groups reported each in a transaction of its own.
      // Iterated, not copied: with thousands of reports queued a copy per write was quadratic.
      const batch: ObservedRecord[] = [];
      for (const [name, rec] of this.#reports) {
        if (this.#reportingNames.has(name)) continue;
        batch.push(rec);
        if (batch.length >= REPORT_BATCH) break;
      }
      if (batch.length === 0) return;
      for (const rec of batch) {
        this.#reports.delete(rec.name);
        this.#reportingNames.add(rec.name);
      }
      this.#reporting++;
      const failed = (name: string, error: unknown): void => {
        // Written again at the next change or lag report; say why it was not now.
        for (const h of this.#held.values()) {
          if (h.name === name) {
            h.reportedShape = '';
            h.quiet = undefined;
          }
        }
        if (error !== undefined) this.reportError(error, `fleet node: reporting group ${name}`);
      };
      reportObservedMany(this.#o.control.store, this.#control.keys, batch)
        .then(
          (outcomes) => outcomes.forEach((o, i) => o instanceof Error && failed(batch[i]!.name, o)),
          (error: unknown) => {
            // The store failed (unavailable, closed): one error for the batch, each group reported again later.
            for (const rec of batch) failed(rec.name, undefined);
            this.reportError(error, `fleet node: reporting ${batch.length} group(s)`);
          },
        )
        .finally(() => {
          this.#reporting--;
          for (const rec of batch) this.#reportingNames.delete(rec.name);
          this.#drainReports();
        });
    }
  }

  // ---- routing ----

  #timeout(options: FleetRequestOptions, known: readonly string[] = REQUEST_OPTIONS): { timeoutMs: number } {
    checkCallOptions(options, known, `fleet ${this.fleet}: the call's options`);
    const t = options.timeoutMs ?? this.#o.requestTimeoutMs;
    if (!Number.isFinite(t) || t <= 0) {
      throw new InvalidArgumentError(`fleet ${this.fleet}: timeoutMs must be a positive number of ms, got ${t}`);
    }
    return { timeoutMs: t };
  }

  /**
   * The client of group `name`'s current generation, once some node is known to hold it: this node's replica first
   * when it is open and a member (one that joined is not until its leader added it), served in the process, then the
   * others. Every request goes through the group's client session, the local one too: when this node's replica is
   * dropped under a command (moved away, the node draining), the next holder gets it with the same (session, seq)
   * and applies it at most once. While no node is known to hold it (the group is being placed, or this node's
   * replica is being opened), wait, within `timeoutMs`: NoQuorumError when the time runs out.
   */
  async #target(name: string, timeoutMs: number): Promise<{ client: RemoteGroupClient; remainingMs: number }> {
    // A name in the view is valid (checked when it was added and when it was read): only others are checked here.
    if (this.#view?.groups.has(name) !== true) validateFleetGroupName(name);
    const clock = this.#o.control.clock;
    const start = clock.now();
    for (let attempt = 0; ; attempt++) {
      let view = this.#view;
      let g = view?.groups.get(name);
      if (view === undefined || g === undefined || attempt > 0) {
        // Perhaps added since the last round: read again before saying it does not exist. A retry (a call waiting
        // for its group to open here or to come back) joins a read already on its way: many waiting calls read the
        // fleet once at a time, not each on its own.
        view = await (attempt > 0 ? this.#sharedRead() : this.#readView());
        g = view.groups.get(name);
      }
      if (g === undefined) {
        // Claimed, or kept here as an orphan: the group comes back once its leader writes it back — wait for it.
        const restoring = view.claims.get(name) ?? this.#keptOrphanOf(name, view.meta);
        if (restoring === undefined) throw new FleetGroupNotFoundError(name, this.fleet);
        if (timeoutMs - (clock.now() - start) < MIN_WAIT_MS) {
          throw new FleetGroupNotFoundError(name, this.fleet, { node: restoring.node });
        }
        this.#loop.kick();
        await new Promise<void>((resolve) =>
          clock.setTimeout(resolve, Math.min(100, timeoutMs - (clock.now() - start))),
        );
        this.#check();
        continue;
      }
      const remainingMs = timeoutMs - (clock.now() - start);
      const id = groupRaftId(g);
      const held = this.#held.get(id);
      // Placed here but not open yet: wait for it (unless this node cannot run the group's state machine).
      const mine =
        g.desired?.members.includes(this.nodeId) === true && held === undefined && this.#o.machines.has(g.machine);
      if (!mine && this.#routes.routable(name, id)) {
        return { client: this.#routes.client(id, g.machine), remainingMs };
      }
      if (remainingMs < MIN_WAIT_MS) throw new NoQuorumError(id, clock.now() - start);
      this.#loop.kick();
      await new Promise<void>((resolve) => clock.setTimeout(resolve, Math.min(50, remainingMs)));
      this.#check();
    }
  }

  /** Read the whole fleet now, and keep it as the view. */
  async #readView(): Promise<FleetView> {
    const view = await readFleetView(this.#o.control.store, this.#control.keys, this.#corruption.report, this.#records);
    this.#view = view;
    return view;
  }

  /** A read of the fleet for retrying calls: the one on its way, or a new one (#target). */
  #sharedRead(): Promise<FleetView> {
    this.#retryRead ??= this.#readView().finally(() => {
      this.#retryRead = undefined;
    });
    return this.#retryRead;
  }

  /** Answer a remote client's request with this node's member replica of the group, if it holds one. */
  #serve(payload: Uint8Array): Promise<Uint8Array> {
    return serveGroupRequest((id) => this.#memberReplica(id), payload);
  }

  /** This node's replica of Raft group `id`, if it is open and a member (not one still joining, nor being dropped). */
  #memberReplica(id: string): RaftGroup | undefined {
    const held = this.#held.get(id);
    // An orphan is not the group the records name now, even under the same id (#checkControl).
    if (held === undefined || this.#orphans.has(id)) return undefined;
    return isMember(held, this.nodeId) ? held.group : undefined;
  }

  #check(): void {
    if (this.#closed) throw new ClosedError(`fleet node ${this.nodeId}`);
  }
}
