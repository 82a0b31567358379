/**
 * `npm run bench -- rabbitmq [--json] [--quick] [--reps N] [--sections failover,throughput] [--store URL]
 *   [--amqp URL]`
 *
 * RabbitMQ consumer groups, two sections, each figure as a ratio within this run:
 * 1. single-active-consumer failover: three consumer processes on one queue (session TTL 2000 ms, a private Redis
 *    as the store unless --store), a message published every 10 ms; kill -9 the active consumer; the time from
 *    the kill to the first message consumed by a standby, as a ratio to the TTL — and the same for RabbitMQ's own
 *    `x-single-active-consumer` (the peer: the broker switches when the killed process's socket closes);
 * 2. throughput: one process consuming 8 pre-filled queues through a consumer group (in-memory store) against a
 *    plain amqplib consumer on the same queues (same prefetch, manual ack, a no-op handler), interleaved.
 * Uses the broker at --amqp (default amqp://guest:guest@127.0.0.1:5672) with private queue names, deleted after.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { connect, type Channel, type ChannelModel } from 'amqplib';
import { joinConsumerGroup } from '../src/integrations/rabbitmq/index.js';
import { openStore } from '../src/store/open.js';
import { startRedis, stopAllServers } from '../test/harness/servers.js';
import { round, table } from './stats.js';

const TTL_MS = 2000;
const PREFETCH = 10;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const log = (msg: string): void => void process.stderr.write(`rabbitmq bench: ${msg}\n`);

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

// ---- worker processes ------------------------------------------------------------------

interface WorkerEvent {
  ev: string;
  t: number;
}

class Worker {
  readonly proc: ChildProcess;
  readonly exited: Promise<void>;
  lastMsgT = 0;
  #listeners = new Set<(e: WorkerEvent) => void>();

  constructor(
    readonly name: string,
    args: string[],
  ) {
    this.proc = spawn(process.execPath, ['--import', 'tsx', 'bench/rabbitmq-worker.ts', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: process.cwd(),
    });
    this.exited = new Promise((resolve) => this.proc.once('exit', () => resolve()));
    createInterface({ input: this.proc.stdout! }).on('line', (line) => {
      let e: WorkerEvent;
      try {
        e = JSON.parse(line) as WorkerEvent;
      } catch {
        return;
      }
      if (e.ev === 'msg') this.lastMsgT = e.t;
      for (const l of [...this.#listeners]) l(e);
    });
    this.proc.stderr!.on('data', (d: Buffer) => {
      if (process.env['BENCH_VERBOSE'] !== undefined) process.stderr.write(`[${name}] ${d.toString()}`);
    });
  }

  waitFor(pred: (e: WorkerEvent) => boolean, timeoutMs: number): Promise<WorkerEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#listeners.delete(l);
        reject(new Error(`${this.name}: timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      const l = (e: WorkerEvent): void => {
        if (!pred(e)) return;
        clearTimeout(timer);
        this.#listeners.delete(l);
        resolve(e);
      };
      this.#listeners.add(l);
    });
  }

  async kill(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
    await this.exited;
  }
}

// ---- 1. single-active-consumer failover ------------------------------------------------------------------

interface FailoverResult {
  runs: number[];
  medianMs: number;
  ratioToTtl: number;
}

/** Start three workers, wait for the active one, kill -9 it; ms from the kill to a standby's first message. */
async function failoverOnce(ch: Channel, workerArgs: (name: string) => string[], queue: string): Promise<number> {
  const publisher = setInterval(() => ch.sendToQueue(queue, Buffer.from('x')), 10);
  const workers = ['a', 'b', 'c'].map((n) => new Worker(n, workerArgs(n)));
  try {
    await Promise.all(workers.map((w) => w.waitFor((e) => e.ev === 'ready', 30_000)));
    await Promise.race(workers.map((w) => w.waitFor((e) => e.ev === 'msg', 30_000)));
    await sleep(1000); // settled: keep-alives, watches
    const active = workers.reduce((a, b) => (b.lastMsgT > a.lastMsgT ? b : a));
    const standbys = workers.filter((w) => w !== active);
    const first = Promise.race(standbys.map((w) => w.waitFor((e) => e.ev === 'msg', TTL_MS * 15)));
    const t0 = Date.now();
    active.proc.kill('SIGKILL');
    const e = await first;
    return e.t - t0;
  } finally {
    clearInterval(publisher);
    await Promise.all(workers.map((w) => w.kill()));
  }
}

