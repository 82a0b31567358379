/**
 * RabbitMQ consumer groups end to end: real broker (the system RabbitMQ, unique queue names per run, deleted
 * afterwards), real consumer processes (test/rabbitmq/worker.ts), a private Redis and a private PostgreSQL as
 * the group's store.
 *
 * Per store: 8 queues, a producer in this process publishing sequence-numbered messages to every queue (with
 * publisher confirms: a message counts as published once the broker confirmed it), 3 consumer processes, then:
 * kill -9 one, add one, stop one gracefully (SIGTERM → leave()), SIGSTOP one for 2.5 × the session TTL and
 * SIGCONT it; then the producer stops and everything published must be processed.
 *
 * The oracle is the shared file the consumers append to (see worker.ts); this test appends its own lines for
 * what it does to them (killed, paused, resumed, sigterm), after the fact, so the file's line order is one total
 * order of events on this host. From it the test checks, during every step and at the end:
 *  - ownership: per queue, owners' fencing tokens grow in the order they started; an owner's interval (its
 *    `start` line to its `stop` line, or to its `killed` line) ends before the next owner's starts — except that
 *    an owner whose process was paused during its interval may overlap, but then its last processed message lies
 *    before the next owner's start; every processed message lies inside an interval of its own node and token;
 *  - completeness: every published message was processed;
 *  - duplicates only where allowed: a message processed again must have been processed before by a node that was
 *    then killed, paused or fenced, or that left it unacked because it had lost the lock; all counted;
 *  - order: per queue, a message delivered for the first time (not `redelivered`) has a higher sequence number
 *    than everything processed on that queue before it.
 * A last scenario runs the adapter's deliberately broken variant (keeps consuming after a revoke) and requires
 * the checker to report it.
 */
import { appendFileSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, type ChannelModel, type ConfirmChannel } from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Fleet, LineTail, type FleetWorker } from '../harness/fleet.js';
import { startPostgres, startRabbitmq, startRedis, type ServerHandle } from '../harness/servers.js';
import { eventually, sleep } from '../harness/wait.js';

const WORKER = fileURLToPath(new URL('./worker.ts', import.meta.url));
/** The system broker (SERVERS.md); a private one is started when it is not there (see beforeAll). */
let AMQP_URL = process.env['REBALANCER_TEST_AMQP_URL'] ?? 'amqp://guest:guest@127.0.0.1:5672';
const TTL_MS = 2000;
const GROUP = 'consumers';
/** Bound for one step's convergence (session expiry + rejoin + rebalance + consume, on a loaded 2-core machine). */
const STEP_BOUND_MS = 20_000;
/** One message per queue per tick. */
const PUBLISH_EVERY_MS = 40;

/** Poll every 100 ms (real processes: no need to spin faster). */
const POLL_MS = 100;

// ---------------------------------------------------------------- oracle

type Line =
  | { i: number; k: 'start' | 'consuming' | 'stop'; q: string; node: string; token: number }
  | { i: number; k: 'msg'; q: string; seq: number; node: string; token: number; red: boolean }
  | { i: number; k: 'ended'; q: string; node: string; token: number; reason: string; rh: number; ru: number }
  | {
      i: number;
      k: 'fenced' | 'sessionLost' | 'connectionLost' | 'killed' | 'paused' | 'resumed' | 'sigterm';
      node: string;
    };

interface Interval {
  node: string;
  q: string;
  token: number;
  start: number;
  stop: number | undefined;
  /** Line index of the last 'consuming' not followed by an 'ended' (undefined: not consuming now). */
  consuming: number | undefined;
  msgs: number[];
}

class Oracle {
  readonly lines: Line[] = [];
  readonly intervals = new Map<string, Interval>();
  readonly #tail: LineTail;

  constructor(readonly path: string) {
    writeFileSync(path, '');
    this.#tail = new LineTail(path);
  }

  /** The test's own lines (what it did to a worker), appended after the fact. */
  note(k: 'killed' | 'paused' | 'resumed' | 'sigterm', node: string): void {
    appendFileSync(this.path, `${JSON.stringify({ k, node, t: Date.now(), by: 'test' })}\n`);
  }

  refresh(): void {
    for (const raw of this.#tail.read()) {
      const l = { ...(JSON.parse(raw) as Omit<Line, 'i'>), i: this.lines.length } as Line;
      this.lines.push(l);
      this.#index(l);
    }
  }

