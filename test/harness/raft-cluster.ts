/**
 * A Raft cluster of real node processes on loopback, for the fault tests of test/raft/processes.test.ts: three
 * (or more) test/harness/raft-node.ts processes, each with its own data directory, served over IPC; and the faults
 * to do to them: kill -9, SIGSTOP/SIGCONT, restart from the same data directory or from a deleted one, and network
 * partitions.
 *
 * Partitions go through TCP proxies (proxy.ts), one per ordered pair of nodes: node a reaches node b at the proxy
 * `a>b`, which forwards to b's listen port. The transport keeps one connection per pair (the lower id dials), so a
 * proxy in front of each node's port would carry two nodes' links at once, and cutting one node off would cut
 * others too; one proxy per pair cuts exactly the links asked for. `isolate(id)` blackholes every proxy to or
 * from `id`; `cutOneWay(from, to)` drops one direction of a link (an asymmetric partition); `heal()` lets everything pass again and resets the connections (bytes dropped by a blackhole are gone:
 * the streams must start over, and the transport redials).
 *
 * Election safety from the outside: every node reports its (term, role) when it changes (an IPC event) and a poller
 * asks each running node for its status every `pollMs`; `electionSafetyViolations()` lists every term in which two
 * nodes were seen leading.
 *
 * Cleanup kills only the processes this cluster started (by pid): close(), a process 'exit' hook, and setpriv's
 * pdeathsig (the kernel kills a node when the test process dies, even by SIGKILL).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { allocatePorts } from './ports.js';
import { allThreadsStopped, NO_PDEATHSIG_ENV, releasePort, TEMP_DIR_PREFIX } from './processes.js';
import { startProxy, type TcpProxy } from './proxy.js';
import type { NodeEvent, NodeReply, NodeRequest, NodeStatus, RaftNodeConfig } from './raft-node.js';
import { eventually } from './wait.js';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const SCRIPT = fileURLToPath(new URL('./raft-node.ts', import.meta.url));

/** A request's answer; `EXITED`: the process died (or was killed) before answering — the outcome is unknown. */
export type Answer =
  | { readonly ok: true; readonly result: unknown }
  | {
      readonly ok: false;
      readonly code: string;
      readonly message: string;
      readonly outcome?: 'unknown' | 'not-applied';
    };

type Body = NodeRequest extends infer R ? (R extends { id: number } ? Omit<R, 'id'> : never) : never;

export interface RaftClusterOptions {
  readonly ids?: readonly string[];
  readonly tickMs?: number;
  readonly electionTicks?: number;
  /** Default time of a command or query inside the node. */
  readonly requestTimeoutMs?: number;
  readonly leaseReads?: boolean;
  readonly snapshotEntries?: number;
  /** Status polling for the election-safety monitor (default 100 ms; 0: events only). */
  readonly pollMs?: number;
}

/** Node processes still running, of every cluster of this process: what the 'exit' hook kills. */
const running = new Set<NodeProcess>();
let exitHookInstalled = false;

/** One node process and its IPC channel. */
export class NodeProcess {
  readonly id: string;
  readonly pid: number;
  readonly logPath: string;
  /** Resolves once the process has exited (never rejects). */
  readonly exit: Promise<void>;
  #exited = false;
  #paused = false;
  readonly #child: ChildProcess;
  readonly #pending = new Map<number, (a: Answer) => void>();
  #nextId = 1;
  readonly #ready: Promise<void>;

