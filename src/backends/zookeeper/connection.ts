/**
 * One ZooKeeper connection (= one ZooKeeper session) with promises, a bound
 * on every request, and the read timeout node-zookeeper-client lacks.
 *
 * node-zookeeper-client 1.1.x never times out a read: on a silent partition
 * (connection open, packets dropped) it neither reconnects nor learns that
 * its session expired. We therefore (1) bound every request ourselves, and
 * (2) destroy the socket when a liveness probe goes unanswered, which makes
 * the driver reconnect; on reconnect the server either resumes the session
 * or answers "expired", which the driver reports as the `expired` state.
 *
 * The few driver internals touched (`connectionManager.socket`,
 * `connectionManager.packetQueue.queue`, `Transaction.ops`) are read
 * defensively: if a future driver version renames them, requests are still
 * bounded, only the `not-applied` refinement and the forced reconnect are lost.
 */
import zookeeper from 'node-zookeeper-client';
import type { ACL, Client, Event, Exception, Stat } from 'node-zookeeper-client';
import { InvalidArgumentError, StoreUnavailableError } from '../../errors.js';
import type { Clock } from '../../store/contract.js';
import { notAnswering, OUTCOME_UNKNOWN } from '../../store/network.js';
import { withTimeout } from '../../store/timeout.js';

/** ZooKeeper op codes used in multi (protocol constants, stable since 3.4). */
export const OP = { create: 1, delete: 2, setData: 5, check: 13 } as const;

/** One op of a multi, in the driver's internal shape (we bypass its builder: it turns version 0 into -1). */
export type MultiOp =
  | {
      readonly type: typeof OP.create;
      readonly path: string;
      readonly data: Buffer;
      readonly acls: readonly ACL[];
      readonly mode: number;
    }
  | { readonly type: typeof OP.delete; readonly path: string; readonly version: number }
  | { readonly type: typeof OP.setData; readonly path: string; readonly data: Buffer; readonly version: number }
  | { readonly type: typeof OP.check; readonly path: string; readonly version: number };

export interface MultiResult {
  readonly type: number;
  readonly err?: number;
  readonly stat?: Stat;
  readonly path?: string;
}

/** A multi that the server refused: `index` is the op that failed. */
export class MultiError extends Error {
  readonly code: number;
  readonly index: number;
  constructor(code: number, index: number) {
    super(`ZooKeeper multi failed at op ${index} with code ${code}`);
    this.code = code;
    this.index = index;
  }
}

export const ZK = {
  OK: 0,
  CONNECTION_LOSS: -4,
  NO_NODE: -101,
  NO_AUTH: -102,
  BAD_VERSION: -103,
  NODE_EXISTS: -110,
  NOT_EMPTY: -111,
  SESSION_EXPIRED: -112,
  AUTH_FAILED: -115,
} as const;

/** The name of a ZooKeeper error code (NO_NODE, CONNECTION_LOSS…), for messages. */
export function zkCodeName(code: number): string {
  for (const [name, value] of Object.entries(zookeeper.Exception)) if (value === code) return name;
  return String(code);
}

export function zkCode(err: unknown): number | undefined {
  if (err instanceof MultiError) return err.code;
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'number' ? code : undefined;
}

export interface ConnectionOptions {
  readonly connectString: string;
  readonly sessionTimeoutMs: number;
  readonly spinDelayMs: number;
  readonly auth: readonly { readonly scheme: string; readonly auth: Buffer }[];
  readonly clock: Clock;
  readonly requestTimeoutMs: number;
  /** TCP connect timeout per server; default the driver's: the session timeout over the number of servers. */
  readonly connectTimeoutMs?: number | undefined;
  /** Attach to this existing session instead of creating one (`Connection.endSession`). */
  readonly resume?: { readonly sessionId: Buffer; readonly password: Buffer } | undefined;
}

export type ConnectionEvent = 'reconnected' | 'disconnected' | 'expired';

interface DriverInternals {
  connectionManager?: {
    connectTimeout?: unknown;
    zxid?: unknown;
    pendingBuffer?: unknown;
    connect?: () => void;
    socket?: { destroy?: () => void };
    packetQueue?: { queue?: unknown[] };
  };
}

interface RawTransaction {
  ops: MultiOp[];
  commit(callback: (error: Exception | Error | null, results: MultiResult[] | undefined) => void): void;
}

export class Connection {
  readonly client: Client;
  readonly #opts: ConnectionOptions;
  readonly #listeners = new Set<(event: ConnectionEvent) => void>();
  #connectedOnce = false;
  #wasDisconnected = false;
  #expired = false;
  #closed = false;
  #sessionId: Buffer | undefined;
  #password: Buffer | undefined;
  #closing: Promise<void> | undefined;

