/**
 * The etcd backend: the contract maps onto etcd v3 almost one to one.
 *
 * - Sessions are leases (TTL in whole seconds, at least etcd's minimum —
 *   2 s with default timing; `ttlMs` reports what etcd granted). Keys are
 *   attached by putting them with the lease; etcd deletes them when the lease
 *   expires, by the leader's clock.
 * - Transactions are etcd txns; revisions are etcd's global revision (one
 *   monotonic counter shared by all namespaces, which the contract allows).
 * - Watches are etcd range watches (see watch.ts).
 *
 * Keep-alives do not use etcd3's background loop: ManagedSession sends one
 * LeaseKeepAlive exchange per beat, each bounded by requestTimeoutMs, and owns
 * the local safety deadline. (etcd3's loop learns of a loss only after 2×TTL
 * under a silent partition.) etcd3's cockatiel retry and circuit-breaker
 * policies are replaced by pass-throughs: every request here is bounded by
 * one requestTimeoutMs, and retried inside it only when that is safe.
 */
import { Etcd3, type IOptions, type IResponseHeader, type ITxnResponse } from 'etcd3';
import {
  ClosedError,
  CorruptDataError,
  IncompatibleSchemaError,
  InvalidArgumentError,
  SessionExpiredError,
  StoreUnavailableError,
} from '../../errors.js';
import { systemClock } from '../../store/clock.js';
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
  decodeUtf8,
  validateDriftRate,
  validateKey,
  validateNamespace,
  validatePrefix,
  validateSessionOptions,
  validateTimeout,
  validateTxn,
} from '../../store/validate.js';
import { KeySpace, LAYOUT_VERSION, leaseToSessionId } from './codec.js';
import { isLeaseNotFound, isNotApplied, isTransient, toStoreError, type RequestKind } from './errors.js';
import { parseEtcdUrl } from './url.js';
import { networkClock } from './timers.js';
import { EtcdWatch } from './watch.js';

/** Connection options passed through to the etcd3 driver (TLS, auth, gRPC channel). */
export interface EtcdClientOptions {
  /**
   * TLS: CA certificate, and a client certificate and key for mutual TLS.
   * Implies TLS even for etcd:// URLs. Without it, etcds:// uses the system's CAs.
   */
  readonly credentials?:
    | {
        readonly rootCertificate: Buffer;
        readonly privateKey?: Buffer | undefined;
        readonly certChain?: Buffer | undefined;
      }
    | undefined;
  /** etcd user/password authentication (overrides credentials given in the URL). */
  readonly auth?: { readonly username: string; readonly password: string } | undefined;
  /** Extra gRPC channel options (e.g. `grpc.ssl_target_name_override`); merged over this backend's defaults. */
  readonly grpcOptions?: Readonly<Record<string, string | number>> | undefined;
}

export interface EtcdStoreOptions extends CommonStoreOptions {
  /** `etcd://host:port[,host:port…]` or `etcds://…`; or give `hosts`. */
  readonly url?: string | undefined;
  /** Endpoints with scheme, e.g. `['http://10.0.0.1:2379', 'http://10.0.0.2:2379']`. */
  readonly hosts?: string | readonly string[] | undefined;
  readonly etcd?: EtcdClientOptions | undefined;
}

type PassThroughPolicy = NonNullable<NonNullable<IOptions['faultHandling']>['global']>;

/** A cockatiel-shaped policy that just runs the call: retries are decided here, inside the request deadline. */
const passThrough = {
  execute: (fn: (ctx: { signal: AbortSignal; attempt: number }) => unknown, signal?: AbortSignal) =>
    Promise.resolve().then(() => fn({ signal: signal ?? new AbortController().signal, attempt: 0 })),
} as unknown as PassThroughPolicy;

/** The gRPC call options we set: an absolute deadline (ms since the epoch). */
interface CallOptions {
  readonly deadline: number;
}

interface OwnedSession {
  readonly session: ManagedSession;
  /** etcd lease id (signed decimal, as the driver wants it). */
  readonly lease: string;
}