  constructor(id: string, config: RaftNodeConfig, logPath: string, onEvent: (id: string, e: NodeEvent) => void) {
    this.id = id;
    this.logPath = logPath;
    const command = [process.execPath, '--import', 'tsx', SCRIPT];
    if (process.env[NO_PDEATHSIG_ENV] !== '1') command.unshift('setpriv', '--pdeathsig', 'KILL', '--');
    const fd = openSync(logPath, 'a');
    try {
      this.#child = spawn(command[0]!, command.slice(1), {
        cwd: REPO,
        env: { ...process.env, RAFT_NODE_CONFIG: JSON.stringify(config) },
        stdio: ['ignore', fd, fd, 'ipc'],
      });
    } finally {
      closeSync(fd);
    }
    // Without listeners a failed spawn, or a send racing the exit, would be an uncaught 'error' event.
    this.#child.on('error', () => undefined);
    if (this.#child.pid === undefined) throw new Error(`node ${id} could not be started`);
    this.pid = this.#child.pid;
    running.add(this);
    if (!exitHookInstalled) {
      exitHookInstalled = true;
      process.on('exit', () => {
        for (const p of running) p.#signal('SIGKILL');
      });
    }
    this.exit = new Promise((resolve) => {
      this.#child.once('exit', () => {
        this.#exited = true;
        running.delete(this);
        for (const answer of this.#pending.values()) {
          answer({ ok: false, code: 'EXITED', message: `node ${id} exited before answering`, outcome: 'unknown' });
        }
        this.#pending.clear();
        resolve();
      });
    });
    this.#ready = new Promise((resolve, reject) => {
      void this.exit.then(() => reject(new Error(`node ${id} exited before it was ready; its log: ${logPath}`)));
      this.#child.on('message', (m: NodeReply | NodeEvent) => {
        if ('event' in m) {
          if (m.event === 'ready') resolve();
          onEvent(id, m);
          return;
        }
        const answer = this.#pending.get(m.id);
        this.#pending.delete(m.id);
        if (answer === undefined) return;
        if (m.ok) answer({ ok: true, result: m.result });
        else answer({ ok: false, code: m.code, message: m.message, ...(m.outcome ? { outcome: m.outcome } : {}) });
      });
    });
    // Nobody may be waiting for readiness (a node killed at once): not an unhandled rejection.
    this.#ready.catch(() => undefined);
  }

  get exited(): boolean {
    return this.#exited;
  }

  /** SIGSTOPped and not resumed yet. */
  get paused(): boolean {
    return this.#paused;
  }

  ready(timeoutMs = 20_000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`node ${this.id} not ready within ${timeoutMs} ms; its log: ${this.logPath}`)),
        timeoutMs,
      );
    });
    return Promise.race([this.#ready, late]).finally(() => clearTimeout(timer));
  }

  /**
   * Send a request; resolves with its answer. `parentTimeoutMs`: give up waiting (answer `PARENT_TIMEOUT`, outcome
   * unknown) — the node's own deadline normally answers first; this bounds a process that is stopped.
   */
  request(body: Body, parentTimeoutMs = 30_000): Promise<Answer> {
    if (this.#exited) {
      return Promise.resolve({
        ok: false,
        code: 'EXITED',
        message: `node ${this.id} is not running`,
        outcome: 'unknown',
      });
    }
    const id = this.#nextId++;
    return new Promise<Answer>((resolve) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        resolve({
          ok: false,
          code: 'PARENT_TIMEOUT',
          message: `node ${this.id} did not answer within ${parentTimeoutMs} ms`,
          outcome: 'unknown',
        });
      }, parentTimeoutMs);
      this.#pending.set(id, (a) => {
        clearTimeout(timer);
        resolve(a);
      });
      this.#child.send({ ...body, id } as NodeRequest, (err) => {
        if (err === null || this.#exited) return;
        // The channel closed under the send (the process is dying): the exit answers it.
      });
    });
  }

  /** SIGSTOP, and wait until every thread has stopped (the kernel stops a multi-threaded process lazily). */
  async pause(): Promise<void> {
    this.#signal('SIGSTOP');
    this.#paused = true;
    await eventually(() => this.#exited || allThreadsStopped(this.pid), {
      what: `node ${this.id} (pid ${this.pid}) to stop`,
      timeoutMs: 5000,
      intervalMs: 5,
    });
  }

  resume(): void {
    this.#signal('SIGCONT');
    this.#paused = false;
  }

  /** kill -9; resolves once it is gone. */
  async kill(): Promise<void> {
    this.#signal('SIGKILL');
    await this.exit;
  }

  #signal(signal: NodeJS.Signals): void {
    if (this.#exited) return;
    try {
      this.#child.kill(signal);
    } catch {
      // gone already
    }
  }
}

export interface RoleObservation {
  readonly node: string;
  readonly term: number;
  readonly role: NodeStatus['role'];
  /** performance.now() of the test process. */
  readonly at: number;
}

export class RaftCluster {
  readonly ids: readonly string[];
  readonly dir: string;
  readonly observations: RoleObservation[] = [];
  /** Errors the nodes reported (code: message), e.g. for a failure message. */
  readonly nodeErrors: string[] = [];
  readonly #o: Required<Omit<RaftClusterOptions, 'ids'>>;
  readonly #ports: ReadonlyMap<string, number>;
  readonly #proxies: ReadonlyMap<string, TcpProxy>;
  readonly #nodes = new Map<string, NodeProcess>();
  readonly #starts = new Map<string, number>();
  #poller: NodeJS.Timeout | undefined;
  #closed = false;

  private constructor(
    ids: readonly string[],
    dir: string,
    o: Required<Omit<RaftClusterOptions, 'ids'>>,
    ports: ReadonlyMap<string, number>,
    proxies: ReadonlyMap<string, TcpProxy>,
  ) {
    this.ids = ids;
    this.dir = dir;
    this.#o = o;
    this.#ports = ports;
    this.#proxies = proxies;
  }

