/**
 * The coordination-store contract.
 *
 * Everything above this file (protocol, runtime, slots, fleet) talks to a
 * coordination store only through these types. Every backend (memory, sqlite,
 * postgres, redis, etcd, zookeeper) implements them and is held to them by one
 * conformance suite (`test/conformance/suite.ts`). What each backend does and
 * does not guarantee is written down in `docs/store-contract.md`.
 *
 * The model is etcd's: revisioned keys, sessions (leases) that own keys,
 * compare-and-swap transactions and prefix watches. It is deliberately small:
 * the protocol needs nothing else, and every extra feature would have to be
 * proven on six backends.
 */

/** A key and its metadata, as read from the store. */
export interface KeyValue {
  /** The key, relative to the store's namespace. */
  readonly key: string;
  /** The value (UTF-8 text; the store rejects values that are not). */
  readonly value: string;
  /** Number of puts since the key was (re)created; 1 after the first put. */
  readonly version: number;
  /** Revision of the transaction that created the key (since it last did not exist). */
  readonly createRevision: number;
  /** Revision of the transaction that last put the key. */
  readonly modRevision: number;
  /** Id of the session the key is attached to, if any. The key vanishes when that session ends. */
  readonly sessionId: string | undefined;
}

/** The result of a prefix read. */
export interface RangeResult {
  readonly kvs: readonly KeyValue[];
  /**
   * A revision at least as new as every change the read reflects. Watch hints
   * carrying a higher revision mean "something changed after this read".
   */
  readonly revision: number;
  /**
   * True when the listing was taken atomically (one snapshot). False on
   * backends that assemble it from several reads (ZooKeeper); callers that
   * need a consistent view must tolerate this (see docs/store-contract.md).
   */
  readonly snapshot: boolean;
}

/** Comparison operators for numeric targets. */
export type CompareOp = '=' | '!=' | '<' | '>';

/**
 * One condition of a transaction. A missing key has version 0, createRevision 0,
 * modRevision 0 and no value (a value comparison on a missing key is false).
 */
export type Compare =
  | { readonly key: string; readonly target: 'exists'; readonly exists: boolean }
  | {
      readonly key: string;
      readonly target: 'version' | 'createRevision' | 'modRevision';
      readonly op: CompareOp;
      readonly value: number;
    }
  | { readonly key: string; readonly target: 'value'; readonly op: '=' | '!='; readonly value: string };

/** One operation of a transaction branch. */
export type Op =
  | {
      readonly op: 'put';
      readonly key: string;
      readonly value: string;
      /**
       * Attach the key to this session: it vanishes when the session ends. A
       * put without a session detaches the key. A put naming an expired session
       * fails the whole transaction with SessionExpiredError.
       */
      readonly session?: Session | undefined;
    }
  | { readonly op: 'delete'; readonly key: string }
  | { readonly op: 'deletePrefix'; readonly prefix: string }
  | { readonly op: 'get'; readonly key: string }
  | { readonly op: 'range'; readonly prefix: string };

/** The result of one op, in the order of the branch that ran. */
export type OpResult =
  | { readonly op: 'put'; readonly key: string }
  | { readonly op: 'delete'; readonly key: string; readonly deleted: number }
  | { readonly op: 'deletePrefix'; readonly prefix: string; readonly deleted: number }
  | { readonly op: 'get'; readonly key: string; readonly kv: KeyValue | undefined }
  | { readonly op: 'range'; readonly prefix: string; readonly kvs: readonly KeyValue[] };

/** An atomic compare-then-else transaction. */
export interface Txn {
  /** All must hold for `then` to run; otherwise `else` runs. */
  readonly compare: readonly Compare[];
  readonly then: readonly Op[];
  readonly else?: readonly Op[] | undefined;
}

export interface TxnResult {
  /** True when every compare held and `then` ran. */
  readonly succeeded: boolean;
  /**
   * The revision of this transaction if it wrote anything, otherwise a
   * revision at least as new as everything it read.
   */
  readonly revision: number;
  readonly results: readonly OpResult[];
}

