/**
 * The in-memory store client: the reference implementation of the contract,
 * and the simulator's store. Every request goes through a fault hook that can
 * delay it, fail it before or after it applies, and every watch notification
 * through one that can drop, delay (and so reorder and coalesce) it.
 */
import { InvalidArgumentError, SessionExpiredError, StoreUnavailableError } from '../../errors.js';
import { OptionReader } from '../../options.js';
import type { ServerIdentity } from '../../store/incarnation.js';
import { StoreBase } from '../../store/base.js';
import { sleep } from '../../store/clock.js';
import type {
  CommonStoreOptions,
  KeyValue,
  TimerHandle,
  OpResult,
  RangeResult,
  Txn,
  TxnResult,
  WatchHint,
  Watcher,
} from '../../store/contract.js';
import type { GrantedSession } from '../../store/sessions.js';
import { withTimeout } from '../../store/timeout.js';
import { chooseBranch, readStoreOptions } from '../../store/validate.js';
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

export type MemoryRequestKind = 'openSession' | 'keepAlive' | 'revoke' | 'get' | 'range' | 'txn' | 'watch' | 'time';

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
  /**
   * A deliberately broken variant for the simulator (the mutant `no-delayed-restart`): after the server lost its
   * data, a new namespace is granted sessions at once instead of after the longest TTL.
   */
  skipDelayedRestart?: boolean | undefined;
  /**
   * The simulator's baseline without the clock-rate check (`clockRateCheck: false`): keep-alives do not carry the
   * server's clock, as on etcd or ZooKeeper.
   */
  skipClockRateCheck?: boolean | undefined;
}

export interface MemoryStoreOptions extends CommonStoreOptions {
  /** The shared server. Default: a private one on this store's clock. */
  readonly server?: MemoryServer | undefined;
  readonly faults?: MemoryFaults | undefined;
}

export class MemoryStore extends StoreBase {
  readonly backend = 'memory';
  /** Keep-alives carry the server's clock (the simulator's world clock): a client clock-rate fault is caught. */
  override readonly clockRateCheck = 'server' as const;
  readonly server: MemoryServer;
  /** Fault hooks; may be replaced at any time. */
  faults: MemoryFaults;
  readonly #watchers = new Set<ServerWatcher & { close(): Promise<void> }>();

  constructor(options: MemoryStoreOptions = {}) {
    const r = new OptionReader(options, 'MemoryStore options');
    const server = r.raw('server');
    if (server !== undefined && !(server instanceof MemoryServer)) {
      throw new InvalidArgumentError('MemoryStore options.server must be a MemoryServer (from rebalancer/memory)');
    }
    const faults = r.raw('faults') ?? {};
    if (faults === null || typeof faults !== 'object') {
      throw new InvalidArgumentError('MemoryStore options.faults must be an object of fault hooks');
    }
    // The store runs on the shared server's clock unless given one of its own.
    const settings = readStoreOptions(r, server?.clock);
    r.done();
    super(settings);
    this.server = server ?? new MemoryServer({ clock: settings.clock });
    this.faults = faults as MemoryFaults;
  }

  protected override skipsDelayedRestart(): boolean {
    return this.faults.skipDelayedRestart === true;
  }

  /** Like a Redis server that does not persist: a new identity after each loss, young for the rest of the TTL. */
  protected override serverIdentity(fullWaitMs: number): Promise<ServerIdentity | undefined> {
    const lostAt = this.server.lostDataAtMs;
    return Promise.resolve({
      id: `memory-${lostAt ?? 'first'}`,
      youngForMs: lostAt === undefined ? 0 : Math.max(0, fullWaitMs - (this.server.clock.now() - lostAt)),
      persists: false,
    });
  }

  protected async grantSession(ttlMs: number): Promise<GrantedSession<undefined>> {
    const s = await this.#call('openSession', () => this.server.createSession(this.namespace, ttlMs));
    return {
      id: s.id,
      ttlMs,
      data: undefined,
      driver: {
        keepAlive: () =>
          this.#call('keepAlive', () =>
            this.server.keepAlive(s.id)
              ? this.faults.skipClockRateCheck === true
                ? 'alive'
                : { alive: true as const, serverTimeMs: this.server.clock.now() }
              : 'gone',
          ),
        // A closing client revokes directly: it is going away, faults no longer apply.
        revoke: () =>
          this.closed
            ? Promise.resolve(this.server.endSession(s.id))
            : this.#call('revoke', () => this.server.endSession(s.id)),
      },
    };
  }

  protected override readServerTimeMs(): Promise<number> {
    return this.#call('time', () => this.server.clock.now());
  }

  protected readKey(key: string): Promise<KeyValue | undefined> {
    return this.#call('get', () => {
      const k = this.server.namespace(this.namespace).keys.get(key);
      return k === undefined ? undefined : this.server.toKeyValue(key, k);
    });
  }

  protected async readRange(prefix: string): Promise<RangeResult> {
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

  protected applyTxn(txn: Txn): Promise<TxnResult> {
    return this.#call('txn', () => this.#apply(txn));
  }

  protected async startWatch(prefix: string, onHint: (hint: WatchHint) => void): Promise<Watcher> {
    await this.#call('watch', () => undefined);
    let open = true;
    let pending: { revision: number; timer: TimerHandle } | undefined;
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

  protected async closeStore(): Promise<void> {
    for (const w of [...this.#watchers]) await w.close();
    await this.sessions.closeAll();
  }

  /**
   * Simulate this client's process dying: its sessions stop being kept alive
   * (the server expires them by TTL) and its watches stop. Unlike close(),
   * nothing is revoked.
   */
  crash(): void {
    this.markClosed();
    for (const w of [...this.#watchers]) void w.close();
    this.sessions.abandonAll();
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

  #apply(txn: Txn): TxnResult {
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
    const { succeeded, branch } = chooseBranch(txn, current);
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

  #delay(ms: number): Promise<void> {
    if (ms <= 0) return Promise.resolve();
    return sleep(this.clock, ms);
  }

  /** Wait while the client is frozen (faults.hold). */
  async #thaw(): Promise<void> {
    for (let held = this.faults.hold?.(); held !== undefined; held = this.faults.hold?.()) await held;
  }

  /** One request through the fault hook: half the latency, apply, the other half. */
  #call<T>(kind: MemoryRequestKind, apply: () => T): Promise<T> {
    this.assertOpen();
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
    return half * 2 >= this.requestTimeoutMs ? withTimeout(run(), this.requestTimeoutMs, this.clock) : run();
  }
}
