/**
 * Section 3 of `npm run bench -- raft`: many groups on three node processes (issue 13, item 7, and the target
 * "1000 idle groups per process under 5 % of a core").
 *
 * 1. Start three node processes that each open every group (3 replicas per group) and time how long until every
 *    group has a leader that all three nodes know — elections are randomized, so opening 1000 groups at once must
 *    not become an election storm (the terms reached say whether it did).
 * 2. Wait until every leader has quiesced (an idle group stops heartbeating), then measure each process's CPU over
 *    an idle window and its memory.
 * 3. Writes spread over the first `loadGroups` groups (a put goes to the group its key hashes to), closed loop at
 *    `inFlight` in flight in total, run inside the node processes like the single-group load.
 */
import { round, table } from './stats.js';
import { RebalancerTarget } from './raft-targets.js';

export interface GroupsOptions {
  readonly groups: number;
  readonly idleMs: number;
  readonly loadGroups: number;
  readonly inFlight: number;
  readonly durationMs: number;
  readonly warmupMs: number;
}

interface PerProcess {
  readonly node: string;
  readonly leaderOf: number;
  /** % of one core over the idle window. */
  readonly idleCpuPercent: number;
  readonly rssMiB: number;
  readonly heapUsedMiB: number;
  /** % of one core during the measured load window. */
  readonly loadCpuPercent: number;
  readonly rssAfterLoadMiB: number;
}

export interface GroupsResult {
  readonly groups: number;
  /** Groups with a leader 1, 2, … s after opening (until all had one). */
  readonly leadersEachSecond: readonly number[];
  /** From the moment all three processes had opened their groups until every group had a leader known to all. */
  readonly allLeadersMs: number;
  /** From process start (fork) to the same moment: includes opening the log and the 1000 groups. */
  readonly allLeadersSinceSpawnMs: number;
  readonly maxTerm: number;
  readonly meanTerm: number;
  readonly quiescedMs: number;
  readonly idleMs: number;
  readonly perProcess: readonly PerProcess[];
  readonly load: {
    readonly groups: number;
    readonly inFlight: number;
    readonly opsPerSecond: number;
    readonly p50Ms: number;
    readonly p99Ms: number;
    readonly errors: number;
    readonly firstError?: string;
  };
}

