/**
 * The Redis store client. Every operation is one Lua script (see ./scripts),
 * so it is atomic and reads only the server's clock. Layout, guarantees and
 * limits: docs/backends/redis.md.
 */
import { randomBytes } from 'node:crypto';
import { Redis, ReplyError, type RedisOptions } from 'ioredis';
import {
  CorruptDataError,
  IncompatibleSchemaError,
  InvalidArgumentError,
  RebalancerError,
  SessionExpiredError,
  StoreUnavailableError,
} from '../../errors.js';
import { OptionReader } from '../../options.js';
import { StoreBase } from '../../store/base.js';
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
import { networkProblem, notAnswering, OUTCOME_UNKNOWN, requestFailed } from '../../store/network.js';
import { withTimeout } from '../../store/timeout.js';
import type { ServerIdentity } from '../../store/incarnation.js';
import { decodeUtf8, readStoreOptions, type StoreSettings } from '../../store/validate.js';
import { WatcherSet } from '../../store/watchers.js';
import { callScript, defineScripts, scriptSources, type ScriptArg, type ScriptName } from './scripts.js';
import { parseRedisUrl } from './url.js';

/** Layout version this code reads and writes (key `rb:{<ns>}:schema`). */
export const REDIS_SCHEMA_VERSION = 1;

export const DEFAULT_MAINTENANCE_INTERVAL_MS = 250;
/** Without watchers, the maintenance call runs this many times less often. */
const IDLE_FACTOR = 20;

export interface RedisStoreOptions extends CommonStoreOptions {
  /** `redis://[[user][:password]@]host[:port][/db]`, or `rediss://` for TLS. Default: 127.0.0.1:6379. */
  readonly url?: string | undefined;
  /**
   * ioredis connection options, passed through and applied over the URL:
   * host, port, username, password, db, tls (a `tls.connect` options object:
   * ca, cert, key, servername…), family, connectionName, sentinels… The
   * options that decide whether a request can hang or be sent twice are
   * fixed by the store (see docs/backends/redis.md); `keyPrefix` is refused
   * (use `namespace`).
   */
  readonly redis?: RedisOptions | undefined;
  /**
   * How often this client, while it has watchers, reaps expired sessions and
   * compares the namespace revision (default 250 ms; 20 times less often
   * without watchers). It bounds how late after a session's expiry watchers
   * hear of it.
   */
  readonly maintenanceIntervalMs?: number | undefined;
}

/**
 * Reply codes that mean the server refused the command before running it
 * (so nothing was applied), and what each says about the server, in words.
 */
const REFUSED_REPLIES: Readonly<Record<string, string>> = {
  BUSY: 'is busy running a long script; retry shortly',
  LOADING: 'is still loading its data after a restart; retry shortly',
  READONLY: 'is a read-only replica; point the URL at the primary',
  OOM: 'is out of memory (maxmemory reached); free memory or raise maxmemory',
  NOAUTH: 'wants a password; put the credentials in the URL',
  NOPERM: "does not let this user run the store's commands; grant what docs/backends/redis.md lists",
  WRONGPASS: 'refused the user name or password; check the credentials',
  MASTERDOWN: 'is a replica that lost its primary; point the URL at the primary',
  CLUSTERDOWN: 'belongs to a cluster that is down; retry once it is up',
  TRYAGAIN: 'is moving keys between cluster nodes; retry shortly',
  MOVED: 'is a cluster node that does not hold this namespace; point the URL at a single primary',
  ASK: 'is a cluster node that does not hold this namespace; point the URL at a single primary',
  MISCONF: "refuses writes because it cannot save its data to disk; fix the server's disk or persistence settings",
  NOREPLICAS: 'has too few replicas in sync to accept writes (min-replicas-to-write); retry once they catch up',
  NOSCRIPT: "lost the store's scripts (SCRIPT FLUSH or a restart); retry, they are loaded again",
};

/** Options the store decides, because they decide whether requests hang or are sent twice. */
const FIXED_OPTIONS = [
  'lazyConnect',
  'enableOfflineQueue',
  'maxRetriesPerRequest',
  'commandTimeout',
  'autoResendUnfulfilledCommands',
  'autoResubscribe',
  'replyMapping',
] as const;

/** Connection options as the store uses them (reply shapes as in RESP2, which the parsers expect). */
type ConnectionOptions = Omit<RedisOptions, 'replyMapping'> & { replyMapping: 'legacy' };

const noop = (): void => undefined;

function isReplyError(err: unknown): err is Error {
  return err instanceof (ReplyError as new (...args: never[]) => Error);
}

function lossy(x: unknown): string {
  if (Buffer.isBuffer(x)) return x.toString('utf8');
  return String(x);
}

function asArray(x: unknown, what: string): unknown[] {
  if (!Array.isArray(x))
    throw new StoreUnavailableError(`unexpected reply from Redis to ${what}`, { outcome: 'unknown' });
  return x as unknown[];
}

