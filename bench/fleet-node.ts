/**
 * A fleet node process of `npm run bench -- fleet` (not a benchmark by itself): forked by bench/fleet.ts through
 * FleetNodeProcess (bench/fleet-node-process.ts) with an IPC channel; protocol in bench/fleet-protocol.ts.
 *
 * It joins the fleet as an application would (joinFleet on the control store the parent names, the kv state
 * machine of the Raft bench), and runs its share of the write load in-process: the fleet is an embedded library,
 * so `node.command(group, put)` goes to this node's replica (a follower forwards to the leader) or, for a group it
 * holds no member of, to a node that does.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { constants, monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { joinFleet, type FleetNode } from '../src/runtime/fleet/node.js';
import { kvStateMachine } from '../src/sim/raft-kv.js';
import { openStore } from '../src/store/open.js';
import type { Store } from '../src/store/contract.js';
import type {
  FleetLocalStatus,
  FleetNodeInit,
  FleetNodeReply,
  FleetNodeRequest,
  FleetRunRequest,
} from './fleet-protocol.js';
import { runLoadPart, type LoadPart } from './raft-load.js';

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));
/** Errors kept for the report (all are counted). */
const MAX_ERRORS_KEPT = 5;

function send(m: FleetNodeReply): void {
  // The parent may be gone (it kills us soon after); a failed send must not throw from here.
  if (process.connected) process.send!(m);
}

const asValue = (v: Uint8Array): string => Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64');

/** FNV-1a: which of `n` groups a key belongs to (a sharded key-value store routes by key). */
function shardOf(key: string, n: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % n;
}

let store: Store | undefined;
let node: FleetNode | undefined;
let errors = 0;
const firstErrors: string[] = [];
/** Group → when this node last became its leader (the `led` event), ms since the epoch. */
const ledAt = new Map<string, number>();

async function init(i: FleetNodeInit): Promise<void> {
  nodeId = i.id;
  store = await openStore(i.storeUrl, { namespace: i.namespace });
  node = await joinFleet({
    store,
    fleet: i.fleet,
    node: { id: i.id, zone: i.zone, address: i.address },
    dataDir: i.dataDir,
    secret: i.secret,
    machines: { kv: kvStateMachine() },
    tickMs: i.tickMs,
    electionTicks: i.electionTicks,
    sessionTtlMs: i.sessionTtlMs,
    gracePeriodMs: i.gracePeriodMs,
    minNodes: i.minNodes,
    ...(i.maxConcurrentChanges === undefined ? {} : { maxConcurrentChanges: i.maxConcurrentChanges }),
  });
  node.on('error', (e) => {
    errors++;
    if (firstErrors.length < MAX_ERRORS_KEPT) firstErrors.push(`${e.context}: ${message(e.error)}`.slice(0, 300));
  });
  node.on('led', (e) => ledAt.set(e.group, Date.now()));
}

async function addGroups(names: readonly string[], replicas: number): Promise<number> {
  for (const name of names) await node!.addGroup(name, { replicas, machine: 'kv' });
  return names.length;
}

function local(withLedAt: boolean): FleetLocalStatus {
  let leaderOf = 0;
  let quiescedLeaderOf = 0;
  const led: Record<string, number> = {};
  const replicas = node!.replicas();
  for (const r of replicas) {
    if (r.status.role !== 'leader') continue;
    leaderOf++;
    if (r.status.quiesced) quiescedLeaderOf++;
    if (withLedAt) led[r.group] = ledAt.get(r.group) ?? 0;
  }
  const mem = process.memoryUsage();
  return {
    pid: process.pid,
    replicas: replicas.length,
    leaderOf,
    quiescedLeaderOf,
    ...(withLedAt ? { ledAtEpochMs: led } : {}),
    rssBytes: mem.rss,
    heapUsedBytes: mem.heapUsed,
    errors,
    firstErrors,
  };
}

/**
 * Opt-in, for finding where the CPU goes (bench/README.md, "throughput"): FLEET_BENCH_PROFILE_DIR=DIR profiles each
 * load run of this node with node:inspector into DIR/<node id>-<pid>-<n>.cpuprofile (NODE_OPTIONS=--cpu-prof would
 * profile every process, and only at exit); FLEET_BENCH_CPU=1 (or a profile) writes the node's CPU time over the
 * run to stderr, to divide by the writes.
 */
const profileDir = process.env['FLEET_BENCH_PROFILE_DIR'] ?? '';
const reportCpu = profileDir !== '' || process.env['FLEET_BENCH_CPU'] === '1';
let profiles = 0;

/** Linux: how long the main thread waited, runnable, for a CPU (other jobs on the box); NaN elsewhere. */
function runQueueWaitMs(): number {
  return schedstatMs(1);
}

/** Linux: how long the main thread ran on a CPU (the rest of the process's CPU is its other threads). */
function mainThreadCpuMs(): number {
  return schedstatMs(0);
}

