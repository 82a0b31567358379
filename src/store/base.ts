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
import { randomUUID } from 'node:crypto';
import {
  ClockRateError,
  ClosedError,
  InvalidArgumentError,
  SessionExpiredError,
  type StoreDataLostError,
} from '../errors.js';
import { ClockRateEstimator, type ServerClockSample } from './clock-rate.js';
import type {
  Clock,
  ClockRateCheck,
  KeyValue,
  RangeResult,
  Session,
  SessionOptions,
  Store,
  StoreLimits,
  TimerHandle,
  Txn,
  TxnResult,
  WatchHint,
  Watcher,
} from './contract.js';
import { Incarnation, INCARNATION_KEY, RESERVED_PREFIX, type ServerIdentity } from './incarnation.js';
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

/**
 * The shortest span of readings (one every TTL/5, so about three readings) a clock-rate verdict looks at, in TTLs: a clock
 * gone badly wrong (0.75) is caught within about a TTL. Longer spans, up to eight times this, catch smaller errors;
 * round-trip jitter never causes an alarm whatever the span, nor does a single step of the server's clock
 * (src/store/clock-rate.ts). Shorter is safer: in the simulator's clock-rate fault, 5 of 40 seeds violated with half
 * a TTL, 7 with one TTL, 9 without the check.
 */
export const CLOCK_RATE_WINDOW_TTLS = 1 / 2;

/** `D`: what the backend keeps with each of its sessions (a lease id, a connection). */
export abstract class StoreBase<D = undefined> implements Store {
  abstract readonly backend: string;
  readonly namespace: string;
  /** The contract's limits, with this namespace's maxSessionTtlMs. */
  readonly limits: StoreLimits;
  readonly clock: Clock;
  /** Bound of one request to the server. */
  protected readonly requestTimeoutMs: number;
  protected readonly sessions: SessionRegistry<D>;
  /** The longest session TTL any client of the namespace may use. */
  readonly maxSessionTtlMs: number;
  readonly #settings: StoreSettings;
  #incarnation: Incarnation | undefined;
  /** A data loss found while no session was left to end with it: the next openSession() throws it (once). */
  #unheardLoss: StoreDataLostError | undefined;
  #dataLosses = 0;
  #checkTimer: TimerHandle | undefined;
  #closed = false;
  #closing: Promise<void> | undefined;
  /** Server clock readings (keep-alives, and probes while refusing sessions): the client clock's rate. */
  readonly #clockRate: ClockRateEstimator;
  /** Set while the rate is out of the bound: every session was ended with it, and new ones are refused. */
  #clockRateFault: ClockRateError | undefined;
  /** The shortest span a rate verdict looks at: CLOCK_RATE_WINDOW_TTLS × the TTL of the newest session. */
  #clockWindowMs: number;

  /**
   * Whether the client clock's rate is checked against the server's (the store contract's ClockRateCheck):
   * `server` for backends whose keep-alives carry the server's time (they also override readServerTimeMs).
   */
  readonly clockRateCheck: ClockRateCheck = 'none';

  protected constructor(settings: StoreSettings) {
    this.namespace = settings.namespace;
    this.clock = settings.clock;
    this.requestTimeoutMs = settings.requestTimeoutMs;
    this.maxSessionTtlMs = settings.maxSessionTtlMs;
    this.limits = Object.freeze({ ...STORE_LIMITS, maxSessionTtlMs: settings.maxSessionTtlMs });
    this.#settings = settings;
    this.#clockRate = new ClockRateEstimator(settings.maxClockDriftRate);
    this.#clockWindowMs = CLOCK_RATE_WINDOW_TTLS * Math.min(settings.maxSessionTtlMs, 10_000);
    this.sessions = new SessionRegistry<D>({
      ...settings,
      onServerTime: (sample, ttlMs) => this.#clockSample(sample, ttlMs),
    });
  }

  /**
   * One reading of the server's clock now (`server` backends), for the rate check while sessions are refused
   * (ClockRateError): wall-clock milliseconds as the server processed the request.
   */
  protected readServerTimeMs(): Promise<number> | undefined {
    return undefined;
  }

  /** A reading from a keep-alive (or a probe): end every session at once if the rate is provably out of bounds. */
  #clockSample(sample: ServerClockSample, ttlMs: number): void {
    this.#clockWindowMs = CLOCK_RATE_WINDOW_TTLS * ttlMs;
    this.#clockRate.add(sample, this.#clockWindowMs);
    const v = this.#clockRate.verdict(this.#clockWindowMs);
    if (v.kind === 'out') {
      // Start afresh: sessions come back only after a full window measured within the bound.
      this.#clockRate.reset();
      this.#clockRateFault = new ClockRateError(v, this.#settings.maxClockDriftRate, Math.max(50, ttlMs / 2));
      this.sessions.expireAll(this.#clockRateFault);
    } else if (v.kind === 'ok' && this.#clockRateFault !== undefined) {
      this.#clockRateFault = undefined;
    }
  }