  /** Start every node and wait until each has opened its group (not until a leader is elected: see waitLeader). */
  static async start(options: RaftClusterOptions = {}): Promise<RaftCluster> {
    const ids = options.ids ?? ['n1', 'n2', 'n3'];
    const o = {
      tickMs: options.tickMs ?? 50,
      electionTicks: options.electionTicks ?? 10,
      requestTimeoutMs: options.requestTimeoutMs ?? 2000,
      leaseReads: options.leaseReads ?? false,
      snapshotEntries: options.snapshotEntries ?? 200,
      pollMs: options.pollMs ?? 100,
    };
    const dir = mkdtempSync(join(tmpdir(), `${TEMP_DIR_PREFIX}raft-`));
    const portList = await allocatePorts(ids.length);
    const ports = new Map(ids.map((id, i) => [id, portList[i]!]));
    const proxies = new Map<string, TcpProxy>();
    for (const from of ids) {
      for (const to of ids) {
        if (from !== to) proxies.set(`${from}>${to}`, await startProxy({ host: '127.0.0.1', port: ports.get(to)! }));
      }
    }
    const cluster = new RaftCluster(ids, dir, o, ports, proxies);
    await Promise.all(ids.map((id) => cluster.start(id)));
    if (o.pollMs > 0) cluster.#poll();
    return cluster;
  }

  /** The node's process, if it was started (it may have exited since). */
  node(id: string): NodeProcess {
    const n = this.#nodes.get(id);
    if (n === undefined) throw new Error(`node ${id} was never started`);
    return n;
  }

  /** Running and not paused. */
  isUp(id: string): boolean {
    const n = this.#nodes.get(id);
    return n !== undefined && !n.exited && !n.paused;
  }

  dataDir(id: string): string {
    return join(this.dir, `data-${id}`);
  }