async function failover(
  amqpUrl: string,
  ch: Channel,
  storeUrl: string,
  reps: number,
): Promise<{ ours: FailoverResult; native: FailoverResult }> {
  const id = `${process.pid}-${Date.now().toString(36)}`;
  const ours: number[] = [];
  const native: number[] = [];
  for (let i = 0; i < reps; i++) {
    const q = `rebalancer-bench-sac-${id}-${i}`;
    await ch.assertQueue(q, { durable: false });
    try {
      const ns = `bench-sac-${id}-${i}`;
      ours.push(await failoverOnce(ch, (n) => ['group', storeUrl, ns, amqpUrl, q, n, String(TTL_MS)], q));
      log(`  rebalancer failover #${i + 1}: ${ours.at(-1)} ms`);
    } finally {
      await ch.deleteQueue(q);
    }
    const nq = `rebalancer-bench-native-sac-${id}-${i}`;
    await ch.assertQueue(nq, { durable: false, arguments: { 'x-single-active-consumer': true } });
    try {
      native.push(await failoverOnce(ch, () => ['native', amqpUrl, nq], nq));
      log(`  x-single-active-consumer failover #${i + 1}: ${native.at(-1)} ms`);
    } finally {
      await ch.deleteQueue(nq);
    }
  }
  const result = (runs: number[]): FailoverResult => ({
    runs,
    medianMs: median(runs),
    ratioToTtl: round(median(runs) / TTL_MS, 3),
  });
  return { ours: result(ours), native: result(native) };
}

// ---- 2. throughput ------------------------------------------------------------------

interface ThroughputResult {
  queues: number;
  messagesPerRound: number;
  plainPerS: number[];
  groupPerS: number[];
  /** Median of group / plain over the rounds. */
  ratio: number;
}

async function fill(ch: Channel, queues: readonly string[], perQueue: number): Promise<void> {
  const body = Buffer.from('x'.repeat(64));
  for (let i = 0; i < perQueue; i++) {
    for (const q of queues) {
      if (!ch.sendToQueue(q, body)) await new Promise((r) => ch.once('drain', r));
    }
  }
  // A round trip after the publishes: they are all routed once it returns.
  for (const q of queues) await ch.checkQueue(q);
}

/** Consume everything with plain amqplib: one channel per queue, prefetch, manual ack. Returns msgs/s. */
async function plainRound(conn: ChannelModel, queues: readonly string[], total: number): Promise<number> {
  let n = 0;
  let t0 = 0;
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  const channels: Channel[] = [];
  for (const q of queues) {
    const c = await conn.createChannel();
    channels.push(c);
    await c.prefetch(PREFETCH);
    await c.consume(
      q,
      (m) => {
        if (m === null) return;
        if (n === 0) t0 = performance.now();
        c.ack(m);
        if (++n === total) done();
      },
      { noAck: false },
    );
  }
  await finished;
  const perS = (total - 1) / ((performance.now() - t0) / 1000);
  for (const c of channels) await c.close();
  return perS;
}

/** The same through a consumer group (one node, in-memory store). Returns msgs/s from first to last message. */
async function groupRound(amqpUrl: string, queues: readonly string[], total: number): Promise<number> {
  const store = await openStore('memory:');
  let n = 0;
  let t0 = 0;
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  const group = await joinConsumerGroup({
    store,
    group: 'bench-throughput',
    node: { id: 'n1' },
    connection: amqpUrl,
    queues,
    prefetch: PREFETCH,
    onMessage: () => {
      if (n === 0) t0 = performance.now();
      if (++n === total) done();
    },
  });
  await finished;
  const perS = (total - 1) / ((performance.now() - t0) / 1000);
  await group.leave();
  await store.close();
  return perS;
}

async function throughput(
  amqpUrl: string,
  conn: ChannelModel,
  ch: Channel,
  rounds: number,
  perQueue: number,
): Promise<ThroughputResult> {
  const id = `${process.pid}-${Date.now().toString(36)}`;
  const queues = Array.from({ length: 8 }, (_, i) => `rebalancer-bench-tp-${id}-${i}`);
  for (const q of queues) await ch.assertQueue(q, { durable: false });
  const plain: number[] = [];
  const group: number[] = [];
  try {
    const total = perQueue * queues.length;
    for (let r = 0; r < rounds; r++) {
      await fill(ch, queues, perQueue);
      plain.push(round(await plainRound(conn, queues, total), 0));
      await fill(ch, queues, perQueue);
      group.push(round(await groupRound(amqpUrl, queues, total), 0));
      log(`  round ${r + 1}: plain ${plain.at(-1)}/s, group ${group.at(-1)}/s`);
    }
  } finally {
    for (const q of queues) await ch.deleteQueue(q).catch(() => undefined);
  }
  return {
    queues: queues.length,
    messagesPerRound: perQueue * queues.length,
    plainPerS: plain,
    groupPerS: group,
    ratio: round(median(group.map((g, i) => g / plain[i]!)), 2),
  };
}