/** A level-triggered hint: "something under the prefix may have changed; re-read". */
export interface WatchHint {
  /** Lower bound on the revision of the change (0 when the backend cannot tell). */
  readonly revision: number;
  /**
   * `change`: a change was observed. `resync`: the watch was re-established
   * after an interruption and changes may have been missed.
   */
  readonly reason: 'change' | 'resync';
}

export interface Watcher {
  /** Stop delivering hints and release the backend's resources. Idempotent. */
  close(): Promise<void>;
}

export type SessionState =
  /** Keep-alives are being acknowledged. */
  | 'live'
  /** Keep-alives are failing; the session may still be alive on the server. */
  | 'suspect'
  /** The server said the session is gone, or the local safety deadline passed without contact. */
  | 'expired'
  /** Closed by its owner. */
  | 'closed';

/**
 * A session (lease): a liveness claim with a TTL, kept alive in the
 * background, expired by the *server's* clock. Keys attached to it vanish when
 * it ends.
 *
 * Self-fencing: `safeUntilMs` is the time (on the store's injected monotonic
 * clock) before which the server cannot have expired the session: the send
 * time of the last acknowledged keep-alive plus TTL × (1 − maxClockDriftRate).
 * A session that reaches it without a newer acknowledgement becomes `expired`
 * locally, and a holder of resources must have stopped work a safety margin
 * before it.
 */
export interface Session {
  /** Unique within the store (and never reused). */
  readonly id: string;
  readonly ttlMs: number;
  readonly state: SessionState;
  /** See the interface comment. Monotonic milliseconds of the store's clock. */
  readonly safeUntilMs: number;
  /** Resolves once, when the session is expired or closed (never rejects). */
  readonly ended: Promise<SessionEnd>;
  /** Subscribe to state changes; returns an unsubscribe function. */
  onStateChange(listener: (state: SessionState, cause?: unknown) => void): () => void;
  /** Send a keep-alive now (the background loop does this every ttl/3). */
  keepAlive(): Promise<void>;
  /** End the session on the server and delete its keys. Idempotent. */
  close(): Promise<void>;
  /**
   * End on the server a session that has already ended here. A session whose local deadline passed while the
   * store did not answer may still be alive on the server, with its keys, until the server expires it by itself —
   * and a store that comes back from an outage may restart that clock (a new etcd or ZooKeeper leader gives every
   * lease its full TTL again). Resolves true once the server has confirmed that it no longer holds the session
   * (ended now, or earlier), false when that could not be confirmed (the server did not answer: call again
   * later); never rejects. A session that is still live or suspect is left alone (false): `close()` is for those.
   * Only the session's owner should call it, once all work done under the session has stopped: it may end the
   * lease before the server would have.
   */
  endOnServer(): Promise<boolean>;
}

export interface SessionEnd {
  readonly state: 'expired' | 'closed';
  readonly cause?: unknown;
}

export interface SessionOptions {
  /** Server-side TTL. Bounds: StoreLimits.minSessionTtlMs .. maxSessionTtlMs. */
  readonly ttlMs: number;
}

/** Size limits every backend enforces identically (the strictest backend decides). */
export interface StoreLimits {
  /** UTF-8 bytes of a key, namespace excluded. */
  readonly maxKeyBytes: number;
  /** UTF-8 bytes of a value. */
  readonly maxValueBytes: number;
  /** Compares + ops in one transaction (etcd's default max-txn-ops is 128). */
  readonly maxTxnOps: number;
  readonly minSessionTtlMs: number;
  /** The longest TTL sessions of this store may have: the namespace's `maxSessionTtlMs` (CommonStoreOptions). */
  readonly maxSessionTtlMs: number;
}

