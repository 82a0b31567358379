/**
 * Private, killable instances of the coordination servers the backends talk
 * to, for tests that inject faults (pause, kill -9, restart on the same port
 * and data dir). Facts about starting each server on Debian 12 as root are in
 * docs kept with the project (SERVERS.md).
 *
 * Every server runs in its own temp dir under os.tmpdir()/rebalancer-test-*
 * and its own process group; see processes.ts for how they are cleaned up.
 */
import {
  existsSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
  chownSync,
  openSync,
  readSync,
  closeSync,
} from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { allocatePorts } from './ports.js';
import { Instance, liveInstances, type LaunchSpec, type ManagedProcess } from './processes.js';
import { amqpReady, etcdHealthy, postgresReady, redisReady, tcpAccepts, zookeeperReady } from './probes.js';

export type ServerKind = 'redis' | 'postgres' | 'etcd' | 'zookeeper' | 'rabbitmq';

export interface ServerHandle {
  readonly kind: ServerKind;
  /** Always 127.0.0.1. */
  readonly host: string;
  /** Client port; stable across restart(). */
  readonly port: number;
  /** redis://, postgres://postgres@…/postgres, etcd://, zk://, amqp://guest:guest@… */
  readonly url: string;
  /** The server's temp dir: data, config and `server.log` live in it. */
  readonly dataDir: string;
  /** Current main pid; undefined while stopped. */
  readonly pid: number | undefined;
  /** True from spawn until the main process exits (also while paused). */
  readonly running: boolean;
  /** Graceful: the server's shutdown signal, SIGKILL to its group after a bound. */
  stop(): Promise<void>;
  /** SIGKILL the process group and all descendants, and wait until they are gone. */
  kill(): Promise<void>;
  /**
   * SIGSTOP the server's process group and all its descendants; returns once
   * every thread is stopped. The port still accepts, nothing answers.
   */
  pause(): void;
  /** SIGCONT what pause() stopped. */
  resume(): void;
  /** Stop if running, start again on the same port and data dir; resolves when ready. */
  restart(): Promise<void>;
}

export interface EtcdCluster {
  /** etcd://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3 */
  readonly url: string;
  readonly members: readonly ServerHandle[];
  /** Kill all members and delete their temp dirs. */
  stop(): Promise<void>;
}

const HOST = '127.0.0.1';
const PROBE_TIMEOUT_MS = 1000;
const DEFAULT_READY_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 10_000;
/** Bound for every thread of a paused server to actually stop. */
const PAUSE_TIMEOUT_MS = 5000;
const LOG_TAIL_LINES = 40;
/** Starting again with fresh ports after "address in use" (a port taken outside the harness). */
const MAX_START_ATTEMPTS = 4;

interface ServerDefinition {
  readonly kind: ServerKind;
  readonly port: number;
  readonly url: string;
  readonly readyTimeoutMs: number;
  readonly pollIntervalMs: number;
  /** Graceful-shutdown signal for the main process. */
  readonly stopSignal: NodeJS.Signals;
  readonly stopGraceMs: number;
  launch(): LaunchSpec;
  /** One readiness attempt; `logSinceStart` reads what this run has logged. */
  ready(logSinceStart: () => string): Promise<boolean>;
  /** Processes that must be up before the server (RabbitMQ's private epmd). */
  readonly helpers?: readonly HelperDefinition[];
}

interface HelperDefinition {
  readonly name: string;
  launch(): LaunchSpec;
  ready(): Promise<boolean>;
}

/** A server failed to become ready; the message ends with the tail of its log. */
export class ServerStartError extends Error {
  readonly addressInUse: boolean;
  constructor(message: string, logTail: string) {
    super(`${message}\n--- log tail ---\n${logTail}`);
    this.name = 'ServerStartError';
    this.addressInUse = /address already in use|eaddrinuse/i.test(logTail);
  }
}

function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