// ---- main ------------------------------------------------------------------

export async function run(args: string[]): Promise<void> {
  const json = args.includes('--json');
  const quick = args.includes('--quick');
  const arg = (name: string): string | undefined => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const reps = Number(arg('--reps') ?? (quick ? 1 : 3));
  const sections = new Set((arg('--sections') ?? 'failover,throughput').split(','));
  const amqpUrl = arg('--amqp') ?? 'amqp://guest:guest@127.0.0.1:5672';
  const conn = await connect(amqpUrl);
  conn.on('error', () => undefined);
  const ch = await conn.createChannel();
  let fo: Awaited<ReturnType<typeof failover>> | { error: string } | undefined;
  let tp: ThroughputResult | { error: string } | undefined;
  try {
    if (sections.has('throughput')) {
      log('throughput: consumer group vs plain amqplib…');
      try {
        tp = await throughput(amqpUrl, conn, ch, quick ? 1 : 3, quick ? 1000 : 2500);
      } catch (err) {
        tp = { error: err instanceof Error ? err.message : String(err) };
      }
    }
    if (sections.has('failover')) {
      log('single-active-consumer failover after kill -9…');
      let storeUrl = arg('--store');
      if (storeUrl === undefined) storeUrl = (await startRedis()).url;
      try {
        fo = await failover(amqpUrl, ch, storeUrl, reps);
      } catch (err) {
        fo = { error: err instanceof Error ? err.message : String(err) };
      }
    }
  } finally {
    await conn.close().catch(() => undefined);
    await stopAllServers();
  }

  const out: string[] = [];
  if (fo !== undefined) {
    out.push(`1. Single-active-consumer failover after kill -9 (3 processes, one queue, session TTL ${TTL_MS} ms)`);
    const rows: string[][] = [['consumer', 'runs', 'kill → first message (median)', 'ratio to TTL', 'runs (ms)']];
    if ('error' in fo) rows.push(['ERROR', fo.error.slice(0, 70), '', '', '']);
    else {
      rows.push([
        'rebalancer/rabbitmq',
        String(fo.ours.runs.length),
        `${fo.ours.medianMs} ms`,
        `${fo.ours.ratioToTtl}×`,
        fo.ours.runs.join(', '),
      ]);
      rows.push([
        'x-single-active-consumer (peer)',
        String(fo.native.runs.length),
        `${fo.native.medianMs} ms`,
        `${fo.native.ratioToTtl}×`,
        fo.native.runs.join(', '),
      ]);
    }
    out.push(table(rows));
    out.push(
      "Keep-alives go out every TTL/5, so the store expires a killed process's session 0.8-1.0 × TTL after the kill: " +
        'the floor for a lease. The broker switches as soon as the killed socket closes (kill -9), but a hung or ' +
        'cut-off consumer keeps the queue until the heartbeat timeout, and nothing stops it from acting meanwhile.',
    );
    out.push('');
  }
  if (tp !== undefined) {
    out.push('2. Throughput, one process, 8 pre-filled queues, prefetch 10, manual ack, no-op handler');
    if ('error' in tp) out.push(`ERROR ${tp.error}`);
    else {
      out.push(
        table([
          ['consumer', 'msgs/s per round'],
          ['plain amqplib', tp.plainPerS.join(', ')],
          ['consumer group', tp.groupPerS.join(', ')],
          ['ratio group / plain (median)', `${tp.ratio}×`],
        ]),
      );
      out.push(
        `${tp.messagesPerRound} messages per round; the group handles each queue's messages one at a time ` +
          '(order), checks ownership before each and acks after it.',
      );
    }
  }
  console.log(out.join('\n'));
  if (json) {
    console.log(
      JSON.stringify({
        bench: 'rabbitmq',
        ttlMs: TTL_MS,
        failover: fo ?? null,
        throughput: tp ?? null,
      }),
    );
  }
}
