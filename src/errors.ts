/**
 * Typed errors. Every error Rebalancer throws or reports is a RebalancerError
 * with a stable `code`, a message that says what to do, the underlying
 * `cause`, and `retryable`: whether the same call may succeed if made again
 * later (the table below decides it per code, so callers can branch on the
 * code or on the flag alone).
 *
 * Nothing in this file imports anything: every layer may use it.
 */

export type ErrorCode =
  /** The session ended on the server or passed its local safety deadline. Open a new one (runtimes rejoin). */
  | 'SESSION_EXPIRED'
  /** The store did not answer in time or refused the connection. Retry later. */
  | 'STORE_UNAVAILABLE'
  /** A message broker (RabbitMQ) could not be reached. Retry later. */
  | 'BROKER_UNAVAILABLE'
  /**
   * The store lost the data of the namespace (a restart without persistence, a wiped data directory): every lock
   * and every record is gone. Work stopped at once; re-register what was registered.
   */
  | 'DATA_LOST'
  /**
   * The namespace's data is new and the store cannot prove that no lease from before is still running elsewhere:
   * no session is granted until the longest one could have ended (`retryAfterMs`). Retry then.
   */
  | 'STORE_RECOVERING'
  /**
   * This host's clock runs faster or slower than the store server's by more than `maxClockDriftRate`, measured on
   * keep-alives: leases are not safe with it. Work stopped at once and no session is granted until the rate is back
   * within the bound (runtimes wait by themselves). Fix the host's clock (NTP, the VM, libfaketime).
   */
  | 'CLOCK_RATE'
  /** The call is wrong (bad option, URL, name, slot). Fix the call. */
  | 'INVALID_ARGUMENT'
  /** A key, value or transaction is above the contract's limits. Make it smaller. */
  | 'LIMIT_EXCEEDED'
  /** Data in the store is not what Rebalancer wrote. Repair or delete it. */
  | 'CORRUPT_DATA'
  /** The store holds another schema version. Upgrade or use another namespace. */
  | 'INCOMPATIBLE_SCHEMA'
  /**
   * A node's disk refused a write or an fsync (full, failing, read-only): the node stops acknowledging anything
   * that needs it. Free space or replace the disk, then restart the node (it recovers what was synced).
   */
  | 'DISK_FAILED'
  /** The object was closed or left. Create a new one. */
  | 'CLOSED'
  /** What was asked for does not exist (a group with no trace in the namespace). */
  | 'NOT_FOUND'
  /** Another live process holds the same identity (node or site id). Give each process its own. */
  | 'CONFLICT'
  /** A handler's work was revoked (the reason of its AbortSignal). Stop. */
  | 'REVOKED'
  /** A handler (or a sidecar's child) ended by itself with a failure. Reported only: the member restarts it itself. */
  | 'HANDLER_FAILED'
  /** A listener of an event threw; the protocol went on without it. Fix the listener. */
  | 'LISTENER_FAILED'
  /** A peer failed to prove it knows the cluster's secret (or its certificate): it gets nothing. Check its config. */
  | 'UNAUTHENTICATED'
  /** An invariant that must never break did (a bug). The object stops; report it. */
  | 'INVARIANT_VIOLATED'
  /** A Raft request went to a replica that cannot serve it (not the leader): send it to `leaderHint`. */
  | 'NOT_LEADER'
  /** A Raft group has no leader (a majority of its replicas is down or cut off). Retry later. */
  | 'NO_QUORUM'
  /** A Raft request did not complete in time; a command's outcome is unknown (it may still apply). */
  | 'TIMEOUT'
  /** A Raft group's state machine threw while applying: this replica stopped applying. Fix the state machine. */
  | 'STATE_MACHINE_FAILED'
  /**
   * A request to another Raft node could not be served there: no connection, the connection dropped, or the peer
   * serves no requests (yet, or an older release). Retry, on another node or later.
   */
  | 'PEER_UNAVAILABLE'
  /** Another Raft node's request handler threw; its code and message are carried over. */
  | 'REMOTE_FAILED';

