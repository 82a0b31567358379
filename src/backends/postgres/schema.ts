/**
 * The PostgreSQL layout (schema version 1) and its creation.
 *
 * All tables live in one schema (default `rebalancer`) and are shared by every
 * namespace; each row carries its namespace.
 *
 *   meta(singleton, schema_version)             one row: the layout version
 *   namespaces(name, revision)                  the revision counter of each namespace;
 *                                               its row lock serialises the namespace's writers
 *   sessions(ns, id, ttl_ms, expires_at)        expires_at is on the server's clock
 *   kv(ns, key, value, version, create_rev, mod_rev, session_id)
 *
 * Keys and values are bytea holding UTF-8: byte order is UTF-8 order whatever
 * the database's encoding and collation, prefix scans are exact byte ranges,
 * and bytes that are not UTF-8 (written by something else) are detected on
 * read and reported as CorruptDataError instead of being silently replaced.
 */
import type pg from 'pg';
import { CorruptDataError, IncompatibleSchemaError, InvalidArgumentError } from '../../errors.js';
import { sleep } from '../../store/clock.js';
import type { Clock } from '../../store/contract.js';
import { isConflict } from './errors.js';

export const SCHEMA_VERSION = 1;

const SCHEMA_NAME_RE = /^[a-z_][a-z0-9_]{0,39}$/;

export function validateSchemaName(schema: string | undefined): string {
  const s = schema ?? 'rebalancer';
  if (typeof s !== 'string' || !SCHEMA_NAME_RE.test(s)) {
    throw new InvalidArgumentError(
      `postgres schema ${JSON.stringify(s)} is invalid: use 1-40 characters of a-z 0-9 _, not starting with a digit (default "rebalancer")`,
    );
  }
  return s;
}

/** Fully qualified, quoted table names of one schema. */
export interface Tables {
  readonly schema: string;
  readonly meta: string;
  readonly namespaces: string;
  readonly sessions: string;
  readonly kv: string;
  /** The LISTEN/NOTIFY channel shared by the schema's namespaces. */
  readonly channel: string;
}

export function tablesOf(schema: string): Tables {
  const q = `"${schema}"`;
  return {
    schema: q,
    meta: `${q}.meta`,
    namespaces: `${q}.namespaces`,
    sessions: `${q}.sessions`,
    kv: `${q}.kv`,
    channel: `rebalancer:${schema}`,
  };
}

function ddl(t: Tables): string[] {
  return [
    `CREATE TABLE IF NOT EXISTS ${t.namespaces} (
       name text PRIMARY KEY,
       revision bigint NOT NULL CHECK (revision >= 0)
     )`,
    `CREATE TABLE IF NOT EXISTS ${t.sessions} (
       ns text NOT NULL,
       id uuid NOT NULL,
       ttl_ms integer NOT NULL CHECK (ttl_ms > 0),
       expires_at timestamptz NOT NULL,
       PRIMARY KEY (ns, id)
     )`,
    `CREATE INDEX IF NOT EXISTS sessions_expiry ON ${t.sessions} (ns, expires_at)`,
    `CREATE TABLE IF NOT EXISTS ${t.kv} (
       ns text NOT NULL,
       key bytea NOT NULL,
       value bytea NOT NULL,
       version bigint NOT NULL,
       create_rev bigint NOT NULL,
       mod_rev bigint NOT NULL,
       session_id uuid,
       PRIMARY KEY (ns, key),
       FOREIGN KEY (ns, session_id) REFERENCES ${t.sessions} (ns, id)
     )`,
    `CREATE INDEX IF NOT EXISTS kv_session ON ${t.kv} (ns, session_id) WHERE session_id IS NOT NULL`,
  ];
}

/** SET LOCAL bounds for one transaction, so no statement, lock wait or idle holder of the namespace lock outlives a request. */
export function beginSql(timeoutMs: number): string {
  const ms = Math.max(1, Math.floor(timeoutMs));
  return (
    `BEGIN; SET LOCAL statement_timeout = ${ms}; SET LOCAL lock_timeout = ${ms}; ` +
    `SET LOCAL idle_in_transaction_session_timeout = ${ms}`
  );
}

function readVersion(rows: readonly { schema_version: unknown }[], where: string): number {
  const row = rows[0];
  const v = row?.schema_version;
  if (rows.length !== 1 || typeof v !== 'number' || !Number.isInteger(v)) {
    throw new CorruptDataError(
      `${where} should hold exactly one row with an integer schema_version; it was changed by something else. ` +
        'Restore it, or use another schema.',
    );
  }
  return v;
}

/**
 * Create the schema at version 1, or check the version already there. A
 * version other than ours throws IncompatibleSchemaError before anything is
 * changed. Concurrent creators can collide on catalog unique indexes even
 * with IF NOT EXISTS; the loser rolls back and retries, then finds the
 * winner's schema.
 */
export async function ensureSchema(
  client: pg.ClientBase,
  t: Tables,
  schemaName: string,
  timeoutMs: number,
  clock: Clock,
): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await client.query(beginSql(timeoutMs));
      const has = await client.query<{ meta: boolean; tables: number }>(
        `SELECT to_regclass($1) IS NOT NULL AS meta,
                (SELECT count(*)::int FROM pg_catalog.pg_tables WHERE schemaname = $2) AS tables`,
        [t.meta, schemaName],
      );
      const probe = has.rows[0];
      if (probe?.meta === true) {
        const r = await client.query<{ schema_version: unknown }>(`SELECT schema_version FROM ${t.meta}`);
        const found = readVersion(r.rows, t.meta);
        await client.query('ROLLBACK');
        if (found !== SCHEMA_VERSION)
          throw new IncompatibleSchemaError(found, SCHEMA_VERSION, `postgres schema "${schemaName}"`);
        return;
      }
      if ((probe?.tables ?? 0) > 0) {
        await client.query('ROLLBACK');
        // Tables without our meta table: not ours (or from a release before versioning). Touch nothing.
        throw new IncompatibleSchemaError(
          0,
          SCHEMA_VERSION,
          `postgres schema "${schemaName}" (tables without a Rebalancer meta table)`,
        );
      }
      await client.query(`CREATE SCHEMA IF NOT EXISTS ${t.schema}`);
      await client.query(
        `CREATE TABLE IF NOT EXISTS ${t.meta} (
           singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
           schema_version integer NOT NULL
         )`,
      );
      await client.query(`INSERT INTO ${t.meta} (singleton, schema_version) VALUES (true, $1) ON CONFLICT DO NOTHING`, [
        SCHEMA_VERSION,
      ]);
      for (const stmt of ddl(t)) await client.query(stmt);
      await client.query('COMMIT');
      return;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      if (attempt < 8 && isCreationRace(err)) {
        await sleep(clock, 5 + Math.random() * 20 * (attempt + 1));
        continue;
      }
      throw err;
    }
  }
}

/** unique_violation on a catalog index, duplicate schema/table/object, deadlock. */
function isCreationRace(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return isConflict(err) || code === '23505' || code === '42P06' || code === '42P07' || code === '42710';
}
