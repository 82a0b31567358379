/**
 * Input validation and shared semantics for every backend, so that all six
 * reject the same bad input with the same typed error, and evaluate compares
 * the same way.
 */
import { CorruptDataError, InvalidArgumentError, LimitExceededError } from '../errors.js';
import type { OptionReader } from '../options.js';
import { systemClock } from './clock.js';
import type { Clock, Compare, KeyValue, Op, SessionOptions, StoreLimits, Txn } from './contract.js';

/**
 * Limits of the contract. They are the same on every backend so that code
 * that works on one works on all; the strictest backend sets them (ZooKeeper's
 * 1 MiB packet, etcd's 128 ops per transaction and 1.5 MiB request).
 */
export const STORE_LIMITS: StoreLimits = Object.freeze({
  maxKeyBytes: 512,
  maxValueBytes: 256 * 1024,
  maxTxnOps: 128,
  minSessionTtlMs: 1000,
  maxSessionTtlMs: 300_000,
});

/** Total UTF-8 bytes of keys and values in one transaction (ZooKeeper's 1 MiB packet minus headroom). */
export const MAX_TXN_BYTES = 900 * 1024;

export const DEFAULT_NAMESPACE = 'rebalancer';
export const DEFAULT_MAX_CLOCK_DRIFT_RATE = 0.01;
export const DEFAULT_REQUEST_TIMEOUT_MS = 5000;

const NAMESPACE_RE = /^[A-Za-z0-9._-]{1,64}$/;

export function validateNamespace(namespace: string | undefined): string {
  const ns = namespace ?? DEFAULT_NAMESPACE;
  if (typeof ns !== 'string' || !NAMESPACE_RE.test(ns)) {
    throw new InvalidArgumentError(
      `namespace ${JSON.stringify(ns)} is invalid: use 1-64 characters of A-Z a-z 0-9 . _ -`,
    );
  }
  return ns;
}

/** The options every backend accepts (CommonStoreOptions), checked, with their defaults. */
export interface StoreSettings {
  readonly namespace: string;
  readonly maxClockDriftRate: number;
  readonly clock: Clock;
  readonly requestTimeoutMs: number;
  /** The longest session TTL any client of the namespace may use (see src/store/incarnation.ts). */
  readonly maxSessionTtlMs: number;
}

/**
 * Default of `maxSessionTtlMs`: three times the runtimes' default TTL. It is also how long a namespace waits before
 * granting sessions again after the store lost its data (unless the backend proves that no lease can be left).
 */
export const DEFAULT_MAX_SESSION_TTL_MS = 30_000;

/**
 * Read CommonStoreOptions with `r` (the caller reads its backend's own
 * options with the same reader, then calls `r.done()`, which refuses the
 * keys nobody read). `clock` defaults to `defaultClock`.
 */
export function readStoreOptions(r: OptionReader, defaultClock: Clock = systemClock): StoreSettings {
  const namespace = validateNamespace(r.string('namespace', DEFAULT_NAMESPACE, 64));
  // A rate near 0.5 would leave a session half its TTL or less to use: that is a broken clock, not drift.
  const maxClockDriftRate = r.number('maxClockDriftRate', DEFAULT_MAX_CLOCK_DRIFT_RATE, { min: 0, max: 0.49 });
  const requestTimeoutMs = r.ms('requestTimeoutMs', DEFAULT_REQUEST_TIMEOUT_MS, { min: 1, max: 3_600_000 });
  const maxSessionTtlMs = r.ms('maxSessionTtlMs', DEFAULT_MAX_SESSION_TTL_MS, {
    min: STORE_LIMITS.minSessionTtlMs,
    max: STORE_LIMITS.maxSessionTtlMs,
  });
  let clock = defaultClock;
  const c = r.object('clock');
  if (c !== undefined) {
    // Any object with these three will do (systemClock, a VirtualClock, the simulator's world…);
    // its other members are its own business, so they are not refused.
    c.fn('now');
    c.fn('setTimeout');
    c.fn('clearTimeout');
    clock = r.raw('clock') as Clock;
  }
  return { namespace, maxClockDriftRate, clock, requestTimeoutMs, maxSessionTtlMs };
}

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export function utf8Length(s: string): number {
  return encoder.encode(s).length;
}

/** Strictly decode UTF-8 read back from a store; throw CorruptDataError otherwise. */
export function decodeUtf8(bytes: Uint8Array, what: string, key?: string): string {
  try {
    return strictDecoder.decode(bytes);
  } catch (cause) {
    throw new CorruptDataError(
      `${what} read from the store is not valid UTF-8; it was not written by Rebalancer. ` +
        "Inspect or delete it with the store's own tools.",
      key === undefined ? { cause } : { cause, key },
    );
  }
}