/** Whether retrying the same call later can help, per code. */
export const RETRYABLE: Readonly<Record<ErrorCode, boolean>> = {
  SESSION_EXPIRED: true,
  STORE_UNAVAILABLE: true,
  BROKER_UNAVAILABLE: true,
  DATA_LOST: false,
  STORE_RECOVERING: true,
  CLOCK_RATE: true,
  INVALID_ARGUMENT: false,
  LIMIT_EXCEEDED: false,
  CORRUPT_DATA: false,
  INCOMPATIBLE_SCHEMA: false,
  DISK_FAILED: false,
  CLOSED: false,
  NOT_FOUND: false,
  CONFLICT: false,
  REVOKED: false,
  HANDLER_FAILED: false,
  LISTENER_FAILED: false,
  UNAUTHENTICATED: false,
  INVARIANT_VIOLATED: false,
  NOT_LEADER: true,
  NO_QUORUM: true,
  TIMEOUT: true,
  STATE_MACHINE_FAILED: false,
  PEER_UNAVAILABLE: true,
  REMOTE_FAILED: false,
};

export class RebalancerError extends Error {
  readonly code: ErrorCode;
  /** True when the same call may succeed if made again later. */
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = RETRYABLE[code];
  }
}

/** The session has ended on the server (or locally passed its safety deadline). Open a new one. */
export class SessionExpiredError extends RebalancerError {
  readonly sessionId: string;
  constructor(sessionId: string, message?: string, options?: { cause?: unknown }) {
    super(
      'SESSION_EXPIRED',
      message ?? `session ${sessionId} has expired; stop any work it guarded and open a new session`,
      options,
    );
    this.sessionId = sessionId;
  }
}

/**
 * The store could not be reached or did not answer in time. Retryable.
 * `outcome` tells whether a write may have been applied anyway: callers of
 * non-idempotent transactions must re-read before retrying when it is `unknown`.
 */
export class StoreUnavailableError extends RebalancerError {
  readonly outcome: 'not-applied' | 'unknown';
  constructor(message: string, options?: { cause?: unknown; outcome?: 'not-applied' | 'unknown' }) {
    super('STORE_UNAVAILABLE', message, { cause: options?.cause });
    this.outcome = options?.outcome ?? 'unknown';
  }
}

/**
 * The store lost the data of the namespace — its incarnation record is gone or was replaced (a restart without
 * persistence, a wiped data directory, a recreated file or schema). Every session of the store ends with this as
 * its cause: every lock went with the data. Runtimes stop their work at once, report this, and rejoin once the
 * store grants sessions again; resources registered by hand (GroupAdmin.add) must be registered again.
 */
export class StoreDataLostError extends RebalancerError {
  readonly namespace: string;
  constructor(backend: string, namespace: string, detail: string) {
    super(
      'DATA_LOST',
      `the ${backend} store lost the data of namespace ${JSON.stringify(namespace)} (${detail}): every lock and every ` +
        'registered resource is gone. Work stopped at once; members rejoin once no lease from before can still be ' +
        'running. Register the resources again (GroupAdmin.add or `rebalancer resources add`) unless a resource ' +
        'source does it, and give the store persistence (see docs/backends/<backend>.md)',
    );
    this.namespace = namespace;
  }
}

/**
 * No session is granted yet: the namespace's data is new and a lease from before it could still be running
 * elsewhere (after a store restart without persistence). Retry after `retryAfterMs`.
 */
