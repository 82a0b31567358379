/**
 * The SQLite store: the embedded default. One database file shared by any
 * number of processes on ONE host (not NFS): WAL journal, every
 * read-modify-write in a `BEGIN IMMEDIATE` transaction, session expiry on the
 * host's monotonic clock (see clock.ts), watches by polling
 * `PRAGMA data_version`. docs/backends/sqlite.md states what is and is not
 * guaranteed.
 *
 * better-sqlite3 is synchronous. Every request is one short transaction run
 * to completion on the event loop; lock waits are never long synchronous
 * sleeps: SQLite's own busy handler waits at most `busyTimeoutMs` (a few ms),
 * then the request backs off asynchronously and retries until
 * `requestTimeoutMs`.
 */
import { randomUUID } from 'node:crypto';
import {
  ClosedError,
  CorruptDataError,
  InvalidArgumentError,
  RebalancerError,
  SessionExpiredError,
  StoreUnavailableError,
} from '../../errors.js';
import { systemClock } from '../../store/clock.js';
import type {
  Clock,
  CommonStoreOptions,
  KeyValue,
  Op,
  RangeResult,
  Session,
  SessionOptions,
  Store,
  StoreLimits,
  Txn,
  TxnResult,
  WatchHint,
  Watcher,
} from '../../store/contract.js';
import { ManagedSession } from '../../store/session.js';
import {
  DEFAULT_REQUEST_TIMEOUT_MS,
  STORE_LIMITS,
  validateDriftRate,
  validateKey,
  validateNamespace,
  validatePrefix,
  validateSessionOptions,
  validateTimeout,
  validateTxn,
} from '../../store/validate.js';
import { hostMonotonicMs } from './clock.js';
import {
  CHANGE_LOG_KEEP,
  CommitError,
  Connection,
  isBusy,
  isSqliteError,
  type ConnectionOptions,
  type SqliteDriverOptions,
} from './db.js';
import { validateDatabasePath } from './url.js';

export type { SqliteDriverOptions } from './db.js';

export const DEFAULT_POLL_INTERVAL_MS = 25;
export const DEFAULT_BUSY_TIMEOUT_MS = 5;

export interface SqliteStoreOptions extends CommonStoreOptions {
  /** Path of the database file (created if missing; its directory must exist). */
  readonly path: string;
  /**
   * How often this store checks the file for other processes' commits (watch
   * hints) and reaps expired sessions. Default 25 ms. It bounds how late
   * watchers hear of a change or an expiry; each check is two index probes.
   */
  readonly pollIntervalMs?: number | undefined;
  /**
   * How long one SQLite call may wait synchronously for a lock (blocking the
   * event loop) before the request backs off asynchronously. Default 5 ms.
   */
  readonly busyTimeoutMs?: number | undefined;
  /**
   * `full` (default): every commit is fsynced, so a power loss cannot undo a
   * commit and revisions (fencing tokens) never go backwards. `normal`: faster,
   * but a power loss may lose the last commits.
   */
  readonly synchronous?: 'full' | 'normal' | undefined;
  /** Passed to better-sqlite3 (`nativeBinding`, `verbose`, `fileMustExist`). */
  readonly driver?: SqliteDriverOptions | undefined;
}

/** What a request's callback gets: the connection, the expiry clock's now, and where to report sessions it ended. */
interface RequestContext {
  readonly conn: Connection;
  readonly nowMs: number;
  readonly ended: string[];
}

/** Stores of this process, by database file identity: own commits are announced to them at once. */
const peers = new Map<string, Set<SqliteStore>>();

class WatchEntry {
  readonly prefix: string;
  readonly #onHint: (hint: WatchHint) => void;
  #open = true;
  #queue: WatchHint[] = [];
  #scheduled = false;

  constructor(prefix: string, onHint: (hint: WatchHint) => void) {
    this.prefix = prefix;
    this.#onHint = onHint;
  }

