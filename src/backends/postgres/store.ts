/**
 * The PostgreSQL store client. See docs/backends/postgres.md for the layout
 * and how each contract guarantee is met.
 *
 * Concurrency: every write runs in a READ COMMITTED transaction that first
 * takes the namespace's row lock (`SELECT … FROM namespaces … FOR UPDATE`).
 * Writers of one namespace are therefore serialised, every statement after
 * the lock sees everything committed before it, and revisions are assigned in
 * commit order. SERIALIZABLE would buy nothing here (every write updates the
 * same counter row, so they would all conflict and retry) and would add retry
 * storms under contention. Readers take no lock: a single statement is one
 * MVCC snapshot. That includes transactions that cannot write (only gets and
 * ranges in both branches): they are one statement too, so they never queue
 * behind writers. A writer holds the lock for a fixed number of round trips
 * (all its puts go in one statement), not one per operation.
 *
 * Pooler safety: nothing depends on session state. No advisory locks, no
 * named prepared statements, no temp tables, no SET outside a transaction
 * (only SET LOCAL). Only LISTEN needs a session, on a dedicated connection;
 * the periodic revision poll makes a lost (or unavailable) LISTEN a delay.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import type { PoolClient, QueryResult, QueryResultRow } from 'pg';
import { ClosedError, SessionExpiredError, StoreDataLostError, StoreUnavailableError } from '../../errors.js';
import { StoreBase } from '../../store/base.js';
import type {
  KeyValue,
  OpResult,
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
import { withTimeout } from '../../store/timeout.js';
import { chooseBranch } from '../../store/validate.js';
import { WatcherSet } from '../../store/watchers.js';
import { INCARNATION_KEY } from '../../store/incarnation.js';
import { isConflict, isMissingSchema, outcomeOf, toStoreError, type Phase } from './errors.js';
import { decodeNotice, encodeNotice, noticeMatches } from './notify.js';
import { isPool, readPostgresOptions, serverName, type PostgresStoreOptions } from './options.js';
import { KV_COLUMNS, type KvRow, byKey, decodeRow, lenientKey, parseBigint, prefixRange } from './rows.js';
import { beginSql, ensureSchema, tablesOf, type Tables } from './schema.js';

type Query = <R extends QueryResultRow>(text: string, values?: readonly unknown[]) => Promise<QueryResult<R>>;

interface Attempt {
  phase: Phase;
  client: PoolClient | undefined;
  /** Set when the deadline passed: the attempt's result is ignored and its connection destroyed. */
  abandoned: boolean;
}

interface ReapResult {
  readonly sessions: readonly string[];
  readonly keys: readonly string[];
}

/** The server's clock in microseconds since the epoch, as bigint text. */
const NOW_US = `(extract(epoch FROM clock_timestamp()) * 1000000)::bigint`;

/** How long a revision seen by the poll waits for its NOTIFY before the poll assumes it was lost. */
const LOST_NOTIFICATION_GRACE_MS = 100;

/** Safety margin after a session's expiry before the reaper looks again. */
const REAP_MARGIN_MS = 2;

/**
 * The reaper, the revision poll and the LISTEN session's upkeep must not keep
 * a process alive on their own; request deadlines do (see Clock).
 */
const BACKGROUND = { background: true } as const;

export class PostgresStore extends StoreBase {
  readonly backend = 'postgres';
  /** Keep-alives return clock_timestamp(): this host's clock rate is checked against it. */
  override readonly clockRateCheck = 'server' as const;
  /** The schema holding the tables. */
  readonly schema: string;