/** A JS string is valid UTF-16 (no lone surrogates) iff it survives a UTF-8 round trip. */
export function isWellFormed(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = s.charCodeAt(i + 1);
      if (!(d >= 0xdc00 && d <= 0xdfff)) return false;
      i++;
    } else if (c >= 0xdc00 && c <= 0xdfff) {
      return false;
    }
  }
  return true;
}

export function validateKey(key: string, what = 'key'): void {
  if (typeof key !== 'string') throw new InvalidArgumentError(`${what} must be a string, got ${typeof key}`);
  if (key.length === 0) throw new InvalidArgumentError(`${what} must not be empty`);
  if (key.includes('\0')) throw new InvalidArgumentError(`${what} must not contain NUL characters`);
  if (!isWellFormed(key)) throw new InvalidArgumentError(`${what} is not well-formed Unicode (lone surrogate)`);
  const n = utf8Length(key);
  if (n > STORE_LIMITS.maxKeyBytes) {
    throw new LimitExceededError(
      'key bytes',
      n,
      STORE_LIMITS.maxKeyBytes,
      `${what} is ${n} UTF-8 bytes, above the limit of ${STORE_LIMITS.maxKeyBytes}; use a shorter name (or a hash of it)`,
    );
  }
}

/** A prefix may be empty (the whole namespace); otherwise the same rules as a key. */
export function validatePrefix(prefix: string): void {
  if (prefix === '') return;
  validateKey(prefix, 'prefix');
}

export function validateValue(value: string, key: string): number {
  if (typeof value !== 'string')
    throw new InvalidArgumentError(`value of ${key} must be a string, got ${typeof value}`);
  if (!isWellFormed(value))
    throw new InvalidArgumentError(`value of ${key} is not well-formed Unicode (lone surrogate)`);
  const n = utf8Length(value);
  if (n > STORE_LIMITS.maxValueBytes) {
    throw new LimitExceededError(
      'value bytes',
      n,
      STORE_LIMITS.maxValueBytes,
      `value of ${key} is ${n} UTF-8 bytes, above the limit of ${STORE_LIMITS.maxValueBytes}; split it over several keys`,
    );
  }
  return n;
}

export function validateSessionOptions(options: SessionOptions, maxTtlMs = STORE_LIMITS.maxSessionTtlMs): number {
  const ttl = options?.ttlMs;
  if (typeof ttl !== 'number' || !Number.isFinite(ttl)) {
    throw new InvalidArgumentError(`session ttlMs must be a number, got ${String(ttl)}`);
  }
  if (ttl < STORE_LIMITS.minSessionTtlMs || ttl > STORE_LIMITS.maxSessionTtlMs) {
    throw new InvalidArgumentError(
      `session ttlMs must be between ${STORE_LIMITS.minSessionTtlMs} and ${STORE_LIMITS.maxSessionTtlMs}, got ${ttl}`,
    );
  }
  if (ttl > maxTtlMs) {
    throw new InvalidArgumentError(
      `session ttlMs ${ttl} is above the store's maxSessionTtlMs (${maxTtlMs}); raise maxSessionTtlMs in the store ` +
        'options of every client of the namespace, or use a shorter TTL',
    );
  }
  return ttl;
}

const NUMERIC_TARGETS = new Set(['version', 'createRevision', 'modRevision']);
const NUMERIC_OPS = new Set(['=', '!=', '<', '>']);