  /** Refuse a session while the clock rate is out of bounds; each refusal takes one more reading to decide again. */
  async #admitClockRate(): Promise<void> {
    if (this.#clockRateFault === undefined) return;
    const sentAtMs = this.clock.now();
    const reading = this.readServerTimeMs();
    if (reading !== undefined) {
      const serverMs = await reading;
      this.#clockSample(
        { sentAtMs, receivedAtMs: this.clock.now(), serverMs },
        this.#clockWindowMs / CLOCK_RATE_WINDOW_TTLS,
      );
    }
    if (this.#clockRateFault !== undefined) throw this.#clockRateFault;
  }

  /** The namespace's incarnation as this client knows it (see incarnation.ts); created on first use. */
  protected get incarnation(): Incarnation {
    this.#incarnation ??= new Incarnation({
      backend: this.backend,
      namespace: this.namespace,
      clock: this.clock,
      maxSessionTtlMs: this.#settings.maxSessionTtlMs,
      maxClockDriftRate: this.#settings.maxClockDriftRate,
      read: () => this.readKey(INCARNATION_KEY),
      txn: (txn) => this.applyTxn(txn, undefined),
      server: () => this.serverIdentity(this.incarnation.fullWaitMs),
      newId: () => randomUUID(),
      delayedRestart: () => !this.skipsDelayedRestart(),
    });
    return this.#incarnation;
  }

  /**
   * The server's identity (src/store/incarnation.ts, ServerIdentity), for backends whose server can restart
   * without its data: a new id after every restart or failover, what is left of `fullWaitMs` (the longest TTL,
   * stretched by the drift bound) since it started, and whether it persists its data. The default, undefined, is
   * for stores that lose data only when an operator destroys it (docs/backends/*: stop the members before you do).
   */
  protected serverIdentity(_fullWaitMs: number): Promise<ServerIdentity | undefined> {
    return Promise.resolve(undefined);
  }

  /**
   * The periodic check's second question, for backends whose server can lose recent writes without losing the
   * namespace (a Redis restart with `appendfsync everysec`, a failover to a replica that lagged): a sentence
   * saying why the data this client worked in may be gone (the server restarted or was replaced), or undefined.
   */
  protected serverChanged(): Promise<string | undefined> {
    return Promise.resolve(undefined);
  }

  /** True only in the simulator's broken variant (MemoryFaults.skipDelayedRestart). */
  protected skipsDelayedRestart(): boolean {
    return false;
  }

  /**
   * The backend noticed by itself that the data behind the namespace is not what this client worked in (a
   * revision that went backwards, a replaced file): every session ends at once with a StoreDataLostError, and
   * the next one waits out the delayed restart.
   */
  protected dataLost(detail: string): StoreDataLostError {
    const lost = this.incarnation.lost(detail);
    this.#endAll(lost);
    return lost;
  }

  /**
   * End every session with the loss. When none is left to hear it (a keep-alive had just found them gone and ended
   * them as plainly expired), the next openSession() says it instead: whoever held them must learn why.
   */
  #endAll(lost: StoreDataLostError): void {
    if (this.sessions.size === 0) this.#unheardLoss = lost;
    this.#expireAllLost(lost);
  }

  #expireAllLost(lost: StoreDataLostError): void {
    this.#dataLosses++;
    this.sessions.expireAll(lost);
  }

  /** How many times this client found the data it worked in lost (Store.dataLosses). */
  get dataLosses(): number {
    return this.#dataLosses;
  }

  /**
   * Check now what is otherwise checked every third of the shortest session TTL (Store.verifyData): the namespace's
   * incarnation record, and whether the server restarted or was replaced where the backend can tell. A loss ends every
   * session and is thrown.
   */
  async verifyData(): Promise<void> {
    this.assertOpen();
    const lost = await this.#lookForLoss();
    if (lost !== undefined) throw lost;
  }

  /**
   * The incarnation record and the server's identity, looked at together; a loss either finds ends every session
   * and is returned. A server change is acted on even when the record could not be read: serverChanged() reports a
   * change once (it takes the new server as the one to compare with next time), so a change dropped with a failed
   * read — the two go out together, and a server restarting under them can fail one and answer the other — would
   * never be reported again, and an older state would pass for the data this client worked in (seen: 1 in 5 runs of
   * test/fleet/control-loss.test.ts, "comes back older"). Throws what failed when neither found a loss.
   */
  async #lookForLoss(): Promise<StoreDataLostError | undefined> {
    const [checked, changed] = await Promise.allSettled([this.incarnation.check(), this.serverChanged()]);
    if (checked.status === 'fulfilled' && checked.value !== undefined) {
      this.#endAll(checked.value);
      return checked.value;
    }
    if (changed.status === 'fulfilled' && changed.value !== undefined) return this.dataLost(changed.value);
    if (checked.status === 'rejected') throw checked.reason;
    if (changed.status === 'rejected') throw changed.reason;
    return undefined;
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
    const ttlMs = validateSessionOptions(options, this.maxSessionTtlMs);
    this.assertOpen();
    // A server that restarted (or was replaced) since this client last looked may have lost recent writes.
    const changed = await this.serverChanged();
    // Said to the caller too, as admit() does: its sessions may have ended already for another reason (a keep-alive
    // that found them gone before the periodic check ran) and it must hear why; the next call waits out the
    // delayed restart.
    if (changed !== undefined) {
      this.#unheardLoss = undefined;
      throw this.dataLost(changed);
    }
    const unheard = this.#unheardLoss;
    this.#unheardLoss = undefined;
    if (unheard !== undefined) throw unheard;
    // No session in data that is new while a lease from before may still run elsewhere (StoreRecoveringError).
    await this.incarnation.admit((lost) => this.#expireAllLost(lost));
    // None while this host's clock runs too fast or too slow (ClockRateError).
    await this.#admitClockRate();
    const sentAtMs = this.clock.now();
    const granted = await this.grantSession(ttlMs);
    const session = this.sessions.open(granted, sentAtMs);
    if (this.#closed) {
      // close() began while the session was being created and did not see it.
      await session.close();
      throw new ClosedError(`${this.backend} store`);
    }
    try {
      // Granted in the data admit() checked, not in data that replaced it meanwhile.
      await this.incarnation.confirm((lost) => this.#expireAllLost(lost));
    } catch (error) {
      await session.close().catch(() => undefined);
      throw error;
    }
    this.#scheduleCheck();
    return session;
  }

  /**
   * While this client has sessions, re-read the incarnation every third of the shortest TTL: data lost under
   * them ends every session at once (their locks went with it).
   */
  #scheduleCheck(): void {
    if (this.#checkTimer !== undefined || this.#closed) return;
    const live = this.sessions.sessions();
    if (live.length === 0) return;
    const everyMs = Math.max(50, Math.floor(Math.min(...live.map((x) => x.ttlMs)) / 3));
    this.#checkTimer = this.clock.setTimeout(
      () => {
        this.#checkTimer = undefined;
        if (this.#closed || this.sessions.size === 0) return;
        this.#lookForLoss().then(
          () => this.#scheduleCheck(),
          // Unreachable or garbage: the keep-alives decide about the sessions; look again next time.
          () => this.#scheduleCheck(),
        );
      },
      everyMs,
      { background: true },
    );
  }

  #stopCheck(): void {
    if (this.#checkTimer !== undefined) this.clock.clearTimeout(this.#checkTimer);
    this.#checkTimer = undefined;
  }

  async get(key: string): Promise<KeyValue | undefined> {
    validateKey(key);
    this.assertOpen();
    return this.readKey(key);
  }

  async range(prefix: string): Promise<RangeResult> {
    validatePrefix(prefix);
    this.assertOpen();
    const r = await this.readRange(prefix);
    return hidesReserved(prefix) ? { ...r, kvs: r.kvs.filter((kv) => !kv.key.startsWith(RESERVED_PREFIX)) } : r;
  }

  async txn(given: Txn): Promise<TxnResult> {
    validateTxn(given);
    // A caller without types may leave `compare` or `then` out: the validator reads them as empty, so do the backends.
    const txn: Txn = { ...given, compare: given.compare ?? [], then: given.then ?? [] };
    for (const op of [...txn.then, ...(txn.else ?? [])]) {
      if ((op.op === 'put' || op.op === 'delete') && op.key.startsWith(RESERVED_PREFIX)) {
        throw new InvalidArgumentError(`keys under ${RESERVED_PREFIX} are reserved for Rebalancer's own records`);
      }
    }
    this.assertOpen();
    const session = this.sessions.ofTxn(txn);
    let r: TxnResult;
    try {
      r = await this.applyTxn(txn, session);
    } catch (err) {
      if (err instanceof SessionExpiredError) session?.markExpired(err);
      throw err;
    }
    if (!r.results.some((x) => x.op === 'range' && hidesReserved(x.prefix))) return r;
    return {
      ...r,
      results: r.results.map((x) =>
        x.op === 'range' && hidesReserved(x.prefix)
          ? { ...x, kvs: x.kvs.filter((kv) => !kv.key.startsWith(RESERVED_PREFIX)) }
          : x,
      ),
    };
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
    this.#stopCheck();
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
    this.#stopCheck();
  }
}

/** A read of `prefix` could include the reserved records, and is not a read of them on purpose. */
function hidesReserved(prefix: string): boolean {
  return RESERVED_PREFIX.startsWith(prefix) && !prefix.startsWith(RESERVED_PREFIX);
}
