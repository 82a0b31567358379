/**
 * The in-memory store client: the reference implementation of the contract,
 * and the simulator's store. Every request goes through a fault hook that can
 * delay it, fail it before or after it applies, and every watch notification
 * through one that can drop, delay (and so reorder and coalesce) it.
 */
import { ClosedError, InvalidArgumentError, SessionExpiredError, StoreUnavailableError } from '../../errors.js';
import type {
  Clock,
  CommonStoreOptions,
  KeyValue,
  Op,
  OpResult,
  RangeResult,
  Session,
  SessionOptions,
  Store,
  StoreLimits,
  Txn,
  TxnResult,
  WatchHint,
  Watcher,
} from '../../store/contract.js';
import { ManagedSession } from '../../store/session.js';
import { withTimeout } from '../../store/timeout.js';
import {
  DEFAULT_REQUEST_TIMEOUT_MS,
  STORE_LIMITS,
  evaluateCompare,
  validateDriftRate,
  validateKey,
  validateNamespace,
  validatePrefix,
  validateSessionOptions,
  validateTimeout,
  validateTxn,
} from '../../store/validate.js';
import { MemoryServer, type ServerWatcher } from './server.js';

/** What happens to one request. */
export interface RequestFate {
  /** Round-trip latency; half before the request applies, half after. */
  readonly latencyMs?: number;
  /** `before`: never applied. `after`: applied, but the response is lost. */
  readonly fail?: 'before' | 'after';
}

/** What happens to one watch notification. */
export interface NotificationFate {
  readonly drop?: boolean;
  /** Deliver later; a later notification may overtake it, or coalesce with it. */
  readonly delayMs?: number;
}

export type MemoryRequestKind = 'openSession' | 'keepAlive' | 'revoke' | 'get' | 'range' | 'txn' | 'watch';

export interface MemoryFaults {
  request?: ((kind: MemoryRequestKind) => RequestFate) | undefined;
  notification?: (() => NotificationFate) | undefined;
  /** Assemble range reads key by key over a delay of this many ms (not a snapshot), like ZooKeeper. */
  nonSnapshotRangeDelayMs?: number | undefined;
  /**
   * While this returns a promise, responses and notifications wait for it:
   * the client process is frozen (SIGSTOP), so none of its code may run.
   */
  hold?: (() => Promise<void> | undefined) | undefined;
}

export interface MemoryStoreOptions extends CommonStoreOptions {
  /** The shared server. Default: a private one on this store's clock. */
  readonly server?: MemoryServer | undefined;
  readonly faults?: MemoryFaults | undefined;
}

export class MemoryStore implements Store {
  readonly backend = 'memory';
  readonly namespace: string;
  readonly limits: StoreLimits = STORE_LIMITS;
  readonly clock: Clock;
  readonly server: MemoryServer;
  /** Fault hooks; may be replaced at any time. */
  faults: MemoryFaults;
  readonly #driftRate: number;
  readonly #timeoutMs: number;
  readonly #sessions = new Set<ManagedSession>();
  readonly #watchers = new Set<ServerWatcher & { close(): Promise<void> }>();
  #closed = false;

  constructor(options: MemoryStoreOptions = {}) {
    this.namespace = validateNamespace(options.namespace);
    this.#driftRate = validateDriftRate(options.maxClockDriftRate);
    this.#timeoutMs = validateTimeout('requestTimeoutMs', options.requestTimeoutMs, DEFAULT_REQUEST_TIMEOUT_MS);
    this.server = options.server ?? new MemoryServer(options.clock === undefined ? {} : { clock: options.clock });
    this.clock = options.clock ?? this.server.clock;
    this.faults = options.faults ?? {};
  }

  async openSession(options: SessionOptions): Promise<Session> {
    const ttlMs = validateSessionOptions(options);
    const sentAt = this.clock.now();
    const s = await this.#call('openSession', () => this.server.createSession(this.namespace, ttlMs));
    const session: ManagedSession = new ManagedSession({
      id: s.id,
      ttlMs,
      clock: this.clock,
      maxClockDriftRate: this.#driftRate,
      createdSendAtMs: sentAt,
      requestTimeoutMs: this.#timeoutMs,
      driver: {
        keepAlive: () => this.#call('keepAlive', () => (this.server.keepAlive(s.id) ? 'alive' : 'gone')),
        revoke: () => this.#call('revoke', () => this.server.endSession(s.id)),
      },
      onEnd: () => this.#sessions.delete(session),
    });
    this.#sessions.add(session);
    return session;
  }

