/**
 * The SQLite store: the embedded default. One database file shared by any
 * number of processes on ONE host (not NFS): WAL journal, every
 * read-modify-write in a `BEGIN IMMEDIATE` transaction, session expiry on the
 * host's monotonic clock (see clock.ts), watches by polling
 * `PRAGMA data_version`. docs/backends/sqlite.md states what is and is not
 * guaranteed.
 *
 * better-sqlite3 is synchronous. Every request is one short transaction run
 * to completion on the event loop, after a turn of the loop (so that a chain of
 * requests never holds it for longer than one of them); lock waits are never long synchronous
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
import { OptionReader } from '../../options.js';
import { StoreBase } from '../../store/base.js';
import { sleep } from '../../store/clock.js';
import type {
  CommonStoreOptions,
  KeyValue,
  RangeResult,
  TimerHandle,
  Txn,
  TxnResult,
  WatchHint,
  Watcher,
} from '../../store/contract.js';
import type { ManagedSession } from '../../store/session.js';
import type { GrantedSession } from '../../store/sessions.js';
import { OUTCOME_UNKNOWN } from '../../store/network.js';
import { readStoreOptions, type StoreSettings } from '../../store/validate.js';
import { WatcherSet, type HintQueue } from '../../store/watchers.js';
import { hostMonotonicMs } from './clock.js';
import {
  byKey,
  CHANGE_LOG_KEEP,
  CommitError,
  decodeKeyRow,
  Connection,
  isBusy,
  isSqliteError,
  sqliteProblem,
  type ConnectionOptions,
  type SqliteDriverOptions,
} from './db.js';
import { validateDatabasePath } from './url.js';

export type { SqliteDriverOptions } from './db.js';

export const DEFAULT_POLL_INTERVAL_MS = 25;
/** Rows a prefix read decodes between two turns of the event loop (see #pagedRange). */
const RANGE_PAGE_ROWS = 2000;
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

/** Keys under `changed` (a common prefix of the changed keys) may be under the watcher's prefix. */
function overlaps(w: HintQueue, changed: string): boolean {
  return changed.startsWith(w.prefix) || w.prefix.startsWith(changed);
}

/**
 * The poll and the announcement of this process's own commits must not keep
 * a process alive on their own; waiting out a lock inside a request does (see Clock).
 */
const BACKGROUND = { background: true } as const;

/** SqliteStoreOptions, checked. */
interface SqliteSettings extends StoreSettings {
  readonly path: string;
  readonly pollIntervalMs: number;
  readonly connection: ConnectionOptions;
}

function readSqliteOptions(options: SqliteStoreOptions): SqliteSettings {
  if (options === null || typeof options !== 'object') {
    throw new InvalidArgumentError('createSqliteStore needs options such as { path: "./rebalancer.db" }');
  }
  const r = new OptionReader(options, 'createSqliteStore options');
  const settings = readStoreOptions(r);
  const path = validateDatabasePath(r.string('path', '', 4096));
  const pollIntervalMs = r.ms('pollIntervalMs', DEFAULT_POLL_INTERVAL_MS, { min: 1, max: 60_000 });
  const busyTimeoutMs = r.ms('busyTimeoutMs', DEFAULT_BUSY_TIMEOUT_MS, { min: 0, max: 1000 });
  const synchronous = r.oneOf('synchronous', ['full', 'normal'] as const, 'full');
  const d = r.object('driver');
  const driver: SqliteDriverOptions = {};
  if (d !== undefined) {
    const nativeBinding = d.string('nativeBinding', undefined, 4096);
    const verbose = d.raw('verbose');
    if (verbose !== undefined && typeof verbose !== 'function') {
      throw new InvalidArgumentError('createSqliteStore options.driver.verbose must be a function');
    }
    const fileMustExist = d.has('fileMustExist') ? d.boolean('fileMustExist', false) : undefined;
    d.done();
    Object.assign(driver, {
      ...(nativeBinding === undefined ? {} : { nativeBinding }),
      ...(verbose === undefined ? {} : { verbose }),
      ...(fileMustExist === undefined ? {} : { fileMustExist }),
    });
  }
  r.done();
  return { ...settings, path, pollIntervalMs, connection: { busyTimeoutMs, synchronous, driver } };
}