  private constructor(opts: ConnectionOptions) {
    this.#opts = opts;
    this.client = zookeeper.createClient(opts.connectString, {
      sessionTimeout: opts.sessionTimeoutMs,
      spinDelay: opts.spinDelayMs,
      retries: 0,
      ...(opts.resume === undefined ? {} : { sessionId: opts.resume.sessionId, sessionPassword: opts.resume.password }),
    });
    for (const a of opts.auth) this.client.addAuthInfo(a.scheme, a.auth);
    // The driver keeps the unparsed tail of a frame across reconnects: a
    // socket closed mid-response (a forced reconnect, a reset) leaves half a
    // frame that corrupts the next connection's stream and throws inside the
    // driver's socket handler. Start every connection with an empty buffer.
    const cm = (this.client as unknown as DriverInternals).connectionManager;
    if (cm !== undefined && opts.connectTimeoutMs !== undefined && typeof cm.connectTimeout === 'number') {
      cm.connectTimeout = opts.connectTimeoutMs;
    }
    const connect = cm?.connect;
    if (cm !== undefined && typeof connect === 'function') {
      cm.connect = function (this: NonNullable<DriverInternals['connectionManager']>): void {
        this.pendingBuffer = null;
        connect.call(this);
      };
    }
    this.client.on('connected', () => {
      this.#sessionId ??= this.client.getSessionId();
      this.#password ??= this.client.getSessionPassword();
      const first = !this.#connectedOnce;
      this.#connectedOnce = true;
      if (!first && this.#wasDisconnected) {
        this.#wasDisconnected = false;
        this.#emit('reconnected');
      }
    });
    this.client.on('disconnected', () => {
      if (!this.#connectedOnce) return;
      this.#wasDisconnected = true;
      this.#emit('disconnected');
    });
    this.client.on('expired', () => {
      this.#expired = true;
      this.#emit('expired');
    });
  }

  /** Open a connection (and so a ZooKeeper session); rejects after the request timeout. */
  static async open(opts: ConnectionOptions): Promise<Connection> {
    const conn = new Connection(opts);
    let cleanup = (): void => undefined;
    const connected = new Promise<void>((resolve, reject) => {
      const onConnected = (): void => {
        cleanup();
        resolve();
      };
      const onAuthFailed = (): void => {
        cleanup();
        void conn.close();
        reject(
          new InvalidArgumentError(
            `${conn.where} refused the authentication; check the user and password in the URL or the auth option`,
          ),
        );
      };
      cleanup = () => {
        conn.client.removeListener('connected', onConnected);
        conn.client.removeListener('authenticationFailed', onAuthFailed);
      };
      conn.client.on('connected', onConnected);
      conn.client.on('authenticationFailed', onAuthFailed);
      conn.client.connect();
    });
    await withTimeout(connected, opts.requestTimeoutMs, opts.clock, {
      onTimeout: () => {
        cleanup();
        void conn.close();
        return new StoreUnavailableError(notAnswering(conn.where, `no session within ${opts.requestTimeoutMs} ms`), {
          outcome: 'unknown',
        });
      },
    });
    return conn;
  }

  /**
   * End a session whose connection is gone (closed here, e.g. after its local deadline passed during an outage)
   * but which the server may still hold, with its ephemeral znodes, until it times it out — a whole timeout after
   * the ensemble is back, since a new leader restarts every session's clock. Attach to it by id and password,
   * close it, and attach once more to see the server refuse it. Resolves only once the server has said it no
   * longer has the session; rejects (StoreUnavailableError) when that could not be confirmed within two rounds.
   */
  static async endSession(
    opts: Omit<ConnectionOptions, 'resume'>,
    sessionId: Buffer,
    password: Buffer,
    what: string,
  ): Promise<void> {
    for (let round = 0; round < 2; round++) {
      const conn = new Connection({ ...opts, resume: { sessionId, password } });
      const answer = await new Promise<'connected' | 'expired' | 'timeout'>((resolve) => {
        const timer = opts.clock.setTimeout(() => finish('timeout'), opts.requestTimeoutMs);
        const onConnected = (): void => finish('connected');
        const onExpired = (): void => finish('expired');
        function finish(a: 'connected' | 'expired' | 'timeout'): void {
          opts.clock.clearTimeout(timer);
          conn.client.removeListener('connected', onConnected);
          conn.client.removeListener('expired', onExpired);
          resolve(a);
        }
        conn.client.on('connected', onConnected);
        conn.client.on('expired', onExpired);
        conn.client.connect();
      });
      // Connected: the session was still there and is ours again; closing it ends it (the server deletes its
      // ephemeral znodes). Then look once more: only the server refusing the id is proof.
      await conn.close();
      if (answer === 'expired') return;
      if (answer === 'timeout') break;
    }
    throw new StoreUnavailableError(
      `${what}: could not confirm with ZooKeeper at ${opts.connectString} that the session ended; ` +
        'it ends by itself at the latest one session timeout after the ensemble answers again',
      { outcome: 'unknown' },
    );
  }

  /** "ZooKeeper at host:port[,host:port…]", for messages. */
  get where(): string {
    return `ZooKeeper at ${this.#opts.connectString}`;
  }

  /** The ZooKeeper session id of this connection. */
  get sessionId(): Buffer {
    return this.#sessionId ?? this.client.getSessionId();
  }

  /** The session's password (to attach to it from another connection: `Connection.endSession`). */
  get sessionPassword(): Buffer {
    return this.#password ?? this.client.getSessionPassword();
  }

  /** The session timeout the server granted. */
  get sessionTimeoutMs(): number {
    return this.client.getSessionTimeout();
  }

  /**
   * The server's last processed zxid as of its latest reply on this
   * connection (every reply header carries it), or undefined if unknown.
   */
  get lastZxid(): number | undefined {
    const z = (this.client as unknown as DriverInternals).connectionManager?.zxid;
    if (!Buffer.isBuffer(z) || z.length !== 8) return undefined;
    return Number(z.readBigUInt64BE(0));
  }

  get expired(): boolean {
    return this.#expired;
  }

  get closed(): boolean {
    return this.#closed;
  }

  on(listener: (event: ConnectionEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #emit(event: ConnectionEvent): void {
    for (const l of [...this.#listeners]) {
      try {
        l(event);
      } catch {
        // A listener's failure must not break the connection.
      }
    }
  }

  /**
   * Drop the TCP connection so that the driver reconnects and learns from the
   * server whether the session still exists (the driver's missing read timeout).
   */
  forceReconnect(): void {
    if (this.#closed || this.#expired) return;
    try {
      (this.client as unknown as DriverInternals).connectionManager?.socket?.destroy?.();
    } catch {
      // Best effort.
    }
  }

  /**
   * Close the session (the server deletes its ephemeral znodes) and the
   * socket. Waits at most the request timeout for the server to confirm.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    const { clock } = this.#opts;
    const expired = this.#expired;
    await new Promise<void>((resolve) => {
      const timer = clock.setTimeout(done, expired ? 0 : this.#opts.requestTimeoutMs);
      const onDisconnected = (): void => done();
      this.client.once('disconnected', onDisconnected);
      function done(): void {
        clock.clearTimeout(timer);
        resolve();
      }
      try {
        this.client.close();
      } catch {
        done();
      }
    });
    // If the server never answered (partition), make sure no socket or
    // reconnect loop outlives us.
    this.forceDestroy();
    this.#listeners.clear();
  }

  forceDestroy(): void {
    try {
      (this.client as unknown as DriverInternals).connectionManager?.socket?.destroy?.();
    } catch {
      // Best effort.
    }
  }

  // ---- requests -------------------------------------------------------------

  exists(path: string, watcher?: (event: Event) => void, timeoutMs?: number): Promise<Stat | undefined> {
    return this.#call(`exists ${path}`, timeoutMs, (cb) => {
      const done = (error: Error | Exception | null, stat: Stat | null | undefined): void =>
        cb(error, stat ?? undefined);
      if (watcher === undefined) this.client.exists(path, done);
      else this.client.exists(path, watcher, done);
    });
  }

  /** Data and stat of a znode, or undefined when it does not exist. */
  getData(path: string, watcher?: (event: Event) => void): Promise<{ data: Buffer; stat: Stat } | undefined> {
    return this.#call(`getData ${path}`, undefined, (cb) => {
      const done = (error: Error | Exception | null, data: Buffer | null, stat: Stat): void => {
        if (error !== null && zkCode(error) === ZK.NO_NODE) cb(null, undefined);
        else cb(error, error === null ? { data: data ?? Buffer.alloc(0), stat } : undefined);
      };
      if (watcher === undefined) this.client.getData(path, done);
      else this.client.getData(path, watcher, done);
    });
  }

  /** Children and stat of a znode, or undefined when it does not exist. */
  getChildren(path: string, watcher?: (event: Event) => void): Promise<{ children: string[]; stat: Stat } | undefined> {
    return this.#call(`getChildren ${path}`, undefined, (cb) => {
      const done = (error: Error | Exception | null, children: string[], stat: Stat): void => {
        if (error !== null && zkCode(error) === ZK.NO_NODE) cb(null, undefined);
        else cb(error, error === null ? { children, stat } : undefined);
      };
      if (watcher === undefined) this.client.getChildren(path, done);
      else this.client.getChildren(path, watcher, done);
    });
  }

