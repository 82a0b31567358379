/**
 * The systems `npm run bench -- raft` compares: each a three-member replicated log started privately on loopback,
 * driven through a BenchTarget. The bench process only starts, kills and restarts members; the load runs where a
 * user's application would: for etcd in a client process (bench/raft-worker.ts, through etcd3), for Rebalancer —
 * a library embedded in the application — inside the three node processes themselves (bench/raft-node.ts).
 */
import { readFileSync, statfsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3, type IStatusResponse } from 'etcd3';
import { allocatePorts } from '../test/harness/ports.js';
import { releasePort } from '../test/harness/processes.js';
import { startEtcdCluster, type EtcdCluster, type ServerHandle } from '../test/harness/servers.js';
import { processCpuMs } from './raft-cpu.js';
import { mergeLoads, type LoadResult } from './raft-load.js';
import type { NodeInit, NodeStatus } from './raft-node-protocol.js';
import { NodeProcess } from './raft-node-process.js';
import type { FailoverRequest, FailoverResult, RunRequest } from './raft-protocol.js';
import { LoadWorker, WORKER_SLACK_MS, type LoadRunner } from './raft-runner.js';

/**
 * One system under test. Lifecycle: start() once, then any number of killLeader()/restart() pairs, then stop().
 * Implementations must leave nothing running after stop(), also when start() failed half way.
 */
export interface BenchTarget {
  /** Column name in the report: 'etcd', 'rebalancer'. */
  readonly name: string;
  /**
   * Start three members, fsync on; resolves once the group has a leader and accepts writes, with the runner of
   * its load (closed by the bench before stop()).
   */
  start(): Promise<{ readonly load: LoadRunner }>;
  /**
   * Facts to print beside the figures so that the comparison can be judged: election and heartbeat timing,
   * fsync, file system. Call after start().
   */
  settings(): Readonly<Record<string, string>>;
  /**
   * kill -9 the current leader; resolves once the process is gone. Returns which member it was and when the signal
   * was sent (ms since the epoch, taken right before kill(2): finding the leader is not part of the failover).
   */
  killLeader(): Promise<KilledLeader>;
  /**
   * Restart what killLeader() killed, on its data; resolves once all three members are back and caught up. A no-op
   * when nothing was killed (the bench calls it after every failover round, also one that failed).
   */
  restart(): Promise<void>;
  stop(): Promise<void>;
  /**
   * CPU time (user + system, ms) used so far by all the target's server processes, summed; the bench takes the
   * difference over a measured window for the servers' cost per put. Optional: without it the column shows —.
   */
  cpuMs?(): number;
}

export interface KilledLeader {
  readonly member: string;
  readonly killedAtEpochMs: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Linux statfs magic numbers of the file systems a bench may land on. */
const FS_TYPES: Readonly<Record<number, string>> = {
  0xef53: 'ext4',
  0x01021994: 'tmpfs (fsync costs nothing: figures are not comparable to a disk)',
  0x58465342: 'xfs',
  0x9123683e: 'btrfs',
  0x794c7630: 'overlayfs',
};

export function fileSystemOf(dir: string): string {
  try {
    const t = statfsSync(dir).type;
    return FS_TYPES[t] ?? `type 0x${t.toString(16)}`;
  } catch {
    return 'unknown';
  }
}

// ---- etcd ------------------------------------------------------------------

const ETCD_MEMBER_TIMEOUT_MS = 1000;
const ETCD_SETTLE_TIMEOUT_MS = 30_000;

/** A private three-member etcd from the test harness (test/harness/servers.ts), with etcd's default timing. */
export class EtcdTarget implements BenchTarget {
  readonly name = 'etcd';
  #cluster: EtcdCluster | undefined;
  /** One client per member, to ask each for its own view (status is answered by the member called). */
  #clients = new Map<ServerHandle, Etcd3>();
  #killed: ServerHandle | undefined;

