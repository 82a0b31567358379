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
  CorruptDataError,
  IncompatibleSchemaError,
  InvalidArgumentError,
  SessionExpiredError,
  StoreUnavailableError,
} from '../../errors.js';
import { OptionReader, stringList } from '../../options.js';
import { StoreBase } from '../../store/base.js';
import { sleep } from '../../store/clock.js';
import type {
  CommonStoreOptions,
  KeyValue,
  Op,
  OpResult,
  RangeResult,
  Txn,
  TxnResult,
  WatchHint,
  Watcher,
} from '../../store/contract.js';
import type { ManagedSession } from '../../store/session.js';
import type { GrantedSession } from '../../store/sessions.js';
import { OUTCOME_UNKNOWN } from '../../store/network.js';
import { withTimeout } from '../../store/timeout.js';
import { decodeUtf8, readStoreOptions, type StoreSettings } from '../../store/validate.js';
import { KeySpace, LAYOUT_VERSION, leaseToSessionId } from './codec.js';
import { clusterName, isLeaseNotFound, isNotApplied, isTransient, toStoreError, type RequestKind } from './errors.js';
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

/** EtcdStoreOptions, checked. */
interface EtcdSettings extends StoreSettings {
  readonly hosts: readonly string[];
  readonly auth: { readonly username: string; readonly password: string } | undefined;
  readonly credentials: EtcdClientOptions['credentials'];
  readonly grpcOptions: Readonly<Record<string, string | number>>;
}

function readEtcdOptions(options: EtcdStoreOptions): EtcdSettings {
  const r = new OptionReader(options, 'createEtcdStore options');
  const settings = readStoreOptions(r);
  const url = r.string('url', undefined, 4096);
  const hosts = r.raw('hosts');
  const e = r.object('etcd');
  let credentials: EtcdClientOptions['credentials'];
  let auth: EtcdSettings['auth'];
  let grpcOptions: Record<string, string | number> = {};
  if (e !== undefined) {
    const c = e.object('credentials');
    if (c !== undefined) {
      const buffer = (name: string, required: boolean): Buffer | undefined => {
        const v = c.raw(name);
        if (v === undefined && !required) return undefined;
        if (!Buffer.isBuffer(v)) {
          throw new InvalidArgumentError(`createEtcdStore options.etcd.credentials.${name} must be a Buffer (PEM)`);
        }
        return v;
      };
      const rootCertificate = buffer('rootCertificate', true) as Buffer;
      const privateKey = buffer('privateKey', false);
      const certChain = buffer('certChain', false);
      c.done();
      credentials = { rootCertificate, privateKey, certChain };
    }
    const a = e.object('auth');
    if (a !== undefined) {
      const username = a.required<string>('username', (v) => (typeof v === 'string' ? undefined : 'must be a string'));
      const password = a.required<string>('password', (v) => (typeof v === 'string' ? undefined : 'must be a string'));
      a.done();
      auth = { username, password };
    }
    const g = e.raw('grpcOptions');
    if (g !== undefined) {
      if (g === null || typeof g !== 'object' || Array.isArray(g)) {
        throw new InvalidArgumentError(
          'createEtcdStore options.etcd.grpcOptions must be an object of gRPC channel options',
        );
      }
      grpcOptions = g as Record<string, string | number>;
    }
    e.done();
  }
  r.done();
  const endpoints = resolveEndpoints(url, hosts);
  return { ...settings, hosts: endpoints.hosts, auth: auth ?? endpoints.auth, credentials, grpcOptions };
}

const MAX_BACKOFF_MS = 400;

/** Each session's etcd lease id (signed decimal, as the driver wants it). */
export class EtcdStore extends StoreBase<string> {
  readonly backend = 'etcd';
  /** Endpoints this store talks to. */
  readonly hosts: readonly string[];
  /** "etcd at host:port…", for messages. */
  readonly #where: string;
  readonly #keys: KeySpace;
  readonly #client: Etcd3;
  readonly #watchers = new Set<EtcdWatch>();
  /** Highest revision seen in a KV response; a later request answered below it means the cluster lost its data. */
  #maxRevision = 0;