  /** Start (or start again, after it exited) node `id` on its data directory; resolves once its group is open. */
  async start(id: string): Promise<NodeProcess> {
    const old = this.#nodes.get(id);
    if (old !== undefined && !old.exited) throw new Error(`node ${id} is still running (pid ${old.pid})`);
    const config: RaftNodeConfig = {
      id,
      dataDir: this.dataDir(id),
      listen: `127.0.0.1:${this.#ports.get(id)!}`,
      peers: Object.fromEntries(
        this.ids.filter((p) => p !== id).map((p) => [p, `127.0.0.1:${this.#proxies.get(`${id}>${p}`)!.port}`]),
      ),
      members: this.ids,
      secret: 'a secret shared by the test cluster',
      tickMs: this.#o.tickMs,
      electionTicks: this.#o.electionTicks,
      requestTimeoutMs: this.#o.requestTimeoutMs,
      leaseReads: this.#o.leaseReads,
      snapshotEntries: this.#o.snapshotEntries,
    };
    const n = (this.#starts.get(id) ?? 0) + 1;
    this.#starts.set(id, n);
    const proc = new NodeProcess(id, config, join(this.dir, `${id}.log`), (from, e) => this.#onEvent(from, e));
    this.#nodes.set(id, proc);
    await proc.ready();
    return proc;
  }

  /** kill -9 node `id`. */
  async kill(id: string): Promise<void> {
    await this.node(id).kill();
  }

  /** kill -9 (if running) and start again from the same data directory, or from none with `wipe`. */
  async restart(id: string, options: { wipe?: boolean } = {}): Promise<NodeProcess> {
    await this.node(id).kill();
    if (options.wipe === true) await rm(this.dataDir(id), { recursive: true, force: true });
    return this.start(id);
  }

  /** Cut the link between a and b both ways (a silent partition: connections stay open, bytes are dropped). */
  cut(a: string, b: string): void {
    this.#proxies.get(`${a}>${b}`)!.setMode('blackhole');
    this.#proxies.get(`${b}>${a}`)!.setMode('blackhole');
  }

  /**
   * Drop what `from` sends to `to`, and only that: `to` still reaches `from`. The pair's one connection runs
   * through `from>to` when `from` dials (its bytes go client → server there) or through `to>from` when `to` dials
   * (they go server → client): both proxies get the one-way blackhole, whichever side dials now or after a redial.
   * `mend(from, to)` undoes it.
   */
  cutOneWay(from: string, to: string): void {
    this.#proxies.get(`${from}>${to}`)!.setMode('blackhole-to-server');
    this.#proxies.get(`${to}>${from}`)!.setMode('blackhole-to-client');
  }

  /** Let the link between a and b pass again; its connections start over. */
  mend(a: string, b: string): void {
    for (const key of [`${a}>${b}`, `${b}>${a}`]) {
      const p = this.#proxies.get(key)!;
      p.setMode('pass');
      p.resetAll();
    }
  }

  /** Cut every link of node `id`. */
  isolate(id: string): void {
    for (const other of this.ids) if (other !== id) this.cut(id, other);
  }

  /** Mend every link. */
  heal(): void {
    for (const a of this.ids) for (const b of this.ids) if (a < b) this.mend(a, b);
  }

  /** The node's status, or undefined when it is not up or does not answer within `timeoutMs`. */
  async status(id: string, timeoutMs = 2000): Promise<NodeStatus | undefined> {
    if (!this.isUp(id)) return undefined;
    const a = await this.node(id).request({ op: 'status' }, timeoutMs);
    if (!a.ok) return undefined;
    const s = a.result as NodeStatus;
    this.#observe(id, s.term, s.role);
    return s;
  }

  /**
   * Wait until one of `among` (default every node up) leads, and another node of `among` follows it in the same
   * term; returns its id. `not`: a node that does not count (an old leader).
   */
  async waitLeader(options: { among?: readonly string[]; not?: string; timeoutMs?: number } = {}): Promise<string> {
    const among = options.among ?? this.ids;
    let seen = '';
    return eventually(
      async () => {
        const up = among.filter((id) => this.isUp(id));
        const statuses = new Map<string, NodeStatus>();
        await Promise.all(
          up.map(async (id) => {
            const s = await this.status(id, 1000);
            if (s !== undefined) statuses.set(id, s);
          }),
        );
        seen = [...statuses].map(([id, s]) => `${id}: ${s.role} term ${s.term} leader ${s.leader ?? '-'}`).join('; ');
        for (const [id, s] of statuses) {
          if (s.role !== 'leader' || id === options.not) continue;
          const followed = [...statuses].some(([o, t]) => o !== id && t.leader === id && t.term === s.term);
          if (followed) return id;
        }
        return false;
      },
      {
        what: `a leader among ${among.join(', ')}${options.not ? ` other than ${options.not}` : ''}`,
        timeoutMs: options.timeoutMs ?? 15_000,
        intervalMs: 50,
        context: () => `last statuses: ${seen}`,
      },
    );
  }

  /** Terms in which two different nodes were seen leading. */
  electionSafetyViolations(): string[] {
    const leaders = new Map<number, Set<string>>();
    for (const o of this.observations) {
      if (o.role !== 'leader') continue;
      let set = leaders.get(o.term);
      if (set === undefined) leaders.set(o.term, (set = new Set()));
      set.add(o.node);
    }
    return [...leaders].filter(([, s]) => s.size > 1).map(([term, s]) => `term ${term}: leaders ${[...s].join(', ')}`);
  }

  /** The terms in which some node was seen leading, with the leader (for messages). */
  leadersByTerm(): string {
    const seen = new Map<number, Set<string>>();
    for (const o of this.observations) {
      if (o.role === 'leader') {
        let set = seen.get(o.term);
        if (set === undefined) seen.set(o.term, (set = new Set()));
        set.add(o.node);
      }
    }
    return [...seen]
      .sort(([a], [b]) => a - b)
      .map(([t, s]) => `${t}:${[...s].join('+')}`)
      .join(' ');
  }

  /** Kill every node, close the proxies, delete the data directories and release the ports. */
  async close(options: { keepDir?: boolean } = {}): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#poller);
    await Promise.all([...this.#nodes.values()].map((n) => n.kill()));
    await Promise.all([...this.#proxies.values()].map((p) => p.close()));
    for (const port of this.#ports.values()) releasePort(port);
    if (options.keepDir !== true) await rm(this.dir, { recursive: true, force: true });
  }

  #onEvent(id: string, e: NodeEvent): void {
    if (e.event === 'role') this.#observe(id, e.term, e.role);
    else if (e.event === 'error' || e.event === 'failed') {
      this.nodeErrors.push(`${id}: ${e.event === 'error' ? `${e.code}: ` : ''}${e.message}`);
    }
  }

  #observe(node: string, term: number, role: NodeStatus['role']): void {
    this.observations.push({ node, term, role, at: performance.now() });
  }

  #poll(): void {
    this.#poller = setTimeout(() => {
      void Promise.all(this.ids.map((id) => this.status(id, 1000))).finally(() => {
        if (!this.#closed) this.#poll();
      });
    }, this.#o.pollMs);
  }
}
