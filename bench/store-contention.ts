/**
 * `npm run bench -- store-contention [--json] [--backends postgres,sqlite,…] [--nodes 8] [--groups 60]
 *  [--duration-ms 5000] [--rate 10]`
 *
 * The control-plane load of a fleet, on one namespace of a private server: `--nodes` stores (one per fleet node)
 * each reading the fleet `--rate` times a second as `readFleetView` does (a transaction of two ranges and a get,
 * then three range reads of `--groups` records), writing `--rate` observed reports a second, four at a time (a
 * guarded put: compare the group record, put `observed/<group>`), and keeping a session of 2 s alive (a timed
 * keep-alive five times a second, besides the session's own), while one coordinator writes desired records in
 * batches of 42 guarded puts, `--rate` / 5 batches a second. Requests are paced (a fleet reads and writes when
 * something changed, not in a tight loop); one that falls behind its pace goes at once. Per kind of request: how
 * many completed per second, and their median and p99 latency. Writers of a namespace serialise on most backends;
 * what this shows is how long readers, writers and keep-alives wait for each other.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Store, Txn } from '../src/store/contract.js';
import { Election } from '../src/store/election.js';
import { openStore } from '../src/store/open.js';
import { startEtcd, startPostgres, startRedis, startZookeeper, stopAllServers } from '../test/harness/servers.js';
import { round, stats, table, type LatencyStats } from './stats.js';

const ALL = ['sqlite', 'postgres', 'redis', 'etcd', 'zookeeper'] as const;
/** Desired records per coordinator transaction, as writeDesired batches them. */
const DESIRED_BATCH = 42;
const KINDS = ['view read', 'observed report', 'desired batch', 'keep-alive'] as const;
/** Observed reports in flight per node: the leaders of a node's groups report at once when their shapes change. */
const REPORTERS = 4;
type Kind = (typeof KINDS)[number];

interface Result {
  readonly perKind: Record<Kind, LatencyStats & { perSecond: number }>;
  readonly failures: number;
}

async function serverUrl(backend: string, cleanup: (() => void)[]): Promise<string> {
  switch (backend) {
    case 'sqlite': {
      const dir = mkdtempSync(join(tmpdir(), 'rebalancer-bench-'));
      cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
      return `sqlite:${join(dir, 'bench.db')}`;
    }
    case 'postgres':
      return (await startPostgres()).url;
    case 'redis':
      return (await startRedis()).url;
    case 'etcd':
      return (await startEtcd()).url;
    case 'zookeeper':
      return (await startZookeeper()).url;
  }
  throw new Error(`unknown backend ${backend}`);
}