  /** Keys under `changed` (a common prefix of the changed keys) may be under this watch's prefix. */
  overlaps(changed: string): boolean {
    return changed.startsWith(this.prefix) || this.prefix.startsWith(changed);
  }

  notify(hint: WatchHint): void {
    if (!this.#open) return;
    const last = this.#queue[this.#queue.length - 1];
    if (last !== undefined && last.reason === hint.reason) {
      // Coalesce: consumers re-read anyway; keep the newest revision.
      this.#queue[this.#queue.length - 1] = { reason: hint.reason, revision: Math.max(last.revision, hint.revision) };
    } else {
      this.#queue.push(hint);
    }
    if (this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => this.#drain());
  }

  close(): void {
    this.#open = false;
    this.#queue = [];
  }

  #drain(): void {
    this.#scheduled = false;
    const hints = this.#queue;
    this.#queue = [];
    for (const hint of hints) {
      if (!this.#open) return;
      try {
        this.#onHint(hint);
      } catch {
        // A throwing consumer must not break the store.
      }
    }
  }
}

function checkInterval(name: string, v: number | undefined, fallback: number, min: number, max: number): number {
  const x = v ?? fallback;
  if (typeof x !== 'number' || !Number.isFinite(x) || x < min || x > max) {
    throw new InvalidArgumentError(`${name} must be a number of milliseconds in [${min}, ${max}], got ${String(x)}`);
  }
  return x;
}

export class SqliteStore implements Store {
  readonly backend = 'sqlite';
  readonly namespace: string;
  readonly limits: StoreLimits = STORE_LIMITS;
  readonly clock: Clock;
  /** Absolute path of the database file. */
  readonly path: string;
  readonly #driftRate: number;
  readonly #timeoutMs: number;
  readonly #pollMs: number;
  readonly #connOptions: ConnectionOptions;
  readonly #sessions = new Map<string, ManagedSession>();
  readonly #watchers = new Set<WatchEntry>();
  #conn: Connection | undefined;
  #closing = false;
  #closed = false;
  #closePromise: Promise<void> | undefined;
  #tickTimer: NodeJS.Timeout | undefined;
  #pokeScheduled: NodeJS.Immediate | undefined;
  /** `PRAGMA data_version` at the last successful poll. */
  #lastDataVersion = -1;
  /** Namespace revision up to which watchers have been hinted. */
  #lastSeenRev = 0;
  /** Watchers must get a resync hint after the next successful poll. */
  #interrupted = false;
  /** Monotonic time since which polls have been failing with SQLITE_BUSY. */
  #busySinceMs: number | undefined;

  private constructor(options: SqliteStoreOptions) {
    if (options === null || typeof options !== 'object') {
      throw new InvalidArgumentError('createSqliteStore needs options such as { path: "./rebalancer.db" }');
    }
    this.namespace = validateNamespace(options.namespace);
    this.#driftRate = validateDriftRate(options.maxClockDriftRate);
    this.#timeoutMs = validateTimeout('requestTimeoutMs', options.requestTimeoutMs, DEFAULT_REQUEST_TIMEOUT_MS);
    this.#pollMs = checkInterval('pollIntervalMs', options.pollIntervalMs, DEFAULT_POLL_INTERVAL_MS, 1, 60_000);
    const busyTimeoutMs = checkInterval('busyTimeoutMs', options.busyTimeoutMs, DEFAULT_BUSY_TIMEOUT_MS, 0, 1000);
    const synchronous = options.synchronous ?? 'full';
    if (synchronous !== 'full' && synchronous !== 'normal') {
      throw new InvalidArgumentError(`synchronous must be 'full' or 'normal', got ${String(synchronous)}`);
    }
    const d = options.driver ?? {};
    if (d === null || typeof d !== 'object') throw new InvalidArgumentError('driver options must be an object');
    const driver: SqliteDriverOptions = {
      ...(d.nativeBinding === undefined ? {} : { nativeBinding: d.nativeBinding }),
      ...(d.verbose === undefined ? {} : { verbose: d.verbose }),
      ...(d.fileMustExist === undefined ? {} : { fileMustExist: d.fileMustExist }),
    };
    this.path = validateDatabasePath(options.path);
    this.clock = options.clock ?? systemClock;
    this.#connOptions = { busyTimeoutMs, synchronous, driver };
  }

  /** Open (creating the file and schema if needed). Prefer `createSqliteStore`. */
  static async create(options: SqliteStoreOptions): Promise<SqliteStore> {
    const store = new SqliteStore(options);
    try {
      await store.#request('open', 'write', (ctx) => {
        ctx.conn.ensureNamespace(store.namespace);
        ctx.ended.push(...ctx.conn.expireIfClockReset(ctx.nowMs), ...ctx.conn.deleteOrphans());
      });
      store.#lastSeenRev = await store.#request('open', 'read', (ctx) => ctx.conn.revision(store.namespace));
    } catch (err) {
      store.#shutdown();
      throw err;
    }
    store.#scheduleTick();
    return store;
  }

