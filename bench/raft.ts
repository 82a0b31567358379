/**
 * `npm run bench -- raft [--json] [--targets etcd,rebalancer] [--rounds N] [--duration-ms MS] [--warmup-ms MS]
 *   [--in-flight 1,16,128] [--sections throughput,failover,groups] [--groups N] [--idle-ms MS]`
 *
 * One Raft group of three members, fsync on, against a private three-member etcd as the peer, both started here on
 * loopback and measured in the same run, interleaved, reported as ratios (issue 13, item 7):
 * 1. throughput: puts of 16-byte values over 10 000 keys (seeded), closed loop at 1, 16 and 128 in flight:
 *    ops/s, p50, p99 (and max) per target; each round runs every level on each target, the targets' order
 *    alternating per round, so that drift in machine load falls on both alike. Medians over rounds.
 * 2. failover: kill -9 of the leader, then the time until a put succeeds again, measured by a client that starts
 *    an attempt every 10 ms, each bounded by 200 ms. The killed member is restarted on its data and caught up
 *    before the next round.
 * 3. groups (`--sections groups`, Rebalancer only; bench/raft-groups.ts): 1000 groups × 3 replicas on 3 processes —
 *    time until all have leaders, idle CPU and memory per process, writes/s spread over 48 groups at 128 in flight.
 *    `--groups N` and `--idle-ms MS` change its size and idle window.
 *
 * Where the load runs (bench/raft-runner.ts): for etcd in a worker process (bench/raft-worker.ts, through etcd3), so
 * that the measuring process — which also supervises the servers — never competes with the client; for Rebalancer,
 * an embedded library, inside its three node processes (bench/raft-node.ts), each running a third of the loops.
 * Progress on stderr, the table on stdout (or JSON).
 */
import { InvalidArgumentError } from '../src/errors.js';
import { stopAllServers } from '../test/harness/servers.js';
import { formatGroups, groupsSection, type GroupsResult } from './raft-groups.js';
import type { LoadResult } from './raft-load.js';
import { DEFAULT_KEYS, DEFAULT_VALUE_BYTES } from './raft-load.js';
import type { FailoverResult } from './raft-protocol.js';
import type { LoadRunner } from './raft-runner.js';
import { TARGETS, type BenchTarget, type KilledLeader } from './raft-targets.js';
import { round, table } from './stats.js';

const SECTIONS = ['throughput', 'failover', 'groups'] as const;
type Section = (typeof SECTIONS)[number];

/** The failover probe (see bench/raft-probe.ts). */
const PROBE_INTERVAL_MS = 10;
const PROBE_CALL_TIMEOUT_MS = 200;
const FAILOVER_MAX_MS = 30_000;

function log(msg: string): void {
  process.stderr.write(`raft bench: ${msg}\n`);
}

