/**
 * `npm run bench -- fleet [--json] [--sections convergence,failover,throughput,idle] [--groups 1000]
 *   [--store-url URL] [--rounds N] [--duration-ms MS] [--warmup-ms MS] [--warmup-rounds N] [--in-flight N] [--idle-ms MS]
 *   [--session-ttl-ms MS] [--grace-period-ms MS] [--max-wait-ms MS] [--max-concurrent-changes N]`
 *
 * The fleet (src/runtime/fleet, issue 14 item 8) with every node a separate process (bench/fleet-node.ts), on one
 * control store: a SQLite file by default (one host), or any store URL (`--store-url postgres://…`). Timing is the
 * fleet's default (tick 100 ms, election timeout 1000–2000 ms, session TTL 10 s, grace period 5 s) unless changed.
 *
 * Fleet A: nodes n1, n2, n3 in zones z1, z2, z3; `--groups` groups of 3 replicas added through n1; then
 * 1. idle: once every group has converged and every leader quiesced, and 12 s more (the leaders' last lag reports),
 *    each node's CPU over `--idle-ms` and its RSS.
 * 2. convergence: n4 (zone z1) activates — time until every group has its desired members and leaders (the
 *    fleet's status, computed from the store as FleetNode.status() is, says `converged` for all, and the desired
 *    records name n4); then n4 deactivates — time until all converged without n4. Each beside raft_fleet's model
 *    (below).
 * 3. failover: a fourth node joins, everything converges, then kill -9 of the node leading the most groups: time
 *    until every group it led has a new leader (from the survivors' `led` events), until its session ended, and
 *    until every group it held is fully re-replicated on the survivors (all converged again, no desired record
 *    naming it).
 * Fleet B (throughput): 48 groups on 3 fresh nodes; writes (puts of 16-byte values, key-hashed over the 48 groups)
 *    at `--in-flight` in total, run inside the node processes through node.command(); beside the same load on a
 *    private three-member etcd (the raft bench's etcd target and load worker), rounds alternating, medians. First
 *    `--warmup-rounds` (default 1) rounds of each side that are not counted: a node's first seconds of load cost
 *    it about twice the CPU per write of later ones (JIT compilation on its helper threads; etcd's client process
 *    too), which a service that has run for a minute no longer pays.
 *
 * raft_fleet's model (../shared/reference/ANCHORS.md): each group's leader makes at most one membership change per
 * group per adjustment interval (60 s by default), all groups in parallel. A group whose desired members gain a and
 * lose r nodes needs a + r steps, so raft_fleet needs 60 s × max over groups of (a + r) — the most generous reading
 * (unbounded parallelism across groups, the first step at once, leader moves free). Ratio = that / measured.
 *
 * "Converged" is taken the first time the status poll sees it, confirmed by polls over the next CONFIRM_MS (a
 * desired record written later by the coordinator would undo it). Polls are every POLL_MS or twice their cost.
 * Progress on stderr, the table on stdout (or JSON).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InvalidArgumentError } from '../src/errors.js';
import { addGroup, readFleetView } from '../src/protocol/fleet/io.js';
import { FleetKeys } from '../src/protocol/fleet/keys.js';
import { fleetStatus, type FleetStatus } from '../src/protocol/fleet/status.js';
import type { Store } from '../src/store/contract.js';
import { openStore } from '../src/store/open.js';
import { allocatePorts } from '../test/harness/ports.js';
import { releasePort } from '../test/harness/processes.js';
import { stopAllServers } from '../test/harness/servers.js';
import type { FleetNodeInit } from './fleet-protocol.js';
import { FleetNodeProcess } from './fleet-node-process.js';
import { mergeLoads, type LoadResult } from './raft-load.js';
import type { LoadRunner } from './raft-runner.js';
import { EtcdTarget, fileSystemOf } from './raft-targets.js';
import { round, table } from './stats.js';

const SECTIONS = ['convergence', 'failover', 'throughput', 'idle'] as const;
type Section = (typeof SECTIONS)[number];

const TICK_MS = 100;
const ELECTION_TICKS = 10;
const ELECTION_TIMEOUT_MS = TICK_MS * ELECTION_TICKS;
const RAFT_FLEET_INTERVAL_S = 60;
const THROUGHPUT_GROUPS = 48;
const REPLICAS = 3;
const POLL_MS = 200;
const CONFIRM_MS = 2000;
const QUIESCE_TIMEOUT_MS = 60_000;
/** After every leader quiesced and before the idle window: longer than a leader's lag report period (10 s). */
const IDLE_SETTLE_MS = 12_000;
const REQUEST_TIMEOUT_MS = 30_000;
const SECRET = 'fleet bench secret, loopback only';
const MiB = 1024 * 1024;

function log(msg: string): void {
  process.stderr.write(`fleet bench: ${msg}\n`);
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));
const seconds = (ms: number): number => round(ms / 1000, 2);

