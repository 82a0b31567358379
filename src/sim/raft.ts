/**
 * The deterministic Raft simulation (issue 13, item 5; `rebalancer sim --scenario raft`). Per seed: 3 or 5 real
 * RaftNodes (core, write-ahead log, transport, node runtime: raft-cluster.ts) on virtual time, a simulated network
 * and simulated disks; clients on several nodes (raft-clients.ts); and a fault schedule drawn from the seed
 * (raft-schedule.ts): message loss, duplication, delay and reordering, one-way and full partitions, crashes that
 * lose unsynced writes and tear the last one, whole-cluster power losses, paused processes, slow and hung disks,
 * and membership changes proposed two at a time.
 *
 * Checked: Raft's safety invariants after every step (raft-invariants.ts, fed from every replica's Readies,
 * applies and restores, and every core's status); at the end, with every fault healed, that every client's
 * operation completes (liveness); that the client history is linearizable (kvModel); and that the append-only key
 * holds every acknowledged append exactly once.
 *
 * The seed alone decides everything: a failing seed replays identically (`traceHash` is the same on every run).
 */
import type { RaftMutantName } from '../raft/mutants.js';
import { HistoryRecorder, checkOperations } from './linearizability.js';
import { kvModel, type KvInput, type KvOutput } from './linearizability-models.js';
import { APPEND_ONLY_KEY, SimClients, type ClientStats } from './raft-clients.js';
import { SimCluster } from './raft-cluster.js';
import { MessageFaults } from './raft-faults.js';
import { RaftInvariants } from './raft-invariants.js';
import { applyFault, drawSchedule, healAll, restoreVoters, type ScheduleContext } from './raft-schedule.js';
import { SimNetwork } from './raft-world.js';
import { Random } from './random.js';
import type { SeedResult } from './run.js';
import { SimWorld } from './world.js';

export interface RaftSimOptions {
  readonly seed: number;
  /** 3 (default) or 5 nodes. */
  readonly nodes?: number | undefined;
  readonly mutant?: RaftMutantName | undefined;
  /** Virtual ms of faults and client load before the liveness phase (default 2500). */
  readonly faultMs?: number | undefined;
  /** Stop the seed at its first invariant violation (default true: a seed then costs less). */
  readonly stopAtFirstViolation?: boolean | undefined;
  /** Every schedule event, start, crash and client anomaly, as text (the trace whose hash is `traceHash`). */
  readonly trace?: ((line: string) => void) | undefined;
}

export interface RaftSeedResult extends SeedResult {
  /** A hash of the whole run (schedule events, network deliveries, client results): equal on every replay. */
  readonly traceHash: string;
  readonly virtualMs: number;
  readonly ops: ClientStats;
  /** The checker's answer; 'unknown' (step budget) is not a violation but is reported. */
  readonly linearizability: 'ok' | 'illegal' | 'unknown' | 'skipped';
}

type Violation = SeedResult['violations'][number];

const TIMING = { tickMs: 10, electionTicks: 10, requestTimeoutMs: 400, syncMs: { min: 0.2, max: 3 } };
const LIVENESS_BOUND_MS = 20_000;