export class StoreRecoveringError extends RebalancerError {
  readonly retryAfterMs: number;
  constructor(namespace: string, retryAfterMs: number) {
    super(
      'STORE_RECOVERING',
      `namespace ${JSON.stringify(namespace)} was (re)created within the longest session TTL: a lease from before ` +
        `could still be running elsewhere, so no session is granted for another ${Math.ceil(retryAfterMs)} ms; ` +
        'retry then (runtimes wait by themselves)',
    );
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * This host's clock rate left the bound the leases assume (`maxClockDriftRate`), measured against the store server's
 * clock on keep-alives. Every session of the store client ended at once; none is granted until the rate is measured
 * within the bound again over a full window. Retryable: runtimes wait by themselves (retry after `retryAfterMs`).
 */
export class ClockRateError extends RebalancerError {
  /** The local clock's rate relative to the server's, as measured: between `rateLow` and `rateHigh` (1 = equal). */
  readonly rateLow: number;
  readonly rateHigh: number;
  readonly maxClockDriftRate: number;
  readonly retryAfterMs: number;
  constructor(rate: { low: number; high: number }, maxClockDriftRate: number, retryAfterMs: number) {
    const pct = (x: number): string => `${(x * 100).toFixed(1)} %`;
    super(
      'CLOCK_RATE',
      `this host's clock runs at ${pct(rate.low)} to ${pct(rate.high)} of the store server's rate, beyond the ` +
        `±${(maxClockDriftRate * 100).toFixed(1)} % (maxClockDriftRate) that lease safety assumes: work stopped and ` +
        'no session is granted until the rate is back within the bound; fix the clock (NTP, the VM, libfaketime)',
    );
    this.rateLow = rate.low;
    this.rateHigh = rate.high;
    this.maxClockDriftRate = maxClockDriftRate;
    this.retryAfterMs = retryAfterMs;
  }
}

/** A message broker (RabbitMQ) could not be reached or refused the connection. Retryable. */
export class BrokerUnavailableError extends RebalancerError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('BROKER_UNAVAILABLE', message, { cause: options?.cause });
  }
}

/** A caller passed something invalid (bad URL, option, key). Fix the call. */
export class InvalidArgumentError extends RebalancerError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('INVALID_ARGUMENT', message, options);
  }
}

/** A key, value or transaction exceeds the contract's documented limits. */
export class LimitExceededError extends RebalancerError {
  readonly limit: string;
  readonly actual: number;
  readonly max: number;
  constructor(limit: string, actual: number, max: number, message?: string) {
    super('LIMIT_EXCEEDED', message ?? `${limit} is ${actual}, above the limit of ${max}`);
    this.limit = limit;
    this.actual = actual;
    this.max = max;
  }
}

/**
 * Data read back from the store is not what Rebalancer wrote (not its JSON record, not UTF-8, malformed metadata,
 * a Redis key of the wrong type, a junk revision counter). `key` names it (a key of the namespace, or a backend's
 * own name such as `rb:{ns}:rev`); `expected` says what should be there. Nothing that could not be read is
 * overwritten: repair it (the message says how; see docs/store-contract.md, "Corrupt data").
 */
export class CorruptDataError extends RebalancerError {
  readonly key: string | undefined;
  readonly expected: string | undefined;
  constructor(message: string, options?: { cause?: unknown; key?: string; expected?: string }) {
    super('CORRUPT_DATA', message, options);
    this.key = options?.key;
    this.expected = options?.expected;
  }
}

/**
 * A Raft write-ahead log segment or snapshot file holds bytes that fail their checksum where a torn write cannot
 * explain them (not at the tail of the last segment). Nothing was applied from it.
 */
export class CorruptLogError extends RebalancerError {
  readonly file: string;
  readonly offset: number;
  constructor(file: string, offset: number, message: string, options?: { cause?: unknown }) {
    super('CORRUPT_DATA', message, options);
    this.file = file;
    this.offset = offset;
  }
}

/** A write or fsync of the Raft log failed: nothing written since the last successful sync is acknowledged. */
export class DiskFailedError extends RebalancerError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('DISK_FAILED', message, options);
  }
}

/**
 * Reported (an `error` event of the Raft node, never thrown): a write and fsync of the node's log has been on its way
 * for `stalledMs`. Meanwhile none of its replicas acknowledges anything and its leaders step down (a leader that
 * cannot persist must not keep its group); the groups go on with their other members. Said once per stall. Check
 * the disk: full, failing, or a network volume that stopped answering. Code TIMEOUT: something did not complete in
 * time; nothing failed yet (if the write fails, DiskFailedError follows).
 */
export class DiskStalledError extends RebalancerError {
  readonly stalledMs: number;
  constructor(node: string, stalledMs: number) {
    super(
      'TIMEOUT',
      `raft node ${node}: a write and fsync of its log has not completed for ${(stalledMs / 1000).toFixed(1)} s; ` +
        'its replicas acknowledge nothing meanwhile and the groups it led elect other leaders. Check the disk ' +
        '(full, failing, a network volume that stopped answering)',
    );
    this.stalledMs = stalledMs;
  }
}

