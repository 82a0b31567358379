/**
 * Mapping of pg driver and server errors to Rebalancer's typed errors.
 *
 * The outcome of a failed write follows from how far the request got:
 * - `connect`: no statement was sent, so nothing can have applied.
 * - `open`: inside an explicit transaction before COMMIT was sent. If the
 *   connection breaks, the server rolls the transaction back; it can never
 *   commit without our COMMIT. So nothing applied.
 * - `commit` / `sent`: COMMIT (or an autocommit statement) was sent. A lost
 *   response means it may or may not have applied.
 */
import pg from 'pg';
import { InvalidArgumentError, RebalancerError, StoreUnavailableError } from '../../errors.js';
import { networkProblem, OUTCOME_UNKNOWN, requestFailed } from '../../store/network.js';

export type Phase = 'connect' | 'open' | 'commit' | 'sent';

/** SQLSTATEs where the transaction lost a race and may simply be retried. */
const CONFLICT_CODES = new Set(['40001', '40P01']);

/** SQLSTATEs meaning our schema's objects are gone (someone dropped them). */
const MISSING_SCHEMA_CODES = new Set(['42P01', '3F000']);

export function sqlState(err: unknown): string | undefined {
  return err instanceof pg.DatabaseError ? err.code : undefined;
}

export function isConflict(err: unknown): boolean {
  const code = sqlState(err);
  return code !== undefined && CONFLICT_CODES.has(code);
}

export function isMissingSchema(err: unknown): boolean {
  const code = sqlState(err);
  return code !== undefined && MISSING_SCHEMA_CODES.has(code);
}

/**
 * Whether a server error reported for COMMIT (or an autocommit statement)
 * still leaves the outcome open: a connection-level failure (FATAL, class 08
 * or 57, e.g. a shutdown while waiting for synchronous replication) can
 * arrive after the commit record was written.
 */
function serverErrorLeavesOutcomeOpen(err: pg.DatabaseError): boolean {
  const code = err.code ?? '';
  return err.severity === 'FATAL' || err.severity === 'PANIC' || code.startsWith('08') || code.startsWith('57');
}

export function outcomeOf(phase: Phase, err?: unknown): 'not-applied' | 'unknown' {
  if (phase === 'connect' || phase === 'open') return 'not-applied';
  if (err instanceof pg.DatabaseError && !serverErrorLeavesOutcomeOpen(err)) return 'not-applied';
  return 'unknown';
}

/**
 * SQLSTATEs (or their class, the first two characters) an operator can act
 * on, in words: what the server's state is and what to do.
 */
const SERVER_STATES: Readonly<Record<string, string>> = {
  '53300': 'has no free connection slots (max_connections reached); retry later, or raise max_connections',
  '53100': 'is out of disk space; free some',
  '53200': 'is out of memory',
  '57P01': 'is shutting down; retry once it is back',
  '57P02': 'is shutting down; retry once it is back',
  '57P03': 'is starting up; retry shortly',
  '57014': 'cancelled the statement: it ran longer than requestTimeoutMs (statement_timeout)',
  '55P03':
    'gave up waiting for the namespace lock within requestTimeoutMs: another client holds it (a stopped process?)',
  '25P03': 'ended a transaction left idle longer than requestTimeoutMs',
  '40001': 'aborted the transaction to serialise it with another one; retry',
  '40P01': 'aborted the transaction to break a deadlock; retry',
  '25006': 'is a read-only replica; point the connection string at the primary',
  '08': 'lost the connection',
};

/** SQLSTATEs that mean the connection settings are wrong: retrying will not help. */
const CONFIG_STATES: Readonly<Record<string, string>> = {
  '28P01': 'refused the user name or password; check the credentials in the connection string',
  '28000': 'refused the connection for this user (pg_hba.conf); check the user, database and TLS settings',
  '3D000': 'has no such database; create it, or fix the database name in the connection string',
  '42501': "refused a privilege the store needs; grant the user CREATE on the database (or the schema's tables)",
};

/**
 * Turn anything thrown while talking to PostgreSQL into a typed error whose
 * message says, in words, what happened at `where` ("PostgreSQL at
 * host:port") and what to do; the driver's error is the cause.
 */
export function toStoreError(err: unknown, what: string, phase: Phase, where: string): Error {
  if (err instanceof RebalancerError) return err;
  const outcome = outcomeOf(phase, err);
  // A request that failed before COMMIT applied nothing; the caller reads that from `outcome`.
  const after = outcome === 'unknown' ? `; ${OUTCOME_UNKNOWN}` : '';
  if (err instanceof pg.DatabaseError) {
    const code = err.code ?? '';
    const config = CONFIG_STATES[code];
    if (config !== undefined) return new InvalidArgumentError(`${where} ${config}`, { cause: err });
    const state = SERVER_STATES[code] ?? SERVER_STATES[code.slice(0, 2)];
    if (state !== undefined) return new StoreUnavailableError(`${where} ${state}${after}`, { cause: err, outcome });
    // Anything else: the server's own words, quoted, are the best description there is.
    return new StoreUnavailableError(
      `${where} refused ${what}, answering "${err.message}" (SQLSTATE ${code})${after}`,
      {
        cause: err,
        outcome,
      },
    );
  }
  const message = err instanceof Error ? err.message : String(err);
  const problem =
    networkProblem(err) ??
    (/timeout/i.test(message)
      ? 'no connection within requestTimeoutMs'
      : /terminated|ended|closed|not queryable|connection error/i.test(message)
        ? 'the connection was closed'
        : undefined);
  return requestFailed(where, what, problem, err, outcome);
}