  #index(l: Line): void {
    if (l.k !== 'start' && l.k !== 'consuming' && l.k !== 'stop' && l.k !== 'msg' && l.k !== 'ended') return;
    const id = `${l.node}|${l.q}|${l.token}`;
    let iv = this.intervals.get(id);
    if (l.k === 'start') {
      // The same lock restarted after its interval stopped would be a new interval (does not happen: the
      // adapter's handler returns only when revoked); keep the old one under another id.
      if (iv !== undefined) this.intervals.set(`${id}|${l.i}`, iv);
      iv = { node: l.node, q: l.q, token: l.token, start: l.i, stop: undefined, consuming: undefined, msgs: [] };
      this.intervals.set(id, iv);
      return;
    }
    if (iv === undefined) {
      // A line without a start: kept as an interval starting at Infinity, which the checks report.
      iv = { node: l.node, q: l.q, token: l.token, start: Infinity, stop: undefined, consuming: undefined, msgs: [] };
      this.intervals.set(id, iv);
    }
    if (l.k === 'consuming') iv.consuming = l.i;
    else if (l.k === 'ended') iv.consuming = undefined;
    else if (l.k === 'stop') {
      iv.stop = l.i;
      iv.consuming = undefined;
    } else if (l.k === 'msg') iv.msgs.push(l.i);
  }

  /** First line index of kind `k` of `node` within (from, to), or undefined. */
  find(node: string, kinds: readonly string[], from: number, to: number): Line | undefined {
    for (let i = Math.max(0, from + 1); i < Math.min(to, this.lines.length); i++) {
      const l = this.lines[i]!;
      if (l.node === node && kinds.includes(l.k)) return l;
    }
    return undefined;
  }
}

// ---------------------------------------------------------------- workers

interface Worker {
  readonly node: string;
  /** The process: its log, exit, signals. */
  readonly proc: FleetWorker;
  terminated: boolean;
  killed: boolean;
  paused: boolean;
}

class Cluster {
  readonly workers = new Map<string, Worker>();
  readonly oracle: Oracle;
  readonly fleet: Fleet;
  readonly steps: string[] = [];
  #next = 1;

  constructor(
    readonly storeUrl: string,
    readonly namespace: string,
    readonly dir: string,
    readonly queues: readonly string[],
  ) {
    this.oracle = new Oracle(join(dir, 'oracle.jsonl'));
    this.fleet = new Fleet(dir);
  }

  spawnWorker(env: Record<string, string> = {}): Worker {
    const node = `w${this.#next++}`;
    const proc = this.fleet.spawn({
      name: node,
      script: WORKER,
      args: [this.storeUrl, this.namespace, node, this.oracle.path, AMQP_URL, this.queues.join(',')],
      env: { REBALANCER_TEST_GROUP: GROUP, REBALANCER_TEST_TTL_MS: String(TTL_MS), ...env },
    });
    const w: Worker = { node, proc, terminated: false, killed: false, paused: false };
    this.workers.set(node, w);
    return w;
  }

  live(): Worker[] {
    return [...this.workers.values()].filter((w) => !w.proc.exited);
  }

  /** kill -9; the oracle line is written once the process is gone, so that all its own lines precede it. */
  async kill(w: Worker): Promise<void> {
    if (w.proc.exited) return;
    w.killed = true;
    w.proc.kill();
    await w.proc.exit;
    this.oracle.note('killed', w.node);
  }

  async terminate(w: Worker): Promise<void> {
    w.terminated = true;
    this.oracle.note('sigterm', w.node);
    await w.proc.terminate(20_000, () => void this.kill(w));
  }

  /** SIGSTOP; the oracle line is written once every thread of it has stopped. */
  async pause(w: Worker): Promise<void> {
    w.proc.pause();
    await w.proc.waitStopped(5000);
    w.paused = true;
    this.oracle.note('paused', w.node);
  }

  resume(w: Worker): void {
    this.oracle.note('resumed', w.node);
    w.paused = false;
    w.proc.resume();
  }

  async killAll(): Promise<void> {
    await Promise.all(this.live().map((w) => this.kill(w)));
  }

  // ---- checks

