/**
 * `npm run bench -- store [--json] [--backends a,b] [--n N]`
 *
 * Per backend, on a private server started for the run: median and p99 of
 * get, a guarded transaction (compare the leader key's createRevision, then
 * put) and a session keep-alive, each as a ratio to the raw client round trip
 * measured in the same run (Redis PING, PostgreSQL SELECT 1, etcd get of a
 * missing key, ZooKeeper exists, SQLite SELECT 1 on the same file).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Store } from '../src/store/contract.js';
import { Election } from '../src/store/election.js';
import { openStore } from '../src/store/open.js';
import { startEtcd, startPostgres, startRedis, startZookeeper, stopAllServers } from '../test/harness/servers.js';
import { measureInterleaved, round, table, type LatencyStats } from './stats.js';

interface Fixture {
  url: string;
  /** One raw round trip with the backend's own client. */
  raw: () => Promise<unknown>;
  rawName: string;
  close(): Promise<void>;
}

const ALL = ['memory', 'sqlite', 'postgres', 'redis', 'etcd', 'zookeeper'] as const;

async function fixture(backend: string): Promise<Fixture> {
  switch (backend) {
    case 'memory':
      return {
        url: 'memory:',
        rawName: 'resolved promise',
        raw: () => Promise.resolve(),
        close: async () => undefined,
      };
    case 'sqlite': {
      const dir = mkdtempSync(join(tmpdir(), 'rebalancer-bench-'));
      const file = join(dir, 'bench.db');
      const { default: Database } = await import('better-sqlite3');
      const db = new Database(file);
      const stmt = db.prepare('SELECT 1');
      return {
        url: `sqlite:${file}`,
        rawName: 'SELECT 1',
        raw: () => Promise.resolve(stmt.get()),
        close: async () => {
          db.close();
          rmSync(dir, { recursive: true, force: true });
        },
      };
    }
    case 'postgres': {
      const server = await startPostgres();
      const pg = await import('pg');
      const client = new pg.default.Client({ connectionString: server.url });
      await client.connect();
      return {
        url: server.url,
        rawName: 'SELECT 1',
        raw: () => client.query('SELECT 1'),
        close: async () => {
          await client.end();
          await server.stop();
        },
      };
    }
    case 'redis': {
      const server = await startRedis();
      const { Redis } = await import('ioredis');
      const client = new Redis(server.url);
      return {
        url: server.url,
        rawName: 'PING',
        raw: () => client.ping(),
        close: async () => {
          client.disconnect();
          await server.stop();
        },
      };
    }
    case 'etcd': {
      const server = await startEtcd();
      const { Etcd3 } = await import('etcd3');
      const client = new Etcd3({ hosts: `http://${server.host}:${server.port}` });
      return {
        url: server.url,
        rawName: 'get (missing key)',
        raw: () => client.get('bench/missing').string(),
        close: async () => {
          client.close();
          await server.stop();
        },
      };
    }
    case 'zookeeper': {
      const server = await startZookeeper();
      const zk = await import('node-zookeeper-client');
      const client = zk.default.createClient(`${server.host}:${server.port}`, { sessionTimeout: 10_000 });
      await new Promise<void>((resolve) => {
        client.once('connected', () => resolve());
        client.connect();
      });
      return {
        url: server.url,
        rawName: 'exists',
        raw: () =>
          new Promise<void>((resolve, reject) =>
            client.exists('/bench-missing', (err) => (err ? reject(err) : resolve())),
          ),
        close: async () => {
          client.close();
          await server.stop();
        },
      };
    }
  }
  throw new Error(`unknown backend ${backend}`);
}

interface BackendResult {
  raw: LatencyStats & { op: string };
  get: LatencyStats;
  guardedTxn: LatencyStats;
  keepAlive: LatencyStats;
  ratios: { get: number; guardedTxn: number; keepAlive: number };
}

async function benchBackend(backend: string, n: number): Promise<BackendResult> {
  const fx = await fixture(backend);
  let store: Store | undefined;
  try {
    store = await openStore(fx.url, { namespace: `bench${Date.now()}` });
    const s = store;
    const session = await s.openSession({ ttlMs: 10_000 });
    const leadership = await new Election(s, { prefix: 'bench/leader/' }).campaign(session, 'bench');
    await s.txn({ compare: [], then: [{ op: 'put', key: 'bench/k', value: 'x'.repeat(64) }] });
    let i = 0;
    const m = await measureInterleaved(
      {
        raw: fx.raw,
        get: () => s.get('bench/k'),
        guardedTxn: () =>
          s.txn({ compare: [leadership.guard], then: [{ op: 'put', key: 'bench/g', value: String(i++) }] }),
        keepAlive: () => session.keepAlive(),
      },
      n,
    );
    const raw = m['raw']!;
    const get = m['get']!;
    const guardedTxn = m['guardedTxn']!;
    const keepAlive = m['keepAlive']!;
    await session.close();
    const ratio = (x: LatencyStats): number => round(x.p50Ms / Math.max(raw.p50Ms, 0.001), 2);
    return {
      raw: { ...raw, op: fx.rawName },
      get,
      guardedTxn,
      keepAlive,
      ratios: { get: ratio(get), guardedTxn: ratio(guardedTxn), keepAlive: ratio(keepAlive) },
    };
  } finally {
    await store?.close();
    await fx.close();
  }
}

export async function run(args: string[]): Promise<void> {
  const json = args.includes('--json');
  const nArg = args.indexOf('--n');
  const n = nArg >= 0 ? Number(args[nArg + 1]) : 500;
  const bArg = args.indexOf('--backends');
  const backends = bArg >= 0 ? (args[bArg + 1] ?? '').split(',') : [...ALL];
  const results: Record<string, BackendResult | { error: string }> = {};
  try {
    for (const b of backends) {
      process.stderr.write(`store bench: ${b} (${n} ops each)…\n`);
      try {
        results[b] = await benchBackend(b, n);
      } catch (err) {
        results[b] = { error: err instanceof Error ? err.message : String(err) };
      }
    }
  } finally {
    await stopAllServers();
  }
  const rows: string[][] = [
    ['backend', 'raw op', 'raw p50', 'get p50/p99', 'guarded txn p50/p99', 'keep-alive p50/p99', 'ratios get/txn/ka'],
  ];
  for (const [b, r] of Object.entries(results)) {
    if ('error' in r) {
      rows.push([b, 'ERROR', r.error.slice(0, 60), '', '', '', '']);
      continue;
    }
    const f = (x: LatencyStats): string => `${x.p50Ms}/${x.p99Ms} ms`;
    rows.push([
      b,
      r.raw.op,
      `${r.raw.p50Ms} ms`,
      f(r.get),
      f(r.guardedTxn),
      f(r.keepAlive),
      `${r.ratios.get}× / ${r.ratios.guardedTxn}× / ${r.ratios.keepAlive}×`,
    ]);
  }
  process.stdout.write(`${table(rows)}\n`);
  process.stdout.write("ratios: each operation's median over the raw client round trip measured in the same run\n");
  if (json) process.stdout.write(`${JSON.stringify({ bench: 'store', n, results })}\n`);
  if (Object.values(results).some((r) => 'error' in r)) process.exitCode = 1;
}