/** A safe non-negative integer from an integer reply or decimal text. */
function toInt(x: unknown, what: string, key?: string): number {
  let n: number | undefined;
  if (typeof x === 'number') n = x;
  else if (Buffer.isBuffer(x) || typeof x === 'string') {
    const s = lossy(x);
    if (/^\d{1,16}$/.test(s)) n = Number(s);
  }
  if (n === undefined || !Number.isSafeInteger(n) || n < 0) {
    throw new CorruptDataError(
      `${what} read from Redis is not a non-negative integer: ${JSON.stringify(lossy(x)).slice(0, 40)}`,
      key === undefined ? {} : { key },
    );
  }
  return n;
}

/** Parse one record of six fields (key, value, version, crev, mrev, sid) starting at `at`. */
function parseKv(fields: readonly unknown[], at: number, knownKey?: string): KeyValue {
  const rawKey = fields[at];
  const key =
    knownKey ?? decodeUtf8(Buffer.isBuffer(rawKey) ? rawKey : Buffer.from(lossy(rawKey)), 'a key name', lossy(rawKey));
  const raw = fields[at + 1];
  if (!Buffer.isBuffer(raw)) throw new CorruptDataError(`key ${key} read from Redis has no value`, { key });
  const value = decodeUtf8(raw, `value of key ${key}`, key);
  const version = toInt(fields[at + 2], `version of key ${key}`, key);
  const createRevision = toInt(fields[at + 3], `create revision of key ${key}`, key);
  const modRevision = toInt(fields[at + 4], `mod revision of key ${key}`, key);
  if (version < 1 || createRevision < 1 || modRevision < createRevision) {
    throw new CorruptDataError(`metadata of key ${key} read from Redis is inconsistent`, { key });
  }
  const sid = fields[at + 5];
  const sessionId = sid === undefined || sid === null || lossy(sid) === '' ? undefined : lossy(sid);
  return { key, value, version, createRevision, modRevision, sessionId };
}

function parseRecords(x: unknown): KeyValue[] {
  const fields = asArray(x, 'range');
  const out: KeyValue[] = [];
  for (let i = 0; i + 5 < fields.length; i += 6) out.push(parseKv(fields, i));
  // Redis orders names by bytes; the contract orders keys as JavaScript strings.
  out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  return out;
}

/** RedisStoreOptions, checked. */
interface RedisSettings extends StoreSettings {
  readonly url: string | undefined;
  readonly redis: RedisOptions | undefined;
  readonly maintenanceIntervalMs: number;
}

function readRedisOptions(options: RedisStoreOptions): RedisSettings {
  const r = new OptionReader(options, 'createRedisStore options');
  const settings = readStoreOptions(r);
  const url = r.string('url', undefined, 4096);
  const redis = r.raw('redis');
  if (redis !== undefined && (redis === null || typeof redis !== 'object' || Array.isArray(redis))) {
    throw new InvalidArgumentError('createRedisStore options.redis must be an object of ioredis connection options');
  }
  const maintenanceIntervalMs = r.ms('maintenanceIntervalMs', DEFAULT_MAINTENANCE_INTERVAL_MS, {
    min: 1,
    max: 3_600_000,
  });
  r.done();
  return { ...settings, url, redis: redis as RedisOptions | undefined, maintenanceIntervalMs };
}

/** The ioredis options of one connection of the store. */
function connectionOptions(options: RedisSettings): ConnectionOptions {
  const timeoutMs = options.requestTimeoutMs;
  const fromUrl = options.url === undefined ? { host: '127.0.0.1', port: 6379 } : parseRedisUrl(options.url);
  const { replyMapping: _ignored, ...user } = options.redis ?? {};
  if (options.redis?.replyMapping !== undefined) {
    throw new InvalidArgumentError('the redis option replyMapping is set by the store; remove it');
  }
  if (user.keyPrefix !== undefined && user.keyPrefix !== '') {
    throw new InvalidArgumentError(
      'the redis option keyPrefix is not supported: use the store option `namespace` instead',
    );
  }
  for (const name of FIXED_OPTIONS) {
    if (options.redis?.[name] !== undefined) {
      throw new InvalidArgumentError(
        `the redis option ${name} is set by the store (requests must fail fast and never be resent); remove it`,
      );
    }
  }
  return {
    ...fromUrl,
    ...user,
    lazyConnect: true,
    replyMapping: 'legacy',
    // Fail fast while disconnected instead of queueing: the caller decides what to retry.
    enableOfflineQueue: false,
    // A request whose connection drops is failed (outcome unknown), never resent behind the caller's back.
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    autoResubscribe: false,
    commandTimeout: timeoutMs,
    connectTimeout: user.connectTimeout ?? timeoutMs,
    retryStrategy: user.retryStrategy ?? ((times: number) => Math.min(50 * 2 ** Math.min(times, 10), 1000)),
  };
}