  readonly #t: Tables;
  readonly #pool: pg.Pool;
  readonly #ownsPool: boolean;
  readonly #listenEnabled: boolean;
  readonly #listenConfig: pg.ClientConfig;
  readonly #pollIntervalMs: number;
  readonly #watchers = new WatcherSet();
  /** Every connection the owned pool opened, so that close() can cut them even when the server is unreachable. */
  readonly #poolClients = new Set<pg.ClientBase>();
  readonly #onPoolError = (): void => {
    // An idle pooled connection died (server restart, network): the pool drops it; the next request reconnects.
  };
  #schemaReady: Promise<void> | undefined;
  /** Set when close() releases the connections: every call fails from then on. */
  #poolEnded = false;
  /** "PostgreSQL at host:port", for messages. */
  readonly #where: string;

  // Reaper and revision poll.
  #tickTimer: TimerHandle | undefined;
  #tickAtMs = Number.POSITIVE_INFINITY;
  #ticking = false;
  #pollFailed = false;
  /** Highest namespace revision this client has told its watchers about (or seen while it had none). */
  #seenRevision: number | undefined;
  /**
   * The highest namespace revision this client saw committed (a read, a write, the poll): a request sent after it
   * that reads a lower one reads a database restored from a backup (#restored).
   */
  #maxRevision = 0;
  /** The floor of the restore last reported (#restored): the requests that find the same one report it once. */
  #restoreFloor: number | undefined;

  // LISTEN session.
  #listener: { client: pg.Client; lost: () => void } | undefined;
  #listenerConnecting: Promise<void> | undefined;
  #listenerHadSession = false;
  #listenerRetry: TimerHandle | undefined;
  #listenerBackoffMs = 100;

  /** Use createPostgresStore(), which also creates the schema and checks its version. */
  constructor(options: PostgresStoreOptions) {
    const settings = readPostgresOptions(options);
    super(settings);
    this.#pollIntervalMs = settings.pollIntervalMs;
    this.schema = settings.schema;
    this.#t = tablesOf(this.schema);
    this.#listenEnabled = settings.listen;
    if (isPool(settings.pool)) {
      this.#pool = settings.pool;
      this.#ownsPool = false;
      this.#listenConfig = { ...settings.pool.options };
    } else {
      const config: pg.PoolConfig = {
        max: 4,
        connectionTimeoutMillis: this.requestTimeoutMs,
        idleTimeoutMillis: 10_000,
        keepAlive: true,
        allowExitOnIdle: true,
        application_name: 'rebalancer',
        ...settings.pool,
        ...(settings.connectionString === undefined ? {} : { connectionString: settings.connectionString }),
      };
      this.#pool = new pg.Pool(config);
      this.#ownsPool = true;
      this.#pool.on('connect', (c) => {
        this.#poolClients.add(c);
      });
      this.#pool.on('remove', (c) => {
        this.#poolClients.delete(c);
      });
      this.#listenConfig = config;
    }
    if (settings.listenConnection !== undefined) {
      this.#listenConfig =
        typeof settings.listenConnection === 'string'
          ? { connectionString: settings.listenConnection }
          : { ...settings.listenConnection };
    }
    this.#pool.on('error', this.#onPoolError);
    this.#where = serverName(isPool(settings.pool) ? settings.pool.options : this.#listenConfig);
  }

  /** Create the schema (or check its version) and the namespace's row; start the reaper. */
  async init(): Promise<void> {
    try {
      await this.#ensureReady();
    } catch (err) {
      await this.close();
      throw err;
    }
    this.#scheduleTick(0);
  }

  // ---- sessions -------------------------------------------------------------

  protected async grantSession(ttlMs: number): Promise<GrantedSession<undefined>> {
    const id = randomUUID();
    await this.#exec(
      'open session',
      async (q) => {
        await q(
          `INSERT INTO ${this.#t.sessions} (ns, id, ttl_ms, expires_at)
         VALUES ($1, $2, $3::int, clock_timestamp() + $3::int * interval '1 millisecond')`,
          [this.namespace, id, ttlMs],
        );
      },
      'sent',
    );
    // Be there when it could expire, even if no other session of the namespace expires sooner.
    this.#scheduleTick(ttlMs + REAP_MARGIN_MS);
    return {
      id,
      ttlMs,
      data: undefined,
      driver: {
        keepAlive: () => this.#keepAlive(id, ttlMs),
        revoke: () => this.#revoke(id),
      },
    };
  }

  /** clock_timestamp(): the server's clock, for the clock-rate check while sessions are refused. */
  protected override async readServerTimeMs(): Promise<number> {
    const r = await this.#exec(
      'read the server clock',
      (q) => q('SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS now_ms', []),
      'sent',
    );
    return Number((r.rows[0] as { now_ms?: unknown } | undefined)?.now_ms);
  }

  async #keepAlive(id: string, ttlMs: number): Promise<'alive' | 'gone' | { alive: true; serverTimeMs: number }> {
    // Only a session that has not expired may be extended: once its expiry
    // has passed on the server's clock it is dead, reaped or not. The server's
    // clock comes back with it: the store checks this host's clock rate with it.
    const r = await this.#exec(
      'keep-alive',
      (q) =>
        q(
          `UPDATE ${this.#t.sessions} SET expires_at = clock_timestamp() + ttl_ms * interval '1 millisecond'
         WHERE ns = $1 AND id = $2 AND expires_at > clock_timestamp()
         RETURNING (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS now_ms`,
          [this.namespace, id],
        ),
      'sent',
    );
    if (r.rowCount === 1) {
      this.#scheduleTick(ttlMs + REAP_MARGIN_MS);
      const nowMs = Number((r.rows[0] as { now_ms?: unknown } | undefined)?.now_ms);
      return Number.isFinite(nowMs) ? { alive: true, serverTimeMs: nowMs } : 'alive';
    }
    // Delete its keys now rather than at the next tick.
    this.#reap().catch(() => undefined);
    return 'gone';
  }

  async #revoke(id: string): Promise<void> {
    await this.#writeTxn('revoke session', async (q, w) => {
      const keys = await q<{ key: Buffer }>(
        `DELETE FROM ${this.#t.kv} WHERE ns = $1 AND session_id = $2 RETURNING key`,
        [this.namespace, id],
      );
      await q(`DELETE FROM ${this.#t.sessions} WHERE ns = $1 AND id = $2`, [this.namespace, id]);
      for (const row of keys.rows) w.changed.push(lenientKey(row.key));
    });
  }

  // ---- reads ----------------------------------------------------------------

  protected async readKey(key: string): Promise<KeyValue | undefined> {
    const r = await this.#read('get', `k.key = $2`, [Buffer.from(key, 'utf8')]);
    return r.kvs[0];
  }

  protected async readRange(prefix: string): Promise<RangeResult> {
    const [low, high] = prefixRange(prefix);
    const r = await this.#read('range', `k.key >= $2 AND ($3::bytea IS NULL OR k.key < $3)`, [low, high]);
    return { kvs: r.kvs, revision: r.revision, snapshot: true };
  }

  /**
   * One statement (one snapshot): the namespace revision, whether any of its
   * sessions has expired without being reaped, and the matching keys, minus
   * keys of sessions that have expired by the server's clock. If something
   * awaits reaping, reap it and read again, so the revision covers the reap.
   */
  async #read(what: string, where: string, params: readonly unknown[]): Promise<{ kvs: KeyValue[]; revision: number }> {
    const { rows, revision } = await this.#readRows(what, where, params);
    const kvs = rows.map(decodeRow);
    kvs.sort(byKey);
    return { kvs, revision };
  }

  /** #read's statement, its rows left undecoded (a read-only txn decodes only what its branch returns). */
  async #readRows(
    what: string,
    where: string,
    params: readonly unknown[],
  ): Promise<{ rows: KvRow[]; revision: number }> {
    const sql = `
      WITH t AS MATERIALIZED (SELECT clock_timestamp() AS now)
      SELECT h.revision, h.expired, r.*
      FROM (SELECT (SELECT n.revision FROM ${this.#t.namespaces} n WHERE n.name = $1) AS revision,
                   EXISTS (SELECT 1 FROM ${this.#t.sessions} s, t WHERE s.ns = $1 AND s.expires_at <= t.now) AS expired) h
      LEFT JOIN LATERAL (
        SELECT ${KV_COLUMNS}
        FROM ${this.#t.kv} k CROSS JOIN t
        LEFT JOIN ${this.#t.sessions} s ON s.ns = k.ns AND s.id = k.session_id
        WHERE k.ns = $1 AND ${where} AND (k.session_id IS NULL OR s.expires_at > t.now)
      ) r ON true`;
    const run = (): Promise<QueryResult<KvRow & { revision: unknown; expired: boolean }>> =>
      this.#exec(what, (q) => q(sql, [this.namespace, ...params]));
    const floor = this.#maxRevision;
    let r = await run();
    if (r.rows[0]?.expired === true) {
      const reaped = await this.#reap().then(
        () => true,
        () => false,
      );
      if (reaped) r = await run();
    }
    const first = r.rows[0];
    const revision =
      first?.revision === null || first === undefined ? 0 : parseBigint(first.revision, 'namespace revision', 0);
    // No namespace row (deleted by hand, a schema dropped): no revision to compare; the next write starts a new one.
    if (first !== undefined && first.revision !== null) this.#observe(revision, floor);
    return { rows: r.rows.filter((row) => row.key !== null), revision };
  }

  // ---- transactions ---------------------------------------------------------

  protected async applyTxn(txn: Txn, session: ManagedSession | undefined): Promise<TxnResult> {
    // A transaction that cannot write (no put, delete or deletePrefix in either branch) needs no lock.
    if (session === undefined && [...txn.then, ...(txn.else ?? [])].every((op) => op.op === 'get' || op.op === 'range'))
      return this.#readTxn(txn);
    const sessionId = session?.id;
    const { value, revision } = await this.#writeTxn('txn', (q, w, read) => this.#runTxn(q, w, txn, sessionId, read), {
      sessionId,
      names: txnNames(txn),
    });
    return { succeeded: value.succeeded, revision, results: value.results };
  }

  /**
   * A read-only transaction: the compared keys, every key either branch gets
   * and every prefix either branch ranges over, in ONE statement (#readRows:
   * one snapshot, keys of expired sessions left out, a pending reap done
   * first). The compares are evaluated on that snapshot and the branch's
   * reads answered from it, so the whole transaction takes effect at the
   * snapshot, as a read does. It takes no lock: it never waits for writers,
   * and writers never wait for it.
   */
  async #readTxn(txn: Txn): Promise<TxnResult> {
    const names = new Set<string>();
    const prefixes = new Set<string>();
    for (const c of txn.compare) names.add(c.key);
    for (const op of [...txn.then, ...(txn.else ?? [])]) {
      if (op.op === 'get') names.add(op.key);
      else if (op.op === 'range') prefixes.add(op.prefix);
    }
    const params: unknown[] = [];
    const terms: string[] = [];
    if (names.size > 0) {
      params.push([...names].map((n) => Buffer.from(n, 'utf8')));
      terms.push(`k.key = ANY($${params.length + 1}::bytea[])`);
    }
    for (const prefix of prefixes) {
      const [low, high] = prefixRange(prefix);
      params.push(low, high);
      terms.push(
        `(k.key >= $${params.length} AND ($${params.length + 1}::bytea IS NULL OR k.key < $${params.length + 1}))`,
      );
    }
    const { rows, revision } = await this.#readRows(
      'txn',
      terms.length === 0 ? 'false' : `(${terms.join(' OR ')})`,
      params,
    );
    const kvOf = kvLookup(rows);
    const { succeeded, branch } = chooseBranch(txn, kvOf);
    const results: OpResult[] = [];
    for (const op of branch) {
      if (op.op === 'get') {
        results.push({ op: 'get', key: op.key, kv: kvOf(op.key) });
      } else if (op.op === 'range') {
        // The same byte range as the SQL of a range read.
        const [low, high] = prefixRange(op.prefix);
        const inRange = rows.filter((row) => {
          const key = row.key as Buffer;
          return Buffer.compare(key, low) >= 0 && (high === null || Buffer.compare(key, high) < 0);
        });
        results.push({ op: 'range', prefix: op.prefix, kvs: inRange.map(decodeRow).sort(byKey) });
      }
    }
    return { succeeded, revision, results };
  }

  async #runTxn(
    q: Query,
    w: WriteContext,
    txn: Txn,
    sessionId: string | undefined,
    read: Prefetched,
  ): Promise<Omit<TxnResult, 'revision'>> {
    if (sessionId !== undefined && !read.sessionAlive) {
      // Commit the reap, apply nothing of the transaction.
      w.failAfterCommit = new SessionExpiredError(
        sessionId,
        `session ${sessionId} has expired on the server; open a new session`,
      );
      return { succeeded: false, results: [] };
    }
    // The current rows of every key the compares and either branch name (txnNames), read under the namespace
    // lock: nobody else can change them until we commit.
    const kvOf = kvLookup(read.rows);
    const { succeeded, branch } = chooseBranch(txn, kvOf);
    const results: OpResult[] = [];
    const puts: { key: string; value: string; attached: boolean }[] = [];
    for (const op of branch) {
      switch (op.op) {
        case 'get':
          results.push({ op: 'get', key: op.key, kv: kvOf(op.key) });
          break;
        case 'range': {
          const [low, high] = prefixRange(op.prefix);
          const r = await q<KvRow>(
            `SELECT ${KV_COLUMNS} FROM ${this.#t.kv} k WHERE k.ns = $1 AND k.key >= $2 AND ($3::bytea IS NULL OR k.key < $3)`,
            [this.namespace, low, high],
          );
          results.push({ op: 'range', prefix: op.prefix, kvs: r.rows.map(decodeRow).sort(byKey) });
          break;
        }
        case 'put': {
          // A row that is not ours is reported, never overwritten.
          kvOf(op.key);
          puts.push({ key: op.key, value: op.value, attached: op.session !== undefined });
          w.changed.push(op.key);
          results.push({ op: 'put', key: op.key });
          break;
        }
        case 'delete': {
          const r = await q(`DELETE FROM ${this.#t.kv} WHERE ns = $1 AND key = $2`, [
            this.namespace,
            Buffer.from(op.key, 'utf8'),
          ]);
          const deleted = r.rowCount ?? 0;
          if (deleted > 0) w.changed.push(op.key);
          results.push({ op: 'delete', key: op.key, deleted });
          break;
        }
        case 'deletePrefix': {
          const [low, high] = prefixRange(op.prefix);
          const r = await q<{ key: Buffer }>(
            `DELETE FROM ${this.#t.kv} WHERE ns = $1 AND key >= $2 AND ($3::bytea IS NULL OR key < $3) RETURNING key`,
            [this.namespace, low, high],
          );
          for (const row of r.rows) w.changed.push(lenientKey(row.key));
          results.push({ op: 'deletePrefix', prefix: op.prefix, deleted: r.rows.length });
          break;
        }
      }
    }
    if (puts.length > 0) {
      // Every put in one statement (one round trip under the namespace lock instead of one per put). Running them
      // after the deletes changes nothing: validateTxn refuses a branch that writes a key twice or puts under a
      // prefix it deletes, so the puts touch no row the deletes do.
      await q(
        `INSERT INTO ${this.#t.kv} AS k (ns, key, value, version, create_rev, mod_rev, session_id)
         SELECT $1::text, u.key, u.value, 1, $4::bigint, $4::bigint, u.session_id
         FROM unnest($2::bytea[], $3::bytea[], $5::uuid[]) AS u(key, value, session_id)
         ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value, version = k.version + 1,
           mod_rev = EXCLUDED.mod_rev, session_id = EXCLUDED.session_id`,
        [
          this.namespace,
          puts.map((p) => Buffer.from(p.key, 'utf8')),
          puts.map((p) => Buffer.from(p.value, 'utf8')),
          String(w.nextRevision),
          puts.map((p) => (p.attached ? (sessionId ?? null) : null)),
        ],
      );
    }
    return { succeeded, results };
  }

  /**
   * The write transaction every mutation goes through: lock the namespace
   * row, reap its expired sessions, read what `prefetch` asks for, run `body`,
   * and if anything changed (the reap included) bump the revision and NOTIFY,
   * all in one commit.
   *
   * Round trips are what a writer pays while it holds the lock (each one is a
   * turn of this process's event loop, which on a busy process is most of
   * the cost), and every other writer of the namespace waits that long. So
   * BEGIN, the lock, the reap and the reads go in one multi-statement simple
   * query, and the bump, the NOTIFY and COMMIT in another: a guarded put is
   * three round trips (the puts are the middle one); the lock is taken in the
   * first and held through the other two. A multi-statement query takes no parameters, so these statements
   * carry their values as literals: pg's escapeLiteral for text, integers
   * the code computed, keys as hex. Each statement of it still takes its own
   * snapshot (READ COMMITTED), so the reap and the reads see everything
   * committed before the lock was granted.
   */
  async #writeTxn<T>(
    what: string,
    body: (q: Query, w: WriteContext, read: Prefetched) => Promise<T>,
    prefetch: Prefetch = { sessionId: undefined, names: [] },
  ): Promise<{ value: T; revision: number }> {
    let reaped: ReapResult = { sessions: [], keys: [] };
    let w: WriteContext | undefined;
    const floor = this.#maxRevision;
    let restoredFrom: number | undefined;
    const out = await this.#exec(what, async (q, attempt) => {
      restoredFrom = undefined;
      attempt.phase = 'open';
      const ns = pg.escapeLiteral(this.namespace);
      const reads = this.#prefetchSql(prefetch, ns);
      const statements = [
        beginSql(this.requestTimeoutMs),
        `SELECT revision, ${NOW_US} AS now_us FROM ${this.#t.namespaces} WHERE name = ${ns} FOR UPDATE`,
        this.#reapSql(ns),
        ...reads.statements,
      ];
      const results = await q(statements.join('; ')).then(resultList);
      // BEGIN and its SET LOCALs come first; then the lock, the reap and the reads, in that order.
      const [lockResult, reapResult, ...readResults] = results.slice(results.length - 2 - reads.statements.length);
      let lock = lockResult === undefined ? undefined : lockRow(lockResult, this.namespace);
      let read = reads.parse(readResults);
      reaped = reapRow(reapResult);
      if (lock === undefined) {
        // The row was deleted by hand (or the schema recreated): start a new counter from the server's clock, take
        // its lock, and reap and read again under it.
        await q(
          `INSERT INTO ${this.#t.namespaces} (name, revision) VALUES ($1, ${NOW_US}) ON CONFLICT (name) DO NOTHING`,
          [this.namespace],
        );
        const again = await q(
          [
            `SELECT revision, ${NOW_US} AS now_us FROM ${this.#t.namespaces} WHERE name = ${ns} FOR UPDATE`,
            this.#reapSql(ns),
            ...reads.statements,
          ].join('; '),
        ).then(resultList);
        lock = again[0] === undefined ? undefined : lockRow(again[0], this.namespace);
        if (lock === undefined)
          throw new StoreUnavailableError('postgres: the namespace row vanished during a transaction', {
            outcome: 'not-applied',
          });
        const more = reapRow(again[1]);
        reaped = { sessions: [...reaped.sessions, ...more.sessions], keys: [...reaped.keys, ...more.keys] };
        read = reads.parse(again.slice(2));
      }
      // Revisions stay above the server's clock in microseconds, so they keep
      // growing even if the database is restored from a backup or recreated.
      const next = Math.max(lock.revision + 1, lock.nowUs);
      if (!Number.isSafeInteger(next)) {
        throw new StoreUnavailableError(`postgres: the next revision ${next} would exceed 2^53`, {
          outcome: 'not-applied',
        });
      }
      if (lock.revision < floor) {
        // Restored from a backup: this write must not land on the older data, where its new revision (the clock's)
        // would hide the restore from every client that has not looked yet. Instead the incarnation record goes
        // (every client's check then finds it gone: StoreDataLostError, and the delayed restart of ADR 0009).
        restoredFrom = lock.revision;
        attempt.phase = 'commit';
        const notice = encodeNotice(this.namespace, next, [INCARNATION_KEY]);
        await q(
          `DELETE FROM ${this.#t.kv} WHERE ns = ${ns} AND key = convert_to(${pg.escapeLiteral(INCARNATION_KEY)}, 'UTF8');
           WITH bump AS (UPDATE ${this.#t.namespaces} SET revision = ${String(next)} WHERE name = ${ns} RETURNING 1)
           SELECT pg_notify(${pg.escapeLiteral(this.#t.channel)}, ${pg.escapeLiteral(notice)}) FROM bump; COMMIT`,
        );
        attempt.phase = 'connect';
        return { value: undefined as T, revision: next };
      }
      w = new WriteContext(next);
      w.changed.push(...reaped.keys);
      const result = await body(q, w, read);
      const changed = w.changed.length > 0;
      // From here on COMMIT is on the wire. A server error of the bump before it (not a connection-level one)
      // still reports not-applied (outcomeOf): the transaction then aborts and COMMIT is never run.
      attempt.phase = 'commit';
      if (changed) {
        const notice = encodeNotice(this.namespace, next, w.changed);
        await q(
          `WITH bump AS (UPDATE ${this.#t.namespaces} SET revision = ${String(next)} WHERE name = ${ns} RETURNING 1)
           SELECT pg_notify(${pg.escapeLiteral(this.#t.channel)}, ${pg.escapeLiteral(notice)}) FROM bump; COMMIT`,
        );
      } else {
        await q('COMMIT');
      }
      attempt.phase = 'connect';
      return { value: result, revision: changed ? next : lock.revision };
    });
    if (restoredFrom !== undefined) {
      // The restore is marked; from here on this client works from the new revision (a new baseline).
      this.#maxRevision = out.revision;
      throw this.#restored(restoredFrom, floor);
    }
    this.#afterReap(reaped);
    if (w?.failAfterCommit !== undefined) throw w.failAfterCommit;
    this.#observe(out.revision, floor);
    return out;
  }

  /**
   * A revision read by a request sent after this client saw `floor`: never lower while the database keeps its data
   * (revisions only grow, and a request sees every commit made before it was sent). Lower: the database went back
   * to an older state — a restored backup, a failover to a replica that had not received the latest commits —
   * whose records may lack what this client saw written (a fleet would take a group added since as removed). Every
   * session ends (StoreDataLostError, thrown), and a write marks the restore for the other clients (#writeTxn).
   */
  #observe(revision: number, floor: number): void {
    if (revision >= floor) {
      if (revision > this.#maxRevision) this.#maxRevision = revision;
      return;
    }
    const lost = this.#restored(revision, floor);
    // The write finds the older revision under its lock and removes the incarnation record.
    void this.#writeTxn('mark a restored database', async () => undefined).catch(() => undefined);
    throw lost;
  }

  /** End every session with the restore found at `floor` — once per restore, however many requests saw it. */
  #restored(revision: number, floor: number): StoreDataLostError {
    const detail =
      `its revision went backwards (${revision} after ${floor}): the database was restored from a backup or ` +
      'failed over to a replica without the latest commits';
    if (this.#restoreFloor === floor) return new StoreDataLostError('postgres', this.namespace, detail);
    this.#restoreFloor = floor;
    return this.dataLost(detail);
  }

  /** The statements reading what `prefetch` asks for, with `ns` the namespace as a literal, and their parser. */
  #prefetchSql(
    prefetch: Prefetch,
    ns: string,
  ): { statements: string[]; parse: (results: readonly QueryResult[]) => Prefetched } {
    const statements: string[] = [];
    const { sessionId, names } = prefetch;
    if (sessionId !== undefined) {
      statements.push(
        `SELECT 1 FROM ${this.#t.sessions} WHERE ns = ${ns} AND id = ${pg.escapeLiteral(sessionId)}::uuid ` +
          `AND expires_at > clock_timestamp()`,
      );
    }
    if (names.length > 0) {
      // Hex of the UTF-8 bytes: nothing to escape.
      const keys = names.map((n) => `decode('${Buffer.from(n, 'utf8').toString('hex')}', 'hex')`).join(', ');
      statements.push(`SELECT ${KV_COLUMNS} FROM ${this.#t.kv} k WHERE k.ns = ${ns} AND k.key = ANY(ARRAY[${keys}])`);
    }
    return {
      statements,
      parse: (results) => {
        let i = 0;
        const sessionAlive = sessionId === undefined ? false : results[i++]?.rowCount === 1;
        const rows = names.length > 0 ? ((results[i]?.rows ?? []) as KvRow[]) : [];
        return { sessionAlive, rows };
      },
    };
  }

  /** Delete the namespace's expired sessions and their keys; `ns` is the namespace as a literal or parameter. */
  #reapSql(ns: string): string {
    return `WITH dead AS (
         DELETE FROM ${this.#t.sessions} WHERE ns = ${ns} AND expires_at <= clock_timestamp() RETURNING id
       ), gone AS (
         DELETE FROM ${this.#t.kv} WHERE ns = ${ns} AND session_id IN (SELECT id FROM dead) RETURNING key
       )
       SELECT (SELECT coalesce(array_agg(id::text), '{}') FROM dead) AS sessions,
              (SELECT coalesce(array_agg(key), '{}') FROM gone) AS keys`;
  }

  #afterReap(reaped: ReapResult): void {
    for (const id of reaped.sessions) {
      this.sessions
        .get(id)
        ?.markExpired(
          new SessionExpiredError(id, `session ${id} expired on the server (no keep-alive within its TTL)`),
        );
    }
  }

  /** A write transaction that only reaps. */
  async #reap(): Promise<void> {
    await this.#writeTxn('reap expired sessions', async () => undefined);
  }

  // ---- watches --------------------------------------------------------------

  protected async startWatch(prefix: string, onHint: (hint: WatchHint) => void): Promise<Watcher> {
    if (this.#listenEnabled) await this.#ensureListener();
    if (this.#seenRevision === undefined) {
      const h = await this.#header();
      this.#seenRevision ??= h.revision;
    }
    return this.#watchers.add(prefix, onHint);
  }

  #onNotification(msg: pg.Notification): void {
    if (msg.channel !== this.#t.channel) return;
    const n = decodeNotice(msg.payload);
    if (n === undefined || n.ns !== this.namespace) return;
    if (this.#seenRevision === undefined || n.rev > this.#seenRevision) this.#seenRevision = n.rev;
    const hint: WatchHint = { revision: n.rev, reason: 'change' };
    for (const w of this.#watchers) if (noticeMatches(n, w.prefix)) w.notify(hint);
  }

  /** The poll found revision `rev`: hint every watcher if no notification covered it. */
  #observeRevision(rev: number): void {
    const seen = this.#seenRevision;
    if (seen === undefined || this.#watchers.size === 0) {
      if (seen === undefined || rev > seen) this.#seenRevision = rev;
      return;
    }
    if (rev <= seen) return;
    const fire = (): void => {
      if (this.closed || (this.#seenRevision ?? 0) >= rev) return;
      this.#seenRevision = rev;
      this.#watchers.notifyAll({ revision: rev, reason: 'change' });
    };
    if (this.#listener === undefined) fire();
    else this.clock.setTimeout(fire, LOST_NOTIFICATION_GRACE_MS, BACKGROUND);
  }

  #resyncAll(): void {
    this.#watchers.notifyAll({ revision: this.#seenRevision ?? 0, reason: 'resync' });
  }

  #ensureListener(): Promise<void> {
    if (!this.#listenEnabled || this.#listener !== undefined) return Promise.resolve();
    this.#listenerConnecting ??= this.#connectListener().finally(() => {
      this.#listenerConnecting = undefined;
    });
    return this.#listenerConnecting;
  }

  async #connectListener(): Promise<void> {
    const client = new pg.Client({
      connectionTimeoutMillis: this.requestTimeoutMs,
      keepAlive: true,
      ...this.#listenConfig,
    });
    let isLost = false;
    const lost = (): void => {
      if (isLost) return;
      isLost = true;
      destroyConnection(client);
      if (this.#listener?.client === client) {
        this.#listener = undefined;
        this.#scheduleListenerReconnect();
      }
    };
    client.on('error', lost);
    client.on('end', lost);
    client.on('notification', (msg) => this.#onNotification(msg));
    try {
      await this.#deadline(client.connect(), this.requestTimeoutMs, 'connecting the LISTEN session');
      await this.#deadline(
        client.query(`LISTEN ${pg.escapeIdentifier(this.#t.channel)}`),
        this.requestTimeoutMs,
        'LISTEN',
      );
    } catch (err) {
      lost();
      throw toStoreError(err, 'LISTEN for watch hints', 'connect', serverName(this.#listenConfig));
    }
    if (isLost)
      throw new StoreUnavailableError('postgres: the LISTEN session was lost while starting', {
        outcome: 'not-applied',
      });
    if (this.closed) {
      lost();
      return;
    }
    this.#listener = { client, lost };
    this.#listenerBackoffMs = 100;
    // Notifications sent while no session listened are gone: watchers must re-read.
    if (this.#listenerHadSession) this.#resyncAll();
    this.#listenerHadSession = true;
  }

  #scheduleListenerReconnect(): void {
    if (this.closed || this.#watchers.size === 0 || this.#listenerRetry !== undefined) return;
    const delayMs = this.#listenerBackoffMs;
    this.#listenerBackoffMs = Math.min(2000, delayMs * 2);
    this.#listenerRetry = this.clock.setTimeout(
      () => {
        this.#listenerRetry = undefined;
        this.#ensureListener().catch(() => this.#scheduleListenerReconnect());
      },
      delayMs,
      BACKGROUND,
    );
  }

  /** A silently dead LISTEN connection (blackholed) only shows when asked something. */
  async #pingListener(): Promise<void> {
    const l = this.#listener;
    if (l === undefined) {
      if (this.#listenEnabled && this.#watchers.size > 0) this.#scheduleListenerReconnect();
      return;
    }
    try {
      await this.#deadline(l.client.query('SELECT 1'), this.requestTimeoutMs, 'LISTEN session ping');
    } catch {
      l.lost();
    }
  }

  // ---- reaper and poll ------------------------------------------------------

  /** Run the tick in `delayMs`, unless one is already due sooner. */
  #scheduleTick(delayMs: number): void {
    if (this.closed) return;
    const at = this.clock.now() + delayMs;
    if (this.#tickTimer !== undefined) {
      if (at >= this.#tickAtMs) return;
      this.clock.clearTimeout(this.#tickTimer);
    }
    this.#tickAtMs = at;
    this.#tickTimer = this.clock.setTimeout(
      () => {
        this.#tickTimer = undefined;
        this.#tickAtMs = Number.POSITIVE_INFINITY;
        void this.#tick();
      },
      Math.max(0, delayMs),
      BACKGROUND,
    );
  }

  async #tick(): Promise<void> {
    if (this.closed) return;
    if (this.#ticking) {
      this.#scheduleTick(REAP_MARGIN_MS * 5);
      return;
    }
    this.#ticking = true;
    let nextMs = this.#pollIntervalMs;
    const ping = this.#listenEnabled && this.#watchers.size > 0 ? this.#pingListener() : Promise.resolve();
    try {
      const h = await this.#header();
      if (this.#pollFailed) {
        this.#pollFailed = false;
        if (this.#listener === undefined) this.#resyncAll();
      }
      if (h.nextExpiryMs !== undefined) {
        if (h.nextExpiryMs <= 0) {
          await this.#reap();
          nextMs = REAP_MARGIN_MS * 5;
        } else {
          nextMs = Math.min(nextMs, h.nextExpiryMs + REAP_MARGIN_MS);
        }
      }
      this.#observeRevision(h.revision);
    } catch {
      this.#pollFailed = true;
    } finally {
      await ping;
      this.#ticking = false;
      this.#scheduleTick(nextMs);
    }
  }

  /** The namespace revision and the time until its next session expiry, on the server's clock. */
  async #header(): Promise<{ revision: number; nextExpiryMs: number | undefined }> {
    const floor = this.#maxRevision;
    const r = await this.#exec('poll', (q) =>
      q<{ revision: unknown; next_expiry_ms: number | null }>(
        `SELECT (SELECT revision FROM ${this.#t.namespaces} WHERE name = $1) AS revision,
                (SELECT extract(epoch FROM min(expires_at) - clock_timestamp()) * 1000
                   FROM ${this.#t.sessions} WHERE ns = $1)::float8 AS next_expiry_ms`,
        [this.namespace],
      ),
    );
    const row = r.rows[0];
    const revision =
      row?.revision === null || row === undefined ? 0 : parseBigint(row.revision, 'namespace revision', 0);
    if (row !== undefined && row.revision !== null) this.#observe(revision, floor);
    const next = row?.next_expiry_ms;
    return { revision, nextExpiryMs: typeof next === 'number' ? next : undefined };
  }

  // ---- requests -------------------------------------------------------------

  /**
   * Schema and namespace row, once per store (again after someone dropped
   * the schema). A namespace row created anew starts from the server's clock
   * in microseconds, so its revisions never repeat earlier ones.
   */
  #ensureReady(): Promise<void> {
    this.#schemaReady ??= this.#exec(
      'create or check the schema',
      async (q, attempt) => {
        if (attempt.client === undefined) throw new Error('no connection');
        attempt.phase = 'open';
        await ensureSchema(attempt.client, this.#t, this.schema, this.requestTimeoutMs, this.clock);
        attempt.phase = 'connect';
        await q(
          `INSERT INTO ${this.#t.namespaces} (name, revision) VALUES ($1, ${NOW_US}) ON CONFLICT (name) DO NOTHING`,
          [this.namespace],
        );
      },
      'connect',
      true,
    ).catch((err: unknown) => {
      this.#schemaReady = undefined;
      throw err;
    });
    return this.#schemaReady;
  }

  /**
   * Run `body` on a pooled connection within the request deadline. On
   * timeout the connection is destroyed (so the server rolls back whatever
   * was not committed) and the error's outcome follows the attempt's phase.
   * `sentPhase` is the phase once a statement is on the wire: `sent` for an
   * autocommit write, `connect` for reads (nothing to apply).
   */
  async #exec<T>(
    what: string,
    body: (q: Query, attempt: Attempt) => Promise<T>,
    sentPhase: Phase = 'connect',
    skipSchema = false,
  ): Promise<T> {
    // Internal requests (revoking sessions) still run while close() is under way.
    if (this.#poolEnded) throw new ClosedError('postgres store');
    if (!skipSchema) await this.#ensureReady();
    for (let tries = 0; ; tries++) {
      try {
        return await this.#attempt(what, body, sentPhase);
      } catch (err) {
        const cause = (err as { cause?: unknown }).cause;
        if (tries < 3 && err instanceof StoreUnavailableError && err.outcome === 'not-applied' && isConflict(cause))
          continue;
        if (isMissingSchema(cause)) this.#schemaReady = undefined;
        throw err;
      }
    }
  }

  #attempt<T>(what: string, body: (q: Query, attempt: Attempt) => Promise<T>, sentPhase: Phase): Promise<T> {
    const attempt: Attempt = { phase: 'connect', client: undefined, abandoned: false };
    const q: Query = (text, values) => {
      const client = attempt.client;
      if (client === undefined || attempt.abandoned) {
        return Promise.reject(new StoreUnavailableError(`postgres: ${what} was abandoned`, { outcome: 'not-applied' }));
      }
      if (attempt.phase === 'connect') attempt.phase = sentPhase;
      // Unnamed statements only: nothing survives on a pooled server connection.
      // Without parameters pg uses the simple protocol, which also runs the multi-statement BEGIN string.
      return values === undefined || values.length === 0
        ? client.query(text)
        : client.query({ text, values: [...values] });
    };
    const run = async (): Promise<T> => {
      const client = await this.#pool.connect();
      const swallow = (): void => {
        // Errors surface through the pending query; without a listener an 'error' event would crash the process.
      };
      client.on('error', swallow);
      attempt.client = client;
      let ok = false;
      try {
        if (attempt.abandoned)
          throw new StoreUnavailableError(`postgres: ${what} was abandoned`, { outcome: 'not-applied' });
        const result = await body(q, attempt);
        ok = attempt.phase === 'connect' || attempt.phase === sentPhase;
        return result;
      } finally {
        client.removeListener('error', swallow);
        if (ok && !attempt.abandoned) {
          client.release();
        } else {
          // Mid-transaction or broken: never hand this connection to anyone else.
          destroyConnection(client);
          client.release(true);
        }
      }
    };
    return withTimeout(run(), this.requestTimeoutMs, this.clock, {
      onTimeout: () => {
        // Abandon the attempt: its result is ignored, and destroying its
        // connection makes the server roll back whatever was not committed.
        attempt.abandoned = true;
        if (attempt.client !== undefined) destroyConnection(attempt.client);
        const outcome = outcomeOf(attempt.phase);
        return new StoreUnavailableError(
          `${this.#where} did not answer ${what} within ${this.requestTimeoutMs} ms; ` +
            (outcome === 'unknown' ? OUTCOME_UNKNOWN : 'check that the server runs and is reachable'),
          { outcome },
        );
      },
    }).catch((err: unknown) => {
      throw toStoreError(err, what, attempt.phase, this.#where);
    });
  }

  /** Reject with StoreUnavailableError if `p` is not settled within `ms` (the caller cleans up `p`'s resources). */
  #deadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
    return withTimeout(p, ms, this.clock, {
      onTimeout: () =>
        new StoreUnavailableError(`${this.#where} did not answer ${what} within ${ms} ms`, { outcome: 'unknown' }),
    });
  }

  // ---- close ----------------------------------------------------------------

  protected async closeStore(): Promise<void> {
    if (this.#tickTimer !== undefined) this.clock.clearTimeout(this.#tickTimer);
    if (this.#listenerRetry !== undefined) this.clock.clearTimeout(this.#listenerRetry);
    this.#watchers.closeAll();
    await this.sessions.closeAll();
    await this.#listenerConnecting?.catch(() => undefined);
    const l = this.#listener;
    this.#listener = undefined;
    if (l !== undefined) {
      await this.#deadline(l.client.end(), Math.min(1000, this.requestTimeoutMs), 'closing the LISTEN session').catch(
        () => undefined,
      );
      l.lost();
    }
    this.#poolEnded = true;
    this.#pool.removeListener('error', this.#onPoolError);
    if (this.#ownsPool) {
      await this.#deadline(this.#pool.end(), Math.min(1000, this.requestTimeoutMs), 'closing the pool').catch(
        () => undefined,
      );
      // A connection to an unreachable server never completes its goodbye; cut it.
      for (const c of this.#poolClients) destroyConnection(c);
      this.#poolClients.clear();
    }
  }
}