function median(xs: readonly number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

// ---- options ---------------------------------------------------------------

interface Options {
  readonly json: boolean;
  readonly targets: readonly string[];
  readonly rounds: number;
  readonly durationMs: number;
  readonly warmupMs: number;
  readonly inFlight: readonly number[];
  readonly sections: ReadonlySet<Section>;
  /** The groups section: how many groups, and how long the idle CPU is measured. */
  readonly groups: number;
  readonly idleMs: number;
}

/** The groups section's write load: spread over this many groups, this many in flight in total (issue 13). */
const GROUPS_LOADED = 48;
const GROUPS_IN_FLIGHT = 128;

function parseArgs(args: readonly string[]): Options {
  const known = new Set([
    '--json',
    '--targets',
    '--rounds',
    '--duration-ms',
    '--warmup-ms',
    '--in-flight',
    '--sections',
    '--groups',
    '--idle-ms',
  ]);
  for (const a of args) {
    if (a.startsWith('--') && !known.has(a)) {
      throw new InvalidArgumentError(`raft bench: unknown option ${a}; known: ${[...known].join(' ')}`);
    }
  }
  const value = (name: string): string | undefined => {
    const i = args.indexOf(name);
    if (i < 0) return undefined;
    const v = args[i + 1];
    if (v === undefined || v.startsWith('--')) throw new InvalidArgumentError(`raft bench: ${name} needs a value`);
    return v;
  };
  const int = (name: string, fallback: number, min: number): number => {
    const v = value(name);
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min)
      throw new InvalidArgumentError(`raft bench: ${name} must be an integer ≥ ${min}`);
    return n;
  };
  const list = (name: string, fallback: readonly string[]): string[] => {
    const v = value(name);
    return v === undefined ? [...fallback] : v.split(',').filter((x) => x !== '');
  };
  const targets = list('--targets', ['etcd', 'rebalancer']);
  for (const t of targets) {
    if (TARGETS[t] === undefined) {
      throw new InvalidArgumentError(`raft bench: unknown target ${t}; known: ${Object.keys(TARGETS).join(',')}`);
    }
  }
  const sections = list('--sections', ['throughput', 'failover']);
  for (const s of sections) {
    if (!(SECTIONS as readonly string[]).includes(s)) {
      throw new InvalidArgumentError(`raft bench: unknown section ${s}; known: ${SECTIONS.join(',')}`);
    }
  }
  const inFlight = list('--in-flight', ['1', '16', '128']).map(Number);
  if (inFlight.some((n) => !Number.isInteger(n) || n < 1)) {
    throw new InvalidArgumentError('raft bench: --in-flight takes integers ≥ 1, e.g. 1,16,128');
  }
  return {
    json: args.includes('--json'),
    targets: [...new Set(targets)],
    rounds: int('--rounds', 3, 1),
    durationMs: int('--duration-ms', 5000, 100),
    warmupMs: int('--warmup-ms', 1000, 0),
    inFlight,
    sections: new Set(sections as Section[]),
    groups: int('--groups', 1000, 1),
    idleMs: int('--idle-ms', 10_000, 100),
  };
}

// ---- sections ------------------------------------------------------------------

interface Live {
  readonly target: BenchTarget;
  readonly load: LoadRunner;
}

/** One measured run: the worker's figures and the servers' CPU per put over the same window. */
interface RunRecord extends LoadResult {
  readonly serverCpuUsPerOp: number;
}

/** Per target, per in-flight level: one record per round (or the error of that round). */
type ThroughputRuns = Record<string, Record<number, (RunRecord | { error: string })[]>>;

/**
 * Sample the target's server CPU at the edges of the worker's measured window (timers from the moment the run is
 * sent; the worker starts its clock on receipt, an IPC hop later). Returns the CPU ms used in between.
 */
function serverCpuOver(target: BenchTarget, warmupMs: number, durationMs: number): () => number {
  if (target.cpuMs === undefined) return () => Number.NaN;
  const read = (): number => target.cpuMs!();
  let from: number | undefined;
  let to: number | undefined;
  const a = setTimeout(() => (from = read()), warmupMs);
  const b = setTimeout(() => (to = read()), warmupMs + durationMs);
  return () => {
    clearTimeout(a);
    clearTimeout(b);
    to ??= read();
    return from === undefined ? Number.NaN : to - from;
  };
}

interface FailoverRun {
  readonly round: number;
  readonly member?: string;
  readonly ms?: number;
  readonly attempts?: number;
  readonly failures?: number;
  readonly error?: string;
}

/** Targets in the order of round r: alternating, so that neither always runs first (or right after a restart). */
function orderFor(live: readonly Live[], r: number): readonly Live[] {
  return r % 2 === 0 ? live : [...live].reverse();
}

async function throughput(live: readonly Live[], o: Options): Promise<ThroughputRuns> {
  const runs: ThroughputRuns = {};
  for (const l of live) {
    runs[l.target.name] = {};
    for (const n of o.inFlight) runs[l.target.name]![n] = [];
  }
  for (let r = 0; r < o.rounds; r++) {
    for (const n of o.inFlight) {
      // The same seed for every target of one round and level: the same keys in the same order.
      const seed = (r + 1) * 1_000_003 + n;
      for (const l of orderFor(live, r)) {
        log(`throughput round ${r + 1}/${o.rounds}, ${n} in flight: ${l.target.name}…`);
        try {
          const cpu = serverCpuOver(l.target, o.warmupMs, o.durationMs);
          let load: LoadResult;
          let serverCpuMs: number;
          try {
            load = await l.load.run({ inFlight: n, durationMs: o.durationMs, warmupMs: o.warmupMs, seed });
          } finally {
            serverCpuMs = cpu();
          }
          const res: RunRecord = {
            ...load,
            serverCpuUsPerOp: load.ops === 0 ? Number.NaN : round((serverCpuMs * 1000) / load.ops, 1),
          };
          runs[l.target.name]![n]!.push(res);
          log(
            `  ${l.target.name}: ${res.opsPerSecond} ops/s, p50 ${res.p50Ms} ms, p99 ${res.p99Ms} ms` +
              (res.errors > 0 ? `, ${res.errors} errors (${res.firstError})` : ''),
          );
        } catch (err) {
          runs[l.target.name]![n]!.push({ error: message(err) });
          log(`  ${l.target.name}: ERROR ${message(err)}`);
        }
      }
    }
  }
  return runs;
}