export class RedisStore extends StoreBase {
  readonly backend = 'redis';
  /** Keep-alives return the server's TIME: this host's clock rate is checked against it. */
  override readonly clockRateCheck = 'server' as const;

  readonly #redis: Redis;
  readonly #connection: ConnectionOptions;
  readonly #intervalMs: number;
  readonly #base: string;
  readonly #keys: readonly string[];
  readonly #channel: string;
  readonly #watchers = new WatcherSet();
  #sub: Redis | undefined;
  #subscribed = false;
  #everSubscribed = false;
  #subWaiters: (() => void)[] = [];
  #lastRevision = 0;
  readonly #noncePrefix = randomBytes(4).toString('hex');
  #calls = 0;
  #lagRevision: number | undefined;
  #ticks = 0;
  #timer: TimerHandle | undefined;
  /** The server's run id as first seen (a new one: it restarted or failed over; see serverChanged). */
  #runId: string | undefined;
  #timerFast = false;
  #tickRunning = false;
  #notReadySince: Map<Redis, number> = new Map();
  /** `host:port` of the server, for messages. */
  readonly #where: string;
  /** The database the URL or options select. */
  readonly #db: number;
  /** The check that the current connection really uses #db (pending or passed); reset by every reconnect. */
  #dbChecked: Promise<void> | undefined;
  /** What the last connection error said, in words, until the connection is ready again. */
  #lastProblem: string | undefined;

  /** Use createRedisStore(): the connection must be opened and the layout checked first. */
  private constructor(redis: Redis, connection: ConnectionOptions, settings: RedisSettings) {
    super(settings);
    this.#intervalMs = settings.maintenanceIntervalMs;
    this.#redis = redis;
    this.#connection = connection;
    this.#where = serverAddress(connection);
    this.#db = connection.db ?? 0;
    // Why the connection is down, for the messages of the requests that fail meanwhile.
    redis.on('error', (err: unknown) => {
      this.#lastProblem = networkProblem(err) ?? this.#lastProblem;
    });
    // Every new connection selects the database again in its handshake, and
    // ioredis reports a refused SELECT only as an 'error' event while the
    // connection goes on, in database 0. So each one is checked before use.
    redis.on('ready', () => {
      this.#dbChecked = undefined;
      this.#lastProblem = undefined;
    });
    this.#base = `rb:{${this.namespace}}:`;
    this.#keys = ['schema', 'rev', 'idx', 'sess', 'sseq'].map((k) => this.#base + k);
    this.#channel = `${this.#base}events`;
  }

  /**
   * Replace a revision counter (`layout.revision`) that is not a positive integer — junk text or another Redis type,
   * which every call but the keep-alive refuses with CorruptDataError — by a value above every revision the
   * namespace holds and not below the server time in microseconds (so no fencing token repeats). A readable
   * counter is left as it is. For operators: `rebalancer store repair-revision`.
   */
  async repairRevision(): Promise<{
    readonly repaired: boolean;
    readonly revision: number;
    readonly previous?: string;
  }> {
    const r = await this.#script('repair_rev', [], 'repair the revision counter');
    const repaired = lossy(r[1]) === 'repaired';
    const revision = lossy(r[2]) === '' ? 0 : toInt(r[2], 'namespace revision');
    return repaired ? { repaired, revision, previous: lossy(r[3]) } : { repaired, revision };
  }

  /** Key names of this namespace's layout (for tools and tests). */
  get layout(): {
    readonly base: string;
    readonly schema: string;
    readonly revision: string;
    readonly index: string;
    readonly sessions: string;
    readonly channel: string;
  } {
    return {
      base: this.#base,
      schema: this.#keys[0]!,
      revision: this.#keys[1]!,
      index: this.#keys[2]!,
      sessions: this.#keys[3]!,
      channel: this.#channel,
    };
  }

  /** Open a Redis store: connect, load the scripts, check the namespace's layout version. */
  static async create(options: RedisStoreOptions = {}): Promise<RedisStore> {
    const settings = readRedisOptions(options);
    const connection = connectionOptions(settings);
    const texts = await scriptSources();
    const redis = new Redis(connection);
    let lastError: unknown;
    redis.on('error', (err: unknown) => {
      lastError = err;
    });
    const where = `Redis at ${serverAddress(connection)}`;
    try {
      await withTimeout(redis.connect(), settings.requestTimeoutMs, settings.clock);
    } catch (err) {
      redis.disconnect();
      const cause = lastError ?? err;
      const message = cause instanceof Error ? cause.message : String(cause);
      if (/WRONGPASS|NOAUTH|invalid password|invalid username/i.test(message)) {
        throw new InvalidArgumentError(
          `${where} refused the user name or password; check the credentials in the URL or the redis options`,
          { cause },
        );
      }
      const problem =
        networkProblem(cause) ??
        (err instanceof StoreUnavailableError ? `no answer within ${settings.requestTimeoutMs} ms` : 'no connection');
      throw new StoreUnavailableError(notAnswering(where, problem), { cause, outcome: 'not-applied' });
    }
    defineScripts(redis, texts);
    const store = new RedisStore(redis, connection, settings);
    try {
      await store.#useDatabase(true);
      // The server this client starts with: a later run id means it restarted or was replaced (serverChanged).
      store.#runId = (await store.#serverInfo())?.runId;
      await store.#start();
    } catch (err) {
      redis.disconnect();
      throw err;
    }
    return store;
  }