/** The store holds data of a schema version this build does not understand. Nothing was changed. */
export class IncompatibleSchemaError extends RebalancerError {
  readonly found: number;
  readonly supported: number;
  constructor(found: number, supported: number, where: string) {
    super(
      'INCOMPATIBLE_SCHEMA',
      `${where} has schema version ${found}, but this Rebalancer understands version ${supported}; ` +
        (found > supported
          ? 'upgrade Rebalancer, or use another namespace'
          : 'migrate the data with a matching Rebalancer release, or use another namespace') +
        '. Nothing was changed.',
    );
    this.found = found;
    this.supported = supported;
  }
}

/** The object was closed; create a new one. */
export class ClosedError extends RebalancerError {
  /**
   * For a request cut short by the close (a Raft group's replica closed under a command: dropped, moved away, its
   * node closing): whether it may have been proposed before (`unknown`) or certainly was not (`not-applied`).
   * Undefined when nothing was in flight.
   */
  readonly outcome: 'unknown' | 'not-applied' | undefined;
  constructor(what: string, options?: { readonly outcome?: 'unknown' | 'not-applied'; readonly cause?: unknown }) {
    super('CLOSED', `${what} is closed`, options?.cause === undefined ? undefined : { cause: options.cause });
    this.outcome = options?.outcome;
  }
}

/** The group has no members, no resources and no state in this namespace. */
export class GroupNotFoundError extends RebalancerError {
  readonly group: string;
  constructor(group: string, namespace: string) {
    super(
      'NOT_FOUND',
      `group ${JSON.stringify(group)} has no members, resources or state in namespace ${JSON.stringify(namespace)}; ` +
        'check --store and --namespace (`rebalancer groups list` lists the groups there)',
    );
    this.group = group;
  }
}

/** A fleet already has a live group of this name (a removed name may be added again: it gets a new generation). */
export class FleetGroupExistsError extends RebalancerError {
  readonly group: string;
  readonly generation: number;
  /**
   * The name is not in the records but claimed: replicas of a group of that name survived a loss of the control
   * store's records and are on their way back (docs/fleet.md, "The control store loses its data"). `node` keeps one.
   */
  readonly restoring: { readonly node: string } | undefined;
  constructor(group: string, fleet: string, generation: number, restoring?: { readonly node: string }) {
    super(
      'CONFLICT',
      restoring === undefined
        ? `fleet ${JSON.stringify(fleet)} already has a group ${JSON.stringify(group)} (generation ${generation}); ` +
            'use another name, or remove that group first (its data is then gone for good)'
        : `fleet ${JSON.stringify(fleet)} has a group ${JSON.stringify(group)} (generation ${generation}) on its way ` +
            `back: the control store lost its records, and node ${restoring.node} keeps a replica of it, which its ` +
            'leader writes back with its data once elected. Wait for it (`rebalancer fleet status` lists it then); ' +
            'if it can never come back (its majority is gone), removeGroup gives up on it — its replicas stay, unserved',
    );
    this.group = group;
    this.generation = generation;
    this.restoring = restoring;
  }
}

/** The fleet has no live group of this name (never added, or removed). */
export class FleetGroupNotFoundError extends RebalancerError {
  readonly group: string;
  /**
   * The name is in no record but on its way back: the control store lost its records and `node` keeps a replica of
   * the group, which its leader writes back (docs/fleet.md, "The control store loses its data"). A command or query
   * waits for it within its time; this says the time ran out first.
   */
  readonly restoring: { readonly node: string } | undefined;
  constructor(group: string, fleet: string, restoring?: { readonly node: string }) {
    super(
      'NOT_FOUND',
      restoring === undefined
        ? `fleet ${JSON.stringify(fleet)} has no group ${JSON.stringify(group)}; ` +
            '`rebalancer fleet status` lists its groups (check --store, --namespace and the fleet name)'
        : `fleet ${JSON.stringify(fleet)} has group ${JSON.stringify(group)} on its way back, not yet written back: ` +
            `the control store lost its records, and node ${restoring.node} keeps a replica of it, which its leader ` +
            'writes back once elected. Retry later (`rebalancer fleet status` lists it as restoring)',
    );
    this.group = group;
    this.restoring = restoring;
  }
}