const MAX_BACKOFF_MS = 400;

export class EtcdStore implements Store {
  readonly backend = 'etcd';
  readonly namespace: string;
  readonly limits: StoreLimits = STORE_LIMITS;
  readonly clock: Clock;
  /** Endpoints this store talks to. */
  readonly hosts: readonly string[];
  readonly #keys: KeySpace;
  readonly #driftRate: number;
  readonly #timeoutMs: number;
  readonly #client: Etcd3;
  readonly #sessions = new Map<string, OwnedSession>();
  readonly #watchers = new Set<EtcdWatch>();
  /** Highest revision seen in a KV response; a later request answered below it means the cluster lost its data. */
  #maxRevision = 0;
  #closed = false;
  #closing: Promise<void> | undefined;

  /** Use createEtcdStore: it also checks the namespace's layout version. */
  constructor(options: EtcdStoreOptions) {
    this.namespace = validateNamespace(options.namespace);
    this.#driftRate = validateDriftRate(options.maxClockDriftRate);
    this.#timeoutMs = validateTimeout('requestTimeoutMs', options.requestTimeoutMs, DEFAULT_REQUEST_TIMEOUT_MS);
    this.clock = options.clock ?? systemClock;
    this.#keys = new KeySpace(this.namespace);
    const { hosts, auth } = resolveEndpoints(options);
    this.hosts = hosts;
    const etcd = options.etcd ?? {};
    const timeoutMs = this.#timeoutMs;
    const clientOptions: IOptions = {
      hosts: [...hosts],
      grpcOptions: {
        // Each store owns its connections (the contract), and a restarted
        // server is re-dialled quickly rather than after gRPC's 2-minute max backoff.
        'grpc.use_local_subchannel_pool': 1,
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': 1000,
        // Detects a dead connection that no request is using (etcd allows pings every 5 s).
        'grpc.keepalive_time_ms': 10_000,
        'grpc.keepalive_timeout_ms': Math.min(timeoutMs, 10_000),
        'grpc.max_receive_message_length': -1,
        ...etcd.grpcOptions,
      },
      faultHandling: { host: () => passThrough, global: passThrough },
      // Bounds calls made inside the driver (the auth token exchange); ours pass their own deadline.
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeoutMs }),
    };
    if (etcd.credentials !== undefined) {
      const c = etcd.credentials;
      clientOptions.credentials = {
        rootCertificate: c.rootCertificate,
        ...(c.privateKey === undefined ? {} : { privateKey: c.privateKey }),
        ...(c.certChain === undefined ? {} : { certChain: c.certChain }),
      };
    }
    const user = etcd.auth ?? auth;
    if (user !== undefined) clientOptions.auth = { username: user.username, password: user.password };
    try {
      this.#client = new Etcd3(clientOptions);
    } catch (cause) {
      throw new InvalidArgumentError(`etcd client options are invalid: ${(cause as Error).message}`, { cause });
    }
  }

  /** Create the namespace's layout marker, or check the one that is there. Changes nothing on a mismatch. */
  async init(): Promise<void> {
    const key = this.#keys.layoutKey;
    const res = await this.#request('check the layout version', 'idempotent', (opts) =>
      this.#client.kv.txn(
        {
          compare: [{ key, target: 'Version', result: 'Equal', version: 0 }],
          success: [{ request_put: { key, value: Buffer.from(String(LAYOUT_VERSION)) } }],
          failure: [{ request_range: { key } }],
        },
        opts,
      ),
    );
    this.#observe(res.header, 0);
    if (res.succeeded) return;
    const kv = res.responses[0]?.response_range?.kvs[0];
    if (kv === undefined) return; // deleted in between: nothing to disagree with
    const where = `etcd namespace ${this.#keys.root}`;
    const text = decodeUtf8(kv.value, 'the layout version', `${this.#keys.root}layout`);
    if (!/^[0-9]{1,9}$/.test(text)) {
      throw new CorruptDataError(
        `${where}: layout version ${JSON.stringify(text)} is not a number; it was not written by Rebalancer`,
      );
    }
    const found = Number(text);
    if (found !== LAYOUT_VERSION) throw new IncompatibleSchemaError(found, LAYOUT_VERSION, where);
  }

  async openSession(options: SessionOptions): Promise<Session> {
    const ttlMs = validateSessionOptions(options);
    this.#assertOpen();
    const sentAt = this.clock.now();
    const grant = await this.#request('lease grant', 'write', (opts) =>
      this.#client.leaseClient.leaseGrant({ TTL: Math.ceil(ttlMs / 1000) }, opts),
    );
    const grantedS = Number(grant.TTL);
    if (grant.error !== '' || !(grantedS > 0)) {
      throw new StoreUnavailableError(`etcd refused the lease: ${grant.error || `granted TTL ${grant.TTL}`}`, {
        outcome: 'not-applied',
      });
    }
    const lease = grant.ID;
    const id = leaseToSessionId(lease);
    // One keep-alive stuck on a dead connection must not use up the whole
    // TTL: give each at most a beat (TTL/3), so the next one, on a fresh
    // connection, still has time.
    const keepAliveTimeoutMs = Math.min(this.#timeoutMs, Math.max(500, Math.floor((grantedS * 1000) / 3)));
    const session: ManagedSession = new ManagedSession({
      id,
      ttlMs: grantedS * 1000,
      clock: this.clock,
      maxClockDriftRate: this.#driftRate,
      createdSendAtMs: sentAt,
      requestTimeoutMs: this.#timeoutMs,
      driver: {
        keepAlive: () => this.#keepAlive(lease, keepAliveTimeoutMs),
        revoke: () => this.#revoke(lease),
      },
      onEnd: (end) => {
        this.#sessions.delete(id);
        // Expired locally (no acknowledgement in time): the lease may still be
        // alive on the server with our keys. Nobody will keep it alive, but
        // revoking it ends it now rather than a TTL later. Best effort.
        if (end.state === 'expired' && !this.#closed) void this.#revoke(lease).catch(() => undefined);
      },
    });
    if (this.#closed) {
      await session.close();
      throw new ClosedError('etcd store');
    }
    this.#sessions.set(id, { session, lease });
    return session;
  }

  async get(key: string): Promise<KeyValue | undefined> {
    validateKey(key);
    this.#assertOpen();
    const floor = this.#maxRevision;
    const res = await this.#request('get', 'read', (opts) => this.#client.kv.range({ key: this.#keys.key(key) }, opts));
    this.#observe(res.header, floor);
    const kv = res.kvs[0];
    return kv === undefined ? undefined : this.#keys.toKeyValue(kv);
  }

  async range(prefix: string): Promise<RangeResult> {
    validatePrefix(prefix);
    this.#assertOpen();
    const floor = this.#maxRevision;
    const res = await this.#request('range', 'read', (opts) => this.#client.kv.range(this.#keys.range(prefix), opts));
    const revision = this.#observe(res.header, floor);
    // One range request is one MVCC snapshot.
    return { kvs: this.#keys.toKeyValues(res.kvs), revision, snapshot: true };
  }

  async txn(txn: Txn): Promise<TxnResult> {
    validateTxn(txn);
    this.#assertOpen();
    const otherwise = txn.else ?? [];
    const sessionOp = [...txn.then, ...otherwise].find(
      (op): op is Extract<Op, { op: 'put' }> => op.op === 'put' && op.session !== undefined,
    );
    let owned: OwnedSession | undefined;
    if (sessionOp?.session !== undefined) {
      owned = this.#ownSession(sessionOp.session);
      owned.session.assertUsable();
    }
    const leaseOf = (op: Op): string | undefined =>
      op.op === 'put' && op.session !== undefined ? owned?.lease : undefined;
    const request = {
      compare: txn.compare.map((c) => this.#keys.compare(c)),
      success: txn.then.map((op) => this.#keys.op(op, leaseOf(op))),
      failure: otherwise.map((op) => this.#keys.op(op, leaseOf(op))),
    };
    const floor = this.#maxRevision;
    let res: ITxnResponse;
    try {
      res = await this.#request('txn', 'write', (opts) => this.#client.kv.txn(request, opts));
    } catch (err) {
      if (owned !== undefined && err instanceof SessionExpiredError) {
        const id = owned.session.id;
        const expired = new SessionExpiredError(
          id,
          `session ${id} has expired on the server (etcd: lease not found); nothing was written`,
          {
            cause: err,
          },
        );
        owned.session.markExpired(expired);
        throw expired;
      }
      throw err;
    }
    const revision = this.#observe(res.header, floor);
    const branch = res.succeeded ? txn.then : otherwise;
    const results: OpResult[] = branch.map((op, i) => {
      const r = res.responses[i];
      switch (op.op) {
        case 'put':
          return { op: 'put', key: op.key };
        case 'delete':
          return { op: 'delete', key: op.key, deleted: Number(r?.response_delete_range?.deleted ?? 0) };
        case 'deletePrefix':
          return { op: 'deletePrefix', prefix: op.prefix, deleted: Number(r?.response_delete_range?.deleted ?? 0) };
        case 'get': {
          const kv = r?.response_range?.kvs[0];
          return { op: 'get', key: op.key, kv: kv === undefined ? undefined : this.#keys.toKeyValue(kv) };
        }
        case 'range':
          return { op: 'range', prefix: op.prefix, kvs: this.#keys.toKeyValues(r?.response_range?.kvs ?? []) };
      }
    });
    return { succeeded: res.succeeded, revision, results };
  }

  async watch(prefix: string, onHint: (hint: WatchHint) => void): Promise<Watcher> {
    validatePrefix(prefix);
    if (typeof onHint !== 'function') throw new InvalidArgumentError('watch needs an onHint function');
    this.#assertOpen();
    const w = new EtcdWatch({
      client: this.#client.watchClient,
      clock: networkClock,
      requestTimeoutMs: this.#timeoutMs,
      range: this.#keys.range(prefix),
      onHint,
      onClose: (x) => this.#watchers.delete(x),
    });
    this.#watchers.add(w);
    await w.start();
    return w;
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    for (const w of [...this.#watchers]) await w.close();
    // Revoke leases in parallel: each is bounded by requestTimeoutMs.
    await Promise.all([...this.#sessions.values()].map((s) => s.session.close()));
    this.#sessions.clear();
    this.#client.close();
  }

  // ---- internals ------------------------------------------------------------

  #assertOpen(): void {
    if (this.#closed) throw new ClosedError('etcd store');
  }

  #ownSession(session: Session): OwnedSession {
    const owned = this.#sessions.get(session?.id);
    if (owned === undefined || owned.session !== session) {
      if (session instanceof ManagedSession && !session.usable) throw new SessionExpiredError(session.id);
      throw new InvalidArgumentError(`session ${String(session?.id)} was not opened by this store`);
    }
    return owned;
  }

  /**
   * Record a response's revision. Linearizable requests sent after another
   * completed never see an older revision — unless the cluster was rebuilt
   * from nothing, which would let revisions (and fencing tokens) repeat.
   */
  #observe(header: IResponseHeader, floor: number): number {
    const revision = Number(header.revision);
    if (revision < floor) {
      const err = new CorruptDataError(
        `etcd revision went backwards (${revision} after ${floor}): the cluster lost its data or was replaced. ` +
          'Revisions and fencing tokens may repeat; every session is treated as expired. Restore the cluster or use a new namespace.',
      );
      for (const s of this.#sessions.values()) s.session.markExpired(err);
      throw err;
    }
    if (revision > this.#maxRevision) this.#maxRevision = revision;
    return revision;
  }

  /**
   * One logical request, bounded by requestTimeoutMs in total. Failed
   * attempts are retried (on another member when several are configured)
   * only when resending is safe for `kind`.
   */
  async #request<T>(
    what: string,
    kind: RequestKind,
    call: (opts: CallOptions) => Promise<T>,
    timeoutMs = this.#timeoutMs,
  ): Promise<T> {
    const clock = networkClock;
    const deadlineAt = clock.now() + timeoutMs;
    let backoffMs = 25;
    for (;;) {
      const remainingMs = Math.max(1, deadlineAt - clock.now());
      try {
        return await withTimeout(call({ deadline: Date.now() + remainingMs }), remainingMs, clock);
      } catch (err) {
        if (isLeaseNotFound(err))
          throw new SessionExpiredError('(unknown)', `etcd: the session's lease is gone (${(err as Error).message})`, {
            cause: err,
          });
        const retry = kind === 'write' ? isNotApplied(err) : isTransient(err);
        if (!retry || this.#closed || clock.now() + backoffMs >= deadlineAt) throw toStoreError(err, what, kind);
        await new Promise<void>((r) => clock.setTimeout(r, backoffMs));
        backoffMs = Math.min(backoffMs * 2, MAX_BACKOFF_MS);
      }
    }
  }

  async #keepAlive(lease: string, timeoutMs: number): Promise<'alive' | 'gone'> {
    const res = await this.#request(
      'lease keep-alive',
      'read',
      async (opts) => {
        const stream = await this.#client.leaseClient.leaseKeepAlive(opts);
        return new Promise<{ TTL: string }>((resolve, reject) => {
          let settled = false;
          stream.on('data', (r) => {
            if (settled) return;
            settled = true;
            resolve(r);
            // end() first: etcd3 resets the host's channels when a writable stream errors.
            stream.end();
            stream.cancel();
          });
          stream.on('error', (err) => {
            if (settled) return;
            settled = true;
            reject(err);
          });
          stream.on('end', () => {
            if (settled) return;
            settled = true;
            reject(
              new StoreUnavailableError('etcd lease keep-alive stream ended without an answer', {
                outcome: 'not-applied',
              }),
            );
          });
          stream.write({ ID: lease });
        });
      },
      timeoutMs,
    );
    // etcd answers TTL 0 (or -1) for a lease it no longer has.
    return Number(res.TTL) > 0 ? 'alive' : 'gone';
  }

  async #revoke(lease: string): Promise<void> {
    try {
      await this.#request('lease revoke', 'idempotent', (opts) =>
        this.#client.leaseClient.leaseRevoke({ ID: lease }, opts),
      );
    } catch (err) {
      if (err instanceof SessionExpiredError) return; // already gone: that is what we wanted
      throw err;
    }
  }
}

function resolveEndpoints(options: EtcdStoreOptions): {
  hosts: string[];
  auth: { username: string; password: string } | undefined;
} {
  if (options.url !== undefined) {
    if (options.hosts !== undefined)
      throw new InvalidArgumentError('give either url or hosts for the etcd store, not both');
    const parsed = parseEtcdUrl(options.url);
    return { hosts: [...parsed.hosts], auth: parsed.auth };
  }
  const raw = options.hosts;
  const list = typeof raw === 'string' ? [raw] : raw === undefined ? [] : [...raw];
  if (list.length === 0) {
    throw new InvalidArgumentError(
      "the etcd store needs url (e.g. 'etcd://127.0.0.1:2379') or hosts (e.g. ['http://127.0.0.1:2379'])",
    );
  }
  const schemes = new Set<string>();
  for (const h of list) {
    const m = typeof h === 'string' ? /^(https?):\/\/[^/?#\s]+$/.exec(h) : null;
    if (m === null) {
      throw new InvalidArgumentError(
        `etcd host ${JSON.stringify(h)} is invalid: use http://host:port or https://host:port`,
      );
    }
    schemes.add(m[1]!);
  }
  if (schemes.size > 1) throw new InvalidArgumentError('etcd hosts must all use http:// or all https://, not a mix');
  return { hosts: list, auth: undefined };
}