/** Validate a transaction's shape and size; throws InvalidArgumentError / LimitExceededError. */
export function validateTxn(txn: Txn): void {
  if (txn === null || typeof txn !== 'object') throw new InvalidArgumentError('txn must be an object');
  const compare = txn.compare ?? [];
  const then = txn.then ?? [];
  const otherwise = txn.else ?? [];
  if (!Array.isArray(compare) || !Array.isArray(then) || !Array.isArray(otherwise)) {
    throw new InvalidArgumentError('txn.compare, txn.then and txn.else must be arrays');
  }
  const count = compare.length + then.length + otherwise.length;
  if (count > STORE_LIMITS.maxTxnOps) {
    throw new LimitExceededError(
      'txn operations',
      count,
      STORE_LIMITS.maxTxnOps,
      `transaction has ${count} compares and ops, above the limit of ${STORE_LIMITS.maxTxnOps}; split it`,
    );
  }
  let bytes = 0;
  for (const c of compare) {
    validateKey(c.key, 'compare key');
    switch (c.target) {
      case 'exists':
        if (typeof c.exists !== 'boolean') throw new InvalidArgumentError(`compare exists on ${c.key} needs a boolean`);
        break;
      case 'value':
        if (c.op !== '=' && c.op !== '!=')
          throw new InvalidArgumentError(`compare value on ${c.key}: op must be = or !=`);
        bytes += validateValue(c.value, c.key);
        break;
      default:
        if (!NUMERIC_TARGETS.has((c as { target: string }).target)) {
          throw new InvalidArgumentError(`unknown compare target ${JSON.stringify((c as { target: unknown }).target)}`);
        }
        if (!NUMERIC_OPS.has(c.op))
          throw new InvalidArgumentError(`compare on ${c.key}: unknown op ${JSON.stringify(c.op)}`);
        if (!Number.isSafeInteger(c.value))
          throw new InvalidArgumentError(`compare on ${c.key}: value must be a safe integer`);
    }
  }
  validateBranch(then as readonly Op[]);
  validateBranch(otherwise as readonly Op[]);
  let sessionId: string | undefined;
  for (const op of [...then, ...otherwise] as Op[]) {
    switch (op.op) {
      case 'put':
        validateKey(op.key);
        bytes += utf8Length(op.key) + validateValue(op.value, op.key);
        if (op.session !== undefined) {
          if (sessionId !== undefined && sessionId !== op.session.id) {
            throw new InvalidArgumentError('a transaction may attach keys to at most one session');
          }
          sessionId = op.session.id;
        }
        break;
      case 'delete':
      case 'get':
        validateKey(op.key);
        break;
      case 'deletePrefix':
      case 'range':
        validatePrefix(op.prefix);
        break;
      default:
        throw new InvalidArgumentError(`unknown txn op ${JSON.stringify((op as { op: unknown }).op)}`);
    }
  }
  if (bytes > MAX_TXN_BYTES) {
    throw new LimitExceededError(
      'txn bytes',
      bytes,
      MAX_TXN_BYTES,
      `transaction carries ${bytes} bytes of keys and values, above the limit of ${MAX_TXN_BYTES}; split it`,
    );
  }
}

/**
 * Rules every backend can honour (etcd's): within one branch a key is written
 * at most once, a put may not fall under a deletePrefix of the same branch,
 * and reads (get, range) come before the branch's first write, so they see
 * the state the compares saw.
 */
function validateBranch(ops: readonly Op[]): void {
  const written = new Set<string>();
  const deletedPrefixes: string[] = [];
  let wrote = false;
  for (const op of ops) {
    if (op === null || typeof op !== 'object') throw new InvalidArgumentError('txn ops must be objects');
    if (op.op === 'get' || op.op === 'range') {
      if (wrote) throw new InvalidArgumentError(`txn ${op.op} must come before the branch's writes`);
      continue;
    }
    wrote = true;
    if (op.op === 'deletePrefix') {
      deletedPrefixes.push(op.prefix);
      continue;
    }
    if (typeof op.key !== 'string') continue; // reported by the caller's key validation
    if (written.has(op.key)) throw new InvalidArgumentError(`txn writes ${op.key} twice in one branch`);
    written.add(op.key);
  }
  for (const key of written) {
    if (deletedPrefixes.some((p) => key.startsWith(p))) {
      throw new InvalidArgumentError(`txn writes ${key} and deletes a prefix containing it in one branch`);
    }
  }
}

/** Evaluate one compare against the current state of its key (undefined = missing). Shared by backends that compare client-side or in JS. */
export function evaluateCompare(c: Compare, kv: KeyValue | undefined): boolean {
  switch (c.target) {
    case 'exists':
      return (kv !== undefined) === c.exists;
    case 'value':
      if (kv === undefined) return false;
      return c.op === '=' ? kv.value === c.value : kv.value !== c.value;
    default: {
      const actual = kv === undefined ? 0 : kv[c.target];
      switch (c.op) {
        case '=':
          return actual === c.value;
        case '!=':
          return actual !== c.value;
        case '<':
          return actual < c.value;
        case '>':
          return actual > c.value;
      }
    }
  }
}

/**
 * Evaluate a transaction's compares against the current state of their keys
 * (`current` returns undefined for a missing key) and pick the branch that
 * runs. Shared by the backends that compare in JavaScript rather than on the server.
 */
export function chooseBranch(
  txn: Txn,
  current: (key: string) => KeyValue | undefined,
): { readonly succeeded: boolean; readonly branch: readonly Op[] } {
  const succeeded = txn.compare.every((c) => evaluateCompare(c, current(c.key)));
  return { succeeded, branch: succeeded ? txn.then : (txn.else ?? []) };
}

/** Keys the transaction's branches write, for backends that must lock or watch them. */
export function prefixMatches(key: string, prefix: string): boolean {
  return key.startsWith(prefix);
}