export async function runRaftSim(o: RaftSimOptions): Promise<RaftSeedResult> {
  // An assertion of the Raft code that fails inside a promise callback (an illegal transition: a core's
  // InvariantError while a Ready is handled) surfaces as an unhandled rejection, which would kill the process: in
  // the simulator it is a finding of this seed, like a violated invariant.
  const assertions: { atMs: number; kind: string; detail: string }[] = [];
  let nowMs = (): number => 0;
  const onUnhandled = (reason: unknown): void => {
    assertions.push({
      atMs: nowMs(),
      kind: 'assertion',
      detail: reason instanceof Error ? `${reason.name}: ${reason.message}` : String(reason),
    });
  };
  process.on('unhandledRejection', onUnhandled);
  try {
    return await runSeed(o, assertions, (f) => (nowMs = f));
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
}

async function runSeed(
  o: RaftSimOptions,
  assertions: readonly { atMs: number; kind: string; detail: string }[],
  setNow: (now: () => number) => void,
): Promise<RaftSeedResult> {
  const nodeCount = o.nodes ?? 3;
  if (nodeCount !== 3 && nodeCount !== 5) throw new RangeError(`the raft scenario runs 3 or 5 nodes, got ${nodeCount}`);
  const faultMs = o.faultMs ?? 2500;
  const stopEarly = o.stopAtFirstViolation ?? true;
  const world = new SimWorld();
  setNow(() => world.now());
  const rng = new Random(o.seed);
  let hash = 0x811c9dc5;
  const mix = (s: string): void => {
    for (let i = 0; i < s.length; i++) hash = Math.imul(hash ^ s.charCodeAt(i), 0x01000193);
  };
  const trace = (line: string): void => {
    const l = `${world.now().toFixed(3)} ${line}`;
    mix(l);
    o.trace?.(l);
  };
  const net = new SimNetwork({
    clock: world.clock,
    random: rng.fork(),
    latencyMs: { min: 0.3, max: 3 },
    trace: (e) => mix(`${e.atMs.toFixed(3)}${e.kind}${e.from}${e.to}${e.bytes ?? ''}`),
  });
  const faults = new MessageFaults(rng.fork());
  const invariants = new RaftInvariants({ now: () => world.now() });
  const scheduleRng = rng.fork();
  const schedule = drawSchedule(scheduleRng, nodeCount, faultMs);
  const ids = Array.from({ length: nodeCount }, (_, i) => `n${i + 1}`);
  const cluster = new SimCluster({
    world,
    net,
    faults,
    invariants,
    random: rng.fork(),
    ids,
    mutants: new Set(o.mutant === undefined ? [] : [o.mutant]),
    timing: TIMING,
    leaseReads: schedule.leaseReads,
    maxInflightMessages: schedule.maxInflightMessages,
    trace,
  });
  const history = new HistoryRecorder<KvInput, KvOutput>(() => world.now());
  const clients = new SimClients(
    { world, cluster, history, random: rng.fork(), leaseReads: schedule.leaseReads, trace },
    nodeCount + 1,
  );
  const violations: Violation[] = [];
  const result = (linearizability: RaftSeedResult['linearizability']): RaftSeedResult => {
    mix(JSON.stringify(clients.stats));
    return {
      seed: o.seed,
      steps: world.steps,
      violations: [...invariants.violations, ...cluster.failures, ...assertions, ...violations],
      traceHash: (hash >>> 0).toString(16).padStart(8, '0'),
      virtualMs: Math.round(world.now()),
      ops: clients.stats,
      linearizability,
    };
  };
  // The invariants are checked as each observation arrives (every durable Ready, apply and restore of every
  // replica): after every step that changed anything. Leaders are judged from durable Readies, not from a core's
  // status: a leadership no disk ever recorded, which a crash erased before anything of it left, never existed.
  const check = (): boolean =>
    !stopEarly || (invariants.ok && cluster.failures.length === 0 && assertions.length === 0);
  /** Run virtual time until `p` settles (true), the bound passes (false), or a violation stops the run. */
  const until = async (p: Promise<unknown>, boundMs: number): Promise<boolean | 'unsafe'> => {
    let done = false;
    void p.then(
      () => (done = true),
      () => (done = true),
    );
    const end = world.now() + boundMs;
    for (;;) {
      await world.flush();
      if (!check()) return 'unsafe';
      if (done) return true;
      if (!world.clock.fireNext(end)) return false;
      world.steps++;
    }
  };

  // Start every node (its log opens on the simulated disk: that takes virtual time too).
  if ((await until(Promise.all(cluster.nodes.map((n) => cluster.start(n))), 5000)) !== true) {
    violations.push({ atMs: world.now(), kind: 'liveness', detail: 'the nodes did not start' });
    return result('skipped');
  }
  const ctx: ScheduleContext = {
    world,
    cluster,
    faults,
    net,
    trace,
    episodes: [],
    writeThenRead: (w, r) => clients.writeThenRead(w, r),
  };
  for (const f of schedule.faults) world.at(f.atMs, () => applyFault(ctx, f));
  trace(`schedule ${schedule.faults.length} faults, lease reads ${schedule.leaseReads}`);
  const load = clients.run(faultMs);
  if ((await until(load, faultMs + 4 * TIMING.requestTimeoutMs)) === 'unsafe') {
    return result('skipped');
  }

  // Liveness: heal everything; every node up, every voter back, then every client's operation must complete.
  trace('heal');
  const healed = healAll(ctx)
    .then(() => Promise.all(ctx.episodes))
    .then(() => restoreVoters(ctx, 40));
  const h = await until(healed, LIVENESS_BOUND_MS);
  if (h === 'unsafe') return result('skipped');
  if (h !== true || !(await healed)) {
    violations.push({
      atMs: world.now(),
      kind: 'liveness',
      detail: 'the cluster did not recover every voter once healed',
    });
  }
  const finals = clients.finalOps(5000);
  if ((await until(finals, LIVENESS_BOUND_MS)) === 'unsafe') return result('skipped');
  for (const f of await finals) violations.push({ atMs: world.now(), kind: 'liveness', detail: f });
  const reader = cluster.leader() ?? cluster.nodes[0]!;
  const state = clients.finalState(reader, 5000);
  if ((await until(state, LIVENESS_BOUND_MS)) === 'unsafe') return result('skipped');
  const final = await state;
  if (typeof final === 'string') violations.push({ atMs: world.now(), kind: 'liveness', detail: final });
  else checkAppends(clients, final.get(APPEND_ONLY_KEY) ?? null, world.now(), violations);
  for (const n of cluster.nodes) {
    const failed = n.current.group?.status().failed;
    if (failed !== undefined)
      violations.push({ atMs: world.now(), kind: 'replica-failed', detail: `${n.id}: ${failed.message}` });
  }

  // Linearizability of the whole history (a deterministic step budget: 'unknown' when it runs out, never 'ok').
  const lin = checkOperations(kvModel(), history.operations(), { maxStepsPerPartition: 400_000 });
  if (lin.result === 'illegal') violations.push({ atMs: world.now(), kind: 'linearizability', detail: lin.message });
  for (const e of cluster.errors) trace(`node error ${e}`);
  return result(lin.result);
}

/** Every acknowledged append to the append-only key is in its final value exactly once; nothing else is. */
function checkAppends(clients: SimClients, value: string | null, atMs: number, out: Violation[]): void {
  const parts = (value ?? '')
    .split('|')
    .filter((p) => p !== '')
    .map((p) => `|${p}`);
  const count = new Map<string, number>();
  for (const p of parts) count.set(p, (count.get(p) ?? 0) + 1);
  for (const v of clients.appendsAcked) {
    if (!count.has(v))
      out.push({
        atMs,
        kind: 'lost-write',
        detail: `the acknowledged append ${v} to ${APPEND_ONLY_KEY} is not in its final value`,
      });
  }
  for (const [v, k] of count) {
    if (k > 1)
      out.push({ atMs, kind: 'double-apply', detail: `the append ${v} to ${APPEND_ONLY_KEY} was applied ${k} times` });
    if (!clients.appendsIssued.has(v))
      out.push({ atMs, kind: 'phantom-write', detail: `${v} in ${APPEND_ONLY_KEY} was never appended by a client` });
  }
}
