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
import { networkProblem, OUTCOME_UNKNOWN, requestFailed } from '../../store/network.js';

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

/** etcd's own conditions an operator can act on, in words. */
const CLUSTER_STATES: readonly (readonly [RegExp, string])[] = [
  [/etcdserver: no leader/, 'has no leader (a majority of its members is down or cut off); retry once it has one'],
  [/etcdserver: too many requests/, 'is overloaded (too many requests); retry later'],
  [/etcdserver: not capable/, 'runs a version that cannot serve this request; upgrade etcd'],
  [/etcdserver: server stopped/, 'is stopping; retry once it is back'],
  [/etcdserver: leader changed/, 'changed leader while the request was in flight'],
  [/etcdserver: request timed out/, 'did not commit the request in time (a slow disk or a lost quorum?)'],
  [/etcdserver: request cancelled/, 'cancelled the request'],
  [/etcdserver: unhealthy cluster/, 'is unhealthy (members down); retry once it recovers'],
  [/etcdserver: too many learner/, 'is reconfiguring (too many learners); retry shortly'],
  [/DEADLINE_EXCEEDED|deadline exceeded/i, 'did not answer within requestTimeoutMs'],
];

/** "etcd at host:port[, host:port…]" for messages, from the endpoints (`http://h:p`). */
export function clusterName(hosts: readonly string[]): string {
  return `etcd at ${hosts.map((h) => h.replace(/^[a-z]+:\/\//i, '')).join(', ')}`;
}

/**
 * Map anything thrown by etcd3 to a RebalancerError whose message says in
 * words what happened at `where` ("etcd at host:port") and what to do; the
 * gRPC error is the cause. (SessionExpiredError is the caller's business: it
 * knows the session.)
 */
export function toStoreError(err: unknown, what: string, kind: RequestKind, where: string): RebalancerError {
  if (err instanceof RebalancerError) {
    // A timeout raised by our own deadline: a write may still be in flight.
    if (err instanceof StoreUnavailableError && kind === 'read' && err.outcome === 'unknown') {
      return new StoreUnavailableError(err.message.replace(OUTCOME_UNKNOWN, `${what} changed nothing`), {
        cause: err,
        outcome: 'not-applied',
      });
    }
    return err;
  }
  const m = messageOf(err);
  if (err instanceof ClientClosedError) return new ClosedError('etcd store');
  if (/authentication failed|invalid auth token|user name is empty/i.test(m)) {
    return new InvalidArgumentError(
      `${where} refused the user name or password (authentication failed); check the credentials in the URL or the auth option`,
      { cause: err },
    );
  }
  if (PERMISSION.some((re) => re.test(m))) {
    return new InvalidArgumentError(
      `${where} refused ${what}: permission denied. Check the auth options (user, password, TLS client certificate) and ` +
        "that the user's role grants read-write on the prefix rebalancer/",
      { cause: err },
    );
  }
  if (/request is too large|too many operations in txn|message larger than max/i.test(m)) {
    return new InvalidArgumentError(
      `${where} refused ${what} as too large; raise etcd's --max-request-bytes / --max-txn-ops, or make it smaller`,
      { cause: err },
    );
  }
  const outcome = kind === 'read' || isNotApplied(err) ? 'not-applied' : 'unknown';
  const after = outcome === 'unknown' ? `; ${OUTCOME_UNKNOWN}` : '';
  const state = CLUSTER_STATES.find(([re]) => re.test(m))?.[1];
  if (state !== undefined) return new StoreUnavailableError(`${where} ${state}${after}`, { cause: err, outcome });
  const problem =
    networkProblem(err) ??
    (/Name resolution failed/i.test(m)
      ? 'host name not found'
      : /No connection established|UNAVAILABLE|Channel closed/i.test(m)
        ? 'no connection'
        : undefined);
  return requestFailed(where, what, problem, err, outcome);
}
