/**
 * Options and URL parsing of the PostgreSQL backend.
 */
import type pg from 'pg';
import { InvalidArgumentError } from '../../errors.js';
import { OptionReader } from '../../options.js';
import type { CommonStoreOptions } from '../../store/contract.js';
import { readStoreOptions, type StoreSettings } from '../../store/validate.js';
import { validateSchemaName } from './schema.js';

export interface PostgresStoreOptions extends CommonStoreOptions {
  /**
   * `postgres://user[:password]@host[:port]/database[?sslmode=require…]`,
   * handed to pg (which understands sslmode, sslrootcert, application_name, host=/socket/dir …).
   */
  readonly connectionString?: string | undefined;
  /**
   * Either an existing `pg.Pool` (used as is and NOT ended by `close()`), or a
   * `pg.PoolConfig` (host, port, user, password, database, ssl: TLS options,
   * max, …) for the pool this store creates and owns. Fields here override
   * the defaults; `connectionString` settings override both (pg's rule).
   */
  readonly pool?: pg.Pool | pg.PoolConfig | undefined;
  /** Schema holding Rebalancer's tables. Default `rebalancer`. */
  readonly schema?: string | undefined;
  /**
   * Use LISTEN/NOTIFY for watch hints (default true). LISTEN needs a session
   * of its own: behind a transaction-pooling proxy (pgbouncer
   * pool_mode=transaction) either point `listenConnection` at the server
   * itself or set `listen: false`, and watches fall back to polling the
   * namespace revision every `pollIntervalMs`.
   */
  readonly listen?: boolean | undefined;
  /** Where the LISTEN session connects, when it must bypass a pooling proxy. Default: the pool's settings. */
  readonly listenConnection?: string | pg.ClientConfig | undefined;
  /**
   * Period of the revision poll (lost-notification safety net, or the only
   * watch mechanism with `listen: false`) and upper bound of the reaper's
   * period. Default 1000 ms.
   */
  readonly pollIntervalMs?: number | undefined;
}

export const DEFAULT_POLL_INTERVAL_MS = 1000;

const URL_HELP =
  'use postgres://user[:password]@host[:port]/database[?sslmode=require&schema=rebalancer&listen=false&pollIntervalMs=1000] ' +
  '(or postgresql://…)';

/** Query parameters that are Rebalancer's, not pg's. */
const OWN_PARAMS = new Set(['schema', 'listen', 'pollIntervalMs']);

export interface ParsedPostgresUrl {
  /** The URL without Rebalancer's own parameters, for pg. */
  readonly connectionString: string;
  readonly schema?: string;
  readonly listen?: boolean;
  readonly pollIntervalMs?: number;
}

export function parsePostgresUrl(url: string): ParsedPostgresUrl {
  if (typeof url !== 'string') throw new InvalidArgumentError(`postgres store URL must be a string: ${URL_HELP}`);
  let u: URL;
  try {
    u = new URL(url);
  } catch (cause) {
    throw new InvalidArgumentError(`postgres store URL ${JSON.stringify(url)} is not a valid URL: ${URL_HELP}`, {
      cause,
    });
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
    throw new InvalidArgumentError(
      `postgres store URL must start with postgres:// or postgresql://, got ${JSON.stringify(url)}: ${URL_HELP}`,
    );
  }
  if (!url.slice(u.protocol.length).startsWith('//')) {
    throw new InvalidArgumentError(`postgres store URL ${JSON.stringify(url)} has no //host part: ${URL_HELP}`);
  }
  if (u.hostname === '' && !u.searchParams.has('host')) {
    throw new InvalidArgumentError(`postgres store URL ${JSON.stringify(url)} names no host: ${URL_HELP}`);
  }
  if (u.port !== '' && !(Number(u.port) >= 1 && Number(u.port) <= 65535)) {
    throw new InvalidArgumentError(`postgres store URL ${JSON.stringify(url)} has an invalid port: ${URL_HELP}`);
  }
  const out: { connectionString: string; schema?: string; listen?: boolean; pollIntervalMs?: number } = {
    connectionString: '',
  };
  const schema = u.searchParams.get('schema');
  if (schema !== null) out.schema = schema;
  const listen = u.searchParams.get('listen');
  if (listen !== null) {
    if (listen === 'true' || listen === '1') out.listen = true;
    else if (listen === 'false' || listen === '0') out.listen = false;
    else
      throw new InvalidArgumentError(
        `postgres store URL parameter listen must be true or false, got ${JSON.stringify(listen)}: ${URL_HELP}`,
      );
  }
  const poll = u.searchParams.get('pollIntervalMs');
  if (poll !== null) {
    const n = Number(poll);
    if (poll.trim() === '' || !Number.isFinite(n)) {
      throw new InvalidArgumentError(
        `postgres store URL parameter pollIntervalMs must be a number of milliseconds, got ${JSON.stringify(poll)}`,
      );
    }
    out.pollIntervalMs = n;
  }
  for (const p of OWN_PARAMS) u.searchParams.delete(p);
  out.connectionString = u.toString();
  return out;
}