function readFrom(path: string, offset: number): string {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return '';
  }
  try {
    const length = Math.max(0, fileSize(path) - offset);
    const buf = Buffer.alloc(length);
    const read = readSync(fd, buf, 0, length, offset);
    return buf.subarray(0, read).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

function lastLines(text: string, count: number): string {
  const lines = text.trimEnd().split('\n');
  return lines.slice(-count).join('\n');
}

class Server implements ServerHandle {
  readonly kind: ServerKind;
  readonly host = HOST;
  readonly port: number;
  readonly url: string;
  readonly dataDir: string;
  readonly #instance: Instance;
  readonly #def: ServerDefinition;
  readonly #helpers = new Map<string, ManagedProcess>();
  #proc: ManagedProcess | undefined;

  constructor(instance: Instance, def: ServerDefinition) {
    this.#instance = instance;
    this.#def = def;
    this.kind = def.kind;
    this.port = def.port;
    this.url = def.url;
    this.dataDir = instance.dir;
  }

  get pid(): number | undefined {
    return this.running ? this.#proc?.pid : undefined;
  }

  get running(): boolean {
    return this.#proc !== undefined && !this.#proc.hasExited;
  }

  async start(): Promise<void> {
    if (this.running) return;
    for (const helper of this.#def.helpers ?? []) await this.#ensureHelper(helper);
    const spec = this.#def.launch();
    const logOffset = fileSize(spec.logPath);
    const proc = this.#instance.spawn(spec);
    this.#proc = proc;
    const logSinceStart = (): string => readFrom(spec.logPath, logOffset);
    const deadline = Date.now() + this.#def.readyTimeoutMs;
    for (;;) {
      if (proc.hasExited) {
        throw await this.#startFailed(
          `exited (${proc.exitDescription ?? '?'}) before it was ready`,
          proc,
          logSinceStart,
        );
      }
      // Re-checked after the probe: another process on the port could answer
      // for a server that is dying of "address in use".
      if ((await this.#def.ready(logSinceStart)) && !proc.hasExited) return;
      if (Date.now() >= deadline) {
        throw await this.#startFailed(`not ready within ${this.#def.readyTimeoutMs} ms`, proc, logSinceStart);
      }
      await sleep(this.#def.pollIntervalMs);
    }
  }

  async #ensureHelper(helper: HelperDefinition): Promise<void> {
    const existing = this.#helpers.get(helper.name);
    if (existing !== undefined && !existing.hasExited) return;
    const spec = helper.launch();
    const logOffset = fileSize(spec.logPath);
    const proc = this.#instance.spawn(spec);
    this.#helpers.set(helper.name, proc);
    const deadline = Date.now() + 10_000;
    while (!proc.hasExited && Date.now() < deadline) {
      if (await helper.ready()) return;
      await sleep(20);
    }
    throw await this.#startFailed(`helper ${helper.name} did not start`, proc, () => readFrom(spec.logPath, logOffset));
  }

  async #startFailed(what: string, proc: ManagedProcess, logSinceStart: () => string): Promise<ServerStartError> {
    // Nothing half-started may linger (and hold the port) after a failure.
    await proc.kill();
    const tail = lastLines(logSinceStart(), LOG_TAIL_LINES);
    return new ServerStartError(`${this.kind} on ${HOST}:${this.port} ${what}; log: ${proc.logPath}`, tail);
  }

  async stop(): Promise<void> {
    const proc = this.#proc;
    if (proc === undefined || proc.hasExited) return;
    await proc.terminate(this.#def.stopSignal, this.#def.stopGraceMs);
  }

  async kill(): Promise<void> {
    const proc = this.#proc;
    if (proc === undefined || proc.hasExited) return;
    await proc.kill();
  }

  pause(): void {
    if (this.#proc === undefined || !this.running) throw new Error(`${this.kind} is not running`);
    this.#proc.stopTreeSync(PAUSE_TIMEOUT_MS);
  }

  resume(): void {
    if (this.running) this.#proc?.signalTree('SIGCONT');
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  dispose(): Promise<void> {
    return this.#instance.dispose();
  }
}

/** A fresh instance with `portCount` reserved ports; disposed again if setup fails. */
async function newInstance(kind: ServerKind, portCount: number): Promise<{ instance: Instance; ports: number[] }> {
  const instance = new Instance(kind);
  try {
    const ports = await allocatePorts(portCount);
    for (const port of ports) instance.adoptPort(port);
    return { instance, ports };
  } catch (err) {
    await instance.dispose();
    throw err;
  }
}

/** Run `attempt` again with fresh ports when a port turned out to be taken. */
async function withPortRetry<T>(attempt: () => Promise<T>): Promise<T> {
  for (let n = 1; ; n += 1) {
    try {
      return await attempt();
    } catch (err) {
      if (!(err instanceof ServerStartError && err.addressInUse) || n >= MAX_START_ATTEMPTS) throw err;
    }
  }
}

/** Start `servers`, all at once; on failure dispose them all before rethrowing. */
async function startAll(servers: readonly Server[], setup?: () => Promise<void>): Promise<void> {
  try {
    await setup?.();
    const results = await Promise.allSettled(servers.map((s) => s.start()));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
  } catch (err) {
    await Promise.all(servers.map((s) => s.dispose()));
    throw err;
  }
}

function logIn(dir: string): string {
  return join(dir, 'server.log');
}

// ---------------------------------------------------------------- Redis

/**
 * A private Redis. `appendOnly`: true = AOF with `appendfsync always` (every acknowledged write survives kill -9),
 * false = no persistence at all (a restart loses everything), default = AOF with `everysec` — what a production
 * server runs, and what makes a fresh namespace on a freshly started server a first start rather than possibly
 * lost data (docs/adr/0009).
 */
export function startRedis(opts: { appendOnly?: boolean } = {}): Promise<ServerHandle> {
  const persistence = opts.appendOnly === undefined ? 'everysec' : opts.appendOnly ? 'always' : 'none';
  return withPortRetry(async () => {
    const { instance, ports } = await newInstance('redis', 1);
    const [port] = ports as [number];
    const dir = instance.dir;
    const server = new Server(instance, {
      kind: 'redis',
      port,
      url: `redis://${HOST}:${port}`,
      readyTimeoutMs: DEFAULT_READY_TIMEOUT_MS,
      pollIntervalMs: 20,
      stopSignal: 'SIGTERM',
      stopGraceMs: STOP_GRACE_MS,
      launch: () => ({
        command: 'redis-server',
        // prettier-ignore
        args: [
          '--port', String(port),
          '--bind', HOST,
          '--dir', dir,
          '--save', '',
          '--appendonly', persistence === 'none' ? 'no' : 'yes',
          ...(persistence === 'none' ? [] : ['--appendfsync', persistence]),
          '--daemonize', 'no',
          '--logfile', '',
        ],
        logPath: logIn(dir),
        cwd: dir,
      }),
      ready: () => redisReady(port, PROBE_TIMEOUT_MS),
    });
    await startAll([server]);
    return server;
  });
}

// ----------------------------------------------------------- PostgreSQL

function postgresBinDir(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root)
    ? readdirSync(root)
        .filter((v) => existsSync(join(root, v, 'bin', 'postgres')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  const newest = versions[0];
  if (newest === undefined) {
    throw new Error('PostgreSQL not found in /usr/lib/postgresql; run scripts/install-servers.sh');
  }
  return join(root, newest, 'bin');
}

function userIds(name: string): { uid: number; gid: number } {
  for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
    const [user, , uid, gid] = line.split(':');
    if (user === name && uid !== undefined && gid !== undefined) return { uid: Number(uid), gid: Number(gid) };
  }
  throw new Error(`user ${name} not found in /etc/passwd`);
}

export function startPostgres(): Promise<ServerHandle> {
  return withPortRetry(async () => {
    const { instance, ports } = await newInstance('postgres', 1);
    const [port] = ports as [number];
    const dir = instance.dir;
    const dataDir = join(dir, 'data');
    const bin = postgresBinDir();
    const server = new Server(instance, {
      kind: 'postgres',
      port,
      url: `postgres://postgres@${HOST}:${port}/postgres`,
      readyTimeoutMs: DEFAULT_READY_TIMEOUT_MS,
      pollIntervalMs: 20,
      // SIGTERM is "smart" shutdown, which waits for clients to disconnect.
      stopSignal: 'SIGINT',
      stopGraceMs: STOP_GRACE_MS,
      launch: () => ({
        command: join(bin, 'postgres'),
        // prettier-ignore
        args: [
          '-D', dataDir,
          '-p', String(port),
          '-k', dir,
          '-c', 'listen_addresses=127.0.0.1',
          '-c', 'fsync=off',
          '-c', 'full_page_writes=off',
          // Several clusters may run at once; the default 128MB each adds up.
          '-c', 'shared_buffers=16MB',
        ],
        // initdb and postgres refuse to run as root.
        user: 'postgres',
        logPath: logIn(dir),
        cwd: dir,
      }),
      ready: () => postgresReady(port, PROBE_TIMEOUT_MS),
    });
    const initdb = async (): Promise<void> => {
      const { uid, gid } = userIds('postgres');
      // The socket (-k) and data dir live here, so postgres must own it.
      chownSync(dir, uid, gid);
      const logPath = join(dir, 'initdb.log');
      const proc = instance.spawn({
        command: join(bin, 'initdb'),
        // prettier-ignore
        args: [
          '-D', dataDir,
          '-U', 'postgres',
          '-A', 'trust',
          '-E', 'UTF8',
          '--locale=C', '--no-sync', '--no-instructions',
        ],
        user: 'postgres',
        logPath,
        cwd: dir,
      });
      if (!(await proc.waitExit(DEFAULT_READY_TIMEOUT_MS))) await proc.kill();
      if (proc.exitDescription !== 'exit code 0') {
        throw new ServerStartError(
          `initdb failed (${proc.exitDescription ?? 'timed out'})`,
          lastLines(readFrom(logPath, 0), LOG_TAIL_LINES),
        );
      }
    };
    await startAll([server], initdb);
    return server;
  });
}

// ----------------------------------------------------------------- etcd

interface EtcdMemberPorts {
  readonly name: string;
  readonly instance: Instance;
  readonly clientPort: number;
  readonly peerPort: number;
}

function etcdMember(member: EtcdMemberPorts, initialCluster: string, clusterToken: string): Server {
  const { name, instance, clientPort, peerPort } = member;
  const dir = instance.dir;
  const clientUrl = `http://${HOST}:${clientPort}`;
  const peerUrl = `http://${HOST}:${peerPort}`;
  return new Server(instance, {
    kind: 'etcd',
    port: clientPort,
    url: `etcd://${HOST}:${clientPort}`,
    readyTimeoutMs: DEFAULT_READY_TIMEOUT_MS,
    pollIntervalMs: 50,
    stopSignal: 'SIGTERM',
    stopGraceMs: STOP_GRACE_MS,
    launch: () => ({
      command: 'etcd',
      // On restart the data dir already holds the membership; the --initial-*
      // flags are then ignored, so the same arguments serve both cases.
      // prettier-ignore
      args: [
        '--name', name,
        '--data-dir', join(dir, 'data'),
        '--listen-client-urls', clientUrl,
        '--advertise-client-urls', clientUrl,
        '--listen-peer-urls', peerUrl,
        '--initial-advertise-peer-urls', peerUrl,
        '--initial-cluster', initialCluster,
        '--initial-cluster-state', 'new',
        // Unique per cluster, so members never join a stranger on a reused port.
        '--initial-cluster-token', clusterToken,
        '--logger', 'zap',
        '--log-outputs', 'stderr',
      ],
      logPath: logIn(dir),
      cwd: dir,
    }),
    ready: () => etcdHealthy(clientPort, PROBE_TIMEOUT_MS),
  });
}

async function startEtcdMembers(count: number): Promise<Server[]> {
  return withPortRetry(async () => {
    const members: EtcdMemberPorts[] = [];
    try {
      for (let i = 1; i <= count; i += 1) {
        const { instance, ports } = await newInstance('etcd', 2);
        const [clientPort, peerPort] = ports as [number, number];
        members.push({ name: `n${i}`, instance, clientPort, peerPort });
      }
    } catch (err) {
      await Promise.all(members.map((m) => m.instance.dispose()));
      throw err;
    }
    const initialCluster = members.map((m) => `${m.name}=http://${HOST}:${m.peerPort}`).join(',');
    const token = `rebalancer-test-${randomUUID()}`;
    const servers = members.map((m) => etcdMember(m, initialCluster, token));
    // Members of a new cluster wait for each other, so they start together.
    await startAll(servers);
    return servers;
  });
}

export async function startEtcd(): Promise<ServerHandle> {
  const [server] = (await startEtcdMembers(1)) as [Server];
  return server;
}

export async function startEtcdCluster(): Promise<EtcdCluster> {
  const servers = await startEtcdMembers(3);
  return {
    url: `etcd://${servers.map((s) => `${HOST}:${s.port}`).join(',')}`,
    members: servers,
    stop: async () => {
      await Promise.all(servers.map((s) => s.dispose()));
    },
  };
}

// ------------------------------------------------------------ ZooKeeper

const ZOOKEEPER_JAR = '/usr/share/java/zookeeper.jar';
// The jar's manifest has no SLF4J binding, so ZooKeeper would log nothing;
// slf4j-simple (a Debian dependency) logs to stderr, i.e. to server.log.
const SLF4J_SIMPLE_JAR = '/usr/share/java/slf4j-simple.jar';

export function startZookeeper(opts: { tickTimeMs?: number } = {}): Promise<ServerHandle> {
  // minSessionTimeout defaults to 2 ticks: 500 ms ticks allow 1 s sessions.
  const tickTimeMs = opts.tickTimeMs ?? 500;
  return withPortRetry(async () => {
    const { instance, ports } = await newInstance('zookeeper', 1);
    const [port] = ports as [number];
    const dir = instance.dir;
    const configPath = join(dir, 'zoo.cfg');
    writeFileSync(
      configPath,
      [
        `tickTime=${tickTimeMs}`,
        'initLimit=10',
        'syncLimit=5',
        `dataDir=${join(dir, 'data')}`,
        `clientPort=${port}`,
        `clientPortAddress=${HOST}`,
        'maxSessionTimeout=60000',
        // The admin server would take port 8080.
        'admin.enableServer=false',
        '4lw.commands.whitelist=*',
        // Tests start many clients from one address; the default limit is 60.
        'maxClientCnxns=0',
        // Test data only needs to survive a process crash, not a power cut.
        'forceSync=no',
        '',
      ].join('\n'),
    );
    const classPath = [ZOOKEEPER_JAR, ...(existsSync(SLF4J_SIMPLE_JAR) ? [SLF4J_SIMPLE_JAR] : [])].join(':');
    const server = new Server(instance, {
      kind: 'zookeeper',
      port,
      url: `zk://${HOST}:${port}`,
      readyTimeoutMs: DEFAULT_READY_TIMEOUT_MS,
      pollIntervalMs: 50,
      stopSignal: 'SIGTERM',
      stopGraceMs: STOP_GRACE_MS,
      launch: () => ({
        command: 'java',
        args: [
          '-Xms32m',
          '-Xmx256m',
          '-XX:+UseSerialGC',
          // Faster start; tests are short, peak JIT speed does not matter.
          '-XX:TieredStopAtLevel=1',
          // No /tmp/hsperfdata_root/<pid> files left behind by kill -9.
          '-XX:-UsePerfData',
          '-Dorg.slf4j.simpleLogger.defaultLogLevel=info',
          '-cp',
          classPath,
          'org.apache.zookeeper.server.quorum.QuorumPeerMain',
          configPath,
        ],
        logPath: logIn(dir),
        cwd: dir,
      }),
      ready: () => zookeeperReady(port, PROBE_TIMEOUT_MS),
    });
    await startAll([server]);
    return server;
  });
}

// ------------------------------------------------------------- RabbitMQ

const RABBITMQ_SERVER = '/usr/lib/rabbitmq/bin/rabbitmq-server';

export function startRabbitmq(): Promise<ServerHandle> {
  return withPortRetry(async () => {
    const { instance, ports } = await newInstance('rabbitmq', 3);
    const [port, distPort, epmdPort] = ports as [number, number, number];
    const dir = instance.dir;
    writeFileSync(join(dir, 'rabbitmq.conf'), `listeners.tcp.1 = ${HOST}:${port}\nloopback_users = none\n`);
    writeFileSync(join(dir, 'enabled_plugins'), '[].\n');
    // Replaces /etc/rabbitmq/rabbitmq-env.conf, which would set the system node's name.
    writeFileSync(join(dir, 'rabbitmq-env.conf'), '');
    // Nothing from an outer RabbitMQ/Erlang environment may leak into ours.
    const scrubbed: Record<string, undefined> = {};
    for (const key of Object.keys(process.env)) {
      if (key.startsWith('RABBITMQ_') || key.startsWith('ERL_')) scrubbed[key] = undefined;
    }
    const server = new Server(instance, {
      kind: 'rabbitmq',
      port,
      url: `amqp://guest:guest@${HOST}:${port}`,
      readyTimeoutMs: 60_000,
      pollIntervalMs: 100,
      stopSignal: 'SIGTERM',
      stopGraceMs: 15_000,
      helpers: [
        {
          // A private epmd: the system one (4369) belongs to the system broker.
          name: 'epmd',
          launch: () => ({
            command: 'epmd',
            args: ['-port', String(epmdPort), '-address', HOST],
            logPath: join(dir, 'epmd.log'),
            cwd: dir,
          }),
          ready: () => tcpAccepts(epmdPort, PROBE_TIMEOUT_MS),
        },
      ],
      launch: () => ({
        // Not the /usr/sbin wrapper: it switches user, which breaks the cookie.
        command: RABBITMQ_SERVER,
        args: [],
        env: {
          ...scrubbed,
          HOME: dir,
          // Makes the script exec the VM instead of running it as a child, so
          // our pid is the VM's own and pdeathsig carries over to it.
          detached: '1',
          RABBITMQ_CONF_ENV_FILE: join(dir, 'rabbitmq-env.conf'),
          // The node name is part of the mnesia path, so it must be stable across restarts.
          RABBITMQ_NODENAME: `rabbit-test-${port}@localhost`,
          RABBITMQ_NODE_PORT: String(port),
          RABBITMQ_DIST_PORT: String(distPort),
          ERL_EPMD_PORT: String(epmdPort),
          ERL_EPMD_ADDRESS: HOST,
          RABBITMQ_CONFIG_FILE: join(dir, 'rabbitmq.conf'),
          RABBITMQ_ADVANCED_CONFIG_FILE: join(dir, 'advanced.config'),
          RABBITMQ_ENABLED_PLUGINS_FILE: join(dir, 'enabled_plugins'),
          RABBITMQ_MNESIA_BASE: join(dir, 'mnesia'),
          RABBITMQ_LOG_BASE: join(dir, 'log'),
          RABBITMQ_LOGS: '-',
          RABBITMQ_PID_FILE: join(dir, 'rabbitmq.pid'),
          RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '-kernel inet_dist_use_interface {127,0,0,1}',
        },
        logPath: logIn(dir),
        cwd: dir,
      }),
      // The listener opens near the end of boot; the log line marks the end.
      ready: async (logSinceStart) =>
        logSinceStart().includes('Server startup complete') && (await amqpReady(port, PROBE_TIMEOUT_MS)),
    });
    await startAll([server]);
    return server;
  });
}

// ------------------------------------------------------------ teardown

/**
 * Kill every server this process started (SIGKILL: their data is deleted
 * anyway), delete their temp dirs and release their ports. Handles are
 * unusable afterwards.
 */
export async function stopAllServers(): Promise<void> {
  await Promise.all(liveInstances().map((instance) => instance.dispose()));
}
