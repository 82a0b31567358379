/**
 * The SQL layer of the SQLite backend: schema, versioning, row decoding and
 * the synchronous operations the store runs inside one SQLite transaction.
 * Nothing here waits or retries; `store.ts` owns that.
 *
 * Layout (schema version 1), all tables prefixed `rebalancer_`. The file
 * holds nothing else: a file with tables we did not create is refused (see
 * `refuseForeignSchema`).
 *   rebalancer_meta(name, value)             schema_version = 1
 *   rebalancer_namespaces(ns, revision)      one revision counter per namespace
 *   rebalancer_keys(ns, key, value, version, create_rev, mod_rev, session_id)
 *   rebalancer_sessions(id, ns, ttl_ms, expires_at_ms)  expiry on the host's monotonic clock
 *   rebalancer_changes(ns, rev, prefix)      per revision, the common prefix of the keys it changed
 *                                            (the last CHANGE_LOG_KEEP revisions; feeds watches)
 */
import { statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import { CorruptDataError, IncompatibleSchemaError, InvalidArgumentError, SessionExpiredError } from '../../errors.js';
import type { KeyValue, OpResult, Txn, TxnResult } from '../../store/contract.js';
import { decodeUtf8, chooseBranch } from '../../store/validate.js';

export const SCHEMA_VERSION = 1;

/** Revisions of change log kept per namespace; a watcher further behind is hinted unconditionally. */
export const CHANGE_LOG_KEEP = 1024;

/**
 * A session last renewed more than this far in the future of the host's
 * monotonic clock means the clock restarted (reboot, or the file came from
 * another host): such expiry times are meaningless.
 */
const CLOCK_RESET_TOLERANCE_MS = 1000;

const SCHEMA_SQL = `
CREATE TABLE rebalancer_meta (
  name TEXT PRIMARY KEY,
  value ANY NOT NULL
);
INSERT INTO rebalancer_meta (name, value) VALUES ('schema_version', ${SCHEMA_VERSION});
CREATE TABLE rebalancer_namespaces (
  ns TEXT PRIMARY KEY,
  revision INTEGER NOT NULL
);
CREATE TABLE rebalancer_sessions (
  id TEXT PRIMARY KEY,
  ns TEXT NOT NULL,
  ttl_ms INTEGER NOT NULL,
  expires_at_ms INTEGER NOT NULL
);
CREATE INDEX rebalancer_sessions_expiry ON rebalancer_sessions (expires_at_ms);
CREATE TABLE rebalancer_keys (
  ns TEXT NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  version INTEGER NOT NULL,
  create_rev INTEGER NOT NULL,
  mod_rev INTEGER NOT NULL,
  session_id TEXT,
  UNIQUE (ns, key)
);
CREATE INDEX rebalancer_keys_session ON rebalancer_keys (session_id) WHERE session_id IS NOT NULL;
CREATE TABLE rebalancer_changes (
  ns TEXT NOT NULL,
  rev INTEGER NOT NULL,
  prefix TEXT NOT NULL,
  PRIMARY KEY (ns, rev)
);
`;

/** better-sqlite3 options a user may pass through (the rest are ours to set). */
export type SqliteDriverOptions = Pick<Database.Options, 'nativeBinding' | 'verbose' | 'fileMustExist'>;

export interface ConnectionOptions {
  readonly busyTimeoutMs: number;
  readonly synchronous: 'full' | 'normal';
  readonly driver: SqliteDriverOptions;
}

interface KeyRow {
  kt: string;
  kb: Buffer | null;
  vt: string;
  vb: Buffer | null;
  version: unknown;
  create_rev: unknown;
  mod_rev: unknown;
  st: string;
  session_id: unknown;
}

const KEY_COLUMNS =
  'typeof(key) AS kt, CAST(key AS BLOB) AS kb, typeof(value) AS vt, CAST(value AS BLOB) AS vb, ' +
  'version, create_rev, mod_rev, typeof(session_id) AS st, session_id';

/** A key is visible while it has no session or its session is unexpired (alias k: rebalancer_keys). */
const LIVE =
  '(k.session_id IS NULL OR EXISTS (SELECT 1 FROM rebalancer_sessions s WHERE s.id = k.session_id AND s.expires_at_ms > ?))';

export interface Change {
  readonly rev: number;
  readonly prefix: string;
}

/** The SqliteError codes that mean "another connection holds a lock; try again". */
export function isBusy(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED'));
}

export function isSqliteError(err: unknown): err is Error & { code: string } {
  return err instanceof Database.SqliteError;
}

/**
 * What a SQLite error code says about the database file, in words, with what
 * to do (SQLite's own text names an internal condition, not the remedy).
 */
export function sqliteProblem(code: string, path: string): string {
  if (code.startsWith('SQLITE_READONLY')) {
    return `the database file ${path} is read-only for this process; give it write access to the file and its directory (for the -wal and -shm files)`;
  }
  if (code.startsWith('SQLITE_CANTOPEN')) {
    return `the database file ${path} cannot be opened; check that its directory exists and that this process may write there`;
  }
  if (code === 'SQLITE_FULL') return `the disk holding ${path} is full; free some space`;
  if (code.startsWith('SQLITE_IOERR')) {
    return `reading or writing ${path} failed (an I/O error of the disk or file system); check the disk`;
  }
  if (code === 'SQLITE_PERM' || code === 'SQLITE_AUTH') {
    return `the operating system refused access to ${path}; check its permissions`;
  }
  if (code === 'SQLITE_PROTOCOL') {
    return `the locks of ${path} failed (is it on a network file system?); use a file on a local disk`;
  }
  if (code === 'SQLITE_NOMEM') return 'SQLite ran out of memory';
  if (code.startsWith('SQLITE_CORRUPT') || code === 'SQLITE_NOTADB') {
    return `the database file ${path} is damaged (SQLite found it malformed); restore it from a backup or delete it (all sessions then end); Rebalancer will not repair it`;
  }
  return `SQLite failed on ${path} (error ${code})`;
}

/** Thrown by a commit that failed: whether it applied is unknown. */
export class CommitError extends Error {
  constructor(cause: unknown) {
    super('COMMIT failed', { cause });
  }
}

/**
 * The smallest string above every string that starts with `prefix`, in the
 * code point order SQLite's BINARY collation gives UTF-8 text; undefined when
 * there is none (the prefix is all U+10FFFF). Keys with the prefix are exactly
 * those in [prefix, upper): a range on the (ns, key) index, not a LIKE scan,
 * so `%`, `_` and every other character are plain characters.
 */
export function prefixUpperBound(prefix: string): string | undefined {
  const cps = Array.from(prefix);
  while (cps.length > 0) {
    const last = (cps.pop() as string).codePointAt(0) as number;
    if (last < 0x10ffff) {
      // Surrogate code points never occur in well-formed text: skip them.
      cps.push(String.fromCodePoint(last + 1 === 0xd800 ? 0xe000 : last + 1));
      return cps.join('');
    }
  }
  return undefined;
}

/** Longest common prefix, never ending in half a surrogate pair. */
export function commonPrefix(a: string, b: string): string {
  let i = 0;
  const n = Math.min(a.length, b.length);
  while (i < n && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  if (i > 0) {
    const c = a.charCodeAt(i - 1);
    if (c >= 0xd800 && c <= 0xdbff) i--;
  }
  return a.slice(0, i);
}

/** JS string order (UTF-16 code units), which the contract's sorted ranges use. */
export function byKey(a: KeyValue, b: KeyValue): number {
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

function isCount(v: unknown, min: number): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= min;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export function decodeKeyRow(row: KeyRow): KeyValue {
  // The words of an error are built only for a bad row: a range of 100 000 keys decodes each one.
  const shown = (): string => (row.kb === null ? String(row.kb) : Buffer.from(row.kb).toString('utf8'));
  const fix = 'Rebalancer did not write it; inspect or delete the row with the sqlite3 tool.';
  if (row.kt !== 'text' || row.kb === null) {
    throw new CorruptDataError(
      `a key in rebalancer_keys is a ${row.kt}, not text (${JSON.stringify(shown())}). ${fix}`,
      {
        key: shown(),
      },
    );
  }
  let key: string;
  try {
    key = strictUtf8.decode(row.kb);
  } catch {
    key = decodeUtf8(row.kb, `key ${JSON.stringify(shown())}`, shown());
  }
  if (row.vt !== 'text' || row.vb === null) {
    throw new CorruptDataError(`the value of key ${JSON.stringify(key)} is a ${row.vt}, not UTF-8 text. ${fix}`, {
      key,
    });
  }
  let value: string;
  try {
    value = strictUtf8.decode(row.vb);
  } catch {
    value = decodeUtf8(row.vb, `the value of key ${JSON.stringify(key)}`, key);
  }
  if (
    !isCount(row.version, 1) ||
    !isCount(row.create_rev, 0) ||
    !isCount(row.mod_rev, 0) ||
    row.mod_rev < row.create_rev
  ) {
    throw new CorruptDataError(
      `key ${JSON.stringify(key)} has malformed metadata (version ${String(row.version)}, ` +
        `create_rev ${String(row.create_rev)}, mod_rev ${String(row.mod_rev)}). ${fix}`,
      { key },
    );
  }
  let sessionId: string | undefined;
  if (row.st === 'text') sessionId = row.session_id as string;
  else if (row.st !== 'null') {
    throw new CorruptDataError(`key ${JSON.stringify(key)} has a session_id that is a ${row.st}, not text. ${fix}`, {
      key,
    });
  }
  return { key, value, version: row.version, createRevision: row.create_rev, modRevision: row.mod_rev, sessionId };
}

/** The tables the schema creates (their indexes follow them; it creates no views or triggers). */
const OWN_OBJECTS = new Set([
  'rebalancer_meta',
  'rebalancer_namespaces',
  'rebalancer_sessions',
  'rebalancer_keys',
  'rebalancer_changes',
]);

/**
 * Refuse a file that holds tables, views or triggers Rebalancer did not
 * create: it belongs to another application, and adding our tables (and WAL
 * mode) to it would mix two programs' data in one file, share its locks and
 * fsyncs with ours, and let a restore or a deletion of either take the other
 * with it. SQLite's own internal objects (`sqlite_…`) are ignored.
 */
function refuseForeignSchema(db: Database.Database, path: string): void {
  const foreign = db
    .prepare<[], string>(
      "SELECT name FROM sqlite_master WHERE type IN ('table', 'view', 'trigger') " +
        "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )
    .pluck()
    .all()
    .filter((name) => !OWN_OBJECTS.has(name));
  if (foreign.length === 0) return;
  const shown = foreign.slice(0, 5).map((n) => JSON.stringify(n));
  throw new InvalidArgumentError(
    `SQLite database ${path} holds tables Rebalancer did not create (${shown.join(', ')}` +
      `${foreign.length > shown.length ? `, and ${foreign.length - shown.length} more` : ''}): it belongs to another ` +
      'application, and Rebalancer does not add its tables to it. Give Rebalancer a database file of its own, e.g. ' +
      `${ownFileNear(path)}. Nothing was changed.`,
  );
}

/** A file name next to `path` to suggest instead of it. */
function ownFileNear(path: string): string {
  const suggested = join(dirname(path), 'rebalancer.db');
  return suggested === path ? join(dirname(path), 'rebalancer-coordination.db') : suggested;
}

/**
 * Create the schema in an empty file or check the existing one; runs in its
 * own IMMEDIATE transaction and changes nothing unless the file has no
 * Rebalancer tables at all.
 */
function initSchema(db: Database.Database, path: string): void {
  db.exec('BEGIN IMMEDIATE');
  try {
    // Again under the write lock: another process may have created tables since the first look.
    refuseForeignSchema(db, path);
    const tables = db
      .prepare<[], string>(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'rebalancer\\_%' ESCAPE '\\'",
      )
      .pluck()
      .all();
    if (!tables.includes('rebalancer_meta')) {
      if (tables.length > 0) {
        throw new IncompatibleSchemaError(
          0,
          SCHEMA_VERSION,
          `SQLite database ${path} (Rebalancer tables without rebalancer_meta)`,
        );
      }
      db.exec(SCHEMA_SQL);
    } else {
      const v = db
        .prepare<[], unknown>("SELECT value FROM rebalancer_meta WHERE name = 'schema_version'")
        .pluck()
        .get();
      const n = isCount(v, 0) ? v : typeof v === 'string' && /^\d{1,9}$/.test(v) ? Number(v) : undefined;
      if (n === undefined) {
        throw new CorruptDataError(
          `SQLite database ${path}: rebalancer_meta.schema_version is ${JSON.stringify(v) ?? 'missing'}, not a version number. ` +
            'Rebalancer did not write it; nothing was changed.',
        );
      }
      if (n !== SCHEMA_VERSION) throw new IncompatibleSchemaError(n, SCHEMA_VERSION, `SQLite database ${path}`);
    }
    db.exec('COMMIT');
  } catch (err) {
    if (db.inTransaction) db.exec('ROLLBACK');
    throw err;
  }
}

function fileIdentity(path: string): string | undefined {
  const st = statSync(path, { throwIfNoEntry: false, bigint: true });
  return st === undefined ? undefined : `${st.dev}:${st.ino}`;
}

/** One better-sqlite3 connection with its prepared statements. */
export class Connection {
  readonly db: Database.Database;
  readonly path: string;
  /** Device and inode of the file when it was opened: detects a deleted or replaced file. */
  readonly identity: string;
  #bumped = false;
  readonly #st;

  private constructor(db: Database.Database, path: string, identity: string) {
    this.db = db;
    this.path = path;
    this.identity = identity;
    const p = <P extends unknown[], R = unknown>(sql: string) => db.prepare<P, R>(sql);
    this.#st = {
      begin: p<[]>('BEGIN'),
      beginImmediate: p<[]>('BEGIN IMMEDIATE'),
      commit: p<[]>('COMMIT'),
      rollback: p<[]>('ROLLBACK'),
      dataVersion: p<[], number>('PRAGMA data_version').pluck(),
      getRevision: p<[string], unknown>('SELECT revision FROM rebalancer_namespaces WHERE ns = ?').pluck(),
      insertNamespace: p<[string, number]>('INSERT OR IGNORE INTO rebalancer_namespaces (ns, revision) VALUES (?, ?)'),
      setRevision: p<[number, string]>('UPDATE rebalancer_namespaces SET revision = ? WHERE ns = ?'),
      getKey: p<[string, string, number], KeyRow>(
        `SELECT ${KEY_COLUMNS} FROM rebalancer_keys k WHERE ns = ? AND key = ? AND ${LIVE}`,
      ),
      rangeAll: p<[string, number], KeyRow>(
        `SELECT ${KEY_COLUMNS} FROM rebalancer_keys k WHERE ns = ? AND ${LIVE} ORDER BY key`,
      ),
      rangeFrom: p<[string, string, number], KeyRow>(
        `SELECT ${KEY_COLUMNS} FROM rebalancer_keys k WHERE ns = ? AND key >= ? AND ${LIVE} ORDER BY key`,
      ),
      rangeBetween: p<[string, string, string, number], KeyRow>(
        `SELECT ${KEY_COLUMNS} FROM rebalancer_keys k WHERE ns = ? AND key >= ? AND key < ? AND ${LIVE} ORDER BY key`,
      ),
      orphans: p<[], unknown>(
        'SELECT DISTINCT session_id FROM rebalancer_keys k WHERE session_id IS NOT NULL AND ' +
          'NOT EXISTS (SELECT 1 FROM rebalancer_sessions s WHERE s.id = k.session_id)',
      ).pluck(),
      upsertKey: p<[string, string, string, number, number, number, string | null]>(
        'INSERT INTO rebalancer_keys (ns, key, value, version, create_rev, mod_rev, session_id) VALUES (?, ?, ?, ?, ?, ?, ?) ' +
          'ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, version = excluded.version, ' +
          'create_rev = excluded.create_rev, mod_rev = excluded.mod_rev, session_id = excluded.session_id',
      ),
      deleteKey: p<[string, string]>('DELETE FROM rebalancer_keys WHERE ns = ? AND key = ?'),
      deleteAll: p<[string]>('DELETE FROM rebalancer_keys WHERE ns = ?'),
      deleteFrom: p<[string, string]>('DELETE FROM rebalancer_keys WHERE ns = ? AND key >= ?'),
      deleteBetween: p<[string, string, string]>('DELETE FROM rebalancer_keys WHERE ns = ? AND key >= ? AND key < ?'),
      anyExpired: p<[number], unknown>('SELECT 1 FROM rebalancer_sessions WHERE expires_at_ms <= ? LIMIT 1').pluck(),
      expired: p<[number], unknown>('SELECT id FROM rebalancer_sessions WHERE expires_at_ms <= ?').pluck(),
      allSessions: p<[], unknown>('SELECT id FROM rebalancer_sessions').pluck(),
      renewedInFuture: p<[number], unknown>(
        'SELECT 1 FROM rebalancer_sessions WHERE expires_at_ms - ttl_ms > ? LIMIT 1',
      ).pluck(),
      insertSession: p<[string, string, number, number]>(
        'INSERT INTO rebalancer_sessions (id, ns, ttl_ms, expires_at_ms) VALUES (?, ?, ?, ?)',
      ),
      getSession: p<[string], { ns: unknown; expires_at_ms: unknown }>(
        'SELECT ns, expires_at_ms FROM rebalancer_sessions WHERE id = ?',
      ),
      touchSession: p<[number, string]>('UPDATE rebalancer_sessions SET expires_at_ms = ? + ttl_ms WHERE id = ?'),
      deleteSession: p<[string]>('DELETE FROM rebalancer_sessions WHERE id = ?'),
      sessionKeys: p<[string], { ns: unknown; key: unknown }>(
        'SELECT ns, key FROM rebalancer_keys WHERE session_id = ?',
      ),
      deleteSessionKeys: p<[string]>('DELETE FROM rebalancer_keys WHERE session_id = ?'),
      logChange: p<[string, number, string]>(
        'INSERT OR REPLACE INTO rebalancer_changes (ns, rev, prefix) VALUES (?, ?, ?)',
      ),
      trimChanges: p<[string, number]>('DELETE FROM rebalancer_changes WHERE ns = ? AND rev <= ?'),
      changesSince: p<[string, number, number], { rev: unknown; prefix: unknown }>(
        'SELECT rev, prefix FROM rebalancer_changes WHERE ns = ? AND rev > ? ORDER BY rev LIMIT ?',
      ),
    };
  }

  /**
   * Open the file, switch it to WAL, and create or check the schema. Throws
   * SqliteError (e.g. SQLITE_BUSY: the caller retries), InvalidArgumentError,
   * IncompatibleSchemaError or CorruptDataError.
   */
  static open(path: string, options: ConnectionOptions): Connection {
    const db = new Database(path, { ...options.driver, timeout: options.busyTimeoutMs });
    try {
      // Before anything writes to the file, not even the switch to WAL mode.
      refuseForeignSchema(db, path);
      const mode = db.pragma('journal_mode = WAL', { simple: true });
      if (String(mode).toLowerCase() !== 'wal') {
        throw new InvalidArgumentError(
          `sqlite database ${path} cannot use WAL journal mode (got ${String(mode)}); ` +
            'it must be a file on a local file system (not NFS or another network file system)',
        );
      }
      db.pragma(`synchronous = ${options.synchronous === 'full' ? 'FULL' : 'NORMAL'}`);
      initSchema(db, path);
      const identity = fileIdentity(path);
      if (identity === undefined)
        throw new InvalidArgumentError(`sqlite database ${path} vanished while it was opened`);
      return new Connection(db, path, identity);
    } catch (err) {
      db.close();
      throw err;
    }
  }

  /** True while the path still names the file this connection has open. */
  stillAtPath(): boolean {
    return fileIdentity(this.path) === this.identity;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  /** Changes whenever another connection (in any process) commits. */
  dataVersion(): number {
    return this.#st.dataVersion.get() as number;
  }

  /** Run `fn` in a DEFERRED (read) transaction: one consistent snapshot. */
  readTxn<T>(fn: () => T): T {
    this.#st.begin.run();
    try {
      const v = fn();
      this.#st.commit.run();
      return v;
    } finally {
      if (this.db.inTransaction) this.#st.rollback.run();
    }
  }

  /**
   * Run `fn` in an IMMEDIATE transaction (the database's one write lock, taken
   * up front so that it never has to be upgraded and can never deadlock).
   * Errors before COMMIT roll back (nothing applied); a failed COMMIT throws
   * CommitError (outcome unknown). Reports whether any revision moved.
   */
  writeTxn<T>(fn: () => T): { value: T; bumped: boolean } {
    this.#st.beginImmediate.run();
    this.#bumped = false;
    let value: T;
    try {
      value = fn();
    } catch (err) {
      if (this.db.inTransaction) this.#st.rollback.run();
      throw err;
    }
    try {
      this.#st.commit.run();
    } catch (err) {
      if (this.db.inTransaction) {
        try {
          this.#st.rollback.run();
        } catch {
          // The connection is unusable; the store reopens it.
        }
      }
      throw new CommitError(err);
    }
    return { value, bumped: this.#bumped };
  }

  // ---- inside a transaction -------------------------------------------------

  /** Create the namespace's counter if missing, seeded from the wall clock (see docs: revisions never repeat). */
  ensureNamespace(ns: string): void {
    this.#st.insertNamespace.run(ns, Date.now());
  }

  /** The namespace's revision (0 if it has no counter yet). */
  revision(ns: string): number {
    const v = this.#st.getRevision.get(ns);
    if (v === undefined) return 0;
    if (!isCount(v, 0)) {
      throw new CorruptDataError(
        `the revision counter of namespace ${ns} is ${String(v)}, not a non-negative integer; ` +
          'Rebalancer did not write it. Inspect rebalancer_namespaces with the sqlite3 tool.',
      );
    }
    return v;
  }

  /**
   * A key as of `nowMs` on the expiry clock. Keys of a session that is due
   * but not reaped yet are already invisible, so a read never has to wait
   * for the write lock to reap, and never returns an expired session's key.
   */
  get(ns: string, key: string, nowMs: number): KeyValue | undefined {
    const row = this.#st.getKey.get(ns, key, nowMs);
    return row === undefined ? undefined : decodeKeyRow(row);
  }

  /**
   * Open a read transaction that stays open until endRead(): for a reader that pauses between pages of a long
   * range (rangeRows) on a connection of its own, in one snapshot.
   */
  beginRead(): void {
    this.#st.begin.run();
  }

  endRead(): void {
    if (!this.db.inTransaction) return;
    try {
      this.#st.commit.run();
    } finally {
      if (this.db.inTransaction) this.#st.rollback.run();
    }
  }

  /** The raw rows of range(), one at a time (decodeKeyRow each; sort with byKey). */
  rangeRows(ns: string, prefix: string, nowMs: number): IterableIterator<KeyRow> {
    if (prefix === '') return this.#st.rangeAll.iterate(ns, nowMs);
    const upper = prefixUpperBound(prefix);
    return upper === undefined
      ? this.#st.rangeFrom.iterate(ns, prefix, nowMs)
      : this.#st.rangeBetween.iterate(ns, prefix, upper, nowMs);
  }

  /** Keys under `prefix` as of `nowMs` (see get). */
  range(ns: string, prefix: string, nowMs: number): KeyValue[] {
    let rows: KeyRow[];
    if (prefix === '') rows = this.#st.rangeAll.all(ns, nowMs);
    else {
      const upper = prefixUpperBound(prefix);
      rows =
        upper === undefined
          ? this.#st.rangeFrom.all(ns, prefix, nowMs)
          : this.#st.rangeBetween.all(ns, prefix, upper, nowMs);
    }
    // SQLite orders by code point, JS by UTF-16 code unit: they differ above U+FFFF.
    return rows.map(decodeKeyRow).sort(byKey);
  }

  /** Any session due for expiry at `nowMs`? (An index probe: cheap enough for every poll.) */
  hasExpired(nowMs: number): boolean {
    return this.#st.anyExpired.get(nowMs) !== undefined;
  }

  /** Expire every session due at `nowMs`: delete it and its keys, bump the revisions. Returns their ids. */
  reap(nowMs: number): string[] {
    const ids = this.#st.expired.all(nowMs).map(String);
    this.#endSessions(ids);
    return ids;
  }

  /**
   * If some session was renewed "after now", the monotonic clock restarted
   * (reboot) or the file came from another host: every stored expiry time is
   * meaningless, and no process that renewed them can still be running.
   * Expire them all. Returns their ids.
   */
  expireIfClockReset(nowMs: number): string[] {
    if (this.#st.renewedInFuture.get(nowMs + CLOCK_RESET_TOLERANCE_MS) === undefined) return [];
    const ids = this.#st.allSessions.all().map(String);
    this.#endSessions(ids);
    return ids;
  }

  /**
   * Keys attached to sessions that do not exist (the session row was deleted
   * by hand) are invisible to reads; delete them for good. Returns the ids.
   */
  deleteOrphans(): string[] {
    const ids = this.#st.orphans.all().map(String);
    this.#endSessions(ids);
    return ids;
  }

  createSession(id: string, ns: string, ttlMs: number, nowMs: number): void {
    this.#st.insertSession.run(id, ns, ttlMs, Math.ceil(nowMs + ttlMs));
  }

  /** Extend a session to now + its TTL; false if it no longer exists (reap first). */
  touchSession(id: string, nowMs: number): boolean {
    return this.#st.touchSession.run(Math.ceil(nowMs), id).changes === 1;
  }

  /** Whether a session exists (callers reap first, so it is also unexpired). */
  sessionExists(id: string): boolean {
    return this.#st.getSession.get(id) !== undefined;
  }

  /** End a session now (revoke): delete it and its keys. */
  deleteSession(id: string): void {
    this.#endSessions([id]);
  }

  changesSince(ns: string, rev: number, limit: number): Change[] {
    return this.#st.changesSince.all(ns, rev, limit).map((r) => ({ rev: Number(r.rev), prefix: String(r.prefix) }));
  }

  /**
   * Apply a validated transaction. `sessionId` names the session its puts
   * attach to, which must still exist (the caller reaped first).
   */
  applyTxn(ns: string, txn: Txn, sessionId: string | undefined, nowMs: number): TxnResult {
    if (sessionId !== undefined) {
      const s = this.#st.getSession.get(sessionId);
      if (s === undefined || s.ns !== ns) {
        throw new SessionExpiredError(sessionId, `session ${sessionId} has expired; the transaction was not applied`);
      }
    }
    const { succeeded, branch } = chooseBranch(txn, (key) => this.get(ns, key, nowMs));
    const current = this.#writableRevision(ns);
    const rev = current + 1;
    let changed: string | undefined;
    const touch = (prefix: string): void => {
      changed = changed === undefined ? prefix : commonPrefix(changed, prefix);
    };
    const results: OpResult[] = [];
    for (const op of branch) {
      switch (op.op) {
        case 'get':
          results.push({ op: 'get', key: op.key, kv: this.get(ns, op.key, nowMs) });
          break;
        case 'range':
          results.push({ op: 'range', prefix: op.prefix, kvs: this.range(ns, op.prefix, nowMs) });
          break;
        case 'put': {
          // Reading the previous row in full also refuses to overwrite a corrupt one unseen.
          const prev = this.get(ns, op.key, nowMs);
          this.#st.upsertKey.run(
            ns,
            op.key,
            op.value,
            (prev?.version ?? 0) + 1,
            prev?.createRevision ?? rev,
            rev,
            op.session?.id ?? null,
          );
          touch(op.key);
          results.push({ op: 'put', key: op.key });
          break;
        }
        case 'delete': {
          const deleted = this.#st.deleteKey.run(ns, op.key).changes;
          if (deleted > 0) touch(op.key);
          results.push({ op: 'delete', key: op.key, deleted });
          break;
        }
        case 'deletePrefix': {
          const upper = op.prefix === '' ? undefined : prefixUpperBound(op.prefix);
          const deleted =
            op.prefix === ''
              ? this.#st.deleteAll.run(ns).changes
              : upper === undefined
                ? this.#st.deleteFrom.run(ns, op.prefix).changes
                : this.#st.deleteBetween.run(ns, op.prefix, upper).changes;
          if (deleted > 0) touch(op.prefix);
          results.push({ op: 'deletePrefix', prefix: op.prefix, deleted });
          break;
        }
      }
    }
    if (changed === undefined) return { succeeded, revision: current, results };
    this.#bump(ns, changed, rev);
    return { succeeded, revision: rev, results };
  }

  #endSessions(ids: readonly string[]): void {
    const changed = new Map<string, string>();
    for (const id of ids) {
      for (const row of this.#st.sessionKeys.all(id)) {
        const ns = String(row.ns);
        const key = String(row.key);
        const prev = changed.get(ns);
        changed.set(ns, prev === undefined ? key : commonPrefix(prev, key));
      }
      this.#st.deleteSessionKeys.run(id);
      this.#st.deleteSession.run(id);
    }
    for (const [ns, prefix] of changed) this.#bump(ns, prefix, this.#writableRevision(ns) + 1);
  }

  /** The namespace's revision, creating its counter first if missing (inside a write transaction). */
  #writableRevision(ns: string): number {
    const r = this.revision(ns);
    if (r !== 0) return r;
    this.ensureNamespace(ns);
    return this.revision(ns);
  }

  #bump(ns: string, prefix: string, rev: number): void {
    this.#st.setRevision.run(rev, ns);
    this.#st.logChange.run(ns, rev, prefix);
    if (rev % 64 === 0) this.#st.trimChanges.run(ns, rev - CHANGE_LOG_KEEP);
    this.#bumped = true;
  }
}