/**
 * A fleet node found the control plane's records gone: the meta record carries another id than the one this node
 * worked with, or there is none (the store lost its data, or the records were deleted). The replicas it held are
 * kept as orphans — never deleted, not served by name — until their group is written back (docs/fleet.md, "The
 * control store loses its data").
 */
export class FleetControlLostError extends RebalancerError {
  readonly fleet: string;
  /** Raft group ids of the replicas kept as orphans. */
  readonly orphans: readonly string[];
  constructor(fleet: string, nodeId: string, detail: string, orphans: readonly string[]) {
    const shown = orphans.slice(0, 10).join(', ') + (orphans.length > 10 ? `, … (${orphans.length} in all)` : '');
    super(
      'DATA_LOST',
      `fleet ${JSON.stringify(fleet)}: node ${nodeId} found the control store's records lost (${detail}). It keeps ` +
        `the ${orphans.length} replica(s) it held as orphans, in its data directory: never deleted, not served by ` +
        `name, never taken for a group added since${orphans.length > 0 ? ` (${shown})` : ''}. Each group's leader ` +
        'writes it back under its own generation, and its replicas serve again; give the store persistence ' +
        '(docs/fleet.md, "The control store loses its data")',
    );
    this.fleet = fleet;
    this.orphans = orphans;
  }
}

/**
 * Another live process registered the same node (or site) id: two processes
 * must never act as one member. Give every process its own id.
 */
export class NodeIdInUseError extends RebalancerError {
  readonly nodeId: string;
  constructor(nodeId: string, where: string) {
    super(
      'CONFLICT',
      `id ${nodeId} is already a live member of ${where} (another process is using it); ` +
        'give every process its own id',
    );
    this.nodeId = nodeId;
  }
}

/** The reason given to a handler's AbortSignal: its resource was revoked. Stop the work. */
export class RevokedError<Reason extends string = string> extends RebalancerError {
  readonly resource: string;
  readonly reason: Reason;
  constructor(resource: string, reason: Reason) {
    super('REVOKED', `resource ${resource} was revoked (${reason}); stop working on it`);
    this.resource = resource;
    this.reason = reason;
  }
}

/** A sidecar's child exited by itself with a non-zero status (reported as `handlerFailed`, then restarted). */
export class ChildFailedError extends RebalancerError {
  readonly resource: string;
  readonly exitCode: number | null;
  readonly exitSignal: string | null;
  constructor(resource: string, exitCode: number | null, exitSignal: string | null) {
    super(
      'HANDLER_FAILED',
      `the child of ${resource} exited by itself with ${exitSignal === null ? `code ${exitCode}` : `signal ${exitSignal}`}; ` +
        'it is restarted after a backoff (see its output for why it failed)',
    );
    this.resource = resource;
    this.exitCode = exitCode;
    this.exitSignal = exitSignal;
  }
}

/** A listener of an event threw. The protocol went on without it; the listener's error is the cause. */
export class ListenerError extends RebalancerError {
  readonly event: string;
  constructor(event: string, cause: unknown) {
    super(
      'LISTENER_FAILED',
      `a listener of the "${event}" event threw: ${describe(cause)}; the protocol went on without it — ` +
        'catch errors inside the listener (and, for a prepare, call reportFailed(slot) if the migration cannot start)',
      { cause },
    );
    this.event = event;
  }
}

/**
 * A Raft transport peer sent bytes that are not a frame of ours (a bad length, an unknown type, a field past its
 * frame's end). The stream cannot be resynchronised: the connection is closed (the peer may reconnect). With
 * `dropped`, a well-formed frame carried a message the peer may not send (one whose `from` is not the
 * authenticated peer, or whose `to` is not this node): that message was dropped and the connection stays up.
 */
export class TransportFrameError extends RebalancerError {
  /** The peer's node id (or address, before it authenticated), when known. */
  readonly peer: string | undefined;
  /** What was wrong with the frame. */
  readonly reason: string;
  constructor(message: string, options?: { cause?: unknown; peer?: string; dropped?: boolean }) {
    super(
      'CORRUPT_DATA',
      `raft transport: ${options?.peer === undefined ? 'a peer' : `peer ${options.peer}`} sent an invalid frame ` +
        `(${message}); ${options?.dropped === true ? 'the message was dropped' : 'the connection was closed'}. ` +
        'Check that every node runs the same Rebalancer version and that nothing else connects to the raft port',
      options,
    );
    this.peer = options?.peer;
    this.reason = message;
  }
}