  /** Create a znode; resolves false when it already exists. */
  create(path: string, data: Buffer, acls: readonly ACL[], mode: number): Promise<boolean> {
    return this.#call(`create ${path}`, undefined, (cb) => {
      this.client.create(path, data, [...acls], mode, (error) => {
        if (error !== null && zkCode(error) === ZK.NODE_EXISTS) cb(null, false);
        else cb(error, error === null);
      });
    });
  }

  /**
   * Run a multi. Rejects with MultiError when the server refused one op (the
   * multi did not apply), StoreUnavailableError otherwise. A multi that timed
   * out before it left the driver's queue is withdrawn: `not-applied`.
   */
  multi(ops: readonly MultiOp[], timeoutMs = this.#opts.requestTimeoutMs): Promise<MultiResult[]> {
    const tx = this.client.transaction() as unknown as RawTransaction;
    tx.ops = [...ops];
    const queue = (this.client as unknown as DriverInternals).connectionManager?.packetQueue?.queue;
    let packet: unknown;
    const committed = new Promise<MultiResult[]>((resolve, reject) => {
      const before = Array.isArray(queue) ? queue.length : 0;
      try {
        tx.commit((error, results) => {
          if (error === null || error === undefined) {
            resolve(results ?? []);
            return;
          }
          const code = zkCode(error);
          const index = (results ?? []).findIndex((r) => r.err !== undefined && r.err !== ZK.OK);
          if (index >= 0 && code !== undefined) {
            reject(new MultiError(code, index));
            return;
          }
          reject(this.#mapError(error, 'the transaction'));
        });
      } catch (cause) {
        reject(
          new StoreUnavailableError(`the transaction could not be sent to ${this.where}; retry`, {
            cause,
            outcome: 'not-applied',
          }),
        );
        return;
      }
      packet = Array.isArray(queue) && queue.length > before ? queue[queue.length - 1] : undefined;
    });
    return withTimeout(committed, timeoutMs, this.#opts.clock, {
      onTimeout: () => {
        // Still in the driver's send queue: it never reached the server, and
        // removing it guarantees it never will.
        let outcome: 'not-applied' | 'unknown' = 'unknown';
        if (packet !== undefined && Array.isArray(queue)) {
          const i = queue.indexOf(packet);
          if (i >= 0) {
            queue.splice(i, 1);
            outcome = 'not-applied';
          }
        }
        return new StoreUnavailableError(
          `${this.where} did not answer the transaction within ${timeoutMs} ms; ` +
            (outcome === 'unknown' ? OUTCOME_UNKNOWN : 'it was withdrawn before it was sent'),
          { outcome },
        );
      },
    });
  }

  #call<T>(
    what: string,
    timeoutMs: number | undefined,
    start: (cb: (error: Error | Exception | null, value: T) => void) => void,
  ): Promise<T> {
    const requestTimeoutMs = timeoutMs ?? this.#opts.requestTimeoutMs;
    const answered = new Promise<T>((resolve, reject) => {
      try {
        start((error, value) => {
          if (error === null || error === undefined) resolve(value);
          else reject(this.#mapError(error, what));
        });
      } catch (cause) {
        reject(
          new StoreUnavailableError(`${what} could not be sent to ${this.where}; retry`, {
            cause,
            outcome: 'not-applied',
          }),
        );
      }
    });
    return withTimeout(answered, requestTimeoutMs, this.#opts.clock, {
      onTimeout: () =>
        new StoreUnavailableError(
          `${this.where} did not answer ${what} within ${requestTimeoutMs} ms; check that the server runs and is reachable`,
          { outcome: 'unknown' },
        ),
    });
  }

  /**
   * Driver errors in our words, the driver's error (with its ZooKeeper code,
   * see `zkCode`) as the cause; callers map session expiry.
   */
  #mapError(error: Error | Exception, what: string): Error {
    const code = zkCode(error);
    if (code === ZK.SESSION_EXPIRED) return new ZkSessionExpired(`${what} on ${this.where}`, error);
    if (code === ZK.NO_AUTH || code === ZK.AUTH_FAILED) {
      return new StoreUnavailableError(
        `${this.where} refused ${what}: permission denied; check the auth and acls options`,
        { cause: error, outcome: 'not-applied' },
      );
    }
    if (code === undefined || code === ZK.CONNECTION_LOSS) {
      return new StoreUnavailableError(
        `the connection to ${this.where} dropped while ${what} was in flight; ${OUTCOME_UNKNOWN}`,
        { cause: error, outcome: 'unknown' },
      );
    }
    return new StoreUnavailableError(
      `${this.where} refused ${what} (ZooKeeper error ${zkCodeName(code)}); nothing was applied`,
      { cause: error, outcome: 'not-applied' },
    );
  }
}

/** The server said this connection's session is gone. */
export class ZkSessionExpired extends Error {
  constructor(what: string, cause: unknown) {
    super(`${what}: the ZooKeeper session expired`, { cause });
  }
}