  async start(): Promise<{ readonly load: LoadRunner }> {
    this.#cluster = await startEtcdCluster();
    for (const m of this.#cluster.members) {
      this.#clients.set(m, new Etcd3({ hosts: `http://${m.host}:${m.port}` }));
    }
    await this.#settled();
    const worker = new LoadWorker(this.name);
    try {
      await worker.init({ kind: 'etcd', endpoints: this.#cluster.members.map((m) => `http://${m.host}:${m.port}`) });
    } catch (err) {
      await worker.close();
      throw err;
    }
    return { load: worker };
  }

  settings(): Readonly<Record<string, string>> {
    const m = this.#members()[0]!;
    const log = readFileSync(join(m.dataDir, 'server.log'), 'utf8');
    // etcd logs its effective configuration at start (zap JSON): report what it runs with, not what we believe.
    const field = (name: string): string => new RegExp(`"${name}":"?([^",}]+)`).exec(log)?.[1] ?? '?';
    const cmdline = m.pid === undefined ? '' : readFileSync(`/proc/${m.pid}/cmdline`, 'utf8').split('\0').join(' ');
    const version = /"etcd-version":"([^"]+)"/.exec(log)?.[1] ?? '?';
    return {
      version: `etcd ${version}`,
      heartbeat: field('heartbeat-interval'),
      'election timeout': field('election-timeout'),
      'pre-vote': field('pre-vote'),
      fsync: cmdline.includes('--unsafe-no-fsync') ? 'OFF (--unsafe-no-fsync)' : 'on (etcd default)',
      'file system': fileSystemOf(m.dataDir),
      'snapshot count': field('snapshot-count'),
    };
  }

  async killLeader(): Promise<KilledLeader> {
    const leader = await this.#leader();
    this.#killed = leader;
    // The harness sends SIGKILL to the member's process group at once, then waits until it is gone.
    const killedAtEpochMs = Date.now();
    await leader.kill();
    return { member: `port ${leader.port}`, killedAtEpochMs };
  }

  async restart(): Promise<void> {
    const m = this.#killed;
    if (m === undefined) return;
    // Same port and data dir: the member rejoins with its log and catches up from the leader.
    await m.restart();
    this.#killed = undefined;
    await this.#settled();
  }

  async stop(): Promise<void> {
    for (const c of this.#clients.values()) c.close();
    this.#clients.clear();
    await this.#cluster?.stop();
    this.#cluster = undefined;
  }

  cpuMs(): number {
    let sum = 0;
    for (const m of this.#members()) sum += (m.pid === undefined ? undefined : processCpuMs(m.pid)) ?? 0;
    return sum;
  }

  #members(): readonly ServerHandle[] {
    if (this.#cluster === undefined) throw new Error('etcd target: start() first');
    return this.#cluster.members;
  }

  async #status(m: ServerHandle): Promise<IStatusResponse | undefined> {
    try {
      return await this.#clients.get(m)!.maintenance.status({ deadline: Date.now() + ETCD_MEMBER_TIMEOUT_MS });
    } catch {
      return undefined;
    }
  }

  /** The member that every running member names as leader (the leader's own answer decides). */
  async #leader(): Promise<ServerHandle> {
    const deadline = Date.now() + ETCD_SETTLE_TIMEOUT_MS;
    for (;;) {
      for (const m of this.#members()) {
        if (!m.running) continue;
        const s = await this.#status(m);
        if (s !== undefined && s.leader !== '0' && s.leader === s.header.member_id) return m;
      }
      if (Date.now() > deadline) throw new Error(`etcd: no leader within ${ETCD_SETTLE_TIMEOUT_MS} ms`);
      await sleep(50);
    }
  }

  /** Until every member answers, all name one leader, and each has applied what the leader had committed. */
  async #settled(): Promise<void> {
    const deadline = Date.now() + ETCD_SETTLE_TIMEOUT_MS;
    let last = 'no answer';
    while (Date.now() < deadline) {
      const all = await Promise.all(this.#members().map((m) => this.#status(m)));
      const ok = all.filter((s): s is IStatusResponse => s !== undefined);
      const leaders = new Set(ok.map((s) => s.leader));
      const leader = ok.find((s) => s.header.member_id === s.leader);
      if (ok.length === all.length && leaders.size === 1 && leader !== undefined && !leaders.has('0')) {
        const target = BigInt(leader.raftIndex);
        if (ok.every((s) => BigInt(s.raftAppliedIndex) >= target)) return;
        last = `applied ${ok.map((s) => s.raftAppliedIndex).join('/')} of ${target}`;
      } else {
        last = `${ok.length}/${all.length} answer, leaders ${[...leaders].join(',')}`;
      }
      await sleep(50);
    }
    throw new Error(`etcd: cluster not settled within ${ETCD_SETTLE_TIMEOUT_MS} ms (${last})`);
  }
}

// ---- Rebalancer ------------------------------------------------------------

/** Election timing matched to etcd's defaults (heartbeat 100 ms, election timeout 1000 ms). */
const RB_TICK_MS = 100;
const RB_ELECTION_TICKS = 10;
const RB_IDS = ['n1', 'n2', 'n3'] as const;
const RB_SETTLE_TIMEOUT_MS = 60_000;
const RB_STATUS_TIMEOUT_MS = 10_000;
/** The shared secret of the bench's private cluster (loopback only, never reused). */
const RB_SECRET = 'raft bench secret, loopback only';

export interface RebalancerTargetOptions {
  /** How many groups each node opens (every group on all three nodes); default 1 (the group 'kv'). */
  readonly groups?: number;
}

/**
 * Our Raft (src/raft/node/): three node processes (bench/raft-node.ts) on loopback, fsync on, election timing
 * comparable to etcd's. The load runs inside the three node processes, as an embedding application's would: each
 * node takes its share of the in-flight loops and calls `group.command()`; a follower forwards to the leader.
 */
export class RebalancerTarget implements BenchTarget {
  readonly name = 'rebalancer';
  /** The groups each node opens; the first is the one the load, the probe and killLeader() use. */
  readonly groupNames: readonly string[];
  #root: string | undefined;
  #ports: number[] = [];
  readonly #nodes = new Map<string, NodeProcess>();
  #killed: NodeInit | undefined;