/**
 * A Raft transport peer did not authenticate: a wrong shared secret or cluster id, an unexpected node id, or no
 * answer within the handshake timeout. It was sent nothing and its frames were ignored.
 */
export class PeerAuthError extends RebalancerError {
  readonly peer: string;
  constructor(peer: string, why: string, options?: { cause?: unknown }) {
    super(
      'UNAUTHENTICATED',
      `raft transport: peer ${peer} did not authenticate (${why}); it was sent nothing. Give every node the same ` +
        'clusterId and secret (and, with TLS, certificates signed by the same CA)',
      options,
    );
    this.peer = peer;
  }
}

/**
 * An invariant that must never break did: a bug in Rebalancer (or a store
 * that broke its contract). The object that found it stops acting; report it.
 */
export class InvariantError extends RebalancerError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('INVARIANT_VIOLATED', `invariant violated: ${message}. This is a bug; please report it`, options);
  }
}

/** Throw an InvariantError unless `condition` holds. */
/** Where a Raft group's leader is believed to be, as far as the replica that answered knows. */
export interface LeaderHint {
  readonly id: string;
  /** Its transport address (host:port), when known. */
  readonly address: string | undefined;
}

/** The request needs the group's leader and this replica is not it. `leaderHint`: where to go (when known). */
export class NotLeaderError extends RebalancerError {
  readonly group: string;
  readonly leaderHint: LeaderHint | undefined;
  constructor(group: string, leaderHint: LeaderHint | undefined, what: string) {
    super(
      'NOT_LEADER',
      `raft group ${group}: ${what} needs the leader, and this replica is not it; ` +
        (leaderHint
          ? `send it to node ${leaderHint.id}${leaderHint.address ? ` at ${leaderHint.address}` : ''}`
          : 'no leader is known yet: retry shortly'),
    );
    this.group = group;
    this.leaderHint = leaderHint;
  }
}

/** No leader could be found for a Raft group within the request's time: a majority may be down or partitioned. */
export class NoQuorumError extends RebalancerError {
  readonly group: string;
  constructor(group: string, waitedMs: number) {
    super(
      'NO_QUORUM',
      `raft group ${group}: no leader within ${waitedMs} ms — a majority of its replicas is down or cut off from ` +
        'this one; the request was not applied. Retry later; check that the other nodes run and can reach each other',
    );
    this.group = group;
  }
}

/**
 * A Raft request did not complete within its time. For a command, `outcome` is 'unknown': it may have been applied
 * (or be applied later). Re-read before retrying a command that is not idempotent.
 */
export class TimeoutError extends RebalancerError {
  readonly group: string;
  readonly outcome: 'unknown' | 'not-applied';
  /** `subject` replaces "raft group <group>" at the start of the message (a request to a node, not to a group). */
  constructor(
    group: string,
    what: string,
    waitedMs: number,
    outcome: 'unknown' | 'not-applied',
    options?: { subject?: string },
  ) {
    super(
      'TIMEOUT',
      `${options?.subject ?? `raft group ${group}`}: ${what} did not complete within ${waitedMs} ms` +
        (outcome === 'unknown' ? '; its outcome is unknown (it may still be applied): re-read before retrying' : ''),
    );
    this.group = group;
    this.outcome = outcome;
  }
}

/**
 * A request to another Raft node (RaftNode.request) was not served there. `reason`: `not-connected` (no
 * authenticated connection to it when asked: nothing was sent), `disconnected` (the connection dropped, or this node
 * closed, with the request in flight: it may have run), `no-handler` (the peer set no request handler yet), or
 * `unsupported` (the peer runs an older release that has no requests). `outcome` says whether it may have run there.
 */