/** Per-transaction bookkeeping of #writeTxn. */
class WriteContext {
  readonly changed: string[] = [];
  failAfterCommit: Error | undefined;
  constructor(
    /** The revision this transaction's writes carry. */
    readonly nextRevision: number,
  ) {}
}

/** What #writeTxn reads under the lock before running its body (in the round trip that takes the lock). */
interface Prefetch {
  /** The session the transaction's puts attach keys to: whether it is still alive on the server. */
  readonly sessionId: string | undefined;
  /** Keys whose current rows the body needs. */
  readonly names: readonly string[];
}

interface Prefetched {
  readonly sessionAlive: boolean;
  readonly rows: readonly KvRow[];
}

/** Every key a transaction's compares and either branch's gets, puts and deletes name. */
function txnNames(txn: Txn): string[] {
  const names = new Set<string>();
  for (const c of txn.compare) names.add(c.key);
  for (const op of [...txn.then, ...(txn.else ?? [])])
    if (op.op !== 'range' && op.op !== 'deletePrefix') names.add(op.key);
  return [...names];
}

/** A multi-statement simple query answers with one result per statement (pg gives one result alone unwrapped). */
function resultList(r: QueryResult | QueryResult[]): QueryResult[] {
  return Array.isArray(r) ? r : [r];
}