/** A monotonic clock with timers. Injected so the simulator can run in virtual time. */
export interface Clock {
  /** Monotonic milliseconds; never goes backwards. */
  now(): number;
  /**
   * Call `fn` after `delayMs`. A `background` timer (keep-alive loops, expiry
   * checks) does not keep the process alive; any other timer does, so that a
   * process awaiting a store request with a deadline does not exit early.
   */
  setTimeout(fn: () => void, delayMs: number, options?: TimerOptions): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

export interface TimerOptions {
  readonly background?: boolean | undefined;
}

export interface TimerHandle {
  /** Opaque. */
  readonly __timer: unknown;
}

/**
 * How a store checks that this host's clock runs at the server's rate (within `maxClockDriftRate`), which lease
 * safety assumes. `server`: keep-alives carry the server's time and the rate is measured over a window of a few
 * TTLs; out of the bound, every session ends at once with ClockRateError and none is granted until it is back.
 * `same-host`: the server's clock is this host's (SQLite): nothing to compare. `none`: the server does not tell its
 * time cheaply (etcd, ZooKeeper): unchecked, the bound is an assumption (docs/store-contract.md).
 */
export type ClockRateCheck = 'server' | 'same-host' | 'none';

/**
 * A connection to a coordination store, scoped to one namespace. Owns its
 * driver connections; `close()` releases them and ends its sessions.
 */
export interface Store {
  /** Backend name: memory, sqlite, postgres, redis, etcd, zookeeper. */
  readonly backend: string;
  /** Namespace prefix every key lives under. */
  readonly namespace: string;
  readonly limits: StoreLimits;
  /** The clock `safeUntilMs` is expressed in. */
  readonly clock: Clock;
  /** Whether this host's clock rate is checked against the server's (see ClockRateCheck); absent: `none`. */
  readonly clockRateCheck?: ClockRateCheck | undefined;

  openSession(options: SessionOptions): Promise<Session>;
  get(key: string): Promise<KeyValue | undefined>;
  range(prefix: string): Promise<RangeResult>;
  txn(txn: Txn): Promise<TxnResult>;
  /**
   * Watch a prefix. `onHint` is called (never concurrently, never after
   * close) with level-triggered hints; consumers re-read on every hint. The
   * watch re-establishes itself after errors and then sends a `resync` hint.
   */
  watch(prefix: string, onHint: (hint: WatchHint) => void): Promise<Watcher>;
  /**
   * How many times this client found that the data it works in was lost or replaced (each time every session ended
   * with a StoreDataLostError). Never decreases: a caller that read records, then sees it changed, may have read
   * data from after the loss — an older state, or none.
   */
  readonly dataLosses: number;
  /**
   * Look now for a loss of the data this client works in — what the store otherwise looks for every third of the
   * shortest session TTL: the namespace's incarnation record, and, where the backend can tell, a server that restarted
   * or was replaced since (and may have come back older). Throws StoreDataLostError (and ends every session) when it
   * finds one. For a caller about to act irreversibly on something missing from a read (the fleet deletes a replica
   * whose group record is gone): records read before this resolves came from the data this client worked in.
   */
  verifyData(): Promise<void>;
  /** Close sessions, watchers and connections. Idempotent. */
  close(): Promise<void>;
}

/** Options every backend accepts. */
export interface CommonStoreOptions {
  /**
   * Namespace: every key lives under it, so many groups and tenants share one
   * store. Default `rebalancer`. 1–64 characters of [A-Za-z0-9._-].
   */
  readonly namespace?: string | undefined;
  /**
   * The largest relative clock-rate error assumed between this host and the
   * store's server (default 0.01 = 1 %). `safeUntilMs` shrinks the TTL by it.
   */
  readonly maxClockDriftRate?: number | undefined;
  /** Injected clock (tests, simulator). Default: the process's monotonic clock. */
  readonly clock?: Clock | undefined;
  /** Timeout for one store request (default 5000 ms). */
  readonly requestTimeoutMs?: number | undefined;
  /**
   * The longest session TTL any client of the namespace may use (default 30 000 ms; every client of a namespace
   * must use the same value). After the store lost its data, no session is granted for this long, so that no
   * lease from before can still be running when a new holder starts (docs/adr/0009).
   */
  readonly maxSessionTtlMs?: number | undefined;
}