  /** Ownership and placement of processing (see the file comment); returns the problems found so far. */
  safetyProblems(): string[] {
    const o = this.oracle;
    o.refresh();
    const problems: string[] = [];
    for (const w of this.workers.values()) {
      if (w.proc.exited && !w.terminated && !w.killed)
        problems.push(`${w.node} exited on its own (${w.proc.exitStatus ?? '?'}); see ${w.proc.logPath}`);
      if (w.terminated && w.proc.exited && !w.killed && w.proc.exitStatus !== 'code 0')
        problems.push(`${w.node} did not leave cleanly (${w.proc.exitStatus ?? '?'}); see ${w.proc.logPath}`);
    }
    const byQueue = new Map<string, Interval[]>();
    for (const iv of o.intervals.values()) {
      if (iv.start === Infinity) problems.push(`${iv.q}: ${iv.node}#${iv.token} has lines but no start`);
      const list = byQueue.get(iv.q) ?? [];
      list.push(iv);
      byQueue.set(iv.q, list);
    }
    const show = (iv: Interval): string => `${iv.node}#${iv.token}[${iv.start}..${iv.stop ?? 'open'}]`;
    for (const [q, list] of byQueue) {
      list.sort((a, b) => a.start - b.start);
      for (let j = 1; j < list.length; j++) {
        const a = list[j - 1]!;
        const b = list[j]!;
        if (b.token <= a.token) problems.push(`${q}: fencing token did not grow: ${show(a)} then ${show(b)}`);
      }
      const byToken = [...list].sort((a, b) => a.token - b.token);
      for (let j = 1; j < byToken.length; j++) {
        const a = byToken[j - 1]!;
        const b = byToken[j]!;
        const end = this.#activeEnd(a);
        if (end > b.start) problems.push(`${q}: two owners at once: ${show(a)} (active until ${end}) and ${show(b)}`);
      }
      // No processing by an owner once a later owner has started.
      for (const a of list) {
        for (const b of list) {
          if (b.token <= a.token) continue;
          const late = a.msgs.filter((i) => i > b.start);
          if (late.length > 0)
            problems.push(`${q}: ${show(a)} processed ${late.length} message(s) after ${show(b)} started`);
        }
      }
      // Every processed message inside its own interval.
      for (const a of list) {
        const outside = a.msgs.filter((i) => i < a.start || (a.stop !== undefined && i > a.stop));
        if (outside.length > 0)
          problems.push(`${q}: ${show(a)} processed ${outside.length} message(s) outside its interval`);
      }
    }
    return problems;
  }