function lockRow(r: QueryResult, namespace: string): { revision: number; nowUs: number } | undefined {
  const row = r.rows[0] as { revision: unknown; now_us: unknown } | undefined;
  if (row === undefined) return undefined;
  return {
    revision: parseBigint(row.revision, `revision of namespace ${namespace}`, 0),
    nowUs: parseBigint(row.now_us, 'server clock', 0),
  };
}

function reapRow(r: QueryResult | undefined): ReapResult {
  const row = r?.rows[0] as { sessions?: string[]; keys?: Buffer[] } | undefined;
  return { sessions: row?.sessions ?? [], keys: (row?.keys ?? []).map(lenientKey) };
}

function destroyConnection(client: pg.ClientBase): void {
  try {
    (client as pg.Client).connection.stream.destroy();
  } catch {
    // Already gone.
  }
}

/** The rows a transaction read, by key, each decoded once when first asked for (compares and branches share them). */
function kvLookup(rows: readonly KvRow[]): (key: string) => KeyValue | undefined {
  const byName = new Map<string, KvRow>();
  for (const row of rows) byName.set(lenientKey(row.key), row);
  const decoded = new Map<string, KeyValue | undefined>();
  return (key) => {
    if (!decoded.has(key)) {
      const row = byName.get(key);
      decoded.set(key, row === undefined ? undefined : decodeRow(row));
    }
    return decoded.get(key);
  };
}