function median(xs: readonly number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

// ---- options ---------------------------------------------------------------

interface Options {
  readonly json: boolean;
  readonly sections: ReadonlySet<Section>;
  readonly groups: number;
  readonly storeUrl: string | undefined;
  readonly rounds: number;
  readonly durationMs: number;
  readonly warmupMs: number;
  /** Whole rounds of both sides run first and not counted (JIT compilation, heaps growing: the first is slowest). */
  readonly warmupRounds: number;
  readonly inFlight: number;
  readonly idleMs: number;
  readonly sessionTtlMs: number;
  readonly gracePeriodMs: number;
  readonly maxWaitMs: number;
  /** joinFleet's maxConcurrentChanges; undefined: the fleet's default. */
  readonly maxConcurrentChanges: number | undefined;
}

function parseArgs(args: readonly string[]): Options {
  const known = new Set([
    '--json',
    '--sections',
    '--groups',
    '--store-url',
    '--rounds',
    '--duration-ms',
    '--warmup-ms',
    '--warmup-rounds',
    '--in-flight',
    '--idle-ms',
    '--session-ttl-ms',
    '--grace-period-ms',
    '--max-wait-ms',
    '--max-concurrent-changes',
  ]);
  for (const a of args) {
    if (a.startsWith('--') && !known.has(a)) {
      throw new InvalidArgumentError(`fleet bench: unknown option ${a}; known: ${[...known].join(' ')}`);
    }
  }
  const value = (name: string): string | undefined => {
    const i = args.indexOf(name);
    if (i < 0) return undefined;
    const v = args[i + 1];
    if (v === undefined || v.startsWith('--')) throw new InvalidArgumentError(`fleet bench: ${name} needs a value`);
    return v;
  };
  const int = (name: string, fallback: number, min: number): number => {
    const v = value(name);
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) {
      throw new InvalidArgumentError(`fleet bench: ${name} must be an integer ≥ ${min}`);
    }
    return n;
  };
  const sections = (value('--sections') ?? SECTIONS.join(',')).split(',').filter((s) => s !== '');
  for (const s of sections) {
    if (!(SECTIONS as readonly string[]).includes(s)) {
      throw new InvalidArgumentError(`fleet bench: unknown section ${s}; known: ${SECTIONS.join(',')}`);
    }
  }
  return {
    json: args.includes('--json'),
    sections: new Set(sections as Section[]),
    groups: int('--groups', 1000, 1),
    storeUrl: value('--store-url'),
    rounds: int('--rounds', 3, 1),
    durationMs: int('--duration-ms', 5000, 100),
    warmupMs: int('--warmup-ms', 1000, 0),
    warmupRounds: int('--warmup-rounds', 1, 0),
    inFlight: int('--in-flight', 128, 1),
    idleMs: int('--idle-ms', 10_000, 100),
    sessionTtlMs: int('--session-ttl-ms', 10_000, 100),
    gracePeriodMs: int('--grace-period-ms', 5000, 0),
    maxWaitMs: int('--max-wait-ms', 600_000, 1000),
    maxConcurrentChanges:
      value('--max-concurrent-changes') === undefined ? undefined : int('--max-concurrent-changes', 16, 1),
  };
}

// ---- one fleet of node processes ---------------------------------------------------

/** Groups named g00000…: sortable, the same in every run. */
const groupName = (i: number): string => `g${String(i).padStart(5, '0')}`;

/** A group's desired members (desired leader first) and its desired leader, by name. */
type Placement = ReadonlyMap<string, readonly string[]>;

class BenchFleet {
  readonly nodes = new Map<string, FleetNodeProcess>();
  readonly #keys: FleetKeys;
  readonly #ports: number[] = [];
  #store: Store | undefined;
  #pollCostMs = 0;
  /** Every status read's cost (ms), for the report: what reading the whole fleet costs at this size. */
  readonly pollCostsMs: number[] = [];

  private constructor(
    readonly name: string,
    readonly root: string,
    readonly storeUrl: string,
    readonly o: Options,
  ) {
    this.#keys = new FleetKeys(name);
  }

  static async create(name: string, o: Options): Promise<BenchFleet> {
    const root = await mkdtemp(join(tmpdir(), `rebalancer-bench-fleet-${name}-`));
    const f = new BenchFleet(name, root, o.storeUrl ?? `sqlite:${join(root, 'control.db')}`, o);
    f.#store = await openStore(f.storeUrl, { namespace: 'fleet-bench' });
    return f;
  }

  async start(id: string, zone: string): Promise<FleetNodeProcess> {
    const [port] = await allocatePorts(1);
    this.#ports.push(port!);
    const init: FleetNodeInit = {
      id,
      zone,
      address: `127.0.0.1:${port}`,
      dataDir: join(this.root, id),
      storeUrl: this.storeUrl,
      namespace: 'fleet-bench',
      fleet: this.name,
      secret: SECRET,
      tickMs: TICK_MS,
      electionTicks: ELECTION_TICKS,
      sessionTtlMs: this.o.sessionTtlMs,
      gracePeriodMs: this.o.gracePeriodMs,
      // Fleet A places its groups once the first three nodes are up (not all on n1 first).
      minNodes: 3,
      maxConcurrentChanges: this.o.maxConcurrentChanges,
    };
    const p = await FleetNodeProcess.start(init);
    this.nodes.set(id, p);
    return p;
  }

  live(): FleetNodeProcess[] {
    return [...this.nodes.values()].filter((n) => n.alive);
  }