  /** Where an interval's activity ends: its stop, else its process's kill; if it was paused meanwhile, its last message. */
  #activeEnd(iv: Interval): number {
    const o = this.oracle;
    const paused = o.find(iv.node, ['paused'], iv.start, iv.stop ?? Infinity);
    if (paused !== undefined) return Math.max(iv.start, ...iv.msgs);
    if (iv.stop !== undefined) return iv.stop;
    const killed = o.find(iv.node, ['killed'], iv.start, Infinity);
    if (killed !== undefined) return killed.i;
    return Infinity;
  }

  checkSafety(): void {
    const problems = this.safetyProblems();
    if (problems.length > 0) {
      throw new Error(`oracle violations (${problems.length}):\n${problems.slice(0, 20).join('\n')}\n${this.where()}`);
    }
  }

  /**
   * queue → the open intervals (no stop yet) on live, running workers, with whether the broker confirmed their
   * consumer. A resumed worker's stale intervals count until it has stopped them.
   */
  owners(): Map<string, { node: string; consuming: boolean }[]> {
    this.oracle.refresh();
    const m = new Map<string, { node: string; consuming: boolean }[]>();
    for (const iv of this.oracle.intervals.values()) {
      if (iv.stop !== undefined) continue;
      const w = this.workers.get(iv.node);
      if (w === undefined || w.proc.exited || w.killed || w.paused) continue;
      m.set(iv.q, [...(m.get(iv.q) ?? []), { node: iv.node, consuming: iv.consuming !== undefined }]);
    }
    return m;
  }

  /** Every queue has exactly one owner among the live running workers, that owner is consuming, and `extra` holds. */
  converged(extra?: (perNode: Map<string, number>) => boolean): boolean {
    const owners = this.owners();
    const perNode = new Map<string, number>();
    for (const q of this.queues) {
      const o = owners.get(q);
      if (o?.length !== 1 || !o[0]!.consuming) return false;
      perNode.set(o[0]!.node, (perNode.get(o[0]!.node) ?? 0) + 1);
    }
    return extra === undefined || extra(perNode);
  }

  /** Wait until converged (and still so `stableMs` later); checks safety all along. */
  async waitConverged(step: string, extra?: (perNode: Map<string, number>) => boolean, stableMs = 0): Promise<number> {
    this.steps.push(step);
    const t0 = Date.now();
    let since: number | undefined;
    const waiting = {
      what: `step "${step}" to converge`,
      timeoutMs: STEP_BOUND_MS + stableMs,
      intervalMs: POLL_MS,
      context: () => this.where(),
    };
    // A safety violation is the failure to report, also when it is what kept the step from converging.
    await eventually(() => {
      this.checkSafety();
      if (!this.converged(extra)) {
        since = undefined;
        return false;
      }
      since ??= Date.now();
      return Date.now() - since >= stableMs;
    }, waiting).finally(() => this.checkSafety());
    return Date.now() - t0;
  }

  where(): string {
    const c = [...this.owners()]
      .map(([q, o]) => `${q.slice(-3)}:${o.map((x) => `${x.node}${x.consuming ? '' : '(waiting)'}`).join('+')}`)
      .sort()
      .join(' ');
    const procs = [...this.workers.values()]
      .map(
        (w) => `${w.node}(${w.proc.exited ? `exited ${w.proc.exitStatus ?? '?'}` : w.paused ? 'paused' : 'running'})`,
      )
      .join(', ');
    return `steps: ${this.steps.join(' → ')}\nowners now: ${c}\nworkers: ${procs}\nlogs: ${this.dir}`;
  }

  /** The end-of-run checks: completeness, duplicates (with causes), order. */
  finalProblems(published: ReadonlyMap<string, number>): { problems: string[]; duplicates: Map<string, number> } {
    const o = this.oracle;
    o.refresh();
    const problems: string[] = [];
    const duplicates = new Map<string, number>();
    const seen = new Map<string, Line[]>();
    for (const l of o.lines) {
      if (l.k !== 'msg') continue;
      const id = `${l.q}|${l.seq}`;
      seen.set(id, [...(seen.get(id) ?? []), l]);
    }
    for (const [q, count] of published) {
      let missing = 0;
      for (let s = 0; s < count; s++) if (!seen.has(`${q}|${s}`)) missing++;
      if (missing > 0) problems.push(`${q}: ${missing} of ${count} published messages never processed`);
    }
    for (const [id, recs] of seen) {
      for (let j = 1; j < recs.length; j++) {
        const r1 = recs[j - 1]!;
        const r2 = recs[j]!;
        if (r1.k !== 'msg') continue;
        const cause =
          o.find(r1.node, ['killed'], r1.i, r2.i)?.k ??
          o.find(r1.node, ['paused'], r1.i, r2.i)?.k ??
          o.find(r1.node, ['fenced', 'sessionLost'], r1.i, r2.i)?.k ??
          o.find(r1.node, ['connectionLost'], r1.i, r2.i)?.k ??
          (o.lines
            .slice(r1.i + 1, r2.i)
            .some((l) => l.k === 'ended' && l.node === r1.node && l.q === r1.q && l.token === r1.token && l.rh > 0)
            ? 'lost-lock'
            : undefined);
        if (cause === undefined) {
          problems.push(`${id}: processed twice (lines ${r1.i}, ${r2.i}) without a kill, pause or fence of ${r1.node}`);
        } else duplicates.set(cause, (duplicates.get(cause) ?? 0) + 1);
      }
    }
    const maxSeen = new Map<string, number>();
    let outOfOrder = 0;
    for (const l of o.lines) {
      if (l.k !== 'msg') continue;
      const max = maxSeen.get(l.q) ?? -1;
      if (!l.red && l.seq <= max) {
        if (outOfOrder++ < 10)
          problems.push(`${l.q}: first delivery of seq ${l.seq} (line ${l.i}) after seq ${max} was processed`);
      }
      maxSeen.set(l.q, Math.max(max, l.seq));
    }
    return { problems, duplicates };
  }
}

// ---------------------------------------------------------------- producer

/** Publishes {seq} to every queue each tick, with confirms; `published` counts what the broker confirmed. */
class Producer {
  readonly published = new Map<string, number>();
  #stop = false;
  #loop: Promise<void> | undefined;

  constructor(
    readonly ch: ConfirmChannel,
    readonly queues: readonly string[],
  ) {
    for (const q of queues) this.published.set(q, 0);
  }