  /** Use createEtcdStore: it also checks the namespace's layout version. */
  constructor(options: EtcdStoreOptions) {
    const settings = readEtcdOptions(options);
    super(settings);
    this.#keys = new KeySpace(this.namespace);
    this.hosts = settings.hosts;
    this.#where = clusterName(settings.hosts);
    const timeoutMs = this.requestTimeoutMs;
    const clientOptions: IOptions = {
      hosts: [...settings.hosts],
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
        ...settings.grpcOptions,
      },
      faultHandling: { host: () => passThrough, global: passThrough },
      // Bounds calls made inside the driver (the auth token exchange); ours pass their own deadline.
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeoutMs }),
    };
    const c = settings.credentials;
    if (c !== undefined) {
      clientOptions.credentials = {
        rootCertificate: c.rootCertificate,
        ...(c.privateKey === undefined ? {} : { privateKey: c.privateKey }),
        ...(c.certChain === undefined ? {} : { certChain: c.certChain }),
      };
    }
    const user = settings.auth;
    if (user !== undefined) clientOptions.auth = { username: user.username, password: user.password };
    try {
      this.#client = new Etcd3(clientOptions);
    } catch (cause) {
      throw new InvalidArgumentError(
        'the etcd client refused its options (TLS credentials or gRPC options); check them (the cause says which)',
        { cause },
      );
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

  protected async grantSession(ttlMs: number): Promise<GrantedSession<string>> {
    const grant = await this.#request('lease grant', 'write', (opts) =>
      this.#client.leaseClient.leaseGrant({ TTL: Math.ceil(ttlMs / 1000) }, opts),
    );
    const grantedS = Number(grant.TTL);
    if (grant.error !== '' || !(grantedS > 0)) {
      throw new StoreUnavailableError(
        `${this.#where} refused to grant a lease of ${Math.ceil(ttlMs / 1000)} s (it granted ${grant.TTL} s); retry, ` +
          "or check the server's lease limits",
        { cause: grant.error === '' ? undefined : new Error(grant.error), outcome: 'not-applied' },
      );
    }
    const lease = grant.ID;
    // One keep-alive stuck on a dead connection must not use up the whole
    // TTL: give each at most a third of the TTL, so the next one, on a fresh
    // connection, still has time.
    const keepAliveTimeoutMs = Math.min(this.requestTimeoutMs, Math.max(500, Math.floor((grantedS * 1000) / 3)));
    return {
      id: leaseToSessionId(lease),
      ttlMs: grantedS * 1000,
      data: lease,
      driver: {
        keepAlive: () => this.#keepAlive(lease, keepAliveTimeoutMs),
        revoke: () => this.#revoke(lease),
      },
      onEnd: (_session, end) => {
        // Expired locally (no acknowledgement in time): the lease may still be
        // alive on the server with our keys. Nobody will keep it alive, but
        // revoking it ends it now rather than a TTL later. Best effort.
        if (end.state === 'expired' && !this.closed) void this.#revoke(lease).catch(() => undefined);
      },
    };
  }

  protected async readKey(key: string): Promise<KeyValue | undefined> {
    const floor = this.#maxRevision;
    const res = await this.#request('get', 'read', (opts) => this.#client.kv.range({ key: this.#keys.key(key) }, opts));
    this.#observe(res.header, floor);
    const kv = res.kvs[0];
    return kv === undefined ? undefined : this.#keys.toKeyValue(kv);
  }

  protected async readRange(prefix: string): Promise<RangeResult> {
    const floor = this.#maxRevision;
    const res = await this.#request('range', 'read', (opts) => this.#client.kv.range(this.#keys.range(prefix), opts));
    const revision = this.#observe(res.header, floor);
    // One range request is one MVCC snapshot.
    return { kvs: this.#keys.toKeyValues(res.kvs), revision, snapshot: true };
  }

  protected async applyTxn(txn: Txn, session: ManagedSession | undefined): Promise<TxnResult> {
    const otherwise = txn.else ?? [];
    const lease = session === undefined ? undefined : this.sessions.dataOf(session);
    const leaseOf = (op: Op): string | undefined => (op.op === 'put' && op.session !== undefined ? lease : undefined);
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
      if (session !== undefined && err instanceof SessionExpiredError) {
        throw new SessionExpiredError(
          session.id,
          `session ${session.id} has expired on the server (etcd: lease not found); nothing was written`,
          { cause: err },
        );
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

  protected async startWatch(prefix: string, onHint: (hint: WatchHint) => void): Promise<Watcher> {
    const w = new EtcdWatch({
      client: this.#client.watchClient,
      clock: networkClock,
      requestTimeoutMs: this.requestTimeoutMs,
      where: this.#where,
      range: this.#keys.range(prefix),
      onHint,
      onClose: (x) => this.#watchers.delete(x),
    });
    this.#watchers.add(w);
    await w.start();
    return w;
  }

  protected async closeStore(): Promise<void> {
    for (const w of [...this.#watchers]) await w.close();
    // Revoke leases in parallel: each is bounded by requestTimeoutMs.
    await this.sessions.closeAll();
    this.#client.close();
  }

  // ---- internals ------------------------------------------------------------

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
      // Every lock may have gone with the data: end every session as lost (the next waits out the delayed restart).
      this.dataLost(
        `its revision went backwards (${revision} after ${floor}): the cluster lost its data or was replaced`,
      );
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
    timeoutMs = this.requestTimeoutMs,
  ): Promise<T> {
    const clock = networkClock;
    const deadlineAt = clock.now() + timeoutMs;
    let backoffMs = 25;
    for (;;) {
      const remainingMs = Math.max(1, deadlineAt - clock.now());
      try {
        return await withTimeout(call({ deadline: Date.now() + remainingMs }), remainingMs, clock, {
          onTimeout: () =>
            new StoreUnavailableError(
              `${this.#where} did not answer ${what} within ${timeoutMs} ms; ${OUTCOME_UNKNOWN}`,
              {
                outcome: 'unknown',
              },
            ),
        });
      } catch (err) {
        if (isLeaseNotFound(err))
          throw new SessionExpiredError('(unknown)', `${this.#where} no longer has the session's lease`, {
            cause: err,
          });
        const retry = kind === 'write' ? isNotApplied(err) : isTransient(err);
        if (!retry || this.closed || clock.now() + backoffMs >= deadlineAt)
          throw toStoreError(err, what, kind, this.#where);
        await sleep(clock, backoffMs);
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
              new StoreUnavailableError(`${this.#where} closed the lease keep-alive stream without an answer`, {
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

function resolveEndpoints(
  url: string | undefined,
  raw: unknown,
): {
  hosts: string[];
  auth: { username: string; password: string } | undefined;
} {
  if (url !== undefined) {
    if (raw !== undefined) throw new InvalidArgumentError('give either url or hosts for the etcd store, not both');
    const parsed = parseEtcdUrl(url);
    return { hosts: [...parsed.hosts], auth: parsed.auth };
  }
  // One endpoint may be given as a plain string.
  const list =
    typeof raw === 'string' ? [raw] : raw === undefined ? [] : stringList(raw, 'createEtcdStore options.hosts');
  if (list.length === 0) {
    throw new InvalidArgumentError(
      "the etcd store needs url (e.g. 'etcd://127.0.0.1:2379') or hosts (e.g. ['http://127.0.0.1:2379'])",
    );
  }
  const schemes = new Set<string>();
  for (const h of list) {
    const m = /^(https?):\/\/[^/?#\s]+$/.exec(h);
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