  /** Check the layout and start the maintenance loop. */
  async #start(): Promise<void> {
    try {
      const r = await this.#script('reap', [], 'open the store');
      this.#lastRevision = toInt(r[1], 'namespace revision');
    } catch (err) {
      // A junk revision counter does not keep the store from opening: every call reports it (naming the key and
      // the repair), and the keep-alive and repairRevision() work — an operator's tool must be able to open it.
      if (!(err instanceof CorruptDataError && err.key === this.#keys[1])) throw err;
    }
    this.#schedule();
  }

  // ---- sessions ---------------------------------------------------------------

  protected async grantSession(ttlMs: number): Promise<GrantedSession<undefined>> {
    const r = await this.#script('open_session', [String(Math.ceil(ttlMs))], 'openSession');
    const id = lossy(r[1]);
    const granted = toInt(r[2], 'granted TTL');
    return {
      id,
      ttlMs: granted,
      data: undefined,
      driver: {
        keepAlive: async () => {
          const k = await this.#script('keep_alive', [id, String(granted)], 'keep-alive');
          if (toInt(k[1], 'keep-alive reply') !== 1) return 'gone';
          // The server's TIME as the script ran: the store checks this host's clock rate with it.
          return { alive: true as const, serverTimeMs: toInt(k[2], 'keep-alive server time') };
        },
        revoke: async () => {
          await this.#script('revoke', [id], 'revoke');
        },
      },
    };
  }

  /** TIME: the server's clock, for the clock-rate check while sessions are refused. */
  protected override async readServerTimeMs(): Promise<number> {
    let t: unknown[];
    try {
      t = await withTimeout(this.#redis.time() as Promise<unknown[]>, this.requestTimeoutMs, this.clock);
    } catch (err) {
      throw this.#mapError(err, 'TIME');
    }
    return Number(t[0]) * 1000 + Math.floor(Number(t[1]) / 1000);
  }

  // ---- data loss (src/store/incarnation.ts) ------------------------------------------

  /** INFO: the server's run id (new after every restart or failover), its uptime, and whether it keeps an AOF. */
  async #serverInfo(): Promise<{ runId: string; uptimeS: number; aof: boolean; lossless: boolean } | undefined> {
    try {
      const info = await withTimeout(this.#redis.info(), this.requestTimeoutMs, this.clock);
      const runId = /^run_id:(\w+)/m.exec(info)?.[1];
      const uptime = /^uptime_in_seconds:(\d+)/m.exec(info)?.[1];
      const aof = /^aof_enabled:1/m.test(info);
      if (runId === undefined || uptime === undefined) return undefined;
      // `appendfsync always`: every acknowledged write was on disk, so a restart loses none. CONFIG may be refused
      // (managed Redis): then assume it may lose the last second.
      let lossless = false;
      if (aof) {
        const policy = await withTimeout(
          this.#redis.config('GET', 'appendfsync') as Promise<unknown>,
          this.requestTimeoutMs,
          this.clock,
        ).catch(() => undefined);
        lossless = Array.isArray(policy) && policy[1] === 'always';
      }
      return { runId, uptimeS: Number(uptime), aof, lossless };
    } catch {
      return undefined; // refused (an ACL without INFO) or unreachable: the callers assume the worst
    }
  }

  /**
   * Who serves this client now (ADR 0009): a server that started less than the longest TTL ago may have dropped
   * live locks in that restart — all of them if it keeps no AOF (RDB snapshots are minutes apart), the last second's
   * with `appendfsync everysec` — so namespaces it serves stay young for what is left of that TTL. Unknown (INFO
   * refused): assume the worst.
   */
  protected override async serverIdentity(fullWaitMs: number): Promise<ServerIdentity | undefined> {
    const info = await this.#serverInfo();
    if (info === undefined) return { id: 'unknown', youngForMs: fullWaitMs, persists: false };
    this.#runId ??= info.runId;
    // Whole seconds: the one the server may be into does not count. A server that loses nothing acknowledged in a
    // restart (AOF with `appendfsync always`) dropped no lock in it.
    const youngForMs = info.lossless ? 0 : Math.max(0, fullWaitMs - Math.max(0, info.uptimeS - 1) * 1000);
    return { id: info.runId, youngForMs, persists: info.aof };
  }

  /**
   * A new run id: the server restarted or another one took over. Writes since its last persistence (or not yet
   * replicated) may be gone, a lock among them, even when the namespace survived: treat it as data loss.
   */
  protected override async serverChanged(): Promise<string | undefined> {
    const info = await this.#serverInfo();
    if (info === undefined) return undefined;
    const before = this.#runId;
    this.#runId = info.runId;
    // With `appendfsync always` a restart lost nothing acknowledged; a failover to a replica still may have (writes
    // are acknowledged by the primary alone), but a replica promoted here has a run id of its own as well, and the
    // record check catches a replica that lacks the namespace. Accepted: documented in docs/backends/redis.md.
    if (before === undefined || before === info.runId || info.lossless) return undefined;
    return 'the Redis server restarted or was replaced (its run id changed): writes since its last persistence may be gone';
  }

  // ---- reads ------------------------------------------------------------------

  protected async readKey(key: string): Promise<KeyValue | undefined> {
    const r = await this.#script('get', [key], 'get');
    if (toInt(r[2], 'get reply') === 0) return undefined;
    return parseKv(asArray(r[3], 'get'), 0, key);
  }

  protected async readRange(prefix: string): Promise<RangeResult> {
    const r = await this.#script('range', [prefix], 'range');
    return { kvs: parseRecords(r[2]), revision: toInt(r[1], 'namespace revision'), snapshot: true };
  }

  // ---- transactions -------------------------------------------------------------

  protected async applyTxn(txn: Txn, session: ManagedSession | undefined): Promise<TxnResult> {
    const thenOps = txn.then;
    const elseOps = txn.else ?? [];
    const args: ScriptArg[] = [session?.id ?? '', String(txn.compare.length)];
    for (const c of txn.compare) {
      switch (c.target) {
        case 'exists':
          args.push(c.key, 'exists', '', c.exists ? '1' : '0');
          break;
        case 'value':
          args.push(c.key, 'value', c.op, c.value);
          break;
        default:
          args.push(c.key, c.target, c.op, String(c.value));
      }
    }
    for (const branch of [thenOps, elseOps]) {
      args.push(String(branch.length));
      for (const op of branch) args.push(...encodeOp(op));
    }
    const r = await this.#script('txn', args, 'txn');
    const succeeded = toInt(r[1], 'txn reply') === 1;
    const revision = toInt(r[2], 'namespace revision');
    const ops = succeeded ? thenOps : elseOps;
    const items = asArray(r[3], 'txn');
    const results: OpResult[] = ops.map((op, i): OpResult => {
      const item = asArray(items[i], 'txn');
      switch (op.op) {
        case 'put':
          return { op: 'put', key: op.key };
        case 'delete':
          return { op: 'delete', key: op.key, deleted: toInt(item[2], 'delete count') };
        case 'deletePrefix':
          return { op: 'deletePrefix', prefix: op.prefix, deleted: toInt(item[2], 'delete count') };
        case 'get':
          return {
            op: 'get',
            key: op.key,
            kv: toInt(item[2], 'get reply') === 0 ? undefined : parseKv(asArray(item[3], 'txn get'), 0, op.key),
          };
        case 'range':
          return { op: 'range', prefix: op.prefix, kvs: parseRecords(item[2]) };
      }
    });
    return { succeeded, revision, results };
  }

  // ---- watches ------------------------------------------------------------------

  protected async startWatch(prefix: string, onHint: (hint: WatchHint) => void): Promise<Watcher> {
    await this.#whenSubscribed();
    const watcher = this.#watchers.add(prefix, onHint);
    if (!this.#timerFast) this.#schedule();
    return watcher;
  }

  // ---- lifecycle ------------------------------------------------------------------

  protected async closeStore(): Promise<void> {
    if (this.#timer !== undefined) this.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#watchers.closeAll();
    // Revoke while the connection is still up (bounded by the request timeout each).
    await this.sessions.closeAll();
    for (const w of this.#subWaiters) w();
    this.#subWaiters = [];
    this.#redis.disconnect();
    this.#sub?.disconnect();
  }

  // ---- internals ------------------------------------------------------------------

  /** Run one script and turn its status reply into a result or a typed error. */
  async #script(name: ScriptName, args: readonly ScriptArg[], what: string): Promise<unknown[]> {
    const nonce = `${this.#noncePrefix}${(++this.#calls).toString(36)}`;
    await this.#useDatabase();
    let reply: unknown;
    try {
      reply = await withTimeout(
        callScript(this.#redis, name, [...this.#keys, this.#base, nonce, ...args]),
        this.requestTimeoutMs,
        this.clock,
        { onTimeout: () => this.#timedOut(what) },
      );
    } catch (err) {
      throw this.#mapError(err, what);
    }
    const echoed = asArray(reply, what);
    if (echoed[0] === undefined || lossy(echoed[0]) !== nonce) {
      // The reply belongs to another request: the connection lost or reordered bytes. Nothing it says can be trusted.
      this.#dropConnection(this.#redis, true);
      throw new StoreUnavailableError(`Redis connection out of step: the reply to ${what} was for another request`, {
        outcome: 'unknown',
      });
    }
    const r = echoed.slice(1);
    const status = lossy(r[0]);
    if (status === 'OK') return r;
    switch (status) {
      case 'SCHEMA':
        throw new IncompatibleSchemaError(
          Number(lossy(r[1])),
          REDIS_SCHEMA_VERSION,
          `Redis namespace ${this.namespace} (key ${this.#keys[0]!})`,
        );
      case 'CORRUPT': {
        const name = lossy(r[1]);
        const detail = lossy(r[2]);
        if (name === this.#keys[1]) {
          throw new CorruptDataError(
            `Redis key ${name}, the revision counter of namespace ${this.namespace}, ${detail}; it was not written by ` +
              'Rebalancer. Nothing was changed: every read and write of the namespace is refused until it is repaired, ' +
              'while sessions are kept alive (members keep what they hold). Repair it with `rebalancer store ' +
              `repair-revision --store <url> --namespace ${this.namespace}\` (or RedisStore.repairRevision()), which ` +
              'sets it above every revision the namespace holds.',
            { key: name, expected: 'a positive decimal integer' },
          );
        }
        const internal = name.startsWith(this.#base);
        throw new CorruptDataError(
          `${internal ? `Redis key ${name}` : `key ${name} of namespace ${this.namespace}`} ${detail}; it was not written by ` +
            "Rebalancer. Nothing was changed. Inspect or delete it with redis-cli (the key's record is " +
            `${internal ? name : `${this.#base}k:${name}`}).`,
          {
            key: name,
            expected: internal ? 'what Rebalancer keeps there' : 'a hash with fields value, version, crev, mrev',
          },
        );
      }
      case 'EXPIRED':
        throw new SessionExpiredError(lossy(r[1]));
      case 'BADARG':
        throw new InvalidArgumentError(`the redis ${name} script refused its arguments: ${lossy(r[1])}`);
      default:
        throw new StoreUnavailableError(`unexpected status ${JSON.stringify(status)} from the redis ${name} script`, {
          outcome: 'unknown',
        });
    }
  }

  /**
   * Make sure the current connection is in the selected database before a
   * request is sent on it: a connection left in database 0 would read and
   * write another tenant's keys. Once per connection; database 0 needs no check.
   */
  #useDatabase(atOpen = false): Promise<void> {
    if (this.#db === 0) return Promise.resolve();
    this.#dbChecked ??= this.#checkDatabase(atOpen).catch((err: unknown) => {
      this.#dbChecked = undefined;
      throw err;
    });
    return this.#dbChecked;
  }

  /**
   * At open a database the server does not have is a wrong URL
   * (InvalidArgumentError); later, after a reconnect, the server changed
   * under us (StoreUnavailableError, nothing sent).
   */
  async #checkDatabase(atOpen: boolean): Promise<void> {
    const refused = (message: string, cause?: unknown): Error =>
      atOpen
        ? new InvalidArgumentError(message, { cause })
        : new StoreUnavailableError(message, { cause, outcome: 'not-applied' });
    const db = this.#db;
    const conn = this.#redis;
    try {
      await withTimeout(conn.select(db), this.requestTimeoutMs, this.clock);
    } catch (err) {
      if (!isReplyError(err)) throw this.#mapError(err, `select database ${db}`);
      const message = await this.#databaseRefusal(conn, err);
      // Never leave a connection in another database: the next one tries again.
      this.#dropConnection(conn, true);
      throw refused(message, err);
    }
    // What the connection itself reports, where the server can say (CLIENT INFO: Redis 6.2+).
    const info = await withTimeout(conn.call('CLIENT', 'INFO'), this.requestTimeoutMs, this.clock).catch(
      () => undefined,
    );
    const reported = /(?:^|\s)db=(\d+)(?:\s|$)/.exec(info === undefined ? '' : lossy(info))?.[1];
    if (reported !== undefined && Number(reported) !== db) {
      this.#dropConnection(conn, true);
      throw refused(
        `Redis at ${this.#where} accepted SELECT ${db} but the connection reports database ${reported} ` +
          '(a proxy in between that ignores SELECT?); connect to the server directly, or use database 0',
      );
    }
  }

  /** Why the server refused SELECT, in plain words, with its number of databases when it tells. */
  async #databaseRefusal(conn: Redis, err: Error): Promise<string> {
    const db = this.#db;
    const code = err.message.split(' ', 1)[0] ?? '';
    if (code === 'NOPERM') {
      return `Redis at ${this.#where} does not let this user select database ${db}; grant the user +select in its ACL, or use database 0`;
    }
    if (/cluster mode/i.test(err.message)) {
      return `Redis at ${this.#where} is a cluster node, which has only database 0; remove /${db} from the URL`;
    }
    const reply = await withTimeout(conn.call('CONFIG', 'GET', 'databases'), this.requestTimeoutMs, this.clock).catch(
      () => undefined,
    );
    const count = Array.isArray(reply) && reply.length >= 2 ? Number(lossy(reply[1])) : Number.NaN;
    if (Number.isSafeInteger(count) && count > 0) {
      return (
        `Redis at ${this.#where} has ${count} databases (0 to ${count - 1}), so database ${db} does not exist; ` +
        `use a database number below ${count}, or raise "databases" in the server's configuration`
      );
    }
    return (
      `Redis at ${this.#where} refused to select database ${db}: it has fewer databases than that ` +
      `("databases" in its configuration); use a database the server has, e.g. 0`
    );
  }

  /** Driver and server errors in our words; the driver's error is the cause. */
  #mapError(err: unknown, what: string): RebalancerError {
    if (err instanceof RebalancerError) {
      if (err instanceof StoreUnavailableError && err.outcome === 'unknown') this.#dropConnection(this.#redis);
      return err;
    }
    const cause = err;
    const where = `Redis at ${this.#where}`;
    const message = err instanceof Error ? err.message : String(err);
    if (isReplyError(err)) {
      const code = message.split(' ', 1)[0] ?? '';
      const words = REFUSED_REPLIES[code];
      if (words !== undefined) {
        return new StoreUnavailableError(`${where} ${words}; ${what} was not applied`, {
          cause,
          outcome: 'not-applied',
        });
      }
      return new StoreUnavailableError(`${where} refused ${what}, answering "${message}"; ${OUTCOME_UNKNOWN}`, {
        cause,
        outcome: 'unknown',
      });
    }
    if (/isn't writeable|Connection is closed|Stream connection ended|Connection isn't ready/i.test(message)) {
      // Requests are never queued while disconnected: this one was not sent.
      return new StoreUnavailableError(
        `${notAnswering(where, this.#lastProblem ?? 'not connected, reconnecting')}; ${what} was not sent`,
        { cause, outcome: 'not-applied' },
      );
    }
    if (/timed out/i.test(message)) {
      this.#dropConnection(this.#redis);
      return this.#timedOut(what, cause);
    }
    if ((err as { name?: unknown } | null)?.name === 'MaxRetriesPerRequestError' || /max retries/i.test(message)) {
      // With maxRetriesPerRequest 0, ioredis fails the requests in flight when their connection drops.
      return new StoreUnavailableError(
        `the connection to ${where} dropped while ${what} was in flight (${this.#lastProblem ?? 'connection lost'}); ` +
          OUTCOME_UNKNOWN,
        { cause, outcome: 'unknown' },
      );
    }
    return requestFailed(where, what, networkProblem(err), cause, 'unknown');
  }

  /** A request went unanswered for requestTimeoutMs (the caller drops its connection): its outcome is unknown. */
  #timedOut(what: string, cause?: unknown): StoreUnavailableError {
    return new StoreUnavailableError(
      `Redis at ${this.#where} did not answer ${what} within ${this.requestTimeoutMs} ms; ${OUTCOME_UNKNOWN}`,
      { cause, outcome: 'unknown' },
    );
  }

  /**
   * After a timeout the connection may still deliver the late reply, or have
   * lost bytes (a partition); a fresh connection is the only safe state.
   */
  #dropConnection(conn: Redis, always = false): void {
    if (this.closed) return;
    if (always || conn.status === 'ready' || conn.status === 'connect') conn.disconnect(true);
  }

  // ---- maintenance: reaping, revision poll, connection watchdog ------------------

  /**
   * Tick every interval while this client has watchers (they are owed prompt
   * hints); otherwise only every IDLE_FACTOR intervals, as housekeeping: reads
   * never show keys of expired sessions anyway, and every call reaps first.
   */
  #schedule(): void {
    if (this.closed || this.#tickRunning) return;
    if (this.#timer !== undefined) this.clock.clearTimeout(this.#timer);
    const fast = this.#watchers.size > 0;
    this.#timerFast = fast;
    this.#timer = this.clock.setTimeout(
      () => {
        this.#timer = undefined;
        this.#tickRunning = true;
        void this.#tick().finally(() => {
          this.#tickRunning = false;
          this.#schedule();
        });
      },
      fast ? this.#intervalMs : this.#intervalMs * IDLE_FACTOR,
      { background: true },
    );
  }

  async #tick(): Promise<void> {
    this.#ticks++;
    this.#watchdog(this.#redis);
    if (this.#sub !== undefined) {
      this.#watchdog(this.#sub);
      // A silently dead subscriber would lose every notification: probe it about once a second.
      if (this.#subscribed && this.#ticks % Math.max(1, Math.round(1000 / this.#intervalMs)) === 0) {
        const sub = this.#sub;
        withTimeout(sub.ping(), this.requestTimeoutMs, this.clock).catch(() => this.#dropConnection(sub));
      }
    }
    let revision: number;
    try {
      const r = await this.#script('reap', [], 'maintenance');
      revision = toInt(r[1], 'namespace revision');
    } catch {
      return; // The next tick retries; the session loops report the outage.
    }
    this.#pollRevision(revision);
  }

  /**
   * Pub/sub is at most once: a revision the poll saw that no notification
   * reached within one more tick means one was lost; hint every watcher.
   */
  #pollRevision(revision: number): void {
    if (this.#watchers.size === 0 || !this.#subscribed) {
      this.#lagRevision = undefined;
      this.#lastRevision = Math.max(this.#lastRevision, revision);
      return;
    }
    if (this.#lagRevision !== undefined && this.#lastRevision < this.#lagRevision) {
      this.#lastRevision = Math.max(this.#lastRevision, revision);
      this.#lagRevision = undefined;
      this.#watchers.notifyAll({ revision, reason: 'change' });
      return;
    }
    this.#lagRevision = revision > this.#lastRevision ? revision : undefined;
  }

  /** Reconnect a connection stuck in its handshake (e.g. a server that accepts TCP but does not answer). */
  #watchdog(conn: Redis): void {
    if (conn.status === 'ready' || conn.status === 'end' || conn.status === 'reconnecting' || conn.status === 'wait') {
      this.#notReadySince.delete(conn);
      return;
    }
    const since = this.#notReadySince.get(conn);
    const now = this.clock.now();
    if (since === undefined) this.#notReadySince.set(conn, now);
    else if (now - since > this.requestTimeoutMs) {
      this.#notReadySince.delete(conn);
      conn.disconnect(true);
    }
  }

  // ---- pub/sub ----------------------------------------------------------------------

  #whenSubscribed(): Promise<void> {
    if (this.#sub === undefined) this.#startSubscriber();
    if (this.#subscribed) return Promise.resolve();
    return withTimeout(
      new Promise<void>((resolve) => this.#subWaiters.push(resolve)),
      this.requestTimeoutMs,
      this.clock,
    ).catch((cause: unknown) => {
      throw new StoreUnavailableError(
        `could not subscribe to change notifications of Redis at ${this.#where} within ${this.requestTimeoutMs} ms; ` +
          'check that the server runs and allows SUBSCRIBE',
        {
          cause,
          outcome: 'not-applied',
        },
      );
    });
  }

  #startSubscriber(): void {
    const sub = new Redis(this.#connection);
    this.#sub = sub;
    sub.on('error', noop);
    sub.on('messageBuffer', (_channel: Buffer, message: Buffer) => this.#onMessage(message));
    sub.on('close', () => {
      this.#subscribed = false;
    });
    sub.on('ready', () => void this.#subscribe(sub));
    sub.connect().catch(noop);
  }

  async #subscribe(sub: Redis): Promise<void> {
    try {
      await sub.subscribe(this.#channel);
    } catch {
      this.#dropConnection(sub);
      return;
    }
    // The baseline for the revision poll: changes up to here are not owed a
    // notification (watchers registered from now on read after this point).
    try {
      await this.#useDatabase();
      const current = await withTimeout(this.#redis.get(this.#keys[1]!), this.requestTimeoutMs, this.clock);
      if (current !== null && /^\d{1,16}$/.test(current))
        this.#lastRevision = Math.max(this.#lastRevision, Number(current));
    } catch {
      // Without a baseline the poll may send one spurious hint; harmless.
    }
    if (this.closed || sub.status !== 'ready') return;
    this.#subscribed = true;
    const waiters = this.#subWaiters;
    this.#subWaiters = [];
    for (const w of waiters) w();
    // Changes made while unsubscribed were not heard: every watcher re-reads.
    if (this.#everSubscribed) this.#watchers.notifyAll({ revision: this.#lastRevision, reason: 'resync' });
    this.#everSubscribed = true;
  }

  #onMessage(message: Buffer): void {
    const text = message.toString('utf8');
    const parts = text.split('\0');
    const revision = Number(parts[0]);
    if (!Number.isSafeInteger(revision)) return;
    if (revision > this.#lastRevision) this.#lastRevision = revision;
    const keys = parts.slice(1);
    for (const w of this.#watchers) {
      if (keys.length === 0 || keys.some((k) => k.startsWith(w.prefix))) w.notify({ revision, reason: 'change' });
    }
  }
}

/** `host:port` of the server a connection dials, for messages. */
function serverAddress(connection: ConnectionOptions): string {
  const host = connection.host ?? '127.0.0.1';
  return `${host.includes(':') ? `[${host}]` : host}:${connection.port ?? 6379}`;
}

function encodeOp(op: Op): string[] {
  switch (op.op) {
    case 'put':
      return ['put', op.key, op.value, op.session === undefined ? '0' : '1'];
    case 'delete':
      return ['delete', op.key, '', '0'];
    case 'deletePrefix':
      return ['deletePrefix', op.prefix, '', '0'];
    case 'get':
      return ['get', op.key, '', '0'];
    case 'range':
      return ['range', op.prefix, '', '0'];
  }
}

/** Open a Redis store: connect, load the scripts, check the namespace's layout version. */
export function createRedisStore(options: RedisStoreOptions = {}): Promise<RedisStore> {
  return RedisStore.create(options);
}