export class SqliteStore extends StoreBase {
  readonly backend = 'sqlite';
  /** The "server's" clock is this host's monotonic clock: client and server rates cannot differ. */
  override readonly clockRateCheck = 'same-host' as const;
  /** Absolute path of the database file. */
  readonly path: string;
  readonly #pollMs: number;
  readonly #connOptions: ConnectionOptions;
  readonly #watchers = new WatcherSet();
  #conn: Connection | undefined;
  /** Set once the connection is released: every call, internal ones included, fails from then on. */
  #shut = false;
  #tickTimer: TimerHandle | undefined;
  #pokeTimer: TimerHandle | undefined;
  /** `PRAGMA data_version` at the last successful poll. */
  #lastDataVersion = -1;
  /** Namespace revision up to which watchers have been hinted. */
  #lastSeenRev = 0;
  /** Watchers must get a resync hint after the next successful poll. */
  #interrupted = false;
  /** Clock time since which polls have been failing with SQLITE_BUSY. */
  #busySinceMs: number | undefined;
  /** A second connection for prefix reads taken in pages (#pagedRange), one at a time. */
  #reader: Connection | undefined;
  #readerQueue: Promise<void> = Promise.resolve();

  private constructor(settings: SqliteSettings) {
    super(settings);
    this.path = settings.path;
    this.#pollMs = settings.pollIntervalMs;
    this.#connOptions = settings.connection;
  }