  start(): void {
    this.#loop = (async () => {
      while (!this.#stop) {
        const next = new Map(this.published);
        for (const q of this.queues) {
          const seq = next.get(q)!;
          this.ch.sendToQueue(q, Buffer.from(JSON.stringify({ seq })), { messageId: `${q}:${seq}` });
          next.set(q, seq + 1);
        }
        await this.ch.waitForConfirms();
        for (const [q, n] of next) this.published.set(q, n);
        await sleep(PUBLISH_EVERY_MS);
      }
    })();
  }

  async stop(): Promise<void> {
    this.#stop = true;
    await this.#loop;
  }

  total(): number {
    return [...this.published.values()].reduce((a, b) => a + b, 0);
  }
}

// ---------------------------------------------------------------- scenarios

interface Env {
  dir: string;
  cluster: Cluster;
  producer: Producer;
}

let amqp: ChannelModel | undefined;
let channel: ConfirmChannel | undefined;
const declared: string[] = [];
const runId = `${process.pid}-${Date.now().toString(36)}`;

async function setUp(storeUrl: string, name: string, queueCount: number): Promise<Env> {
  const dir = mkdtempSync(join(tmpdir(), `rebalancer-rabbit-${name}-`));
  const queues = Array.from({ length: queueCount }, (_, i) => `rebalancer-test-${runId}-${name}-q${i}`);
  for (const q of queues) {
    // Not auto-delete: the queue must outlive its consumers' handoffs.
    await channel!.assertQueue(q, { durable: false, autoDelete: false });
    declared.push(q);
  }
  const cluster = new Cluster(storeUrl, `rabbit-${name}-${runId}`, dir, queues);
  const producer = new Producer(channel!, queues);
  return { dir, cluster, producer };
}

async function tearDown(env: Env | undefined, failed: boolean): Promise<void> {
  if (env === undefined) return;
  await env.producer.stop().catch(() => undefined);
  await env.cluster.killAll();
  if (!failed && process.env['REBALANCER_TEST_KEEP_LOGS'] === undefined && existsSync(env.dir))
    rmSync(env.dir, { recursive: true, force: true });
  else console.error(`consumer logs and oracle kept in ${env.dir}`);
}

let privateBroker: ServerHandle | undefined;

beforeAll(async () => {
  try {
    amqp = await connect(AMQP_URL);
  } catch {
    privateBroker = await startRabbitmq();
    AMQP_URL = privateBroker.url;
    amqp = await connect(AMQP_URL);
  }
  amqp.on('error', () => undefined);
  channel = await amqp.createConfirmChannel();
});

afterAll(async () => {
  for (const q of declared) await channel?.deleteQueue(q).catch(() => undefined);
  await amqp?.close().catch(() => undefined);
  await privateBroker?.stop();
});

const STORES: { name: string; start: () => Promise<ServerHandle> }[] = [
  { name: 'redis', start: () => startRedis() },
  { name: 'postgres', start: () => startPostgres() },
];