export class PeerUnavailableError extends RebalancerError {
  readonly peer: string;
  readonly reason: 'not-connected' | 'disconnected' | 'no-handler' | 'unsupported';
  readonly outcome: 'unknown' | 'not-applied';
  constructor(peer: string, reason: PeerUnavailableError['reason'], outcome: 'unknown' | 'not-applied') {
    const why = {
      'not-connected': 'this node has no connection to it now; nothing was sent',
      disconnected: 'the connection dropped with the request in flight; it may have run there',
      'no-handler': 'it has no request handler (it may still be starting)',
      unsupported: 'it runs an older Rebalancer release without node-to-node requests; upgrade it',
    }[reason];
    super('PEER_UNAVAILABLE', `raft node ${peer} did not serve a request: ${why}. Retry on another node or later`);
    this.peer = peer;
    this.reason = reason;
    this.outcome = outcome;
  }
}

/** Another Raft node's request handler threw. `remoteCode`: the thrown error's code there (when it had one). */
export class RemoteFailedError extends RebalancerError {
  readonly peer: string;
  readonly remoteCode: string;
  readonly remoteMessage: string;
  constructor(peer: string, remoteCode: string, remoteMessage: string) {
    super(
      'REMOTE_FAILED',
      `raft node ${peer}'s request handler failed (${remoteCode}): ${remoteMessage} — see that node's logs; the ` +
        'request may have had effects there',
    );
    this.peer = peer;
    this.remoteCode = remoteCode;
    this.remoteMessage = remoteMessage;
  }
}

/**
 * A Raft group's state machine threw while applying an entry (or restoring a snapshot). The replica stopped
 * applying (it does not diverge from the others by skipping the entry); pending requests fail with this error.
 */
export class StateMachineError extends RebalancerError {
  readonly group: string;
  readonly index: number;
  constructor(group: string, index: number, what: string, options?: { cause?: unknown }) {
    super(
      'STATE_MACHINE_FAILED',
      `raft group ${group}: the state machine threw while ${what} (entry ${index}); this replica stopped applying ` +
        `the group. A state machine must be deterministic and must not throw: return a result that says "refused" ` +
        `instead. Fix it and restart the node (it replays the log): ${describe(options?.cause)}`,
      options,
    );
    this.group = group;
    this.index = index;
  }
}

/**
 * A Raft node's data directory was lost: a peer knew it under another incarnation (docs/raft.md, "A node that lost
 * its data"). Reported, not thrown: the node keeps running, but none of its replicas votes or campaigns until each
 * has caught up with a leader of its group and one more maximum election timeout has passed.
 */
export class RaftDataLostError extends RebalancerError {
  readonly node: string;
  readonly peer: string;
  constructor(node: string, peer: string) {
    super(
      'DATA_LOST',
      `raft node ${node} lost its data: peer ${peer} knew it under another incarnation (its data directory was ` +
        'deleted, replaced or restored from a backup). It may have voted in terms it no longer remembers, so it ' +
        'rejoins without voting: each of its replicas votes again only once it has caught up with a leader of its ' +
        'group. Nothing to do if that was intended; otherwise check what happened to the data directory',
    );
    this.node = node;
    this.peer = peer;
  }
}

/** Why the unsafe recovery of a fleet group was refused (FleetRecoveryRefusedError.reason). */
export type FleetRecoveryRefusal = 'not-unsafe' | 'majority-not-lost' | 'no-replica' | 'node-not-live' | 'changed';

/**
 * The unsafe recovery of a fleet group that lost its majority (docs/fleet.md, "A group that lost its majority") was refused: the caller did
 * not say it accepts losing data (`unsafe`), the group has not lost its majority (without `force`), the node to
 * recover from holds no replica of it or is not live, or the group kept changing while it was read. Nothing was
 * written. The message says what to do.
 */
export class FleetRecoveryRefusedError extends RebalancerError {
  readonly group: string;
  readonly reason: FleetRecoveryRefusal;
  constructor(group: string, reason: FleetRecoveryRefusal, message: string) {
    super(reason === 'majority-not-lost' || reason === 'changed' ? 'CONFLICT' : 'INVALID_ARGUMENT', message);
    this.group = group;
    this.reason = reason;
  }
}

export function invariant(condition: unknown, message: string | (() => string)): asserts condition {
  if (!condition) throw new InvariantError(typeof message === 'string' ? message : message());
}

/** A short description of anything thrown, for messages. */
export function describe(error: unknown): string {
  if (error instanceof Error) return error.message;
  try {
    return String(error);
  } catch {
    return 'an unprintable value';
  }
}