  /** Open (creating the file and schema if needed). Prefer `createSqliteStore`. */
  static async create(options: SqliteStoreOptions): Promise<SqliteStore> {
    const store = new SqliteStore(readSqliteOptions(options));
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

  protected async grantSession(ttlMs: number): Promise<GrantedSession<undefined>> {
    const id = randomUUID();
    await this.#request('openSession', 'write', (ctx) => ctx.conn.createSession(id, this.namespace, ttlMs, ctx.nowMs));
    return {
      id,
      ttlMs,
      data: undefined,
      driver: {
        keepAlive: () =>
          this.#request('keepAlive', 'write', (ctx) => (ctx.conn.touchSession(id, ctx.nowMs) ? 'alive' : 'gone')),
        revoke: () => this.#request('revoke', 'write', (ctx) => ctx.conn.deleteSession(id)),
      },
    };
  }

  protected readKey(key: string): Promise<KeyValue | undefined> {
    return this.#request('get', 'read', (ctx) => ctx.conn.get(this.namespace, key, ctx.nowMs));
  }

  protected async readRange(prefix: string): Promise<RangeResult> {
    try {
      const r = await this.#pagedRange(prefix);
      if (r !== undefined) return r;
    } catch (err) {
      if (!isBusy(err) && !(err instanceof CommitError)) throw this.#mapError(err, 'range');
    }
    // Busy (a checkpoint or recovery), or the reader could not be opened: the ordinary way, with its retries.
    return this.#request('range', 'read', (ctx) => ({
      kvs: ctx.conn.range(this.namespace, prefix, ctx.nowMs),
      revision: ctx.conn.revision(this.namespace),
      snapshot: true,
    }));
  }

  /**
   * A prefix read in pages: one read transaction (one snapshot, as the contract says) on a connection of its own,
   * decoding RANGE_PAGE_ROWS rows between two turns of the event loop. better-sqlite3 is synchronous: read in one
   * go, 100 000 keys hold this process's event loop for about a second, longer on a loaded host — long enough to
   * miss keep-alives. The transaction stays open meanwhile; in WAL mode that delays no writer (it only holds
   * back checkpoints). Resolves to undefined when the reader connection cannot be used (then the caller reads the
   * ordinary way).
   */
  async #pagedRange(prefix: string): Promise<RangeResult | undefined> {
    const previous = this.#readerQueue;
    let done!: () => void;
    this.#readerQueue = new Promise<void>((resolve) => (done = resolve));
    await previous;
    try {
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (this.#shut) throw new ClosedError('sqlite store');
      if (this.#conn === undefined) return undefined;
      if (this.#reader !== undefined && this.#reader.identity !== this.#conn.identity) this.#closeReader();
      let reader = this.#reader;
      if (reader === undefined) {
        try {
          reader = Connection.open(this.path, this.#connOptions);
        } catch {
          return undefined;
        }
        if (reader.identity !== this.#conn.identity) {
          reader.close();
          return undefined;
        }
        this.#reader = reader;
      }
      reader.beginRead();
      try {
        const revision = reader.revision(this.namespace);
        const rows = reader.rangeRows(this.namespace, prefix, hostMonotonicMs());
        const kvs = [];
        try {
          let n = 0;
          for (const row of rows) {
            kvs.push(decodeKeyRow(row));
            if (++n % RANGE_PAGE_ROWS === 0) {
              await new Promise<void>((resolve) => setImmediate(resolve));
              if (this.#shut) throw new ClosedError('sqlite store');
            }
          }
        } finally {
          rows.return?.();
        }
        reader.endRead();
        // Rows come in SQLite's byte order; the contract's is JavaScript's (they differ only above U+FFFF).
        return { kvs: kvs.sort(byKey), revision, snapshot: true };
      } finally {
        try {
          reader.endRead();
        } catch {
          this.#closeReader();
        }
      }
    } finally {
      if (this.#shut) this.#closeReader();
      done();
    }
  }

  #closeReader(): void {
    const r = this.#reader;
    this.#reader = undefined;
    try {
      r?.close();
    } catch {
      // an open statement: it is closed with the process
    }
  }

  protected applyTxn(txn: Txn, session: ManagedSession | undefined): Promise<TxnResult> {
    const ops = [...txn.then, ...(txn.else ?? [])];
    const writes = ops.some((op) => op.op === 'put' || op.op === 'delete' || op.op === 'deletePrefix');
    return this.#request('txn', writes ? 'write' : 'read', (ctx) =>
      ctx.conn.applyTxn(this.namespace, txn, session?.id, ctx.nowMs),
    );
  }

  protected async startWatch(prefix: string, onHint: (hint: WatchHint) => void): Promise<Watcher> {
    if (this.#watchers.size === 0) {
      // Without watchers the poller does not follow the change log; start from now.
      const rev = await this.#request('watch', 'read', (ctx) => ctx.conn.revision(this.namespace));
      if (this.#watchers.size === 0) this.#lastSeenRev = rev;
    }
    return this.#watchers.add(prefix, onHint);
  }

  protected async closeStore(): Promise<void> {
    this.#stopTimers();
    this.#watchers.closeAll();
    // Revoke while the connection is still open: their keys vanish now, not after the TTL.
    await this.sessions.closeAll();
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
    // Every request runs synchronously: without a turn of the event loop first, a caller that awaits hundreds of
    // them in a row (a large group's reads and writes) would hold the loop for all of them at once, and timers,
    // keep-alives and I/O would wait behind.
    await new Promise<void>((resolve) => setImmediate(resolve));
    const startedMs = this.clock.now();
    let backoffMs = 1;
    for (;;) {
      if (this.#shut) throw new ClosedError('sqlite store');
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
        if (isBusy(err) && this.clock.now() - startedMs + backoffMs < this.requestTimeoutMs) {
          await sleep(this.clock, backoffMs * (0.5 + Math.random()));
          backoffMs = Math.min(backoffMs * 2, 50);
          continue;
        }
        throw this.#mapError(err, kind);
      }
    }
  }

  /** SQLite's errors in words, with what to do; the driver's error is the cause. */
  #mapError(err: unknown, kind: string): unknown {
    if (err instanceof RebalancerError) return err;
    if (err instanceof CommitError) {
      const cause = err.cause;
      const problem = isSqliteError(cause) ? sqliteProblem(cause.code, this.path) : `committing to ${this.path} failed`;
      return new StoreUnavailableError(`sqlite ${kind}: ${problem}; ${OUTCOME_UNKNOWN}`, { cause, outcome: 'unknown' });
    }
    if (isSqliteError(err)) {
      if (isBusy(err)) {
        return new StoreUnavailableError(
          `sqlite ${kind}: the database ${this.path} stayed locked by another connection for requestTimeoutMs ` +
            `(${this.requestTimeoutMs} ms); nothing was applied. A process holding a write transaction may be stopped or stuck.`,
          { cause: err, outcome: 'not-applied' },
        );
      }
      if (err.code.startsWith('SQLITE_CORRUPT') || err.code === 'SQLITE_NOTADB') {
        return new CorruptDataError(`sqlite ${kind}: ${sqliteProblem(err.code, this.path)}`, { cause: err });
      }
      return new StoreUnavailableError(`sqlite ${kind}: ${sqliteProblem(err.code, this.path)}; nothing was applied`, {
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
        if (err.code === 'SQLITE_NOTADB') {
          throw new InvalidArgumentError(
            `${this.path} is not a SQLite database; give Rebalancer a file of its own (a new one is created)`,
            { cause: err },
          );
        }
        if (err.code.startsWith('SQLITE_CORRUPT')) {
          throw new CorruptDataError(`sqlite open: ${sqliteProblem(err.code, this.path)}`, { cause: err });
        }
        throw new InvalidArgumentError(
          `cannot open the sqlite database ${this.path} for writing: ${sqliteProblem(err.code, this.path)}`,
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
    const stores: Iterable<SqliteStore> = peers.get(conn.identity) ?? [this];
    for (const store of stores) {
      for (const id of reaped) {
        store.sessions
          .get(id)
          ?.markExpired(new SessionExpiredError(id, `session ${id} expired: it was not kept alive within its TTL`));
      }
      store.#poke();
    }
  }

  // ---- polling: watches, expiry, lost files -------------------------------------

  #scheduleTick(): void {
    if (this.closed) return;
    this.#tickTimer = this.clock.setTimeout(
      () => {
        this.#tickTimer = undefined;
        this.#poll(false);
        this.#scheduleTick();
      },
      this.#pollMs,
      BACKGROUND,
    );
  }

  /** Poll soon (another store of this process committed): its watchers hear at once, not at the next tick. */
  #poke(): void {
    if (this.closed || this.#pokeTimer !== undefined) return;
    this.#pokeTimer = this.clock.setTimeout(
      () => {
        this.#pokeTimer = undefined;
        this.#poll(true);
      },
      0,
      BACKGROUND,
    );
  }

  #stopTimers(): void {
    if (this.#tickTimer !== undefined) this.clock.clearTimeout(this.#tickTimer);
    if (this.#pokeTimer !== undefined) this.clock.clearTimeout(this.#pokeTimer);
    this.#tickTimer = undefined;
    this.#pokeTimer = undefined;
  }

  /**
   * One poll: notice a deleted or replaced file, other connections' commits
   * (hint watchers, check this store's sessions still exist), and sessions due
   * for expiry (reap them, so that their keys vanish and watchers everywhere
   * hear of it even if no client of theirs is alive). Never throws.
   */
  #poll(force: boolean): void {
    if (this.closed) return;
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
      const now = this.clock.now();
      if (isBusy(err)) {
        this.#busySinceMs ??= now;
        if (now - this.#busySinceMs > this.requestTimeoutMs) this.#interrupted = true;
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
      // The counter went backwards: the file was restored or replaced under us, and our locks with it.
      this.#interrupted = true;
      this.dataLost(`its revision went backwards (${revision} after ${since}): the file was restored or replaced`);
    } else if (revision > since) {
      const complete = changes.length === revision - since && changes[0]?.rev === since + 1;
      for (const w of this.#watchers) {
        let rev = 0;
        if (!complete) rev = revision;
        else for (const c of changes) if (overlaps(w, c.prefix)) rev = c.rev;
        if (rev > 0) w.notify({ revision: rev, reason: 'change' });
      }
    }
    this.#lastSeenRev = revision;
    return revision;
  }

  /** Sessions of this store that another process reaped (or that vanished) are expired. */
  #checkSessions(conn: Connection): void {
    if (this.sessions.size === 0) return;
    const ids = this.sessions.ids();
    const gone = conn.readTxn(() => ids.filter((id) => !conn.sessionExists(id)));
    for (const id of gone) {
      this.sessions
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
    this.#closeReader();
    this.#interrupted = true;
    // Every lock lived only in the old file: the data this client worked in is gone (delayed restart next).
    this.dataLost(`the database file ${this.path} was deleted or replaced`);
  }

  #shutdown(): void {
    this.markClosed();
    this.#shut = true;
    this.#stopTimers();
    // A paged read in progress closes the reader itself when it sees #shut.
    void this.#readerQueue.then(() => this.#closeReader());
    const conn = this.#conn;
    this.#conn = undefined;
    if (conn !== undefined) {
      const group = peers.get(conn.identity);
      group?.delete(this);
      if (group?.size === 0) peers.delete(conn.identity);
      conn.close();
    }
  }
}