async function benchBackend(
  backend: string,
  nodes: number,
  groups: number,
  durationMs: number,
  rate: number,
): Promise<Result> {
  const cleanup: (() => void)[] = [];
  const stores: Store[] = [];
  try {
    const url = await serverUrl(backend, cleanup);
    const namespace = `contention${Date.now()}`;
    for (let i = 0; i < nodes; i++) stores.push(await openStore(url, { namespace }));
    const [first] = stores as [Store, ...Store[]];
    const names = Array.from({ length: groups }, (_, i) => `g${String(i).padStart(3, '0')}`);
    const record = JSON.stringify({ v: 1, pad: 'x'.repeat(200) });
    for (let i = 0; i < names.length; i += DESIRED_BATCH) {
      const batch = names.slice(i, i + DESIRED_BATCH);
      await first.txn({
        compare: [],
        then: batch.flatMap((g) => [
          { op: 'put' as const, key: `f/b/groups/${g}`, value: record },
          { op: 'put' as const, key: `f/b/observed/${g}`, value: record },
        ]),
      });
    }
    const session = await first.openSession({ ttlMs: 10_000 });
    await first.txn({ compare: [], then: [{ op: 'put', key: 'f/b/nodes/n0', value: record, session }] });
    const leadership = await new Election(first, { prefix: 'f/b/coord/' }).campaign(session, 'n0');

    const samples: Record<Kind, number[]> = {
      'view read': [],
      'observed report': [],
      'desired batch': [],
      'keep-alive': [],
    };
    // Each node's own session (its node record's), kept alive by the store as a fleet node's is; the bench also
    // asks for a keep-alive at the store's own beat and times it.
    const sessions = await Promise.all(stores.map((s) => s.openSession({ ttlMs: 2000 })));
    let failures = 0;
    const deadline = performance.now() + durationMs;
    const loop = async (kind: Kind, perSecond: number, op: () => Promise<unknown>): Promise<void> => {
      const periodMs = 1000 / perSecond;
      // Spread the loops' starts over one period.
      let next = performance.now() + Math.random() * periodMs;
      while (next < deadline) {
        const wait = next - performance.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        const t = performance.now();
        try {
          await op();
          samples[kind].push(performance.now() - t);
        } catch {
          failures++;
        }
        next = Math.max(next + periodMs, performance.now());
      }
    };
    const viewRead = async (s: Store): Promise<void> => {
      await s.txn({
        compare: [],
        then: [
          { op: 'range', prefix: 'f/b/nodes/' },
          { op: 'range', prefix: 'f/b/coord/' },
          { op: 'get', key: 'f/b/meta' },
        ],
      });
      await s.range('f/b/groups/');
      await s.range('f/b/desired/');
      await s.range('f/b/observed/');
    };
    let n = 0;
    const report = async (s: Store): Promise<void> => {
      const g = names[n++ % names.length]!;
      const cur = await s.get(`f/b/groups/${g}`);
      await s.txn({
        compare: [{ key: `f/b/groups/${g}`, target: 'modRevision', op: '=', value: cur?.modRevision ?? 0 }],
        then: [{ op: 'put', key: `f/b/observed/${g}`, value: record }],
      });
    };
    let b = 0;
    const desired = async (): Promise<void> => {
      const from = (b++ * DESIRED_BATCH) % names.length;
      const batch = names.slice(from, from + DESIRED_BATCH);
      const txn: Txn = {
        compare: [leadership.guard],
        then: batch.map((g) => ({ op: 'put' as const, key: `f/b/desired/${g}`, value: record })),
      };
      await first.txn(txn);
    };
    const started = performance.now();
    await Promise.all([
      ...stores.map((s) => loop('view read', rate, () => viewRead(s))),
      ...stores.flatMap((s) =>
        Array.from({ length: REPORTERS }, () => loop('observed report', rate / REPORTERS, () => report(s))),
      ),
      ...sessions.map((x) => loop('keep-alive', 5, () => x.keepAlive())),
      loop('desired batch', rate / 5, desired),
    ]);
    const seconds = (performance.now() - started) / 1000;
    await session.close();
    await Promise.all(sessions.map((x) => x.close()));
    const perKind = Object.fromEntries(
      KINDS.map((k) => [k, { ...stats(samples[k]), perSecond: round(samples[k].length / seconds, 1) }]),
    ) as Result['perKind'];
    return { perKind, failures };
  } finally {
    await Promise.all(stores.map((s) => s.close().catch(() => undefined)));
    for (const c of cleanup) c();
  }
}

function option(args: string[], name: string, fallback: number): number {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
}

export async function run(args: string[]): Promise<void> {
  const json = args.includes('--json');
  const nodes = option(args, '--nodes', 8);
  const groups = option(args, '--groups', 60);
  const durationMs = option(args, '--duration-ms', 5000);
  const rate = option(args, '--rate', 10);
  const bArg = args.indexOf('--backends');
  const backends = bArg >= 0 ? (args[bArg + 1] ?? '').split(',') : [...ALL];
  const results: Record<string, Result | { error: string }> = {};
  try {
    for (const backend of backends) {
      process.stderr.write(`store-contention bench: ${backend} (${nodes} nodes, ${groups} groups, ${rate}/s each)…\n`);
      try {
        results[backend] = await benchBackend(backend, nodes, groups, durationMs, rate);
      } catch (err) {
        results[backend] = { error: err instanceof Error ? err.message : String(err) };
      }
    }
  } finally {
    await stopAllServers();
  }
  const rows: string[][] = [['backend', ...KINDS.map((k) => `${k}: /s, p50/p99`), 'failed']];
  for (const [backend, r] of Object.entries(results)) {
    if ('error' in r) {
      rows.push([backend, 'ERROR', r.error.slice(0, 60), '', '']);
      continue;
    }
    const f = (x: LatencyStats & { perSecond: number }): string => `${x.perSecond}/s, ${x.p50Ms}/${x.p99Ms} ms`;
    rows.push([backend, ...KINDS.map((k) => f(r.perKind[k])), String(r.failures)]);
  }
  process.stdout.write(`${table(rows)}\n`);
  if (json) process.stdout.write(`${JSON.stringify({ bench: 'store-contention', nodes, groups, rate, results })}\n`);
  if (Object.values(results).some((r) => 'error' in r)) process.exitCode = 1;
}
