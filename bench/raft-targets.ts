/**
 * The systems `npm run bench -- raft` compares: each a three-member replicated log started privately on loopback,
 * driven through a BenchTarget. The bench process only starts, kills and restarts members; the load itself runs in
 * a worker process (bench/raft-worker.ts) that opens its client from `workerInit`.
 */
import { readFileSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { Etcd3, type IStatusResponse } from 'etcd3';
import { startEtcdCluster, type EtcdCluster, type ServerHandle } from '../test/harness/servers.js';
import type { WorkerInit } from './raft-protocol.js';

/**
 * One system under test. Lifecycle: start() once, then any number of killLeader()/restart() pairs, then stop().
 * Implementations must leave nothing running after stop(), also when start() failed half way.
 */
export interface BenchTarget {
  /** Column name in the report: 'etcd', 'rebalancer'. */
  readonly name: string;
  /** Start three members, fsync on; resolves once the group has a leader and accepts writes. */
  start(): Promise<{ readonly workerInit: WorkerInit }>;
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

/** CPU time (user + system, ms) that a live process has used, from /proc/<pid>/stat; undefined if it is gone. */
export function processCpuMs(pid: number): number | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // Fields after the last ')' (comm may contain anything): utime and stime are fields 14 and 15, in clock ticks.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(rest[11]) + Number(rest[12]);
  return Number.isFinite(ticks) ? (ticks * 1000) / CLOCK_TICKS_PER_SECOND : undefined;
}

/** USER_HZ: 100 on every Linux architecture Node runs on (the kernel reports ticks in it whatever its own HZ). */
const CLOCK_TICKS_PER_SECOND = 100;

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

  async start(): Promise<{ readonly workerInit: WorkerInit }> {
    this.#cluster = await startEtcdCluster();
    for (const m of this.#cluster.members) {
      this.#clients.set(m, new Etcd3({ hosts: `http://${m.host}:${m.port}` }));
    }
    await this.#settled();
    return {
      workerInit: { kind: 'etcd', endpoints: this.#cluster.members.map((m) => `http://${m.host}:${m.port}`) },
    };
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

/**
 * Our Raft (src/raft/node/): three node processes on loopback, fsync on, election timing comparable to etcd's
 * (report it in settings()). To be written with the node runtime: start() returns the `workerInit` that
 * bench/raft-worker.ts's `rebalancer` client factory needs.
 */
export class RebalancerTarget implements BenchTarget {
  readonly name = 'rebalancer';

  async start(): Promise<{ readonly workerInit: WorkerInit }> {
    throw new Error('the rebalancer target of the raft bench is not built yet (bench/raft-targets.ts)');
  }
  settings(): Readonly<Record<string, string>> {
    return {};
  }
  async killLeader(): Promise<KilledLeader> {
    throw new Error('not built yet');
  }
  async restart(): Promise<void> {
    throw new Error('not built yet');
  }
  async stop(): Promise<void> {}
}

export const TARGETS: Readonly<Record<string, () => BenchTarget>> = {
  etcd: () => new EtcdTarget(),
  rebalancer: () => new RebalancerTarget(),
};
