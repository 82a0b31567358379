/**
 * The ZooKeeper backend of the store contract.
 *
 * Layout: see layout.ts. How each guarantee is met, and what is not
 * guaranteed, is written down in docs/backends/zookeeper.md; in short:
 *
 * - Revisions are zxids (one counter for the whole ensemble, monotonic across
 *   restarts while the data survives). A write transaction's revision is the
 *   zxid of its multi; a key's modRevision is its znode's mzxid; its
 *   createRevision is its czxid unless the envelope carries an older one
 *   (attaching a key to a session, or detaching it, re-creates the znode).
 * - Transactions: ZooKeeper's multi can only check versions, so compares are
 *   evaluated here, against values read after the namespace's `rev` znode,
 *   and every write multi sets `rev` with the version read first. No other
 *   write can commit in between without failing ours (we then retry), and a
 *   version check of every key read that existed covers the one change that
 *   bypasses `rev`: ephemeral znodes deleted by session expiry or close.
 * - Sessions: one ZooKeeper connection each; keys attached to a session are
 *   ephemeral znodes created through that connection, so the server deletes
 *   them when it expires the session, whether or not any client is alive.
 */
import zookeeper from 'node-zookeeper-client';
import type { ACL, Event, Stat } from 'node-zookeeper-client';
import {
  ClosedError,
  CorruptDataError,
  IncompatibleSchemaError,
  InvalidArgumentError,
  LimitExceededError,
  SessionExpiredError,
  StoreUnavailableError,
} from '../../errors.js';
import { OptionReader } from '../../options.js';
import { StoreBase } from '../../store/base.js';
import { sleep } from '../../store/clock.js';
import type {
  CommonStoreOptions,
  KeyValue,
  Op,
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
import { withTimeout } from '../../store/timeout.js';
import { chooseBranch, readStoreOptions } from '../../store/validate.js';
import {
  Connection,
  MultiError,
  type ConnectionOptions,
  OP,
  ZK,
  ZkSessionExpired,
  zkCodeName,
  type MultiOp,
  type MultiResult,
} from './connection.js';
import {
  LAYOUT_VERSION,
  decodeEnvelope,
  decodeLayoutHeader,
  dirCanMatch,
  dirName,
  encodeEnvelope,
  encodeLayoutHeader,
  isZeroId,
  leafName,
  parseDirName,
  parseLeafName,
  sessionIdHex,
  splitKey,
  zxidToNumber,
} from './layout.js';
import { validateZnodePath } from './url.js';

/** Credentials added to every connection (`addAuthInfo`), e.g. `{ scheme: 'digest', auth: 'user:password' }`. */
export interface ZookeeperAuth {
  readonly scheme: string;
  readonly auth: string | Uint8Array;
}

export interface ZookeeperStoreOptions extends CommonStoreOptions {
  /** `host:port[,host:port…]`. */
  readonly connectString: string;
  /** Path prefix all znodes live under, like the Java client's chroot (the URL's path). Must exist or be creatable. */
  readonly chroot?: string | undefined;
  /** Root znode under the chroot; namespaces are its children. Default `/rebalancer`. */
  readonly rootPath?: string | undefined;
  /** Authentication sent on every connection (node-zookeeper-client has no TLS; use a secured network). */
  readonly auth?: readonly ZookeeperAuth[] | undefined;
  /** ACL of every znode this store creates. Default: world:anyone:cdrwa (`ACL.OPEN_ACL_UNSAFE`). */
  readonly acls?: readonly ACL[] | undefined;
  /**
   * Session timeout requested for the store's own connection (reads, writes
   * without a session, watches). Default 10000 ms; the server clamps it.
   */
  readonly connectionSessionTimeoutMs?: number | undefined;
  /** Driver's delay between reconnect attempts over the whole server list. Default 200 ms. */
  readonly spinDelayMs?: number | undefined;
  /**
   * The servers' `tickTime`. ZooKeeper expires a session up to one tick after its timeout, so each session asks
   * for one tick less than its TTL. Default: half the shortest session timeout the server grants (ZooKeeper's
   * default `minSessionTimeout` is 2 × tickTime), found at open with a probe session. Give it when the servers
   * set `minSessionTimeout` to something else.
   */
  readonly tickTimeMs?: number | undefined;
  /**
   * @internal Tests only: roll the `rev` znode over (delete + create) once its
   * version reaches this, instead of at 2^31 − 2.
   */
  readonly revRolloverVersion?: number | undefined;
}

/** The znode version is a signed 32-bit int; roll `rev` over before it wraps (2^31 writes per namespace). */
const REV_ROLLOVER_VERSION = 2 ** 31 - 2;
/** ZooKeeper's default jute.maxbuffer: the server drops a connection that sends a larger request. */
const MAX_REQUEST_BYTES = 0xfffff;

/** Size of a multi request on the wire (jute encoding), to refuse what the server would not take. */
function multiRequestBytes(ops: readonly MultiOp[], aclBytes: number): number {
  const str = (s: string): number => 4 + Buffer.byteLength(s, 'utf8');
  let n = 8 + 9; // request header; the closing multi header
  for (const op of ops) {
    n += 9 + str(op.path);
    switch (op.type) {
      case OP.create:
        n += 4 + op.data.length + aclBytes + 4;
        break;
      case OP.setData:
        n += 4 + op.data.length + 4;
        break;
      default:
        n += 4;
    }
  }
  return n;
}
const DEFAULT_CONNECTION_SESSION_TIMEOUT_MS = 10_000;
const MAX_SWEEP_PER_TXN = 8;

/** A key read with the stat of its znode. */
interface Entry {
  readonly kv: KeyValue;
  readonly stat: Stat;
}

/** What one attempt of a transaction read, so it can be verified or guarded at commit. */
interface ReadSet {
  /** Set once read (it is requested first, before any other read of the set). */
  revStat: Stat | undefined;
  /** Directory znode path → stat (undefined: did not exist) at read time. */
  readonly dirs: Map<string, Stat | undefined>;
  /** Key → entry (undefined: missing). */
  readonly keys: Map<string, Entry | undefined>;
  /** Stat of `d` when a listing read it. */
  dStat: Stat | undefined;
  /** Highest zxid among everything read. */
  revision: number;
}

function maxZxid(current: number, ...stats: (Stat | undefined)[]): number {
  let r = current;
  for (const s of stats) {
    if (s === undefined) continue;
    r = Math.max(r, zxidToNumber(s.mzxid, 'stat'), zxidToNumber(s.pzxid, 'stat'));
  }
  return r;
}

function toBuffer(auth: string | Uint8Array): Buffer {
  return typeof auth === 'string' ? Buffer.from(auth, 'utf8') : Buffer.from(auth);
}

const CONNECT_STRING_RE = /^[A-Za-z0-9.-]+(:[0-9]{1,5})?(,[A-Za-z0-9.-]+(:[0-9]{1,5})?)*$/;

/** Each session's own ZooKeeper connection. */
export class ZookeeperStore extends StoreBase<Connection> {
  readonly backend = 'zookeeper';
  /** Znode path of this namespace. */
  readonly nsPath: string;
  readonly #revPath: string;
  readonly #dPath: string;
  readonly #acls: ACL[];
  /** Encoded size of #acls in a create request. */
  readonly #aclBytes: number;
  readonly #connOpts: {
    readonly connectString: string;
    readonly spinDelayMs: number;
    readonly auth: readonly { readonly scheme: string; readonly auth: Buffer }[];
  };
  readonly #connectionSessionTimeoutMs: number;
  readonly #revRollover: number;
  #tickTimeMs: number | undefined;
  /** The shortest session timeout the server granted (when probed). */
  #minSessionTimeoutMs: number | undefined;
  /** TTLs already warned about (the server cannot expire such sessions within them). */
  readonly #warnedTtls = new Set<number>();
  #main: Connection | undefined;
  #mainReplacing: Promise<Connection> | undefined;
  #unsubscribeMain: (() => void) | undefined;
  readonly #watchers = new Set<PrefixWatcher>();
  #watchdog: TimerHandle | undefined;
  /** Newest zxid this store wrote or read: reads on any of its connections must not see older state. */
  #highWater = 0;

  /** Use createZookeeperStore (it connects and checks the layout). */
  constructor(options: ZookeeperStoreOptions) {
    const r = new OptionReader(options, 'createZookeeperStore options');
    const settings = readStoreOptions(r);
    const connectString = r.required<string>('connectString', (v) =>
      typeof v === 'string' && CONNECT_STRING_RE.test(v)
        ? undefined
        : `must be host:port[,host:port…] (no chroot: use the chroot option), got ${JSON.stringify(v)}`,
    );
    const chrootOption = r.string('chroot', undefined, 1024);
    const rootPath = r.string('rootPath', '/rebalancer', 1024);
    const authOption = r.raw('auth') ?? [];
    const aclsOption = r.raw('acls');
    const connectionSessionTimeoutMs = r.ms('connectionSessionTimeoutMs', DEFAULT_CONNECTION_SESSION_TIMEOUT_MS, {
      min: 1,
      max: 3_600_000,
    });
    const spinDelayMs = r.ms('spinDelayMs', 200, { min: 1, max: 3_600_000 });
    const tickTimeMs = r.has('tickTimeMs') ? r.ms('tickTimeMs', 0, { min: 1, max: 3_600_000 }) : undefined;
    const rollover = r.integer('revRolloverVersion', REV_ROLLOVER_VERSION, { min: 1, max: REV_ROLLOVER_VERSION });
    r.done();
    super(settings);
    this.#connectionSessionTimeoutMs = connectionSessionTimeoutMs;
    this.#tickTimeMs = tickTimeMs;
    const chroot = chrootOption === undefined ? '' : validateZnodePath(chrootOption, 'chroot');
    const root = validateZnodePath(rootPath, 'rootPath');
    const base = chroot + root;
    if (base === '') {
      throw new InvalidArgumentError(
        'rootPath must not be / unless a chroot is given: namespaces may not live at the ZooKeeper root',
      );
    }
    // '.' and '..' are valid namespaces but not valid znode names.
    const nsName = this.namespace === '.' ? '%2E' : this.namespace === '..' ? '%2E%2E' : this.namespace;
    this.nsPath = `${base}/${nsName}`;
    this.#revPath = `${this.nsPath}/rev`;
    this.#dPath = `${this.nsPath}/d`;
    if (aclsOption !== undefined && (!Array.isArray(aclsOption) || aclsOption.length === 0)) {
      throw new InvalidArgumentError('acls must be a non-empty array of node-zookeeper-client ACL objects');
    }
    this.#acls = [
      ...((aclsOption as ACL[] | undefined) ?? [
        new zookeeper.ACL(zookeeper.Permission.ALL, new zookeeper.Id('world', 'anyone')),
      ]),
    ];
    this.#aclBytes =
      4 + this.#acls.reduce((n, a) => n + 4 + 8 + Buffer.byteLength(a.id.scheme) + Buffer.byteLength(a.id.id), 0);
    if (!Array.isArray(authOption)) {
      throw new InvalidArgumentError('auth must be an array of { scheme, auth } entries');
    }
    const auth = (authOption as ZookeeperAuth[]).map((a) => {
      if (
        typeof a?.scheme !== 'string' ||
        a.scheme === '' ||
        (typeof a.auth !== 'string' && !(a.auth instanceof Uint8Array))
      ) {
        throw new InvalidArgumentError(
          'auth entries must be { scheme: string, auth: string | Uint8Array }, e.g. { scheme: "digest", auth: "user:password" }',
        );
      }
      return { scheme: a.scheme, auth: toBuffer(a.auth) };
    });
    this.#connOpts = { connectString, spinDelayMs, auth };
    this.#revRollover = rollover;
  }

  /** Connect and make sure the namespace exists with a layout this build understands. */
  async init(): Promise<void> {
    const conn = await this.#openConnection(this.#connectionSessionTimeoutMs);
    this.#setMain(conn);
    try {
      await this.#ensureLayout(conn);
      if (this.#tickTimeMs === undefined) {
        // Ask for a 1 ms session: the server grants its minimum, by default 2 × tickTime.
        const probe = await Connection.open({ ...this.#connectionOptions(1), connectTimeoutMs: this.requestTimeoutMs });
        this.#minSessionTimeoutMs = probe.sessionTimeoutMs;
        await probe.close();
        this.#tickTimeMs = Math.max(1, Math.floor(this.#minSessionTimeoutMs / 2));
      }
    } catch (err) {
      await this.close();
      throw err;
    }
    this.#scheduleWatchdog();
  }

  /**
   * The servers' tickTime as this store assumes it (the `tickTimeMs` option, or half the minimum session timeout
   * the server granted at open). A session is expired at most its timeout plus one tick after its client was last
   * heard.
   */
  get tickTimeMs(): number {
    return this.#tickTimeMs ?? 0;
  }

  /**
   * How long after its client was last heard a session asked for `ttlMs` can outlive it on the server: the
   * timeout the server grants for `ttlMs − tickTimeMs`, plus one tick. At most `ttlMs` unless the server's
   * minimum session timeout is longer than `ttlMs − tickTimeMs` (tickTime above about TTL/3).
   */
  expiryBoundMs(ttlMs: number): number {
    const ask = this.#askFor(ttlMs);
    const granted = Math.max(ask, this.#minSessionTimeoutMs ?? 0);
    return granted + this.tickTimeMs;
  }

  #askFor(ttlMs: number): number {
    return Math.max(1, ttlMs - this.tickTimeMs);
  }

  // ---- Store ------------------------------------------------------------------

  protected async grantSession(ttlMs: number): Promise<GrantedSession<Connection>> {
    // The server expires a session up to one tick after its timeout (it expires them in tickTime buckets): ask
    // for a tick less, so that it is gone within the TTL asked, as on the other backends. Safe as it is: the
    // session's ttlMs, and so its self-fencing deadline, is the timeout the server granted, which it never cuts.
    const conn = await this.#openConnection(this.#askFor(ttlMs));
    const id = sessionIdHex(conn.sessionId);
    const granted = conn.sessionTimeoutMs;
    if (granted + this.tickTimeMs > ttlMs) this.#warnCoarseTick(ttlMs, granted);
    // Probe faster than the TTL so a dead socket is replaced while the session may still be saved.
    const probeTimeoutMs = Math.max(100, Math.min(this.requestTimeoutMs, Math.floor((granted * 2) / 3)));
    return {
      id,
      ttlMs: granted,
      data: conn,
      driver: {
        keepAlive: async () => {
          if (conn.expired) return 'gone';
          try {
            // Any answer on this connection proves the server held the session when it processed it.
            await conn.exists(this.nsPath, undefined, probeTimeoutMs);
            return 'alive';
          } catch (err) {
            if (err instanceof ZkSessionExpired || conn.expired) return 'gone';
            conn.forceReconnect();
            throw err;
          }
        },
        revoke: async () => {
          // The server said so: nothing left to end.
          if (conn.expired) return;
          // The session's own connection is still open: closing it ends the session (closeSession).
          if (!conn.closed) return conn.close();
          // Closed here already (the session ended locally), maybe still held by the server: attach and end it.
          await Connection.endSession(
            this.#connectionOptions(granted),
            conn.sessionId,
            conn.sessionPassword,
            `ending session ${id}`,
          );
        },
      },
      onOpen: (session) => {
        conn.on((event) => {
          if (event === 'expired') {
            session.markExpired(
              new SessionExpiredError(id, `ZooKeeper session ${id} expired (reported by the server)`),
            );
          } else if (event === 'reconnected' && session.usable) {
            session.keepAlive().catch(() => undefined);
          }
        });
      },
      onEnd: (_session, end) => {
        // Locally expired (deadline) but maybe alive on the server: end it there
        // too, so its keys go now rather than when the server times it out
        // (a close() revokes by itself, on this connection).
        if (end.state === 'expired') void conn.close();
      },
    };
  }

  protected readKey(key: string): Promise<KeyValue | undefined> {
    return this.#withMain(async (conn) => {
      await this.#sync(conn);
      const kv = (await this.#readKey(conn, key))?.kv;
      this.#observe(kv?.modRevision ?? 0);
      return kv;
    });
  }

  protected readRange(prefix: string): Promise<RangeResult> {
    return this.#withMain(async (conn) => {
      // Two passes: if nothing that could change the listing changed between
      // them, the first pass is a snapshot (see #verify); else try again.
      await this.#sync(conn);
      for (let attempt = 0; attempt < 3; attempt++) {
        // One pipeline: rev first, then the listing (a connection's requests are answered in order).
        const rs = this.#newReadSet();
        const [revStat, kvs] = await Promise.all([this.#revStat(conn), this.#list(conn, prefix, rs)]);
        this.#setRevStat(rs, revStat);
        this.#observe(rs.revision);
        if (await this.#verify(conn, rs)) return { kvs: kvs.map((e) => e.kv), revision: rs.revision, snapshot: true };
        if (attempt === 2) return { kvs: kvs.map((e) => e.kv), revision: rs.revision, snapshot: false };
      }
      throw new Error('unreachable');
    });
  }

  protected async applyTxn(txn: Txn, session: ManagedSession | undefined): Promise<TxnResult> {
    const sessionConn = session === undefined ? undefined : this.sessions.dataOf(session);
    if (session !== undefined && sessionConn?.expired === true) throw new SessionExpiredError(session.id);
    const deadline = this.clock.now() + this.requestTimeoutMs;
    for (let attempt = 0; ; attempt++) {
      this.assertOpen();
      if (session !== undefined && !session.usable) throw new SessionExpiredError(session.id);
      const conn = sessionConn ?? (await this.#mainConnection());
      try {
        await this.#sync(conn);
        const result = await this.#attemptTxn(conn, txn, session);
        if (result !== undefined) {
          this.#observe(result.revision);
          return result;
        }
      } catch (err) {
        if (err instanceof ZkSessionExpired) {
          if (session !== undefined) {
            const e = new SessionExpiredError(session.id, undefined, { cause: err });
            session.markExpired(e);
            throw e;
          }
          this.#replaceMain(conn);
          if (this.clock.now() < deadline) continue;
          throw this.#sessionLost(err);
        }
        throw err;
      }
      // A conflict: another writer committed (or an ephemeral key vanished)
      // between our reads and our multi, which therefore did not apply.
      if (this.clock.now() >= deadline) {
        throw new StoreUnavailableError(
          `ZooKeeper transaction kept conflicting with other writers for ${this.requestTimeoutMs} ms; nothing was applied`,
          { outcome: 'not-applied' },
        );
      }
      if (attempt >= 2) await this.#sleep(Math.random() * Math.min(50, 2 ** attempt));
    }
  }

  protected async startWatch(prefix: string, onHint: (hint: WatchHint) => void): Promise<Watcher> {
    const w = new PrefixWatcher(this, prefix, onHint);
    this.#watchers.add(w);
    try {
      await w.start();
    } catch (err) {
      this.#watchers.delete(w);
      await w.close();
      throw err;
    }
    return { close: () => w.close() };
  }

  protected async closeStore(): Promise<void> {
    if (this.#watchdog !== undefined) this.clock.clearTimeout(this.#watchdog);
    this.#watchdog = undefined;
    for (const w of [...this.#watchers]) await w.close();
    await this.sessions.closeAll();
    this.#unsubscribeMain?.();
    await Promise.all([
      this.#main?.close(),
      this.#mainReplacing?.then(
        (c) => c.close(),
        () => undefined,
      ),
    ]);
  }

  // ---- internals used by PrefixWatcher ----------------------------------------

  /** @internal */
  removeWatcher(w: PrefixWatcher): void {
    this.#watchers.delete(w);
  }

  /** @internal The store's connection, waiting for a replacement if it expired. */
  mainConnection(): Promise<Connection> {
    return this.#mainConnection();
  }

  /**
   * @internal The one watcher function this store gives the driver: the
   * driver keeps one listener per (path, function) until the watch fires,
   * so per-watcher closures would pile up for paths that never change.
   */
  readonly onZkEvent = (event: Event): void => {
    const path = event.getPath();
    const part = path === this.#dPath ? undefined : parseDirName(path.slice(this.#dPath.length + 1));
    for (const w of this.#watchers) {
      if (part === undefined || dirCanMatch(part, w.prefix)) w.changed();
    }
  };

  /** @internal */
  get dPath(): string {
    return this.#dPath;
  }

  /** @internal */
  dirPath(dirPart: string): string {
    return `${this.#dPath}/${dirName(dirPart)}`;
  }

  /** Said once per TTL: the server expires such sessions later than their TTL (safe, but failover is slower). */
  #warnCoarseTick(ttlMs: number, granted: number): void {
    if (this.#warnedTtls.has(ttlMs)) return;
    this.#warnedTtls.add(ttlMs);
    const tick = this.tickTimeMs;
    process.emitWarning(
      `${this.#where} granted ${granted} ms for a session of ${ttlMs} ms and expires sessions up to a tickTime ` +
        `(${tick} ms) late: a dead member's work moves only up to ${granted + tick} ms after it was last heard, ` +
        `not within the TTL. Set tickTime to at most TTL/10 (here ${Math.floor(ttlMs / 10)} ms) in zoo.cfg ` +
        `(minSessionTimeout follows it), or use a session TTL of at least ${3 * tick} ms`,
      { type: 'RebalancerWarning', code: 'ZOOKEEPER_TICK_TOO_COARSE' },
    );
  }

  // ---- connections --------------------------------------------------------------

  #openConnection(sessionTimeoutMs: number): Promise<Connection> {
    return Connection.open(this.#connectionOptions(sessionTimeoutMs));
  }

  #connectionOptions(sessionTimeoutMs: number): ConnectionOptions {
    return {
      connectString: this.#connOpts.connectString,
      spinDelayMs: this.#connOpts.spinDelayMs,
      auth: this.#connOpts.auth,
      sessionTimeoutMs,
      clock: this.clock,
      requestTimeoutMs: this.requestTimeoutMs,
    };
  }

  #setMain(conn: Connection): void {
    this.#unsubscribeMain?.();
    this.#main = conn;
    this.#unsubscribeMain = conn.on((event) => {
      if (event === 'expired') this.#replaceMain(conn);
      else if (event === 'reconnected') for (const w of this.#watchers) w.resync();
    });
  }

  /**
   * The store's own session expired (e.g. a partition longer than its
   * timeout): its watches are gone. Open a new connection, retrying until
   * the store closes, then re-arm every watcher with a resync hint.
   */
  #replaceMain(old: Connection): void {
    if (this.closed || this.#main !== old || this.#mainReplacing !== undefined) return;
    void old.close();
    const replacing = (async (): Promise<Connection> => {
      for (let delayMs = 100; ; delayMs = Math.min(2000, delayMs * 2)) {
        if (this.closed) throw new ClosedError('zookeeper store');
        try {
          return await this.#openConnection(this.#connectionSessionTimeoutMs);
        } catch {
          await this.#sleep(delayMs);
        }
      }
    })();
    this.#mainReplacing = replacing;
    replacing.then(
      (conn) => {
        this.#mainReplacing = undefined;
        if (this.closed) {
          void conn.close();
          return;
        }
        this.#setMain(conn);
        for (const w of this.#watchers) w.resync();
      },
      () => {
        this.#mainReplacing = undefined;
      },
    );
    // Callers waiting on it handle rejection themselves.
    replacing.catch(() => undefined);
  }

  async #mainConnection(): Promise<Connection> {
    this.assertOpen();
    if (this.#mainReplacing !== undefined) {
      return withTimeout(this.#mainReplacing, this.requestTimeoutMs, this.clock, {
        onTimeout: () =>
          new StoreUnavailableError(
            `the store is still reconnecting to ${this.#where} after its session expired; retry shortly`,
            {
              outcome: 'not-applied',
            },
          ),
      });
    }
    const conn = this.#main;
    if (conn === undefined) throw new ClosedError('zookeeper store');
    if (conn.expired) {
      this.#replaceMain(conn);
      return this.#mainConnection();
    }
    return conn;
  }

  async #withMain<T>(fn: (conn: Connection) => Promise<T>): Promise<T> {
    const conn = await this.#mainConnection();
    try {
      return await fn(conn);
    } catch (err) {
      if (!(err instanceof ZkSessionExpired)) throw err;
      this.#replaceMain(conn);
      // Reads are idempotent: try once more on the new connection.
      try {
        return await fn(await this.#mainConnection());
      } catch (err2) {
        if (err2 instanceof ZkSessionExpired) {
          throw this.#sessionLost(err2);
        }
        throw err2;
      }
    }
  }

  /**
   * The driver never notices a silent partition; probe the store's own
   * connection and drop its socket when the probe goes unanswered, so that
   * reads, writes and watches recover (or learn the session expired).
   */
  #scheduleWatchdog(): void {
    if (this.closed) return;
    const granted = this.#main?.sessionTimeoutMs ?? this.#connectionSessionTimeoutMs;
    const intervalMs = Math.max(100, Math.min(1000, Math.floor(granted / 3)));
    this.#watchdog = this.clock.setTimeout(
      () => {
        this.#watchdog = undefined;
        const conn = this.#main;
        if (this.closed || conn === undefined || this.#mainReplacing !== undefined || conn.expired) {
          this.#scheduleWatchdog();
          return;
        }
        const probeMs = Math.max(100, Math.min(this.requestTimeoutMs, Math.floor((granted * 2) / 3)));
        conn.exists(this.nsPath, undefined, probeMs).then(
          () => this.#scheduleWatchdog(),
          (err: unknown) => {
            if (err instanceof ZkSessionExpired) this.#replaceMain(conn);
            else conn.forceReconnect();
            this.#scheduleWatchdog();
          },
        );
      },
      intervalMs,
      { background: true },
    );
  }

  // ---- layout -------------------------------------------------------------------

  async #ensureLayout(conn: Connection): Promise<void> {
    // Ancestors: create only what is missing (a chroot's parents may not be ours to write).
    const parts = this.nsPath.split('/').slice(1, -1);
    let path = '';
    for (const part of parts) {
      path += `/${part}`;
      if ((await conn.exists(path)) === undefined)
        await conn.create(path, Buffer.alloc(0), this.#acls, zookeeper.CreateMode.PERSISTENT);
    }
    for (let attempt = 0; attempt < 3; attempt++) {
      const node = await conn.getData(this.nsPath);
      if (node === undefined) {
        try {
          // All three or none, so a namespace is never half-made.
          await conn.multi([
            {
              type: OP.create,
              path: this.nsPath,
              data: encodeLayoutHeader(),
              acls: this.#acls,
              mode: zookeeper.CreateMode.PERSISTENT,
            },
            {
              type: OP.create,
              path: this.#revPath,
              data: Buffer.alloc(0),
              acls: this.#acls,
              mode: zookeeper.CreateMode.PERSISTENT,
            },
            {
              type: OP.create,
              path: this.#dPath,
              data: Buffer.alloc(0),
              acls: this.#acls,
              mode: zookeeper.CreateMode.PERSISTENT,
            },
          ]);
          return;
        } catch (err) {
          if (err instanceof MultiError && err.code === ZK.NODE_EXISTS) continue; // another store made it
          throw err;
        }
      }
      const found = decodeLayoutHeader(node.data, this.nsPath);
      if (found !== LAYOUT_VERSION)
        throw new IncompatibleSchemaError(found, LAYOUT_VERSION, `ZooKeeper namespace ${this.nsPath}`);
      const [rev, d] = await Promise.all([conn.exists(this.#revPath), conn.exists(this.#dPath)]);
      if (rev === undefined || d === undefined) {
        throw new CorruptDataError(
          `ZooKeeper namespace ${this.nsPath} has a layout header but no ${rev === undefined ? 'rev' : 'd'} znode; ` +
            'it was modified outside Rebalancer. Nothing was changed.',
        );
      }
      return;
    }
    throw new StoreUnavailableError(`could not create ZooKeeper namespace ${this.nsPath}`, { outcome: 'unknown' });
  }

  // ---- reads ------------------------------------------------------------------------

  #leafPath(key: string): { dir: string; leaf: string } {
    const { dirPart, leaf } = splitKey(key);
    const dir = this.dirPath(dirPart);
    return { dir, leaf: `${dir}/${leafName(leaf)}` };
  }

  #toEntry(key: string, data: Buffer, stat: Stat): Entry {
    const env = decodeEnvelope(data, key);
    return {
      kv: {
        key,
        value: env.value,
        version: env.version,
        createRevision: env.createRevision ?? zxidToNumber(stat.czxid, `key ${key}`),
        modRevision: zxidToNumber(stat.mzxid, `key ${key}`),
        sessionId: isZeroId(stat.ephemeralOwner) ? undefined : sessionIdHex(stat.ephemeralOwner),
      },
      stat,
    };
  }

  async #readKey(conn: Connection, key: string): Promise<Entry | undefined> {
    const r = await conn.getData(this.#leafPath(key).leaf);
    return r === undefined ? undefined : this.#toEntry(key, r.data, r.stat);
  }

  async #revStat(conn: Connection): Promise<Stat> {
    const stat = await conn.exists(this.#revPath);
    if (stat === undefined) {
      throw new CorruptDataError(
        `ZooKeeper namespace ${this.nsPath} lost its rev znode; it was modified outside Rebalancer`,
      );
    }
    return stat;
  }

  #newReadSet(): ReadSet {
    return { revStat: undefined, dirs: new Map(), keys: new Map(), dStat: undefined, revision: 0 };
  }

  #setRevStat(rs: ReadSet, revStat: Stat): void {
    rs.revStat = revStat;
    rs.revision = maxZxid(rs.revision, revStat);
  }

  /**
   * Read point keys: first their directories' stats, then the keys, in one
   * pipeline (ZooKeeper answers a connection's requests in order, so each
   * directory's pzxid is read before its keys; #verify relies on it).
   */
  async #readKeys(conn: Connection, keys: Iterable<string>, rs: ReadSet): Promise<void> {
    const wanted = [...new Set(keys)].filter((k) => !rs.keys.has(k));
    const dirs = [...new Set(wanted.map((k) => this.#leafPath(k).dir))].filter((d) => !rs.dirs.has(d));
    const dirReads = dirs.map((d) => conn.exists(d));
    const keyReads = wanted.map((k) => this.#readKey(conn, k));
    // Await both together: a failure of one must not leave the other's rejections unhandled.
    const [dirStats, entries] = await Promise.all([Promise.all(dirReads), Promise.all(keyReads)]);
    dirs.forEach((d, i) => rs.dirs.set(d, dirStats[i]));
    wanted.forEach((k, i) => {
      const e = entries[i];
      rs.keys.set(k, e);
      rs.revision = Math.max(rs.revision, e?.kv.modRevision ?? 0);
    });
    rs.revision = maxZxid(rs.revision, ...dirStats);
  }

  /** Keys under a prefix, sorted; records what it read in `rs`. */
  async #list(conn: Connection, prefix: string, rs: ReadSet): Promise<Entry[]> {
    const d = await conn.getChildren(this.#dPath);
    if (d === undefined) {
      throw new CorruptDataError(
        `ZooKeeper namespace ${this.nsPath} lost its d znode; it was modified outside Rebalancer`,
      );
    }
    rs.dStat = d.stat;
    rs.revision = maxZxid(rs.revision, d.stat);
    const dirs: { part: string; path: string }[] = [];
    for (const name of d.children) {
      const part = parseDirName(name);
      if (part === undefined) {
        throw new CorruptDataError(
          `ZooKeeper znode ${this.#dPath}/${name} is not a Rebalancer directory; remove it with zkCli`,
        );
      }
      if (dirCanMatch(part, prefix)) dirs.push({ part, path: `${this.#dPath}/${name}` });
    }
    const listings = await Promise.all(dirs.map((dir) => conn.getChildren(dir.path)));
    const reads: Promise<Entry | undefined>[] = [];
    const names: string[] = [];
    dirs.forEach((dir, i) => {
      const listing = listings[i];
      rs.dirs.set(dir.path, listing?.stat);
      rs.revision = maxZxid(rs.revision, listing?.stat);
      for (const child of listing?.children ?? []) {
        const leaf = parseLeafName(child);
        if (leaf === undefined) {
          throw new CorruptDataError(
            `ZooKeeper znode ${dir.path}/${child} is not a Rebalancer key; remove it with zkCli`,
          );
        }
        const key = dir.part + leaf;
        if (!key.startsWith(prefix)) continue;
        names.push(key);
        reads.push(
          conn
            .getData(`${dir.path}/${child}`)
            .then((r) => (r === undefined ? undefined : this.#toEntry(key, r.data, r.stat))),
        );
      }
    });
    const entries = await Promise.all(reads);
    const out: Entry[] = [];
    names.forEach((key, i) => {
      const e = entries[i];
      if (!rs.keys.has(key)) rs.keys.set(key, e);
      if (e !== undefined) {
        out.push(e);
        rs.revision = Math.max(rs.revision, e.kv.modRevision);
      }
    });
    out.sort((a, b) => (a.kv.key < b.kv.key ? -1 : a.kv.key > b.kv.key ? 1 : 0));
    return out;
  }

  /**
   * True when nothing that could change what `rs` read happened since: no
   * write transaction (`rev` version unchanged: every write sets it) and no
   * child created or deleted in a directory read or in `d` (pzxid unchanged:
   * this catches ephemeral keys deleted by session expiry, the one change
   * that bypasses `rev`). Then the reads all hold at the instant between the
   * two passes, i.e. they form a snapshot.
   */
  async #verify(conn: Connection, rs: ReadSet): Promise<boolean> {
    const dirs = [...rs.dirs.keys()];
    const [rev, d, ...stats] = await Promise.all([
      conn.exists(this.#revPath),
      rs.dStat === undefined ? Promise.resolve(undefined) : conn.exists(this.#dPath),
      ...dirs.map((p) => conn.exists(p)),
    ]);
    const revBefore = rs.revStat;
    if (rev === undefined || revBefore === undefined) return false;
    if (rev.version !== revBefore.version || !rev.mzxid.equals(revBefore.mzxid)) return false;
    if (rs.dStat !== undefined && (d === undefined || !d.pzxid.equals(rs.dStat.pzxid))) return false;
    return dirs.every((p, i) => {
      const before = rs.dirs.get(p);
      const after = stats[i];
      if (before === undefined || after === undefined) return before === after;
      return before.pzxid.equals(after.pzxid) && before.czxid.equals(after.czxid);
    });
  }

  // ---- transactions -------------------------------------------------------------------

  /** One attempt; undefined when it conflicted with a concurrent change and must be retried. */
  async #attemptTxn(conn: Connection, txn: Txn, session: ManagedSession | undefined): Promise<TxnResult | undefined> {
    const pointKeys: string[] = txn.compare.map((c) => c.key);
    for (const op of [...txn.then, ...(txn.else ?? [])]) {
      if (op.op === 'get' || op.op === 'put' || op.op === 'delete') pointKeys.push(op.key);
    }
    // One pipeline: rev's version is read before any key (requests are answered in order).
    const rs = this.#newReadSet();
    const [revStat] = await Promise.all([this.#revStat(conn), this.#readKeys(conn, pointKeys, rs)]);
    this.#setRevStat(rs, revStat);
    const current = (key: string): KeyValue | undefined => rs.keys.get(key)?.kv;
    const { succeeded, branch } = chooseBranch(txn, current);

    // Reads of the branch (they precede its writes, so they see the compared state).
    const results: OpResult[] = [];
    const listings = new Map<string, Entry[]>();
    for (const op of branch) {
      if ((op.op === 'range' || op.op === 'deletePrefix') && !listings.has(op.prefix)) {
        listings.set(op.prefix, await this.#list(conn, op.prefix, rs));
      }
    }
    const writes = branch.some((op) => op.op === 'put' || op.op === 'delete' || op.op === 'deletePrefix');
    if (!writes) {
      for (const op of branch) {
        if (op.op === 'get') results.push({ op: 'get', key: op.key, kv: current(op.key) });
        else if (op.op === 'range')
          results.push({ op: 'range', prefix: op.prefix, kvs: (listings.get(op.prefix) ?? []).map((e) => e.kv) });
      }
      // A single point read is atomic by itself; anything more is verified.
      const single = rs.keys.size <= 1 && listings.size === 0;
      if (!single && !(await this.#verify(conn, rs))) return undefined;
      return { succeeded, revision: rs.revision, results };
    }

    const revVersion = rs.revStat?.version;
    if (revVersion === undefined) throw new Error('rev stat not read');
    const plan = this.#plan(branch, rs, listings, session, conn);
    const ops: MultiOp[] = [];
    // 1. Serialise against every other writer of the namespace.
    let revIndex: number;
    if (revVersion >= this.#revRollover) {
      // Re-create `rev` before its 32-bit version wraps; a writer holding the
      // old version then fails (the new znode's version is 1).
      ops.push({ type: OP.delete, path: this.#revPath, version: revVersion });
      ops.push({
        type: OP.create,
        path: this.#revPath,
        data: Buffer.alloc(0),
        acls: this.#acls,
        mode: zookeeper.CreateMode.PERSISTENT,
      });
      ops.push({ type: OP.setData, path: this.#revPath, data: Buffer.alloc(0), version: 0 });
      revIndex = 2;
    } else {
      ops.push({ type: OP.setData, path: this.#revPath, data: Buffer.alloc(0), version: revVersion });
      revIndex = 0;
    }
    // 2. Keys read that existed must still exist unchanged (expiry bypasses rev).
    for (const [key, e] of rs.keys) {
      if (e !== undefined && !plan.writtenKeys.has(key))
        ops.push({ type: OP.check, path: this.#leafPath(key).leaf, version: e.stat.version });
    }
    ops.push(...plan.ops);
    const bytes = multiRequestBytes(ops, this.#aclBytes);
    if (bytes > MAX_REQUEST_BYTES) {
      throw new LimitExceededError(
        'txn bytes',
        bytes,
        MAX_REQUEST_BYTES,
        `transaction encodes to ${bytes} bytes for ZooKeeper, above its request limit (jute.maxbuffer) of ${MAX_REQUEST_BYTES}; ` +
          'keys made of characters that must be escaped in znode names (% / controls, emoji) take three bytes each: split the transaction',
      );
    }
    let multiResults: MultiResult[];
    try {
      multiResults = await conn.multi(ops);
    } catch (err) {
      if (err instanceof MultiError) {
        if (
          err.code === ZK.BAD_VERSION ||
          err.code === ZK.NO_NODE ||
          err.code === ZK.NODE_EXISTS ||
          err.code === ZK.NOT_EMPTY
        ) {
          return undefined;
        }
        throw new StoreUnavailableError(
          `${this.#where} refused the transaction (ZooKeeper error ` +
            `${zkCodeName(err.code)} at operation ${err.index}); nothing was applied`,
          {
            cause: err,
            outcome: 'not-applied',
          },
        );
      }
      throw err;
    }
    const stat = multiResults[revIndex]?.stat;
    if (stat === undefined)
      throw new StoreUnavailableError('ZooKeeper multi returned no stat for rev', { outcome: 'unknown' });
    const revision = zxidToNumber(stat.mzxid, 'rev');
    for (const op of branch) {
      if (op.op === 'get') results.push({ op: 'get', key: op.key, kv: current(op.key) });
      else if (op.op === 'range')
        results.push({ op: 'range', prefix: op.prefix, kvs: (listings.get(op.prefix) ?? []).map((e) => e.kv) });
    }
    results.push(...plan.results);
    return { succeeded, revision, results };
  }

  /** The multi ops and results of a branch's writes, given what was read. */
  #plan(
    branch: readonly Op[],
    rs: ReadSet,
    listings: Map<string, Entry[]>,
    session: ManagedSession | undefined,
    conn: Connection,
  ): { ops: MultiOp[]; results: OpResult[]; writtenKeys: Set<string> } {
    const ops: MultiOp[] = [];
    const results: OpResult[] = [];
    const writtenKeys = new Set<string>();
    // Key state as the branch proceeds (undefined = deleted / missing).
    const state = new Map<string, Entry | undefined>(rs.keys);
    const ownerHex = session === undefined ? undefined : sessionIdHex(conn.sessionId);
    interface DirPlan {
      exists: boolean;
      children: number;
      creates: MultiOp[];
      leafOps: MultiOp[];
    }
    const dirs = new Map<string, DirPlan>();
    const dirPlan = (key: string): DirPlan => {
      const { dir } = this.#leafPath(key);
      let p = dirs.get(dir);
      if (p === undefined) {
        const stat = rs.dirs.get(dir);
        p = { exists: stat !== undefined, children: stat?.numChildren ?? 0, creates: [], leafOps: [] };
        if (stat === undefined) {
          p.creates.push({
            type: OP.create,
            path: dir,
            data: Buffer.alloc(0),
            acls: this.#acls,
            mode: zookeeper.CreateMode.PERSISTENT,
          });
        }
        dirs.set(dir, p);
      }
      return p;
    };
    const del = (key: string, e: Entry): void => {
      const p = dirPlan(key);
      p.leafOps.push({ type: OP.delete, path: this.#leafPath(key).leaf, version: e.stat.version });
      p.children--;
      state.set(key, undefined);
      writtenKeys.add(key);
    };
    for (const op of branch) {
      switch (op.op) {
        case 'put': {
          const prev = state.get(op.key);
          const leaf = this.#leafPath(op.key).leaf;
          const p = dirPlan(op.key);
          const version = (prev?.kv.version ?? 0) + 1;
          const wantOwner = op.session === undefined ? undefined : ownerHex;
          const mode = wantOwner === undefined ? zookeeper.CreateMode.PERSISTENT : zookeeper.CreateMode.EPHEMERAL;
          if (prev === undefined) {
            p.leafOps.push({
              type: OP.create,
              path: leaf,
              data: encodeEnvelope(version, undefined, op.value),
              acls: this.#acls,
              mode,
            });
            p.children++;
          } else if (prev.kv.sessionId === wantOwner) {
            p.leafOps.push({
              type: OP.setData,
              path: leaf,
              data: encodeEnvelope(
                version,
                prev.kv.createRevision === zxidToNumber(prev.stat.czxid, op.key) ? undefined : prev.kv.createRevision,
                op.value,
              ),
              version: prev.stat.version,
            });
          } else {
            // Ephemeral-ness and owner are fixed at creation: re-create, carrying the key's history.
            p.leafOps.push({ type: OP.delete, path: leaf, version: prev.stat.version });
            p.leafOps.push({
              type: OP.create,
              path: leaf,
              data: encodeEnvelope(version, prev.kv.createRevision, op.value),
              acls: this.#acls,
              mode,
            });
          }
          writtenKeys.add(op.key);
          results.push({ op: 'put', key: op.key });
          break;
        }
        case 'delete': {
          const prev = state.get(op.key);
          if (prev !== undefined) del(op.key, prev);
          results.push({ op: 'delete', key: op.key, deleted: prev === undefined ? 0 : 1 });
          break;
        }
        case 'deletePrefix': {
          let deleted = 0;
          for (const e of listings.get(op.prefix) ?? []) {
            if (state.get(e.kv.key) === undefined) continue;
            del(e.kv.key, e);
            deleted++;
          }
          results.push({ op: 'deletePrefix', prefix: op.prefix, deleted });
          break;
        }
        case 'get':
        case 'range':
          break;
      }
    }
    for (const [dir, p] of dirs) {
      ops.push(...p.creates, ...p.leafOps);
      if (p.children <= 0 && p.exists) {
        // Last key gone: drop the directory so listings stay small.
        ops.push({ type: OP.delete, path: dir, version: -1 });
      } else if (p.children > 0 && p.exists) {
        // Touch the directory: its data watch is how watchers hear of puts.
        ops.push({ type: OP.setData, path: dir, data: Buffer.alloc(0), version: -1 });
      }
    }
    // Directories emptied by session expiry (which bypasses us) are dropped
    // by the next write transaction that reads them, a few at a time.
    let swept = 0;
    for (const [dir, stat] of rs.dirs) {
      if (swept >= MAX_SWEEP_PER_TXN) break;
      if (stat === undefined || stat.numChildren !== 0 || dirs.has(dir)) continue;
      ops.push({ type: OP.delete, path: dir, version: -1 });
      swept++;
    }
    return { ops, results, writtenKeys };
  }

  // ---- helpers ------------------------------------------------------------------------

  #observe(revision: number): void {
    if (revision > this.#highWater) this.#highWater = revision;
  }

  /**
   * Read-your-writes across this store's connections: ZooKeeper orders each
   * connection's requests, but another connection may be served by a
   * follower that has not applied our latest write yet. Every reply carries
   * the server's last applied zxid; until it reaches what this store has
   * seen, ask again (ZooKeeper's own sync() is missing from the driver).
   */
  async #sync(conn: Connection): Promise<void> {
    const deadline = this.clock.now() + this.requestTimeoutMs;
    for (let i = 0; ; i++) {
      const z = conn.lastZxid;
      if (z === undefined || z >= this.#highWater) return;
      if (this.clock.now() >= deadline) {
        throw new StoreUnavailableError(
          `the server of ${this.#where} that this store reads from lags behind writes the store has already ` +
            'seen; retry shortly',
          {
            outcome: 'not-applied',
          },
        );
      }
      if (i > 0) await this.#sleep(Math.min(50, 2 ** i));
      await conn.exists(this.#revPath);
    }
  }

  /** "ZooKeeper at host:port[,host:port…]", for messages. */
  get #where(): string {
    return `ZooKeeper at ${this.#connOpts.connectString}`;
  }

  /** The store's own ZooKeeper session expired (a long partition): it reconnects; callers retry. */
  #sessionLost(cause: unknown): StoreUnavailableError {
    return new StoreUnavailableError(
      `the store's own session with ${this.#where} expired (a long partition?); it is reconnecting, retry shortly`,
      { cause, outcome: 'not-applied' },
    );
  }

  #sleep(ms: number): Promise<void> {
    return sleep(this.clock, ms);
  }
}

/**
 * A prefix watch: child watches on `d` and on every directory that can hold
 * matching keys, data watches on those directories (every write transaction
 * touches the directories it writes). ZooKeeper watches fire once, so every
 * event re-arms them all, then delivers one hint.
 */
class PrefixWatcher {
  readonly #store: ZookeeperStore;
  readonly #prefix: string;
  readonly #onHint: (hint: WatchHint) => void;
  #open = true;
  #arming = false;
  #pending: 'change' | 'resync' | undefined;
  #retryTimer: TimerHandle | undefined;

  constructor(store: ZookeeperStore, prefix: string, onHint: (hint: WatchHint) => void) {
    this.#store = store;
    this.#prefix = prefix;
    this.#onHint = onHint;
  }

  /** Arm the watches for the first time (no hint). */
  async start(): Promise<void> {
    const conn = await this.#store.mainConnection();
    await this.#arm(conn);
  }

  get prefix(): string {
    return this.#prefix;
  }

  resync(): void {
    this.#request('resync');
  }

  changed(): void {
    this.#request('change');
  }

  async close(): Promise<void> {
    if (!this.#open) return;
    this.#open = false;
    if (this.#retryTimer !== undefined) this.#store.clock.clearTimeout(this.#retryTimer);
    this.#store.removeWatcher(this);
  }

  #request(reason: 'change' | 'resync'): void {
    if (!this.#open) return;
    this.#pending = this.#pending === 'resync' || reason === 'resync' ? 'resync' : 'change';
    if (!this.#arming) void this.#run();
  }

  async #run(): Promise<void> {
    this.#arming = true;
    try {
      while (this.#open && this.#pending !== undefined) {
        const reason = this.#pending;
        this.#pending = undefined;
        let revision: number;
        try {
          const conn = await this.#store.mainConnection();
          revision = await this.#arm(conn);
        } catch {
          // An expired store connection is replaced by the store (its
          // 'expired' event), which then asks every watcher to resync. Could not re-arm (connection trouble): try again shortly; whatever
          // happened meanwhile is covered by a resync hint once armed.
          this.#scheduleRetry();
          return;
        }
        if (!this.#open) return;
        try {
          this.#onHint({ revision, reason });
        } catch {
          // A throwing consumer must not break the watch.
        }
      }
    } finally {
      this.#arming = false;
    }
  }

  #scheduleRetry(): void {
    if (!this.#open || this.#retryTimer !== undefined) return;
    this.#retryTimer = this.#store.clock.setTimeout(
      () => {
        this.#retryTimer = undefined;
        this.#request('resync');
      },
      250,
      { background: true },
    );
  }

  /** Set the watches; returns the newest zxid seen on the watched znodes (at least that of the change that fired). */
  async #arm(conn: Connection): Promise<number> {
    const d = await conn.getChildren(this.#store.dPath, this.#store.onZkEvent);
    if (d === undefined)
      throw new StoreUnavailableError('ZooKeeper namespace d znode is missing', { outcome: 'not-applied' });
    let revision = maxZxid(0, d.stat);
    const dirs: string[] = [];
    for (const name of d.children) {
      const part = parseDirName(name);
      if (part !== undefined && dirCanMatch(part, this.#prefix)) dirs.push(`${this.#store.dPath}/${name}`);
    }
    const stats = await Promise.all(
      dirs.flatMap((path) => [
        conn.exists(path, this.#store.onZkEvent),
        conn.getChildren(path, this.#store.onZkEvent).then((r) => r?.stat),
      ]),
    );
    revision = maxZxid(revision, ...stats);
    return revision;
  }
}

/** Connect to ZooKeeper and open (creating if needed) the store's namespace. */
export async function createZookeeperStore(options: ZookeeperStoreOptions): Promise<ZookeeperStore> {
  const store = new ZookeeperStore(options);
  await store.init();
  return store;
}