async function failover(live: readonly Live[], o: Options): Promise<Record<string, FailoverRun[]>> {
  const runs: Record<string, FailoverRun[]> = {};
  for (const l of live) runs[l.target.name] = [];
  for (let r = 0; r < o.rounds; r++) {
    for (const l of orderFor(live, r)) {
      const name = l.target.name;
      log(`failover round ${r + 1}/${o.rounds}: ${name}, kill -9 of the leader…`);
      try {
        await l.load.arm(PROBE_CALL_TIMEOUT_MS * 10);
        let killed: KilledLeader;
        let res: FailoverResult;
        try {
          killed = await l.target.killLeader();
          res = await l.load.failover({
            sinceEpochMs: killed.killedAtEpochMs,
            intervalMs: PROBE_INTERVAL_MS,
            callTimeoutMs: PROBE_CALL_TIMEOUT_MS,
            maxMs: FAILOVER_MAX_MS,
          });
        } finally {
          // Also after a failed kill or probe: the next round needs all three members (restart() is a no-op
          // when nothing was killed).
          log(`  ${name}: restarting the killed member…`);
          await l.target.restart();
        }
        runs[name]!.push({
          round: r + 1,
          member: killed.member,
          ms: res.ms,
          attempts: res.attempts,
          failures: res.failures,
        });
        log(
          `  ${name}: a put succeeded again ${res.ms} ms after the kill of ${killed.member} (${res.attempts} attempts)`,
        );
      } catch (err) {
        runs[name]!.push({ round: r + 1, error: message(err) });
        log(`  ${name}: ERROR ${message(err)}`);
      }
    }
  }
  return runs;
}

// ---- report ----------------------------------------------------------------------

interface Summary {
  readonly opsPerSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
  readonly errors: number;
  readonly clientCpuUsPerOp: number;
  readonly serverCpuUsPerOp: number;
  readonly rounds: number;
  readonly failedRounds: number;
}

function summarize(runs: readonly (RunRecord | { error: string })[]): Summary {
  const ok = runs.filter((r): r is RunRecord => !('error' in r));
  return {
    opsPerSecond: Math.round(median(ok.map((r) => r.opsPerSecond))),
    p50Ms: round(median(ok.map((r) => r.p50Ms)), 3),
    p99Ms: round(median(ok.map((r) => r.p99Ms)), 3),
    maxMs: ok.length === 0 ? Number.NaN : round(Math.max(...ok.map((r) => r.maxMs)), 1),
    errors: ok.reduce((a, r) => a + r.errors, 0),
    clientCpuUsPerOp: round(median(ok.map((r) => r.clientCpuUsPerOp)), 1),
    serverCpuUsPerOp: round(median(ok.map((r) => r.serverCpuUsPerOp)), 1),
    rounds: ok.length,
    failedRounds: runs.length - ok.length,
  };
}

/** Client + servers per put; a load run in-process in the servers has no separate client figure (NaN). */
const totalCpu = (s: Summary): number =>
  round((Number.isFinite(s.clientCpuUsPerOp) ? s.clientCpuUsPerOp : 0) + s.serverCpuUsPerOp, 1);
