/**
 * What every backend's Store does the same way, so that it is written once:
 * checking the arguments of every call (the same bad input gets the same
 * typed error everywhere), refusing calls once close() has begun, the
 * sessions' bookkeeping (a session handed back must be this store's and
 * usable; one that ends on the server is marked expired), closing a
 * session or a watch whose creation raced close(), and an idempotent close().
 * A backend supplies only the requests themselves (the protected abstract
 * methods).
 */
import { ClosedError, InvalidArgumentError, SessionExpiredError } from '../errors.js';
import type {
  Clock,
  KeyValue,
  RangeResult,
  Session,
  SessionOptions,
  Store,
  StoreLimits,
  Txn,
  TxnResult,
  WatchHint,
  Watcher,
} from './contract.js';
import type { ManagedSession } from './session.js';
import { SessionRegistry, type GrantedSession } from './sessions.js';
import {
  STORE_LIMITS,
  validateKey,
  validatePrefix,
  validateSessionOptions,
  validateTxn,
  type StoreSettings,
} from './validate.js';

/** `D`: what the backend keeps with each of its sessions (a lease id, a connection). */
export abstract class StoreBase<D = undefined> implements Store {
  abstract readonly backend: string;
  readonly namespace: string;
  readonly limits: StoreLimits = STORE_LIMITS;
  readonly clock: Clock;
  /** Bound of one request to the server. */
  protected readonly requestTimeoutMs: number;
  protected readonly sessions: SessionRegistry<D>;
  #closed = false;
  #closing: Promise<void> | undefined;

  protected constructor(settings: StoreSettings) {
    this.namespace = settings.namespace;
    this.clock = settings.clock;
    this.requestTimeoutMs = settings.requestTimeoutMs;
    this.sessions = new SessionRegistry<D>(settings);
  }

  /** True once close() has begun: public calls fail with ClosedError from then on. */
  protected get closed(): boolean {
    return this.#closed;
  }

  // ---- the backend's requests ---------------------------------------------------

  /** Create a session with this TTL on the server. */
  protected abstract grantSession(ttlMs: number): Promise<GrantedSession<D>>;
  protected abstract readKey(key: string): Promise<KeyValue | undefined>;
  protected abstract readRange(prefix: string): Promise<RangeResult>;
  /**
   * Run a validated transaction. `session` is the one its puts attach keys
   * to, already checked to be this store's and usable. A SessionExpiredError
   * thrown here marks it expired.
   */
  protected abstract applyTxn(txn: Txn, session: ManagedSession | undefined): Promise<TxnResult>;
  protected abstract startWatch(prefix: string, onHint: (hint: WatchHint) => void): Promise<Watcher>;
  /** Release everything; runs once, after `closed` became true. Close the sessions while the connection is up. */
  protected abstract closeStore(): Promise<void>;

  // ---- Store ----------------------------------------------------------------------

  async openSession(options: SessionOptions): Promise<Session> {
    const ttlMs = validateSessionOptions(options);
    this.assertOpen();
    const sentAtMs = this.clock.now();
    const granted = await this.grantSession(ttlMs);
    const session = this.sessions.open(granted, sentAtMs);
    if (this.#closed) {
      // close() began while the session was being created and did not see it.
      await session.close();
      throw new ClosedError(`${this.backend} store`);
    }
    return session;
  }

  async get(key: string): Promise<KeyValue | undefined> {
    validateKey(key);
    this.assertOpen();
    return this.readKey(key);
  }

  async range(prefix: string): Promise<RangeResult> {
    validatePrefix(prefix);
    this.assertOpen();
    return this.readRange(prefix);
  }

  async txn(txn: Txn): Promise<TxnResult> {
    validateTxn(txn);
    this.assertOpen();
    const session = this.sessions.ofTxn(txn);
    try {
      return await this.applyTxn(txn, session);
    } catch (err) {
      if (err instanceof SessionExpiredError) session?.markExpired(err);
      throw err;
    }
  }

  async watch(prefix: string, onHint: (hint: WatchHint) => void): Promise<Watcher> {
    validatePrefix(prefix);
    if (typeof onHint !== 'function') throw new InvalidArgumentError('watch needs an onHint function');
    this.assertOpen();
    const watcher = await this.startWatch(prefix, onHint);
    if (this.#closed) {
      // close() began while the watch was being set up and may not have seen it.
      await watcher.close();
      throw new ClosedError(`${this.backend} store`);
    }
    return watcher;
  }

  close(): Promise<void> {
    this.#closed = true;
    this.#closing ??= this.closeStore();
    return this.#closing;
  }

  // ---- for the backend --------------------------------------------------------------

  /** Refuse public calls once close() has begun (the backend's own cleanup requests still run). */
  protected assertOpen(): void {
    if (this.#closed) throw new ClosedError(`${this.backend} store`);
  }

  /** Stop accepting calls without closing anything (a simulated crash). */
  protected markClosed(): void {
    this.#closed = true;
  }
}
