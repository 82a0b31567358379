/**
 * Typed errors. Every error Rebalancer throws is a RebalancerError with a
 * stable `code`, a message that says what to do, and the underlying `cause`.
 */

export type ErrorCode =
  | 'SESSION_EXPIRED'
  | 'STORE_UNAVAILABLE'
  | 'BROKER_UNAVAILABLE'
  | 'INVALID_ARGUMENT'
  | 'LIMIT_EXCEEDED'
  | 'CORRUPT_DATA'
  | 'INCOMPATIBLE_SCHEMA'
  | 'CLOSED'
  | 'NOT_FOUND';

export class RebalancerError extends Error {
  readonly code: ErrorCode;
  /** True when the same call may succeed if retried later. */
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; retryable?: boolean }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = options?.retryable ?? false;
  }
}

/** The session has ended on the server (or locally passed its safety deadline). Open a new one. */
export class SessionExpiredError extends RebalancerError {
  readonly sessionId: string;
  constructor(sessionId: string, message?: string, options?: { cause?: unknown }) {
    super(
      'SESSION_EXPIRED',
      message ?? `session ${sessionId} has expired; stop any work it guarded and open a new session`,
      options,
    );
    this.sessionId = sessionId;
  }
}

/**
 * The store could not be reached or did not answer in time. Retryable.
 * `outcome` tells whether a write may have been applied anyway: callers of
 * non-idempotent transactions must re-read before retrying when it is `unknown`.
 */
export class StoreUnavailableError extends RebalancerError {
  readonly outcome: 'not-applied' | 'unknown';
  constructor(message: string, options?: { cause?: unknown; outcome?: 'not-applied' | 'unknown' }) {
    super('STORE_UNAVAILABLE', message, { cause: options?.cause, retryable: true });
    this.outcome = options?.outcome ?? 'unknown';
  }
}

/** A message broker (RabbitMQ) could not be reached or refused the connection. Retryable. */
export class BrokerUnavailableError extends RebalancerError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('BROKER_UNAVAILABLE', message, { cause: options?.cause, retryable: true });
  }
}

/** A caller passed something invalid (bad URL, option, key). Fix the call. */
export class InvalidArgumentError extends RebalancerError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('INVALID_ARGUMENT', message, options);
  }
}

/** A key, value or transaction exceeds the contract's documented limits. */
export class LimitExceededError extends RebalancerError {
  readonly limit: string;
  readonly actual: number;
  readonly max: number;
  constructor(limit: string, actual: number, max: number, message?: string) {
    super('LIMIT_EXCEEDED', message ?? `${limit} is ${actual}, above the limit of ${max}`);
    this.limit = limit;
    this.actual = actual;
    this.max = max;
  }
}

/** Data read back from the store is not what Rebalancer wrote (not UTF-8, malformed metadata). */
export class CorruptDataError extends RebalancerError {
  readonly key: string | undefined;
  constructor(message: string, options?: { cause?: unknown; key?: string }) {
    super('CORRUPT_DATA', message, options);
    this.key = options?.key;
  }
}

/** The store holds data of a schema version this build does not understand. Nothing was changed. */
export class IncompatibleSchemaError extends RebalancerError {
  readonly found: number;
  readonly supported: number;
  constructor(found: number, supported: number, where: string) {
    super(
      'INCOMPATIBLE_SCHEMA',
      `${where} has schema version ${found}, but this Rebalancer understands version ${supported}; ` +
        (found > supported
          ? 'upgrade Rebalancer, or use another namespace'
          : 'migrate the data with a matching Rebalancer release, or use another namespace') +
        '. Nothing was changed.',
    );
    this.found = found;
    this.supported = supported;
  }
}

/** The object was closed; create a new one. */
export class ClosedError extends RebalancerError {
  constructor(what: string) {
    super('CLOSED', `${what} is closed`);
  }
}