  // ---- Store ----------------------------------------------------------------

  async openSession(options: SessionOptions): Promise<Session> {
    const ttlMs = validateSessionOptions(options);
    this.#assertOpen();
    const id = randomUUID();
    const sentAt = this.clock.now();
    await this.#request('openSession', 'write', (ctx) => ctx.conn.createSession(id, this.namespace, ttlMs, ctx.nowMs));
    const session: ManagedSession = new ManagedSession({
      id,
      ttlMs,
      clock: this.clock,
      maxClockDriftRate: this.#driftRate,
      createdSendAtMs: sentAt,
      requestTimeoutMs: this.#timeoutMs,
      driver: {
        keepAlive: () =>
          this.#request('keepAlive', 'write', (ctx) => (ctx.conn.touchSession(id, ctx.nowMs) ? 'alive' : 'gone')),
        revoke: () => this.#request('revoke', 'write', (ctx) => ctx.conn.deleteSession(id)),
      },
      onEnd: () => this.#sessions.delete(id),
    });
    this.#sessions.set(id, session);
    if (this.#closing) {
      // close() began while this session was being created and did not see it.
      await session.close();
      throw new ClosedError('sqlite store');
    }
    return session;
  }

  async get(key: string): Promise<KeyValue | undefined> {
    validateKey(key);
    this.#assertOpen();
    return this.#request('get', 'read', (ctx) => ctx.conn.get(this.namespace, key, ctx.nowMs));
  }