for (const store of STORES) {
  describe(`RabbitMQ consumer group on ${store.name}`, () => {
    let server: ServerHandle | undefined;
    let env: Env | undefined;
    let failed = true;

    beforeAll(async () => {
      server = await store.start();
      env = await setUp(server.url, store.name, 8);
    });

    afterAll(async () => {
      await tearDown(env, failed);
      await server?.stop().catch(() => undefined);
    });

    it('kill -9, join, graceful leave, SIGSTOP past the TTL: one consumer per queue, nothing lost, duplicates explained, order kept', async () => {
      const { cluster: c, producer } = env!;
      const timings: string[] = [];
      const step = async (
        name: string,
        extra?: (perNode: Map<string, number>) => boolean,
        stableMs = 0,
      ): Promise<void> => {
        timings.push(`${name} ${await c.waitConverged(name, extra, stableMs)}ms`);
      };
      producer.start();

      const [w1, w2, w3] = [c.spawnWorker(), c.spawnWorker(), c.spawnWorker()];
      await step('start 3 consumers', (n) => n.size === 3);

      await c.kill(w1!);
      await step('w1 killed (SIGKILL)', (n) => n.size === 2 && !n.has(w1!.node));

      const w4 = c.spawnWorker();
      await step('w4 joins', (n) => n.size === 3 && n.has(w4.node));

      // The broker connection of w4 drops: its consumers stop (unacked messages go back) and resume on a new one.
      const before = c.oracle.lines.length;
      w4.proc.signal('SIGUSR2');
      c.steps.push('w4 connection dropped');
      await eventually(
        () => (c.oracle.refresh(), c.oracle.find(w4.node, ['connectionLost'], before - 1, Infinity) !== undefined),
        { what: 'w4 to report its lost connection', timeoutMs: 5000, intervalMs: POLL_MS },
      );
      await step('w4 reconnected', (n) => n.size === 3 && n.has(w4.node), 500);

      await c.terminate(w2!);
      await step('w2 leaves (SIGTERM)', (n) => n.size === 2 && !n.has(w2!.node));

      // w3 holds queues now (two workers left, the placement balances them).
      await c.pause(w3!);
      // Its locks expire and move to w4, which waits: the broker still has w3's exclusive consumers.
      await eventually(
        () => {
          c.checkSafety();
          const owners = c.owners();
          return c.queues.every((q) => owners.get(q)?.length === 1 && owners.get(q)![0]!.node === w4.node);
        },
        {
          what: "w3's queues to move to w4",
          // Past w3's TTL, plus time for w4 itself to rejoin if a slow store (a loaded 2-core CI machine: postgres
          // took over 5 s for one transaction) cost it its session meanwhile.
          timeoutMs: TTL_MS * 2.5 + 15_000,
          intervalMs: POLL_MS,
          context: () => c.where(),
        },
      );
      c.steps.push('w3 frozen, its locks moved to w4');
      await sleep(TTL_MS);
      c.checkSafety();
      c.resume(w3!);
      await step('w3 resumed (SIGCONT)', (n) => n.size === 2, 1000);

      await producer.stop();
      c.steps.push('producer stopped');
      let final = c.finalProblems(producer.published);
      const draining = {
        what: 'every published message to be processed',
        timeoutMs: STEP_BOUND_MS,
        intervalMs: POLL_MS,
        context: () => `${final.problems.slice(0, 20).join('\n')}\n${c.where()}`,
      };
      await eventually(() => {
        c.checkSafety();
        final = c.finalProblems(producer.published);
        return final.problems.length === 0;
      }, draining).finally(() => c.checkSafety());
      expect(final.problems, `${final.problems.slice(0, 20).join('\n')}\n${c.where()}`).toEqual([]);

      await Promise.all(c.live().map((w) => c.terminate(w)));
      c.checkSafety();
      final = c.finalProblems(producer.published);
      expect(final.problems, final.problems.slice(0, 20).join('\n')).toEqual([]);
      const dups = [...final.duplicates].map(([cause, n]) => `${n} after ${cause}`).join(', ') || 'none';
      console.log(
        `[${store.name}] ${producer.total()} messages published and processed, ${c.oracle.lines.length} oracle lines, ` +
          `${c.oracle.intervals.size} ownership intervals; duplicates: ${dups}; ${timings.join(', ')}`,
      );
      failed = false;
    }, 150_000);
  });
}

describe('RabbitMQ consumer group: the checker catches a broken consumer', () => {
  let server: ServerHandle | undefined;
  let env: Env | undefined;
  let failed = true;

  beforeAll(async () => {
    server = await startRedis();
    env = await setUp(server.url, 'broken', 4);
  });

  afterAll(async () => {
    await tearDown(env, failed);
    await server?.stop().catch(() => undefined);
  });

  it('a consumer that keeps consuming after its queue was revoked is reported', async () => {
    const { cluster: c, producer } = env!;
    producer.start();
    const broken = { REBALANCER_TEST_BROKEN_CONSUMER: 'consume-after-revoke' };
    c.spawnWorker(broken);
    await c.waitConverged('broken w1 alone', (n) => n.size === 1);
    // A second consumer joins: half the queues move to it; the broken first one goes on consuming them.
    c.spawnWorker(broken);
    c.steps.push('w2 joins');
    let problems: string[] = [];
    const reporting = {
      what: 'the checker to report the broken consumer',
      timeoutMs: STEP_BOUND_MS,
      intervalMs: POLL_MS,
      context: () => `no violation reported\n${c.where()}`,
    };
    await eventually(() => {
      problems = c.safetyProblems();
      return problems.length > 0;
    }, reporting);
    expect(problems.join('\n')).toMatch(/two owners at once|after .* started|outside its interval/);
    console.log(`[broken] reported as expected: ${problems.slice(0, 3).join(' | ')}`);
    failed = false;
  }, 60_000);
});