const fmt = (x: number, unit = ''): string => (Number.isFinite(x) ? `${x}${unit}` : '—');
/** rebalancer / etcd, as the issue's targets are stated. */
const ratio = (a: number | undefined, b: number | undefined): string =>
  a !== undefined && b !== undefined && Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${round(a / b, 2)}×` : '—';

export async function run(args: string[]): Promise<void> {
  const o = parseArgs(args);
  const started = Date.now();
  const live: Live[] = [];
  const startErrors: Record<string, string> = {};
  const sectionErrors: Record<string, string> = {};
  const settings: Record<string, Readonly<Record<string, string>>> = {};
  let tp: ThroughputRuns = {};
  let fo: Record<string, FailoverRun[]> = {};
  let groups: GroupsResult | undefined;
  const begun: BenchTarget[] = [];
  const loads: LoadRunner[] = [];
  const onSignal = (): void => {
    void Promise.allSettled(loads.map((w) => w.close()))
      .then(() => Promise.allSettled(begun.map((t) => t.stop())))
      .finally(() => stopAllServers().finally(() => process.exit(130)));
  };
  process.once('SIGINT', onSignal);
  try {
    const single = o.sections.has('throughput') || o.sections.has('failover');
    for (const name of single ? o.targets : []) {
      const target = TARGETS[name]!();
      begun.push(target);
      log(`starting ${name} (three members)…`);
      try {
        const { load } = await target.start();
        loads.push(load);
        settings[name] = { ...target.settings(), 'load runs': load.where };
        live.push({ target, load });
        log(
          `  ${name}: ${Object.entries(settings[name])
            .map(([k, v]) => `${k} ${v}`)
            .join(', ')}`,
        );
      } catch (err) {
        startErrors[name] = message(err);
        log(`  ${name}: could not start: ${message(err)}`);
      }
    }
    if (o.sections.has('throughput') && live.length > 0) tp = await throughput(live, o);
    if (o.sections.has('failover') && live.length > 0) fo = await failover(live, o);
    // The single-group targets stop first: the groups section has the machine to itself.
    await Promise.allSettled(loads.map((w) => w.close()));
    await Promise.allSettled(begun.map((t) => t.stop()));
    begun.length = 0;
    loads.length = 0;
    if (o.sections.has('groups')) {
      try {
        groups = await groupsSection(
          {
            groups: o.groups,
            idleMs: o.idleMs,
            loadGroups: Math.min(GROUPS_LOADED, o.groups),
            inFlight: GROUPS_IN_FLIGHT,
            durationMs: o.durationMs,
            warmupMs: o.warmupMs,
          },
          log,
        );
      } catch (err) {
        sectionErrors['groups'] = message(err);
        log(`groups: ERROR ${message(err)}`);
      }
    }
  } finally {
    process.off('SIGINT', onSignal);
    await Promise.allSettled(loads.map((w) => w.close()));
    await Promise.allSettled(begun.map((t) => t.stop()));
    await stopAllServers();
  }

  const names = o.targets;
  const summaries: Record<string, Record<number, Summary>> = {};
  for (const [name, byLevel] of Object.entries(tp)) {
    summaries[name] = {};
    for (const [n, runs] of Object.entries(byLevel)) summaries[name]![Number(n)] = summarize(runs);
  }
  const failoverMedian: Record<string, number> = {};
  for (const [name, runs] of Object.entries(fo)) {
    failoverMedian[name] = Math.round(median(runs.flatMap((r) => (r.ms === undefined ? [] : [r.ms]))));
  }
  const failed =
    Object.keys(startErrors).length > 0 ||
    Object.keys(sectionErrors).length > 0 ||
    Object.values(summaries).some((s) => Object.values(s).some((x) => x.failedRounds > 0)) ||
    Object.values(fo).some((runs) => runs.some((r) => r.error !== undefined));
  if (failed) process.exitCode = 1;

  if (o.json) {
    process.stdout.write(
      `${JSON.stringify({
        bench: 'raft',
        options: { ...o, sections: [...o.sections] },
        keys: DEFAULT_KEYS,
        valueBytes: DEFAULT_VALUE_BYTES,
        settings,
        startErrors,
        sectionErrors,
        throughput: { summaries, runs: tp },
        failover: { medianMs: failoverMedian, runs: fo },
        groups: groups ?? null,
        totalMs: Date.now() - started,
      })}\n`,
    );
    return;
  }

  const out: string[] = [];
  const [a, b] = ['rebalancer', 'etcd'];
  for (const name of names) {
    if (startErrors[name] !== undefined) out.push(`${name}: NOT RUN — ${startErrors[name]}`);
    else if (settings[name] !== undefined) {
      out.push(
        `${name}: ${Object.entries(settings[name])
          .map(([k, v]) => `${k} ${v}`)
          .join('; ')}`,
      );
    }
  }
  if (Object.keys(summaries).length > 0) {
    out.push(
      '',
      `1. Throughput: puts of ${DEFAULT_VALUE_BYTES}-byte values over ${DEFAULT_KEYS} keys, closed loop, ` +
        `${o.rounds} round(s) of ${o.durationMs} ms (after ${o.warmupMs} ms warm-up), medians over rounds ` +
        '(max: over rounds).',
      'CPU/put: user + system time per put of the client process (etcd: the load worker running etcd3) and of the',
      'three server processes; total = both. Rebalancer is embedded: its load runs in-process in the three node',
      'processes (group.command, followers forward to the leader), so it has no client column — its client cost is',
      'in its servers’ CPU. Compare the totals.',
    );
    const rows: string[][] = [
      [
        'in flight',
        'target',
        'ops/s',
        'p50',
        'p99',
        'max',
        'errors',
        'client CPU/put',
        'servers CPU/put',
        'total CPU/put',
      ],
    ];
    for (const n of o.inFlight) {
      for (const name of names) {
        const s = summaries[name]?.[n];
        if (s === undefined) continue;
        rows.push([
          String(n),
          name,
          fmt(s.opsPerSecond),
          fmt(s.p50Ms, ' ms'),
          fmt(s.p99Ms, ' ms'),
          fmt(s.maxMs, ' ms'),
          s.failedRounds > 0 ? `${s.errors} (+${s.failedRounds} failed rounds)` : String(s.errors),
          fmt(s.clientCpuUsPerOp, ' µs'),
          fmt(s.serverCpuUsPerOp, ' µs'),
          fmt(totalCpu(s), ' µs'),
        ]);
      }
      const sa = summaries[a]?.[n];
      const sb = summaries[b]?.[n];
      if (sa !== undefined && sb !== undefined) {
        rows.push([
          String(n),
          `${a} / ${b}`,
          ratio(sa.opsPerSecond, sb.opsPerSecond),
          ratio(sa.p50Ms, sb.p50Ms),
          ratio(sa.p99Ms, sb.p99Ms),
          ratio(sa.maxMs, sb.maxMs),
          '',
          ratio(sa.clientCpuUsPerOp, sb.clientCpuUsPerOp),
          ratio(sa.serverCpuUsPerOp, sb.serverCpuUsPerOp),
          ratio(totalCpu(sa), totalCpu(sb)),
        ]);
      }
    }
    out.push(table(rows));
  }
  if (Object.keys(fo).length > 0) {
    out.push(
      '',
      `2. Failover: kill -9 of the leader until a put succeeds again (an attempt every ${PROBE_INTERVAL_MS} ms, ` +
        `each bounded by ${PROBE_CALL_TIMEOUT_MS} ms; the killed member restarted between rounds)`,
    );
    const rows: string[][] = [['target', 'median', 'runs (ms)', 'errors']];
    for (const name of names) {
      const runs = fo[name];
      if (runs === undefined) continue;
      const errs = runs.filter((r) => r.error !== undefined);
      rows.push([
        name,
        fmt(failoverMedian[name] ?? Number.NaN, ' ms'),
        runs.map((r) => (r.ms === undefined ? 'ERR' : String(r.ms))).join(', '),
        errs.length === 0 ? '0' : `${errs.length}: ${errs[0]!.error!.slice(0, 60)}`,
      ]);
    }
    rows.push(['ratio', ratio(failoverMedian[a], failoverMedian[b]), '', '']);
    out.push(table(rows));
  }
  if (sectionErrors['groups'] !== undefined) out.push('', `3. Groups: NOT RUN — ${sectionErrors['groups']}`);
  if (groups !== undefined) out.push('', ...formatGroups(groups));
  out.push('', `total ${round((Date.now() - started) / 1000, 1)} s`);
  process.stdout.write(`${out.join('\n')}\n`);
}