  async range(prefix: string): Promise<RangeResult> {
    validatePrefix(prefix);
    this.#assertOpen();
    return this.#request('range', 'read', (ctx) => ({
      kvs: ctx.conn.range(this.namespace, prefix, ctx.nowMs),
      revision: ctx.conn.revision(this.namespace),
      snapshot: true,
    }));
  }

  async txn(txn: Txn): Promise<TxnResult> {
    validateTxn(txn);
    this.#assertOpen();
    const ops = [...txn.then, ...(txn.else ?? [])];
    const sessionOp = ops.find((op): op is Extract<Op, { op: 'put' }> => op.op === 'put' && op.session !== undefined);
    let session: ManagedSession | undefined;
    if (sessionOp?.session !== undefined) {
      session = this.#ownSession(sessionOp.session);
      session.assertUsable();
    }
    const writes = ops.some((op) => op.op === 'put' || op.op === 'delete' || op.op === 'deletePrefix');
    try {
      return await this.#request('txn', writes ? 'write' : 'read', (ctx) =>
        ctx.conn.applyTxn(this.namespace, txn, session?.id, ctx.nowMs),
      );
    } catch (err) {
      if (err instanceof SessionExpiredError && session !== undefined) session.markExpired(err);
      throw err;
    }
  }

  async watch(prefix: string, onHint: (hint: WatchHint) => void): Promise<Watcher> {
    validatePrefix(prefix);
    if (typeof onHint !== 'function') throw new InvalidArgumentError('watch needs an onHint function');
    this.#assertOpen();
    if (this.#watchers.size === 0) {
      // Without watchers the poller does not follow the change log; start from now.
      const rev = await this.#request('watch', 'read', (ctx) => ctx.conn.revision(this.namespace));
      if (this.#watchers.size === 0) this.#lastSeenRev = rev;
      this.#assertOpen();
    }
    const entry = new WatchEntry(prefix, onHint);
    this.#watchers.add(entry);
    return {
      close: () => {
        entry.close();
        this.#watchers.delete(entry);
        return Promise.resolve();
      },
    };
  }

  close(): Promise<void> {
    this.#closePromise ??= this.#close();
    return this.#closePromise;
  }

  async #close(): Promise<void> {
    this.#closing = true;
    this.#stopTimers();
    for (const w of this.#watchers) w.close();
    this.#watchers.clear();
    // Revoke while the connection is still open: their keys vanish now, not after the TTL.
    for (const s of [...this.#sessions.values()]) await s.close();
    this.#shutdown();
  }

  // ---- requests ---------------------------------------------------------------

  /**
   * Run `fn` in one transaction. Reads run in a DEFERRED transaction (WAL
   * readers never wait for the writer); they hide keys of sessions due for
   * expiry (see Connection.get). Writes run in BEGIN IMMEDIATE and reap
   * expired sessions first. Lock contention is retried with asynchronous
   * backoff until requestTimeoutMs.
   */
  async #request<T>(kind: string, mode: 'read' | 'write', fn: (ctx: RequestContext) => T): Promise<T> {
    const startedMs = performance.now();
    let backoffMs = 1;
    for (;;) {
      if (this.#closed) throw new ClosedError('sqlite store');
      try {
        const conn = this.#connection();
        if (mode === 'read') {
          return conn.readTxn(() => {
            // The first read fixes the snapshot; expiry is judged at a time after it.
            conn.revision(this.namespace);
            return fn({ conn, nowMs: hostMonotonicMs(), ended: [] });
          });
        }
        const { value, bumped } = conn.writeTxn(() => {
          const nowMs = hostMonotonicMs();
          const ended = conn.reap(nowMs);
          return { v: fn({ conn, nowMs, ended }), ended };
        });
        if (bumped || value.ended.length > 0) this.#afterCommit(conn, value.ended);
        return value.v;
      } catch (err) {
        if (isBusy(err) && performance.now() - startedMs + backoffMs < this.#timeoutMs) {
          await new Promise((r) => setTimeout(r, backoffMs * (0.5 + Math.random())));
          backoffMs = Math.min(backoffMs * 2, 50);
          continue;
        }
        throw this.#mapError(err, kind);
      }
    }
  }

  #mapError(err: unknown, kind: string): unknown {
    if (err instanceof RebalancerError) return err;
    if (err instanceof CommitError) {
      const cause = err.cause;
      return new StoreUnavailableError(
        `sqlite ${kind}: COMMIT failed (${cause instanceof Error ? cause.message : String(cause)}); ` +
          'the change may or may not have been applied: re-read before retrying',
        { cause, outcome: 'unknown' },
      );
    }
    if (isSqliteError(err)) {
      if (isBusy(err)) {
        return new StoreUnavailableError(
          `sqlite ${kind}: the database ${this.path} stayed locked by another connection for requestTimeoutMs ` +
            `(${this.#timeoutMs} ms); nothing was applied. A process holding a write transaction may be stopped or stuck.`,
          { cause: err, outcome: 'not-applied' },
        );
      }
      if (err.code.startsWith('SQLITE_CORRUPT') || err.code === 'SQLITE_NOTADB') {
        return new CorruptDataError(
          `sqlite ${kind}: the database file ${this.path} is damaged (${err.code}: ${err.message}); ` +
            'restore it or delete it (all sessions then end) — Rebalancer will not repair it',
          { cause: err },
        );
      }
      return new StoreUnavailableError(`sqlite ${kind} failed (${err.code}: ${err.message}); nothing was applied`, {
        cause: err,
        outcome: 'not-applied',
      });
    }
    return err;
  }

  /** The open connection, reopening the file if it was lost (deleted or replaced). */
  #connection(): Connection {
    if (this.#conn !== undefined) return this.#conn;
    const first = this.#lastDataVersion === -1;
    let conn: Connection;
    try {
      conn = Connection.open(this.path, this.#connOptions);
    } catch (err) {
      if (isBusy(err) || err instanceof RebalancerError) throw err;
      if (first && isSqliteError(err)) {
        throw new InvalidArgumentError(
          err.code === 'SQLITE_NOTADB'
            ? `${this.path} is not a SQLite database`
            : `cannot open the sqlite database ${this.path} for writing (${err.code}: ${err.message})`,
          { cause: err },
        );
      }
      throw err;
    }
    this.#conn = conn;
    let group = peers.get(conn.identity);
    if (group === undefined) peers.set(conn.identity, (group = new Set()));
    group.add(this);
    this.#lastDataVersion = conn.dataVersion();
    if (!first) {
      // Another file: whatever the watchers knew is void. (Its namespace
      // counter is created, seeded from the wall clock, at its first write.)
      this.#interrupted = true;
      this.#lastSeenRev = 0;
    }
    return conn;
  }

  /** After a commit that changed something: tell this process's stores at once (other processes poll). */
  #afterCommit(conn: Connection, reaped: readonly string[]): void {
    for (const store of peers.get(conn.identity) ?? [this]) {
      for (const id of reaped) {
        store.#sessions
          .get(id)
          ?.markExpired(new SessionExpiredError(id, `session ${id} expired: it was not kept alive within its TTL`));
      }
      store.#poke();
    }
  }

  // ---- polling: watches, expiry, lost files -------------------------------------

  #scheduleTick(): void {
    if (this.#closing) return;
    this.#tickTimer = setTimeout(() => {
      this.#tickTimer = undefined;
      this.#poll(false);
      this.#scheduleTick();
    }, this.#pollMs);
    this.#tickTimer.unref();
  }

  #poke(): void {
    if (this.#closing || this.#pokeScheduled !== undefined) return;
    this.#pokeScheduled = setImmediate(() => {
      this.#pokeScheduled = undefined;
      this.#poll(true);
    });
    this.#pokeScheduled.unref();
  }

  #stopTimers(): void {
    if (this.#tickTimer !== undefined) clearTimeout(this.#tickTimer);
    if (this.#pokeScheduled !== undefined) clearImmediate(this.#pokeScheduled);
    this.#tickTimer = undefined;
    this.#pokeScheduled = undefined;
  }

  /**
   * One poll: notice a deleted or replaced file, other connections' commits
   * (hint watchers, check this store's sessions still exist), and sessions due
   * for expiry (reap them, so that their keys vanish and watchers everywhere
   * hear of it even if no client of theirs is alive). Never throws.
   */
  #poll(force: boolean): void {
    if (this.#closing) return;
    try {
      let conn = this.#conn;
      if (conn !== undefined && !conn.stillAtPath()) {
        this.#fileLost(conn);
        conn = undefined;
      }
      conn ??= this.#connection();
      const dataVersion = conn.dataVersion();
      if (force || dataVersion !== this.#lastDataVersion || this.#interrupted) {
        const revision = this.#watchers.size > 0 ? this.#hintWatchers(conn) : undefined;
        this.#checkSessions(conn);
        this.#lastDataVersion = dataVersion;
        if (this.#interrupted) {
          this.#interrupted = false;
          const rev = revision ?? conn.readTxn(() => conn.revision(this.namespace));
          for (const w of this.#watchers) w.notify({ revision: rev, reason: 'resync' });
        }
      }
      const nowMs = hostMonotonicMs();
      if (conn.hasExpired(nowMs)) {
        const { value: reaped, bumped } = conn.writeTxn(() => conn.reap(hostMonotonicMs()));
        if (bumped || reaped.length > 0) this.#afterCommit(conn, reaped);
      }
      this.#busySinceMs = undefined;
    } catch (err) {
      // Retried at the next tick. A lasting or non-lock failure may lose
      // changes from the watchers' view: they get a resync hint once polls work again.
      const now = performance.now();
      if (isBusy(err)) {
        this.#busySinceMs ??= now;
        if (now - this.#busySinceMs > this.#timeoutMs) this.#interrupted = true;
      } else {
        this.#interrupted = true;
      }
    }
  }

  /** Hint the watchers whose prefix saw a change since the last poll; returns the namespace revision. */
  #hintWatchers(conn: Connection): number {
    const since = this.#lastSeenRev;
    const { revision, changes } = conn.readTxn(() => {
      const revision = conn.revision(this.namespace);
      const behind = revision - since;
      return {
        revision,
        changes: behind > 0 && behind <= CHANGE_LOG_KEEP ? conn.changesSince(this.namespace, since, behind) : [],
      };
    });
    if (revision < since) {
      // The counter went backwards: the file was restored or replaced under us.
      this.#interrupted = true;
    } else if (revision > since) {
      const complete = changes.length === revision - since && changes[0]?.rev === since + 1;
      for (const w of this.#watchers) {
        let rev = 0;
        if (!complete) rev = revision;
        else for (const c of changes) if (w.overlaps(c.prefix)) rev = c.rev;
        if (rev > 0) w.notify({ revision: rev, reason: 'change' });
      }
    }
    this.#lastSeenRev = revision;
    return revision;
  }

  /** Sessions of this store that another process reaped (or that vanished) are expired. */
  #checkSessions(conn: Connection): void {
    if (this.#sessions.size === 0) return;
    const ids = [...this.#sessions.keys()];
    const gone = conn.readTxn(() => ids.filter((id) => !conn.sessionExists(id)));
    for (const id of gone) {
      this.#sessions
        .get(id)
        ?.markExpired(new SessionExpiredError(id, `session ${id} expired: it no longer exists in the database`));
    }
  }

  /**
   * The path no longer names the file we have open (deleted or replaced): our
   * sessions live only in the old file, so they are expired; the next request
   * or poll opens the file now at the path (a new one if it was deleted).
   */
  #fileLost(conn: Connection): void {
    peers.get(conn.identity)?.delete(this);
    conn.close();
    this.#conn = undefined;
    this.#interrupted = true;
    for (const [id, s] of this.#sessions) {
      s.markExpired(
        new SessionExpiredError(id, `the database file ${this.path} was deleted or replaced; session ${id} is gone`),
      );
    }
  }

  #shutdown(): void {
    this.#closing = true;
    this.#closed = true;
    this.#stopTimers();
    const conn = this.#conn;
    this.#conn = undefined;
    if (conn !== undefined) {
      const group = peers.get(conn.identity);
      group?.delete(this);
      if (group?.size === 0) peers.delete(conn.identity);
      conn.close();
    }
  }

  #ownSession(session: Session): ManagedSession {
    const own = this.#sessions.get(session?.id);
    if (own === undefined || own !== session) {
      if (session instanceof ManagedSession && !session.usable) throw new SessionExpiredError(session.id);
      throw new InvalidArgumentError(`session ${String(session?.id)} was not opened by this store`);
    }
    return own;
  }

  #assertOpen(): void {
    if (this.#closing) throw new ClosedError('sqlite store');
  }
}