const ELECT_TIMEOUT_MS = 120_000;
const QUIESCE_TIMEOUT_MS = 60_000;
const POLL_MS = 100;
const MiB = 1024 * 1024;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function groupsSection(o: GroupsOptions, log: (msg: string) => void): Promise<GroupsResult> {
  const target = new RebalancerTarget({ groups: o.groups });
  try {
    const spawned = performance.now();
    log(`groups: starting three node processes with ${o.groups} groups each…`);
    await target.startNodes();
    const opened = performance.now();
    let statuses = await target.statuses();
    // How many groups had a leader, each second after opening: a storm shows as a long tail.
    const progress: number[] = [];
    for (;;) {
      const led = statuses.reduce((a, s) => a + s.status.leaderOf, 0);
      const known = Math.min(...statuses.map((s) => s.status.withLeader));
      if (led === o.groups && known === o.groups) break;
      const second = Math.floor((performance.now() - opened) / 1000);
      if (second > progress.length) {
        progress.push(led);
        log(`  ${second} s after opening: ${led} leaders`);
      }
      if (performance.now() - opened > ELECT_TIMEOUT_MS) {
        throw new Error(`groups: after ${ELECT_TIMEOUT_MS} ms, ${led} leaders, ${known} groups with a known leader`);
      }
      await sleep(POLL_MS);
      statuses = await target.statuses();
    }
    const elected = performance.now();
    const maxTerm = Math.max(...statuses.map((s) => s.status.maxTerm));
    const meanTerm = statuses.reduce((a, s) => a + s.status.sumTerms, 0) / (statuses.length * o.groups);
    log(
      `  all ${o.groups} groups have a leader ${Math.round(elected - opened)} ms after opening ` +
        `(max term ${maxTerm}, mean ${round(meanTerm, 2)})`,
    );

    for (;;) {
      const quiesced = statuses.reduce((a, s) => a + s.status.quiescedLeaderOf, 0);
      if (quiesced === o.groups) break;
      if (performance.now() - elected > QUIESCE_TIMEOUT_MS) {
        throw new Error(`groups: after ${QUIESCE_TIMEOUT_MS} ms, ${quiesced} of ${o.groups} leaders quiesced`);
      }
      await sleep(POLL_MS);
      statuses = await target.statuses();
    }
    const quiescedAt = performance.now();
    log(`  all leaders quiesced ${Math.round(quiescedAt - elected)} ms later; idle for ${o.idleMs} ms…`);

    const nodes = target.nodes();
    const cpu0 = nodes.map((n) => n.cpuMs() ?? Number.NaN);
    const t0 = performance.now();
    await sleep(o.idleMs);
    const cpu1 = nodes.map((n) => n.cpuMs() ?? Number.NaN);
    const idleWallMs = performance.now() - t0;
    const idle = await target.statuses();

    log(`  writes over ${o.loadGroups} groups, ${o.inFlight} in flight…`);
    const l0 = nodes.map((n) => n.cpuMs() ?? Number.NaN);
    let l1: number[] = [];
    let lt0 = 0;
    let lt1 = 0;
    // CPU over the measured window only (after the warm-up), sampled by timers as for the single group.
    const a = setTimeout(() => {
      lt0 = performance.now();
      l0.splice(0, l0.length, ...nodes.map((n) => n.cpuMs() ?? Number.NaN));
    }, o.warmupMs);
    const b = setTimeout(() => {
      lt1 = performance.now();
      l1 = nodes.map((n) => n.cpuMs() ?? Number.NaN);
    }, o.warmupMs + o.durationMs);
    let load;
    try {
      load = await target.runLoad(
        { inFlight: o.inFlight, durationMs: o.durationMs, warmupMs: o.warmupMs, seed: 4_800_001 },
        target.groupNames.slice(0, o.loadGroups),
      );
    } finally {
      clearTimeout(a);
      clearTimeout(b);
    }
    if (l1.length === 0) {
      lt1 = performance.now();
      l1 = nodes.map((n) => n.cpuMs() ?? Number.NaN);
    }
    const after = await target.statuses();
    log(`  ${load.opsPerSecond} writes/s, p50 ${load.p50Ms} ms, p99 ${load.p99Ms} ms`);

    return {
      groups: o.groups,
      leadersEachSecond: progress,
      allLeadersMs: Math.round(elected - opened),
      allLeadersSinceSpawnMs: Math.round(elected - spawned),
      maxTerm,
      meanTerm: round(meanTerm, 2),
      quiescedMs: Math.round(quiescedAt - elected),
      idleMs: Math.round(idleWallMs),
      perProcess: nodes.map((n, i) => {
        const s = idle.find((x) => x.id === n.init.id)!.status;
        const s2 = after.find((x) => x.id === n.init.id)!.status;
        return {
          node: n.init.id,
          leaderOf: s.leaderOf,
          idleCpuPercent: round(((cpu1[i]! - cpu0[i]!) / idleWallMs) * 100, 2),
          rssMiB: round(s.rssBytes / MiB, 1),
          heapUsedMiB: round(s.heapUsedBytes / MiB, 1),
          loadCpuPercent: round(((l1[i]! - l0[i]!) / (lt1 - lt0 || o.durationMs)) * 100, 1),
          rssAfterLoadMiB: round(s2.rssBytes / MiB, 1),
        };
      }),
      load: {
        groups: o.loadGroups,
        inFlight: o.inFlight,
        opsPerSecond: load.opsPerSecond,
        p50Ms: load.p50Ms,
        p99Ms: load.p99Ms,
        errors: load.errors,
        ...(load.firstError === undefined ? {} : { firstError: load.firstError }),
      },
    };
  } finally {
    await target.stop();
  }
}

export function formatGroups(r: GroupsResult): string[] {
  const rows: string[][] = [
    ['node', 'leads', 'idle CPU', 'RSS idle', 'heap idle', `CPU under load`, 'RSS after load'],
    ...r.perProcess.map((p) => [
      p.node,
      String(p.leaderOf),
      `${p.idleCpuPercent} % of a core`,
      `${p.rssMiB} MiB`,
      `${p.heapUsedMiB} MiB`,
      `${p.loadCpuPercent} %`,
      `${p.rssAfterLoadMiB} MiB`,
    ]),
  ];
  return [
    `3. Groups: ${r.groups} groups × 3 replicas on 3 node processes (the same timing and fsync as above).`,
    `All ${r.groups} groups had a leader known to all three nodes ${r.allLeadersMs} ms after they were opened ` +
      `(${r.allLeadersSinceSpawnMs} ms after the processes were forked); terms: max ${r.maxTerm}, ` +
      `mean ${r.meanTerm} (1 is one election per group: no storm); leaders after 1, 2, … s: ` +
      `${r.leadersEachSecond.join(', ') || '—'}.`,
    `Every leader quiesced ${r.quiescedMs} ms after that; idle CPU measured over the next ${r.idleMs} ms.`,
    table(rows),
    `Writes spread over ${r.load.groups} groups (key-hashed), ${r.load.inFlight} in flight in total, ` +
      `run inside the node processes: ${r.load.opsPerSecond} writes/s, p50 ${r.load.p50Ms} ms, ` +
      `p99 ${r.load.p99Ms} ms, ${r.load.errors} errors${r.load.firstError ? ` (${r.load.firstError})` : ''}.`,
  ];
}
