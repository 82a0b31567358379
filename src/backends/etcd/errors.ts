/**
 * Classification of etcd3 / gRPC failures into the contract's typed errors.
 *
 * The one judgement that matters for safety is `outcome`: a write may be
 * reported `not-applied` (and retried here) only when the request can never
 * have reached etcd's Raft log — no connection, a member without a leader,
 * a request rejected before proposal. Anything that may have been proposed
 * (timeouts, dropped connections, "leader changed") is `unknown`.
 */
import { ClientClosedError, EtcdLeaseInvalidError, isRecoverableError } from 'etcd3';
import { ClosedError, InvalidArgumentError, RebalancerError, StoreUnavailableError } from '../../errors.js';

/**
 * `read`: changes nothing (reads, keep-alive), so never "applied".
 * `idempotent`: may change something, but resending is harmless (revoke, guarded setup).
 * `write`: resent only when it certainly never reached etcd.
 */
export type RequestKind = 'read' | 'idempotent' | 'write';

const NOT_SENT = [
  /No connection established/i,
  /ECONNREFUSED/,
  /Channel closed before call started/i,
  /Name resolution failed/i,
  /ENOTFOUND|EHOSTUNREACH|ENETUNREACH|EAI_AGAIN/,
  /etcdserver: no leader/,
  /etcdserver: too many requests/,
  /etcdserver: not capable/,
  /etcdserver: server stopped/,
];

const TRANSIENT_ETCD = [
  /etcdserver: leader changed/,
  /etcdserver: request timed out/,
  /etcdserver: request cancelled/,
  /etcdserver: unhealthy cluster/,
  /etcdserver: too many learner/,
];

const PERMISSION = [/permission denied/i, /authentication failed/i, /user name is empty/i, /UNAUTHENTICATED/];

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The request certainly never reached etcd's log. */
export function isNotApplied(err: unknown): boolean {
  const m = messageOf(err);
  return NOT_SENT.some((re) => re.test(m));
}

/** A later attempt may succeed (and, for idempotent requests, may be sent again). */
export function isTransient(err: unknown): boolean {
  if (err instanceof StoreUnavailableError) return true;
  if (err instanceof RebalancerError || err instanceof ClientClosedError || err instanceof EtcdLeaseInvalidError)
    return false;
  if (isNotApplied(err)) return true;
  const m = messageOf(err);
  if (PERMISSION.some((re) => re.test(m))) return false;
  if (TRANSIENT_ETCD.some((re) => re.test(m))) return true;
  return err instanceof Error && isRecoverableError(err);
}

export function isLeaseNotFound(err: unknown): boolean {
  return err instanceof EtcdLeaseInvalidError || /requested lease not found/.test(messageOf(err));
}

/** Map anything thrown by etcd3 to a RebalancerError (SessionExpiredError is the caller's business: it knows the session). */
export function toStoreError(err: unknown, what: string, kind: RequestKind): RebalancerError {
  if (err instanceof RebalancerError) {
    // A timeout raised by our own deadline: a write may still be in flight.
    if (err instanceof StoreUnavailableError && kind === 'read' && err.outcome === 'unknown') {
      return new StoreUnavailableError(`etcd ${what}: ${err.message}`, { cause: err, outcome: 'not-applied' });
    }
    return err;
  }
  const m = messageOf(err);
  if (err instanceof ClientClosedError) return new ClosedError('etcd store');
  if (PERMISSION.some((re) => re.test(m))) {
    return new InvalidArgumentError(
      `etcd refused ${what}: ${m}. Check the auth options (user, password, TLS client certificate) and that the ` +
        "user's role grants read-write on the prefix rebalancer/",
      { cause: err },
    );
  }
  if (/request is too large|too many operations in txn|message larger than max/i.test(m)) {
    return new InvalidArgumentError(`etcd rejected ${what} as too large: ${m}`, { cause: err });
  }
  const outcome = kind === 'read' || isNotApplied(err) ? 'not-applied' : 'unknown';
  return new StoreUnavailableError(
    `etcd ${what} failed: ${m}` +
      (outcome === 'unknown' ? ' (the write may or may not have been applied: re-read before retrying)' : ''),
    { cause: err, outcome },
  );
}