/** PostgresStoreOptions, checked. */
export interface PostgresSettings extends StoreSettings {
  readonly connectionString: string | undefined;
  readonly pool: pg.Pool | pg.PoolConfig | undefined;
  readonly schema: string;
  readonly listen: boolean;
  readonly listenConnection: string | pg.ClientConfig | undefined;
  readonly pollIntervalMs: number;
}

export function readPostgresOptions(options: PostgresStoreOptions): PostgresSettings {
  const r = new OptionReader(options, 'createPostgresStore options');
  const settings = readStoreOptions(r);
  const connectionString = r.string('connectionString', undefined, 8192);
  const pool = r.raw('pool');
  if (pool !== undefined && (pool === null || typeof pool !== 'object')) {
    throw new InvalidArgumentError(
      'createPostgresStore options.pool must be a pg.Pool or a pg PoolConfig object (host, port, user, password, ssl, …)',
    );
  }
  const schema = validateSchemaName(r.string('schema', 'rebalancer', 64));
  const listen = r.boolean('listen', true);
  const listenConnection = r.raw('listenConnection');
  if (
    listenConnection !== undefined &&
    typeof listenConnection !== 'string' &&
    (listenConnection === null || typeof listenConnection !== 'object')
  ) {
    throw new InvalidArgumentError(
      'createPostgresStore options.listenConnection must be a connection string or a pg ClientConfig object',
    );
  }
  const pollIntervalMs = r.ms('pollIntervalMs', DEFAULT_POLL_INTERVAL_MS, { min: 10, max: 60_000 });
  r.done();
  const poolOrConfig = pool as pg.Pool | pg.PoolConfig | undefined;
  if (isPool(poolOrConfig) && connectionString !== undefined) {
    throw new InvalidArgumentError('pass either a pg.Pool as `pool` or a connectionString, not both');
  }
  if (connectionString === undefined && pool === undefined) {
    throw new InvalidArgumentError(
      'the postgres store needs a connectionString (postgres://user[:password]@host[:port]/database) or a pool / pool config',
    );
  }
  return {
    ...settings,
    connectionString,
    pool: poolOrConfig,
    schema,
    listen,
    listenConnection: listenConnection as string | pg.ClientConfig | undefined,
    pollIntervalMs,
  };
}

/** A pg.Pool instance (duck-typed, so that a second copy of pg works too), as opposed to a PoolConfig. */
export function isPool(p: pg.Pool | pg.PoolConfig | undefined): p is pg.Pool {
  return (
    p !== undefined &&
    typeof (p as { connect?: unknown }).connect === 'function' &&
    typeof (p as { query?: unknown }).query === 'function' &&
    typeof (p as { end?: unknown }).end === 'function'
  );
}

/** "PostgreSQL at host:port" (or at the socket directory) for messages; never the password. */
export function serverName(config: pg.ClientConfig): string {
  let host: string | undefined;
  let port: string | number | undefined;
  if (typeof config.connectionString === 'string') {
    try {
      const u = new URL(config.connectionString);
      host = u.hostname === '' ? (u.searchParams.get('host') ?? undefined) : u.hostname;
      port = u.port === '' ? (u.searchParams.get('port') ?? undefined) : u.port;
    } catch {
      // Not a URL (a libpq key=value string): fall back to the fields and the environment.
    }
  }
  host ??= config.host ?? process.env['PGHOST'] ?? 'localhost';
  port ??= config.port ?? process.env['PGPORT'] ?? 5432;
  return `PostgreSQL at ${host.startsWith('/') ? `${host} (socket)` : `${host}:${port}`}`;
}