  /**
   * Add `count` groups before any node runs, with the protocol's addGroup (what FleetNode.addGroup calls): the
   * measured creation is then the fleet's cold start with all its groups, not the store contention of adding
   * them one by one while three nodes read the whole fleet on every change.
   */
  async addGroups(count: number, replicas: number): Promise<void> {
    for (let i = 0; i < count; i++) {
      await addGroup(this.#store!, this.#keys, groupName(i), { replicas, machine: 'kv' });
    }
  }

  /** The fleet's status from the store, as FleetNode.status() computes it (read by this process). */
  async status(): Promise<FleetStatus> {
    const t0 = performance.now();
    const view = await readFleetView(this.#store!, this.#keys, () => undefined);
    const s = fleetStatus(this.name, view);
    this.#pollCostMs = performance.now() - t0;
    if (this.pollCostsMs.length < 10_000) this.pollCostsMs.push(this.#pollCostMs);
    return s;
  }

  pollMs(): number {
    return Math.max(POLL_MS, 2 * this.#pollCostMs);
  }

  /**
   * From `sinceMs` (performance.now()), until every one of `groups` groups is converged and `also` holds, confirmed
   * over CONFIRM_MS. Returns ms from `sinceMs` to the first poll that saw it, and the status then.
   */
  async converged(
    what: string,
    groups: number,
    sinceMs: number,
    also: (s: FleetStatus) => boolean = () => true,
    onPoll: (s: FleetStatus) => void = () => undefined,
  ): Promise<{ ms: number; status: FleetStatus; polls: number }> {
    let first: { at: number; status: FleetStatus } | undefined;
    let lastLogS = -1;
    let polls = 0;
    for (;;) {
      const s = await this.status();
      polls++;
      onPoll(s);
      const at = performance.now();
      const ok = s.counts.converged === groups && s.groups.length === groups && also(s);
      if (ok) {
        first ??= { at, status: s };
        if (at - first.at >= CONFIRM_MS) return { ms: first.at - sinceMs, status: first.status, polls };
      } else {
        first = undefined;
      }
      const el = Math.floor((at - sinceMs) / 1000);
      if (el >= lastLogS + 5) {
        lastLogS = el;
        const c = s.counts;
        log(
          `  ${what}: ${el} s: converged ${c.converged}, moving ${c.moving}, unknown ${c.unknown}, ` +
            `unplaced ${c.unplaced}, stuck ${c.stuck}, majority-lost ${c['majority-lost']}`,
        );
      }
      if (at - sinceMs > this.o.maxWaitMs) {
        await this.describe(s);
        throw new Error(`${what}: not converged within ${this.o.maxWaitMs} ms (${JSON.stringify(s.counts)})`);
      }
      await sleep(this.pollMs());
    }
  }

  /** On stderr: the groups not converged (up to 10), as the status and each live node's replicas say. */
  async describe(s: FleetStatus): Promise<void> {
    const bad = s.groups.filter((g) => g.health !== 'converged').slice(0, 10);
    for (const g of bad) {
      log(
        `  ${g.name}: ${g.health} (${g.detail}); desired ${g.desired.join(',')} leader ${g.desiredLeader}; ` +
          `reported leader ${g.leader} voters ${g.voters.join(',')} learners ${g.learners.join(',')}`,
      );
    }
    for (const n of this.live()) {
      try {
        const d = await n.request({ describe: { groups: bad.map((g) => g.name) } }, REQUEST_TIMEOUT_MS, 'described');
        for (const line of d.described) log(`    ${n.init.id} ${line}`);
      } catch (err) {
        log(`    ${n.init.id}: ${message(err)}`);
      }
    }
  }

  async stop(): Promise<void> {
    await Promise.allSettled([...this.nodes.values()].map((n) => n.stop()));
    this.nodes.clear();
    await this.#store?.close().catch(() => undefined);
    for (const p of this.#ports) releasePort(p);
    await rm(this.root, { recursive: true, force: true });
  }
}

function placementOf(s: FleetStatus): Placement {
  return new Map(s.groups.map((g) => [g.name, g.desired]));
}

/** Membership steps between two placements: per group, members gained + members lost; leaders moved. */
function movesBetween(
  before: Placement,
  after: Placement,
  leadersBefore: ReadonlyMap<string, string | undefined>,
  leadersAfter: ReadonlyMap<string, string | undefined>,
): { groupsMoved: number; steps: number; maxStepsPerGroup: number; leadersMoved: number } {
  let groupsMoved = 0;
  let steps = 0;
  let maxStepsPerGroup = 0;
  let leadersMoved = 0;
  for (const [name, a] of after) {
    const b = before.get(name) ?? [];
    const n = a.filter((m) => !b.includes(m)).length + b.filter((m) => !a.includes(m)).length;
    if (n > 0) groupsMoved++;
    steps += n;
    maxStepsPerGroup = Math.max(maxStepsPerGroup, n);
    if (leadersBefore.get(name) !== leadersAfter.get(name)) leadersMoved++;
  }
  return { groupsMoved, steps, maxStepsPerGroup, leadersMoved };
}

const desiredLeaders = (s: FleetStatus): Map<string, string | undefined> =>
  new Map(s.groups.map((g) => [g.name, g.desiredLeader]));

// ---- results ---------------------------------------------------------------------

interface NodeIdle {
  readonly node: string;
  readonly replicas: number;
  readonly leads: number;
  readonly quiescedLeads: number;
  readonly idleCpuPercent: number;
  readonly rssMiB: number;
  readonly heapUsedMiB: number;
}

interface IdleResult {
  readonly groups: number;
  readonly allQuiesced: boolean;
  readonly idleMs: number;
  readonly perNode: readonly NodeIdle[];
}

interface Step {
  readonly what: string;
  /** From the trigger (the node ready / deactivate sent / kill) to all converged. */
  readonly seconds: number;
  readonly groupsMoved: number;
  readonly steps: number;
  readonly maxStepsPerGroup: number;
  readonly leadersMoved: number;
  /** raft_fleet's model: 60 s × maxStepsPerGroup. */
  readonly raftFleetSeconds: number;
  /** raftFleetSeconds / seconds. */
  readonly speedup: number;
  readonly note?: string;
}

interface FailoverResultF {
  readonly victim: string;
  readonly groupsHeld: number;
  readonly groupsLed: number;
  /** Until every group the victim led had a new leader (latest `led` event on a survivor). */
  readonly allLedAgainMs: number;
  readonly medianLedAgainMs: number;
  /** Until the victim's node record vanished from the store (its session expired). */
  readonly sessionGoneMs: number;
  /** Until all converged again without the victim (re-replicated). */
  readonly reReplicatedMs: number;
  /** Why there is no re-replication figure. */
  readonly reReplicationError?: string;
  readonly moves: ReturnType<typeof movesBetween>;
}

interface ThroughputSide {
  readonly runs: readonly (LoadResult | { error: string })[];
  readonly opsPerSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly errors: number;
}

interface Results {
  setup?: {
    groups: number;
    addMs: number;
    convergedMs: number;
    /** Median cost of one status read (the whole fleet's records) by the bench process. */
    viewReadMs: number;
    fileSystem: string;
    store: string;
  };
  idle?: IdleResult;
  convergence?: Step[];
  failover?: FailoverResultF;
  throughput?: {
    fleet: ThroughputSide;
    etcd?: ThroughputSide;
    /** Writes/s of the warm-up rounds (not counted). */
    warmupRuns: { fleet: number[]; etcd: number[] };
    etcdError?: string;
    settings?: Record<string, string>;
  };
  errors: Record<string, string>;
  nodeErrors: Record<string, { count: number; first: readonly string[] }>;
}

// ---- sections ----------------------------------------------------------------------

async function collectNodeErrors(f: BenchFleet, r: Results): Promise<void> {
  for (const n of f.live()) {
    try {
      const l = (await n.request({ local: { ledAt: false } }, REQUEST_TIMEOUT_MS, 'local')).local;
      if (l.errors > 0) r.nodeErrors[`${f.name}/${n.init.id}`] = { count: l.errors, first: l.firstErrors };
    } catch {
      // Gone: nothing to collect.
    }
  }
}

async function idleSection(f: BenchFleet, o: Options): Promise<IdleResult> {
  const t0 = performance.now();
  let locals = await Promise.all(
    f.live().map((n) => n.request({ local: { ledAt: false } }, REQUEST_TIMEOUT_MS, 'local')),
  );
  let allQuiesced = false;
  while (performance.now() - t0 < QUIESCE_TIMEOUT_MS) {
    const q = locals.reduce((a, l) => a + l.local.quiescedLeaderOf, 0);
    if (q === o.groups) {
      allQuiesced = true;
      break;
    }
    await sleep(500);
    locals = await Promise.all(
      f.live().map((n) => n.request({ local: { ledAt: false } }, REQUEST_TIMEOUT_MS, 'local')),
    );
  }
  // Leaders write a last report of their lag up to REPORT_LAG_EVERY_MS (10 s) after the group settled, and each
  // report wakes a whole-fleet read on every node: the idle window starts after those.
  log(
    `idle: ${allQuiesced ? 'every leader quiesced' : 'NOT every leader quiesced'}; settling ${IDLE_SETTLE_MS} ms, ` +
      `then measuring ${o.idleMs} ms…`,
  );
  await sleep(IDLE_SETTLE_MS);
  const nodes = f.live();
  const c0 = nodes.map((n) => n.cpuMs() ?? Number.NaN);
  const w0 = performance.now();
  await sleep(o.idleMs);
  const c1 = nodes.map((n) => n.cpuMs() ?? Number.NaN);
  const wall = performance.now() - w0;
  const after = await Promise.all(
    nodes.map((n) => n.request({ local: { ledAt: false } }, REQUEST_TIMEOUT_MS, 'local')),
  );
  return {
    groups: o.groups,
    allQuiesced,
    idleMs: Math.round(wall),
    perNode: nodes.map((n, i) => {
      const l = after[i]!.local;
      return {
        node: n.init.id,
        replicas: l.replicas,
        leads: l.leaderOf,
        quiescedLeads: l.quiescedLeaderOf,
        idleCpuPercent: round(((c1[i]! - c0[i]!) / wall) * 100, 2),
        rssMiB: round(l.rssBytes / MiB, 1),
        heapUsedMiB: round(l.heapUsedBytes / MiB, 1),
      };
    }),
  };
}

function step(what: string, ms: number, m: ReturnType<typeof movesBetween>, note?: string): Step {
  const raftFleetSeconds = RAFT_FLEET_INTERVAL_S * m.maxStepsPerGroup;
  return {
    what,
    seconds: seconds(ms),
    ...m,
    raftFleetSeconds,
    speedup: ms > 0 ? round(raftFleetSeconds / (ms / 1000), 1) : Number.NaN,
    ...(note === undefined ? {} : { note }),
  };
}

async function convergenceSection(f: BenchFleet, o: Options, joiner: string): Promise<Step[]> {
  const out: Step[] = [];
  const before = await f.status();
  log(`convergence: ${joiner} (zone z1) activates…`);
  const p = await f.start(joiner, 'z1');
  const joined = await f.converged(`activate ${joiner}`, o.groups, p.readyAtMs, (s) =>
    s.nodes.some((n) => n.id === joiner && n.desired > 0),
  );
  const m1 = movesBetween(
    placementOf(before),
    placementOf(joined.status),
    desiredLeaders(before),
    desiredLeaders(joined.status),
  );
  out.push(
    step(
      `3 → 4 nodes (${joiner} activates)`,
      joined.ms,
      m1,
      `from joinFleet resolved; ${seconds(p.readyAtMs - p.forkedAtMs)} s more from the fork`,
    ),
  );
  log(`  all converged ${seconds(joined.ms)} s after ${joiner} joined (${m1.groupsMoved} groups moved)`);

  log(`convergence: ${joiner} deactivates…`);
  const t0 = performance.now();
  let drainedMs = Number.NaN;
  const drained = p
    .request({ deactivate: { timeoutMs: o.maxWaitMs } }, o.maxWaitMs + REQUEST_TIMEOUT_MS, 'deactivated')
    .then(() => (drainedMs = performance.now() - t0));
  const left = await f.converged(`deactivate ${joiner}`, o.groups, t0, (s) =>
    s.nodes.every((n) => n.id !== joiner || n.desired === 0),
  );
  await drained;
  const m2 = movesBetween(
    placementOf(joined.status),
    placementOf(left.status),
    desiredLeaders(joined.status),
    desiredLeaders(left.status),
  );
  out.push(
    step(`4 → 3 nodes (${joiner} deactivates)`, left.ms, m2, `deactivate() resolved after ${seconds(drainedMs)} s`),
  );
  log(`  all converged ${seconds(left.ms)} s after deactivate (drained in ${seconds(drainedMs)} s)`);
  return out;
}

async function failoverSection(f: BenchFleet, o: Options, joiner: string): Promise<FailoverResultF> {
  log(`failover: ${joiner} (zone z2) joins, so that the groups of a killed node have somewhere to go…`);
  const p = await f.start(joiner, 'z2');
  const four = await f.converged(`failover: ${joiner} joins`, o.groups, p.readyAtMs, (s) =>
    s.nodes.some((n) => n.id === joiner && n.desired > 0),
  );
  const byLeads = [...four.status.nodes].sort((a, b) => b.leads - a.leads);
  const victim = byLeads[0]!.id;
  const held = four.status.groups.filter((g) => g.voters.includes(victim)).map((g) => g.name);
  const led = new Set(four.status.groups.filter((g) => g.leader === victim).map((g) => g.name));
  const proc = f.nodes.get(victim)!;
  log(`failover: kill -9 of ${victim} (holds ${held.length} groups, leads ${led.size})…`);
  const killedAtEpochMs = Date.now();
  const killedAt = performance.now();
  await proc.kill();

  // Leaders again: poll the survivors' `led` times until every group the victim led has a leader elected after
  // the kill (a survivor's leader status and when it became so).
  let ledAgain: number[] = [];
  let sessionGoneMs = Number.NaN;
  for (;;) {
    const locals = await Promise.all(
      f.live().map((n) => n.request({ local: { ledAt: true } }, REQUEST_TIMEOUT_MS, 'local')),
    );
    const at = new Map<string, number>();
    for (const l of locals) {
      for (const [g, t] of Object.entries(l.local.ledAtEpochMs ?? {})) if (t > killedAtEpochMs) at.set(g, t);
    }
    const missing = [...led].filter((g) => !at.has(g));
    if (missing.length === 0) {
      ledAgain = [...led].map((g) => at.get(g)! - killedAtEpochMs);
      break;
    }
    if (performance.now() - killedAt > o.maxWaitMs) {
      throw new Error(`failover: ${missing.length} of ${led.size} groups without a new leader after ${o.maxWaitMs} ms`);
    }
    await sleep(50);
  }
  const allLedAgainMs = Math.max(0, ...ledAgain);
  log(`  every group ${victim} led has a new leader ${allLedAgainMs} ms after the kill`);

  let reReplicated: Awaited<ReturnType<BenchFleet['converged']>> | undefined;
  let reReplicationError: string | undefined;
  try {
    reReplicated = await f.converged(
      `failover: re-replicating ${victim}'s groups`,
      o.groups,
      killedAt,
      (s) => !s.nodes.some((n) => n.id === victim) && s.groups.every((g) => !g.desired.includes(victim)),
      (s) => {
        if (Number.isNaN(sessionGoneMs) && !s.nodes.some((n) => n.id === victim)) {
          sessionGoneMs = performance.now() - killedAt;
        }
      },
    );
    log(`  fully re-replicated ${seconds(reReplicated.ms)} s after the kill`);
  } catch (err) {
    // The leaders' figure stands; say why the re-replication has none.
    reReplicationError = message(err);
    log(`  re-replication: ERROR ${reReplicationError}`);
  }
  return {
    victim,
    groupsHeld: held.length,
    groupsLed: led.size,
    allLedAgainMs,
    medianLedAgainMs: Math.round(median(ledAgain)),
    sessionGoneMs: Math.round(sessionGoneMs),
    reReplicatedMs: reReplicated === undefined ? Number.NaN : Math.round(reReplicated.ms),
    ...(reReplicationError === undefined ? {} : { reReplicationError }),
    moves:
      reReplicated === undefined
        ? { groupsMoved: 0, steps: 0, maxStepsPerGroup: 0, leadersMoved: 0 }
        : movesBetween(
            placementOf(four.status),
            placementOf(reReplicated.status),
            desiredLeaders(four.status),
            desiredLeaders(reReplicated.status),
          ),
  };
}

/** The closed-loop write load over the fleet's first THROUGHPUT_GROUPS groups, a third of the loops on each node. */
async function fleetLoad(f: BenchFleet, o: Options, seed: number): Promise<LoadResult> {
  const live = f.live();
  const groups = Array.from({ length: THROUGHPUT_GROUPS }, (_, i) => groupName(i));
  const shares = live.map((_, i) => Math.floor(o.inFlight / live.length) + (i < o.inFlight % live.length ? 1 : 0));
  const parts = await Promise.all(
    live.flatMap((n, i) =>
      shares[i] === 0
        ? []
        : [
            n
              .request(
                {
                  run: {
                    inFlight: shares[i]!,
                    durationMs: o.durationMs,
                    warmupMs: o.warmupMs,
                    seed: seed * 31 + i,
                    groups,
                  },
                },
                o.warmupMs + o.durationMs + 60_000,
                'part',
              )
              .then((r) => r.part),
          ],
    ),
  );
  return mergeLoads(parts, o.inFlight, o.durationMs);
}

function side(runs: (LoadResult | { error: string })[]): ThroughputSide {
  const ok = runs.filter((r): r is LoadResult => !('error' in r));
  return {
    runs,
    opsPerSecond: Math.round(median(ok.map((r) => r.opsPerSecond))),
    p50Ms: round(median(ok.map((r) => r.p50Ms)), 2),
    p99Ms: round(median(ok.map((r) => r.p99Ms)), 2),
    errors: ok.reduce((a, r) => a + r.errors, 0) + (runs.length - ok.length),
  };
}

async function throughputSection(o: Options, r: Results): Promise<NonNullable<Results['throughput']>> {
  const f = await BenchFleet.create('tput', o);
  let etcd: EtcdTarget | undefined;
  let load: LoadRunner | undefined;
  try {
    log(`throughput: 3 fresh nodes, ${THROUGHPUT_GROUPS} groups…`);
    await f.addGroups(THROUGHPUT_GROUPS, REPLICAS);
    const t0 = performance.now();
    await Promise.all([f.start('t1', 'z1'), f.start('t2', 'z2'), f.start('t3', 'z3')]);
    await f.converged('throughput fleet', THROUGHPUT_GROUPS, t0);
    let etcdError: string | undefined;
    let settings: Record<string, string> | undefined;
    try {
      log('throughput: starting a private three-member etcd…');
      etcd = new EtcdTarget();
      load = (await etcd.start()).load;
      settings = { ...etcd.settings() };
    } catch (err) {
      etcdError = message(err);
      log(`  etcd: could not start: ${etcdError}`);
    }
    const fleetRuns: (LoadResult | { error: string })[] = [];
    const etcdRuns: (LoadResult | { error: string })[] = [];
    const warmupRuns = { fleet: [] as number[], etcd: [] as number[] };
    for (let i = -o.warmupRounds; i < o.rounds; i++) {
      const warmup = i < 0;
      const seed = (i + 1) * 1_000_003 + o.inFlight;
      const order: ('fleet' | 'etcd')[] = i % 2 === 0 ? ['fleet', 'etcd'] : ['etcd', 'fleet'];
      for (const which of order) {
        if (which === 'etcd' && load === undefined) continue;
        log(
          warmup
            ? `throughput warm-up round ${i + o.warmupRounds + 1}/${o.warmupRounds} (not counted): ${which}…`
            : `throughput round ${i + 1}/${o.rounds}: ${which}, ${o.inFlight} in flight…`,
        );
        try {
          const res =
            which === 'fleet'
              ? await fleetLoad(f, o, seed)
              : await load!.run({ inFlight: o.inFlight, durationMs: o.durationMs, warmupMs: o.warmupMs, seed });
          if (warmup) warmupRuns[which].push(res.opsPerSecond);
          else (which === 'fleet' ? fleetRuns : etcdRuns).push(res);
          log(
            `  ${which}: ${res.opsPerSecond} writes/s, p50 ${res.p50Ms} ms, p99 ${res.p99Ms} ms, ${res.errors} errors`,
          );
        } catch (err) {
          if (!warmup) (which === 'fleet' ? fleetRuns : etcdRuns).push({ error: message(err) });
          log(`  ${which}: ERROR ${message(err)}`);
        }
      }
    }
    await collectNodeErrors(f, r);
    return {
      fleet: side(fleetRuns),
      ...(load === undefined ? {} : { etcd: side(etcdRuns) }),
      warmupRuns,
      ...(etcdError === undefined ? {} : { etcdError }),
      ...(settings === undefined ? {} : { settings }),
    };
  } finally {
    await load?.close().catch(() => undefined);
    await etcd?.stop().catch(() => undefined);
    await f.stop();
  }
}

// ---- run and report ------------------------------------------------------------------

export async function run(args: string[]): Promise<void> {
  const o = parseArgs(args);
  const started = Date.now();
  const r: Results = { errors: {}, nodeErrors: {} };
  const fleets: BenchFleet[] = [];
  const onSignal = (): void => {
    void Promise.allSettled(fleets.map((f) => f.stop())).finally(() =>
      stopAllServers().finally(() => process.exit(130)),
    );
  };
  process.once('SIGINT', onSignal);
  try {
    const needA = o.sections.has('convergence') || o.sections.has('failover') || o.sections.has('idle');
    if (needA) {
      const f = await BenchFleet.create('a', o);
      fleets.push(f);
      try {
        log(`fleet A: n1, n2, n3 (zones z1, z2, z3) on ${f.storeUrl.split(':')[0]}; ${o.groups} groups × ${REPLICAS}…`);
        const a0 = performance.now();
        await f.addGroups(o.groups, REPLICAS);
        const addMs = performance.now() - a0;
        log(`  ${o.groups} groups added in ${seconds(addMs)} s; starting the nodes…`);
        const t0 = performance.now();
        await Promise.all([f.start('n1', 'z1'), f.start('n2', 'z2'), f.start('n3', 'z3')]);
        const c = await f.converged('fleet A created', o.groups, t0);
        r.setup = {
          groups: o.groups,
          addMs: Math.round(addMs),
          convergedMs: Math.round(c.ms),
          viewReadMs: round(median(f.pollCostsMs), 1),
          fileSystem: fileSystemOf(f.root),
          store: f.storeUrl.split(':')[0]!,
        };
        log(`  all converged ${seconds(c.ms)} s after the nodes were forked`);
        if (o.sections.has('idle')) {
          try {
            r.idle = await idleSection(f, o);
          } catch (err) {
            r.errors['idle'] = message(err);
            log(`idle: ERROR ${message(err)}`);
          }
        }
        let next = 4;
        if (o.sections.has('convergence')) {
          try {
            r.convergence = await convergenceSection(f, o, `n${next++}`);
          } catch (err) {
            r.errors['convergence'] = message(err);
            log(`convergence: ERROR ${message(err)}`);
          }
        }
        if (o.sections.has('failover')) {
          try {
            r.failover = await failoverSection(f, o, `n${next++}`);
            if (r.failover.reReplicationError !== undefined) r.errors['failover'] = r.failover.reReplicationError;
          } catch (err) {
            r.errors['failover'] = message(err);
            log(`failover: ERROR ${message(err)}`);
          }
        }
        await collectNodeErrors(f, r);
      } catch (err) {
        r.errors['fleet A'] = message(err);
        log(`fleet A: ERROR ${message(err)}`);
      } finally {
        await f.stop();
      }
    }
    if (o.sections.has('throughput')) {
      try {
        r.throughput = await throughputSection(o, r);
      } catch (err) {
        r.errors['throughput'] = message(err);
        log(`throughput: ERROR ${message(err)}`);
      }
    }
  } finally {
    process.off('SIGINT', onSignal);
    await Promise.allSettled(fleets.map((f) => f.stop()));
    await stopAllServers();
  }
  if (Object.keys(r.errors).length > 0) process.exitCode = 1;

  if (o.json) {
    process.stdout.write(
      `${JSON.stringify({
        bench: 'fleet',
        options: { ...o, sections: [...o.sections] },
        timing: {
          tickMs: TICK_MS,
          electionTimeoutMs: ELECTION_TIMEOUT_MS,
          sessionTtlMs: o.sessionTtlMs,
          gracePeriodMs: o.gracePeriodMs,
          raftFleetIntervalS: RAFT_FLEET_INTERVAL_S,
        },
        ...r,
        totalMs: Date.now() - started,
      })}\n`,
    );
    return;
  }
  process.stdout.write(`${report(r, o).join('\n')}\n\ntotal ${round((Date.now() - started) / 1000, 1)} s\n`);
}

function report(r: Results, o: Options): string[] {
  const out: string[] = [];
  const fmt = (x: number, unit = ''): string => (Number.isFinite(x) ? `${x}${unit}` : '—');
  out.push(
    `Fleet nodes are separate processes; timing: tick ${TICK_MS} ms, election timeout ${ELECTION_TIMEOUT_MS}–` +
      `${2 * ELECTION_TIMEOUT_MS} ms, session TTL ${o.sessionTtlMs} ms, grace period ${o.gracePeriodMs} ms, ` +
      `membership changes at once per node ${o.maxConcurrentChanges ?? '128 (default)'}.`,
  );
  if (r.setup !== undefined) {
    out.push(
      `Fleet A: ${r.setup.groups} groups × ${REPLICAS} replicas on n1–n3 (zones z1–z3), control store ` +
        `${r.setup.store}, data on ${r.setup.fileSystem}; groups added (before the nodes) in ` +
        `${seconds(r.setup.addMs)} s; all converged ${seconds(r.setup.convergedMs)} s after the three nodes were ` +
        `forked (cold start); one read of the whole fleet's records: ${r.setup.viewReadMs} ms (median).`,
    );
  }
  for (const [k, v] of Object.entries(r.errors)) out.push(`${k}: NOT MEASURED — ${v}`);
  if (r.idle !== undefined) {
    const i = r.idle;
    out.push(
      '',
      `1. Idle: ${i.groups} groups, ${i.allQuiesced ? 'every leader quiesced' : 'NOT every leader quiesced'}, CPU ` +
        `over ${i.idleMs} ms (target: issue 13, 1000 idle groups per process under 5 % of a core)`,
      table([
        ['node', 'replicas', 'leads', 'quiesced', 'idle CPU', 'RSS', 'heap used'],
        ...i.perNode.map((p) => [
          p.node,
          String(p.replicas),
          String(p.leads),
          String(p.quiescedLeads),
          `${p.idleCpuPercent} % of a core`,
          `${p.rssMiB} MiB`,
          `${p.heapUsedMiB} MiB`,
        ]),
      ]),
    );
  }
  if (r.convergence !== undefined) {
    out.push(
      '',
      `2. Convergence (target: within 10 s). raft_fleet model: ${RAFT_FLEET_INTERVAL_S} s × the most membership ` +
        'steps (members gained + lost) any group needs, all groups in parallel.',
      table([
        ['change', 'converged', 'groups moved', 'steps', 'max steps/group', 'leaders moved', 'raft_fleet', 'speed-up'],
        ...r.convergence.map((s) => [
          s.what,
          `${s.seconds} s`,
          String(s.groupsMoved),
          String(s.steps),
          String(s.maxStepsPerGroup),
          String(s.leadersMoved),
          `${s.raftFleetSeconds} s`,
          `${fmt(s.speedup)}×`,
        ]),
      ]),
      ...r.convergence.flatMap((s) => (s.note === undefined ? [] : [`  ${s.what}: ${s.note}`])),
    );
  }
  if (r.failover !== undefined) {
    const x = r.failover;
    out.push(
      '',
      `3. Failover: kill -9 of ${x.victim} (held ${x.groupsHeld} groups, led ${x.groupsLed}) in a 4-node fleet ` +
        `(target: every group led again within 2 election timeouts = ${2 * ELECTION_TIMEOUT_MS} ms)`,
      table([
        ['what', 'after the kill'],
        ['every group it led has a new leader', `${x.allLedAgainMs} ms (median ${x.medianLedAgainMs} ms)`],
        ['its session ended (node record gone)', `${fmt(seconds(x.sessionGoneMs), ' s')}`],
        [
          `fully re-replicated (${x.moves.groupsMoved} groups, ${x.moves.steps} steps)`,
          x.reReplicationError === undefined ? `${seconds(x.reReplicatedMs)} s` : 'NOT REACHED',
        ],
      ]),
      ...(x.reReplicationError === undefined ? [] : [`  re-replication: ${x.reReplicationError}`]),
      `  re-replication waits for the session TTL (${o.sessionTtlMs} ms) and the grace period ` +
        `(${o.gracePeriodMs} ms) by design: a node that is only slow keeps its replicas.`,
    );
  }
  if (r.throughput !== undefined) {
    const t = r.throughput;
    const rows = [['target', 'writes/s', 'p50', 'p99', 'errors', 'runs (writes/s)']];
    const add = (name: string, s: ThroughputSide): void => {
      rows.push([
        name,
        fmt(s.opsPerSecond),
        fmt(s.p50Ms, ' ms'),
        fmt(s.p99Ms, ' ms'),
        String(s.errors),
        s.runs.map((x) => ('error' in x ? 'ERR' : String(x.opsPerSecond))).join(', '),
      ]);
    };
    add(`fleet, ${THROUGHPUT_GROUPS} groups on 3 nodes`, t.fleet);
    if (t.etcd !== undefined) add('etcd, 3 members', t.etcd);
    if (t.etcd !== undefined && t.etcd.opsPerSecond > 0) {
      rows.push(['fleet / etcd', `${round(t.fleet.opsPerSecond / t.etcd.opsPerSecond, 2)}×`, '', '', '', '']);
    }
    out.push(
      '',
      `4. Throughput: puts of 16-byte values key-hashed over ${THROUGHPUT_GROUPS} groups, ${o.inFlight} in flight in ` +
        `total (a third in each node process, through node.command()), vs the same load on a private 3-member ` +
        `etcd (one client process, etcd3); ${o.rounds} round(s) of ${o.durationMs} ms after ${o.warmupMs} ms ` +
        `warm-up, order alternating, medians, after ${o.warmupRounds} warm-up round(s) of each not counted ` +
        `(fleet ${t.warmupRuns.fleet.join(', ') || '–'}, etcd ${t.warmupRuns.etcd.join(', ') || '–'} writes/s) ` +
        '(target: fleet ≥ 3× etcd).',
      table(rows),
    );
    if (t.etcdError !== undefined) out.push(`  etcd: NOT RUN — ${t.etcdError}`);
    if (t.settings !== undefined) {
      out.push(
        `  etcd: ${Object.entries(t.settings)
          .map(([k, v]) => `${k} ${v}`)
          .join('; ')}`,
      );
    }
  }
  const ne = Object.entries(r.nodeErrors);
  if (ne.length > 0) {
    out.push('', 'Error events of the nodes (counted, first ones):');
    for (const [k, v] of ne) out.push(`  ${k}: ${v.count}: ${v.first.join(' | ').slice(0, 400)}`);
  }
  return out;
}