  async get(key: string): Promise<KeyValue | undefined> {
    validateKey(key);
    return this.#call('get', () => {
      const k = this.server.namespace(this.namespace).keys.get(key);
      return k === undefined ? undefined : this.server.toKeyValue(key, k);
    });
  }

  async range(prefix: string): Promise<RangeResult> {
    validatePrefix(prefix);
    const delayMs = this.faults.nonSnapshotRangeDelayMs;
    if (delayMs === undefined) {
      return this.#call('range', () => {
        const ns = this.server.namespace(this.namespace);
        return { kvs: this.#rangeNow(prefix), revision: ns.revision, snapshot: true };
      });
    }
    // Non-snapshot: list the names now, read each value after a delay, like
    // ZooKeeper's getChildren followed by one getData per child.
    const names = await this.#call('range', () => this.#rangeNow(prefix).map((kv) => kv.key));
    await this.#delay(delayMs);
    const ns = this.server.namespace(this.namespace);
    const kvs: KeyValue[] = [];
    for (const name of names) {
      const k = ns.keys.get(name);
      if (k !== undefined) kvs.push(this.server.toKeyValue(name, k));
    }
    return { kvs, revision: ns.revision, snapshot: false };
  }

  async txn(txn: Txn): Promise<TxnResult> {
    validateTxn(txn);
    const sessionOp = [...txn.then, ...(txn.else ?? [])].find(
      (op): op is Extract<Op, { op: 'put' }> => op.op === 'put' && op.session !== undefined,
    );
    if (sessionOp?.session !== undefined) this.#ownSession(sessionOp.session).assertUsable();
    return this.#call('txn', () => this.#applyTxn(txn));
  }

  async watch(prefix: string, onHint: (hint: WatchHint) => void): Promise<Watcher> {
    validatePrefix(prefix);
    this.#assertOpen();
    await this.#call('watch', () => undefined);
    let open = true;
    let pending: { revision: number; timer: ReturnType<Clock['setTimeout']> } | undefined;
    const deliver = (hint: WatchHint): void => {
      if (!open) return;
      const held = this.faults.hold?.();
      if (held !== undefined) {
        void held.then(() => deliver(hint));
        return;
      }
      try {
        onHint(hint);
      } catch {
        // A throwing consumer must not break the store.
      }
    };
    const watcher = {
      namespace: this.namespace,
      prefix,
      notify: (hint: WatchHint): void => {
        const fate = this.faults.notification?.() ?? {};
        if (fate.drop === true) return;
        if (fate.delayMs === undefined || fate.delayMs <= 0) {
          queueMicrotask(() => deliver(hint));
          return;
        }
        if (pending !== undefined) {
          // Coalesce with the notification already waiting.
          pending.revision = Math.max(pending.revision, hint.revision);
          return;
        }
        const p = {
          revision: hint.revision,
          timer: this.clock.setTimeout(() => {
            pending = undefined;
            deliver({ revision: p.revision, reason: 'change' });
          }, fate.delayMs),
        };
        pending = p;
      },
      close: async (): Promise<void> => {
        if (!open) return;
        open = false;
        if (pending !== undefined) this.clock.clearTimeout(pending.timer);
        this.server.removeWatcher(watcher);
        this.#watchers.delete(watcher);
      },
    };
    this.server.addWatcher(watcher);
    this.#watchers.add(watcher);
    return { close: watcher.close };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of [...this.#watchers]) await w.close();
    for (const s of [...this.#sessions]) {
      // Revoke directly: the client is going away, faults no longer apply.
      this.server.endSession(s.id);
      await s.close();
    }
  }

  /**
   * Simulate this client's process dying: its sessions stop being kept alive
   * (the server expires them by TTL) and its watches stop. Unlike close(),
   * nothing is revoked.
   */
  crash(): void {
    this.#closed = true;
    for (const w of [...this.#watchers]) void w.close();
    for (const s of [...this.#sessions]) s.abandon();
    this.#sessions.clear();
  }

  // ---- internals ------------------------------------------------------------

  #rangeNow(prefix: string): KeyValue[] {
    const out: KeyValue[] = [];
    for (const [key, k] of this.server.namespace(this.namespace).keys) {
      if (key.startsWith(prefix)) out.push(this.server.toKeyValue(key, k));
    }
    out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    return out;
  }

  #applyTxn(txn: Txn): TxnResult {
    const ns = this.server.namespace(this.namespace);
    const ops = [...txn.then, ...(txn.else ?? [])];
    for (const op of ops) {
      if (op.op === 'put' && op.session !== undefined && this.server.session(op.session.id) === undefined) {
        throw new SessionExpiredError(op.session.id);
      }
    }
    const current = (key: string): KeyValue | undefined => {
      const k = ns.keys.get(key);
      return k === undefined ? undefined : this.server.toKeyValue(key, k);
    };
    const succeeded = txn.compare.every((c) => evaluateCompare(c, current(c.key)));
    const branch = succeeded ? txn.then : (txn.else ?? []);
    const revision = ns.revision + 1;
    const changed: string[] = [];
    const results: OpResult[] = [];
    for (const op of branch) {
      switch (op.op) {
        case 'get':
          results.push({ op: 'get', key: op.key, kv: current(op.key) });
          break;
        case 'range':
          results.push({ op: 'range', prefix: op.prefix, kvs: this.#rangeNow(op.prefix) });
          break;
        case 'put': {
          const prev = ns.keys.get(op.key);
          const sessionId = op.session?.id;
          ns.keys.set(op.key, {
            value: op.value,
            version: (prev?.version ?? 0) + 1,
            createRevision: prev?.createRevision ?? revision,
            modRevision: revision,
            sessionId,
          });
          this.server.attach(op.key, sessionId, prev?.sessionId);
          changed.push(op.key);
          results.push({ op: 'put', key: op.key });
          break;
        }
        case 'delete': {
          const prev = ns.keys.get(op.key);
          if (prev !== undefined) {
            ns.keys.delete(op.key);
            this.server.attach(op.key, undefined, prev.sessionId);
            changed.push(op.key);
          }
          results.push({ op: 'delete', key: op.key, deleted: prev === undefined ? 0 : 1 });
          break;
        }
        case 'deletePrefix': {
          let deleted = 0;
          for (const [key, k] of [...ns.keys]) {
            if (!key.startsWith(op.prefix)) continue;
            ns.keys.delete(key);
            this.server.attach(key, undefined, k.sessionId);
            changed.push(key);
            deleted++;
          }
          results.push({ op: 'deletePrefix', prefix: op.prefix, deleted });
          break;
        }
      }
    }
    if (changed.length > 0) {
      ns.revision = revision;
      this.server.publish(this.namespace, changed, revision);
    }
    return { succeeded, revision: ns.revision, results };
  }

  #ownSession(session: Session): ManagedSession {
    if (!(session instanceof ManagedSession) || !this.#sessions.has(session)) {
      if (session instanceof ManagedSession && !session.usable) throw new SessionExpiredError(session.id);
      throw new InvalidArgumentError(`session ${String(session?.id)} was not opened by this store`);
    }
    return session;
  }

  #assertOpen(): void {
    if (this.#closed) throw new ClosedError('memory store');
  }

  #delay(ms: number): Promise<void> {
    if (ms <= 0) return Promise.resolve();
    return new Promise((resolve) => this.clock.setTimeout(resolve, ms));
  }

  /** Wait while the client is frozen (faults.hold). */
  async #thaw(): Promise<void> {
    for (let held = this.faults.hold?.(); held !== undefined; held = this.faults.hold?.()) await held;
  }

  /** One request through the fault hook: half the latency, apply, the other half. */
  #call<T>(kind: MemoryRequestKind, apply: () => T): Promise<T> {
    this.#assertOpen();
    const fate = this.faults.request?.(kind) ?? {};
    const half = (fate.latencyMs ?? 0) / 2;
    const run = async (): Promise<T> => {
      await this.#delay(half);
      if (fate.fail === 'before') {
        await this.#thaw();
        throw new StoreUnavailableError(`memory store: injected failure of ${kind}`, { outcome: 'not-applied' });
      }
      const result = apply();
      await this.#delay(half);
      await this.#thaw();
      if (fate.fail === 'after') {
        throw new StoreUnavailableError(`memory store: injected lost response of ${kind}`, { outcome: 'unknown' });
      }
      return result;
    };
    return half * 2 >= this.#timeoutMs ? withTimeout(run(), this.#timeoutMs, this.clock) : run();
  }
}
