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
import { RebalancerError, StoreUnavailableError } from '../../errors.js';

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

/** Turn anything thrown while talking to PostgreSQL into a typed error. */
export function toStoreError(err: unknown, what: string, phase: Phase): Error {
  if (err instanceof RebalancerError) return err;
  const outcome = outcomeOf(phase, err);
  if (err instanceof pg.DatabaseError) {
    return new StoreUnavailableError(`postgres: ${what} failed: ${err.message} (SQLSTATE ${err.code ?? '?'})`, {
      cause: err,
      outcome,
    });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new StoreUnavailableError(`postgres: ${what} failed: ${message}; check that the server is reachable`, {
    cause: err,
    outcome,
  });
}