function schedstatMs(field: number): number {
  try {
    return Number(readFileSync('/proc/self/schedstat', 'utf8').split(' ')[field]) / 1e6;
  } catch {
    return Number.NaN;
  }
}
let nodeId = '';

async function run(req: FleetRunRequest): Promise<LoadPart> {
  if (!reportCpu) return runLoad(req);
  const counters: Record<string, number> = {};
  (globalThis as { __tput?: unknown }).__tput = counters;
  // Garbage collection in the run: pauses of the main thread by kind (a young generation that has not grown yet
  // collects often).
  const gc = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind =
        (e as { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MINOR
          ? 'gcMinorMs'
          : 'gcMajorMs';
      counters[kind] = Math.round((counters[kind] ?? 0) + e.duration);
    }
  });
  gc.observe({ entryTypes: ['gc'] });
  const cpu0 = process.cpuUsage();
  const wait0 = runQueueWaitMs();
  const main0 = mainThreadCpuMs();
  const loop = monitorEventLoopDelay({ resolution: 1 });
  loop.enable();
  const session = profileDir === '' ? undefined : new Session();
  if (session !== undefined) {
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.start');
  }
  try {
    return await runLoad(req);
  } finally {
    const cpu = process.cpuUsage(cpu0);
    gc.disconnect();
    loop.disable();
    const waitMs = Math.round(runQueueWaitMs() - wait0);
    const mainMs = Math.round(mainThreadCpuMs() - main0);
    const lagMs = (q: number): string => (loop.percentile(q) / 1e6).toFixed(1);
    // Counters a developer may add by hand while profiling (globalThis.__tput), printed beside the CPU time.
    const counters = JSON.stringify((globalThis as { __tput?: unknown }).__tput ?? {});
    process.stderr.write(
      `fleet node ${nodeId}: CPU ${Math.round((cpu.user + cpu.system) / 1000)} ms in the run (main thread ${mainMs} ms), main thread waiting for a CPU ${waitMs} ms, event-loop delay p50 ${lagMs(50)} ms p99 ${lagMs(99)} ms ${counters}\n`,
    );
    if (session !== undefined) {
      const { profile } = await session.post('Profiler.stop');
      mkdirSync(profileDir, { recursive: true });
      writeFileSync(`${profileDir}/${nodeId}-${process.pid}-${++profiles}.cpuprofile`, JSON.stringify(profile));
      session.disconnect();
    }
  }
}

async function runLoad(req: FleetRunRequest): Promise<LoadPart> {
  const n = node!;
  return runLoadPart({
    inFlight: req.inFlight,
    durationMs: req.durationMs,
    warmupMs: req.warmupMs,
    seed: req.seed,
    put: async (key, value) => {
      await n.command(req.groups[shardOf(key, req.groups.length)]!, { op: 'put', key, value: asValue(value) });
    },
  });
}

async function handle(m: FleetNodeRequest): Promise<void> {
  try {
    if ('addGroups' in m) {
      send({ id: m.id, added: await addGroups(m.addGroups.names, m.addGroups.replicas) });
    } else if ('local' in m) {
      send({ id: m.id, local: local(m.local.ledAt) });
    } else if ('run' in m) {
      send({ id: m.id, part: await run(m.run) });
    } else if ('describe' in m) {
      const wanted = new Set(m.describe.groups);
      const described = node!
        .replicas()
        .filter((r) => wanted.has(r.group))
        .map(
          ({ group, status: s }) =>
            `${group}: ${s.role} term ${s.term} leader ${s.leader} voters ${s.membership.voters.join(',')} ` +
            `learners ${s.membership.learners.join(',')} commit ${s.committed} last ${s.lastIndex} ` +
            `membershipIndex ${s.membershipIndex} quiesced ${String(s.quiesced)} held ${String(s.votesHeld)}` +
            (s.failed === undefined ? '' : ` FAILED ${String(s.failed)}`),
        );
      send({ id: m.id, described });
    } else if ('deactivate' in m) {
      await node!.deactivate({ timeoutMs: m.deactivate.timeoutMs });
      await store?.close();
      send({ id: m.id, deactivated: true });
      process.exit(0);
    } else if ('stop' in m) {
      await node?.close();
      await store?.close();
      send({ id: m.id, stopped: true });
      process.exit(0);
    }
  } catch (err) {
    send({ id: m.id, error: message(err) });
  }
}

if (process.send === undefined) {
  process.stderr.write('bench/fleet-node.ts is forked by bench/fleet.ts (npm run bench -- fleet), not run directly\n');
  process.exit(2);
}
// The parent's death closes the channel: exit with it, never outlive the bench.
process.on('disconnect', () => process.exit(0));
let initialized = false;
process.on('message', (raw: FleetNodeInit | FleetNodeRequest) => {
  if (!initialized) {
    initialized = true;
    init(raw as FleetNodeInit).then(
      () => send({ ready: true, pid: process.pid }),
      (err: unknown) => send({ error: message(err) }),
    );
    return;
  }
  void handle(raw as FleetNodeRequest);
});