  constructor(options: RebalancerTargetOptions = {}) {
    const n = options.groups ?? 1;
    this.groupNames = n === 1 ? ['kv'] : Array.from({ length: n }, (_, i) => `g${String(i).padStart(4, '0')}`);
  }

  async start(): Promise<{ readonly load: LoadRunner }> {
    await this.startNodes();
    await this.settled();
    return { load: this.#runner() };
  }

  /**
   * Start the three processes: resolves once each listens and has opened its groups, not once they have leaders
   * (the groups section measures how long that takes).
   */
  async startNodes(): Promise<void> {
    // Under the same temp root as etcd's data dirs (test/harness/servers.ts): the same file system.
    this.#root = await mkdtemp(join(tmpdir(), 'rebalancer-bench-raft-'));
    this.#ports = await allocatePorts(RB_IDS.length);
    const addr = (i: number): string => `127.0.0.1:${this.#ports[i]}`;
    const inits = RB_IDS.map((id, i): NodeInit => ({
      id,
      dataDir: join(this.#root!, id),
      listen: addr(i),
      peers: Object.fromEntries(RB_IDS.flatMap((p, j) => (j === i ? [] : [[p, addr(j)]]))),
      secret: RB_SECRET,
      tickMs: RB_TICK_MS,
      electionTicks: RB_ELECTION_TICKS,
      groups: this.groupNames,
    }));
    const started = await Promise.allSettled(inits.map((i) => NodeProcess.start(i)));
    for (const r of started) if (r.status === 'fulfilled') this.#nodes.set(r.value.init.id, r.value);
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
  }

  settings(): Readonly<Record<string, string>> {
    return {
      version: 'rebalancer (src/raft, this checkout)',
      heartbeat: `${RB_TICK_MS}ms`,
      'election timeout': `${RB_TICK_MS * RB_ELECTION_TICKS}ms, randomized in [${RB_TICK_MS * RB_ELECTION_TICKS}, ${
        2 * RB_TICK_MS * RB_ELECTION_TICKS
      }) ms per election (etcd-io/raft randomizes the same way)`,
      'pre-vote': 'true (check-quorum true)',
      fsync: 'on (FsDisk: one fdatasync per group commit of the shared log)',
      'file system': this.#root === undefined ? 'unknown' : fileSystemOf(this.#root),
      'data dir': this.#root ?? '?',
      'snapshot count': '10000 (entries per group)',
    };
  }

  /** Every live node's status (in RB_IDS order). */
  async statuses(): Promise<{ readonly id: string; readonly status: NodeStatus }[]> {
    const live = [...this.#nodes.values()].filter((n) => n.alive);
    return Promise.all(
      live.map(async (n) => ({
        id: n.init.id,
        status: (await n.request({ status: true }, RB_STATUS_TIMEOUT_MS, 'status')).status,
      })),
    );
  }

  /** The live processes, by id. */
  nodes(): readonly NodeProcess[] {
    return [...this.#nodes.values()].filter((n) => n.alive);
  }

  async killLeader(): Promise<KilledLeader> {
    const deadline = Date.now() + RB_SETTLE_TIMEOUT_MS;
    for (;;) {
      const all = await this.statuses();
      const leader = all
        .filter((s) => s.status.first.role === 'leader')
        .sort((a, b) => b.status.first.term - a.status.first.term)[0];
      if (leader !== undefined) {
        const node = this.#nodes.get(leader.id)!;
        this.#killed = node.init;
        const killedAtEpochMs = Date.now();
        await node.kill();
        return { member: leader.id, killedAtEpochMs };
      }
      if (Date.now() > deadline) throw new Error(`rebalancer: no leader within ${RB_SETTLE_TIMEOUT_MS} ms`);
      await sleep(50);
    }
  }

  async restart(): Promise<void> {
    const init = this.#killed;
    if (init === undefined) return;
    // Same id, port and data dir: the node recovers its log and catches up from the leader.
    this.#nodes.set(init.id, await NodeProcess.start(init));
    this.#killed = undefined;
    await this.settled();
  }

  async stop(): Promise<void> {
    await Promise.allSettled([...this.#nodes.values()].map((n) => n.stop()));
    this.#nodes.clear();
    for (const p of this.#ports) releasePort(p);
    this.#ports = [];
    if (this.#root !== undefined) await rm(this.#root, { recursive: true, force: true });
    this.#root = undefined;
  }

  cpuMs(): number {
    let sum = 0;
    for (const n of this.#nodes.values()) sum += n.cpuMs() ?? 0;
    return sum;
  }

  /**
   * Run one closed-loop load over `groups` inside the node processes: loop j runs on node (start + j) mod 3, the
   * start rotating with the seed (at 1 in flight the single loop is on a follower in some rounds, on the leader in
   * others, as etcd3 spreads calls over members). Each node draws its own keys (seed per node).
   */
  async runLoad(req: RunRequest, groups: readonly string[] = [this.groupNames[0]!]): Promise<LoadResult> {
    const live = this.nodes();
    if (live.length !== RB_IDS.length) throw new Error(`rebalancer: ${live.length} of 3 nodes running`);
    const shares = live.map(() => 0);
    const start = req.seed % live.length;
    for (let j = 0; j < req.inFlight; j++) shares[(start + j) % live.length]! += 1;
    // Which role carries the loops matters at low concurrency (a follower's put takes the forwarding hop): say it.
    const roles = await this.statuses().catch(() => []);
    const roleOf = (id: string): string => roles.find((r) => r.id === id)?.status.first.role ?? '?';
    process.stderr.write(
      `raft bench:   rebalancer loops per node: ${live.map((n, i) => `${n.init.id} (${roleOf(n.init.id)}) ${shares[i]}`).join(', ')}\n`,
    );
    const parts = await Promise.all(
      live.flatMap((n, i) =>
        shares[i] === 0
          ? []
          : [
              n
                .request(
                  { run: { ...req, inFlight: shares[i]!, seed: req.seed * 31 + i, groups } },
                  req.warmupMs + req.durationMs + WORKER_SLACK_MS,
                  'part',
                )
                .then((r) => r.part),
            ],
      ),
    );
    return mergeLoads(parts, req.inFlight, req.durationMs);
  }

  /** Until all three answer, name one leader of the first group, and have applied what it committed. */
  async settled(): Promise<void> {
    const deadline = Date.now() + RB_SETTLE_TIMEOUT_MS;
    let last = 'no answer';
    while (Date.now() < deadline) {
      try {
        const all = await this.statuses();
        const leaders = new Set(all.map((s) => s.status.first.leader));
        const leader = all.find((s) => s.status.first.role === 'leader');
        if (all.length === RB_IDS.length && leaders.size === 1 && leader !== undefined) {
          const target = leader.status.first.committed;
          if (all.every((s) => s.status.first.applied >= target)) return;
          last = `applied ${all.map((s) => s.status.first.applied).join('/')} of ${target}`;
        } else {
          last = `${all.length}/3 answer, leaders ${[...leaders].join(',')}`;
        }
      } catch (err) {
        last = err instanceof Error ? err.message : String(err);
      }
      await sleep(50);
    }
    throw new Error(`rebalancer: group not settled within ${RB_SETTLE_TIMEOUT_MS} ms (${last})`);
  }

  #runner(): LoadRunner {
    return {
      where:
        'in-process in the three node processes (embedded library: group.command, followers forward to the ' +
        'leader; no client process, the client cost is in the servers’ CPU)',
      run: (req) => this.runLoad(req),
      arm: async (callTimeoutMs) => {
        await Promise.all(
          this.nodes().map((n) => n.request({ arm: { callTimeoutMs } }, callTimeoutMs + WORKER_SLACK_MS, 'armed')),
        );
      },
      failover: async (req: FailoverRequest): Promise<FailoverResult> => {
        // From a surviving node: the first one alive (a follower of the dead leader until the election).
        const n = this.nodes()[0];
        if (n === undefined) throw new Error('rebalancer: no node alive to probe from');
        return (await n.request({ failover: req }, req.maxMs + WORKER_SLACK_MS, 'recovered')).recovered;
      },
      close: async () => {},
    };
  }
}

export const TARGETS: Readonly<Record<string, () => BenchTarget>> = {
  etcd: () => new EtcdTarget(),
  rebalancer: () => new RebalancerTarget(),
};
