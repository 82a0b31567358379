/**
 * `npm run bench -- groups [--json] [--quick] [--backends a,b] [--reps N]
 *   [--sections failover,election,handoff,compute,stall,restart] [--cases 10x1000,100x1000]`
 *
 * Resource groups, seven sections, each figure as a ratio within this run:
 * 1. failover after kill -9 of a worker process, per backend, as a ratio to the session TTL;
 * 2. the same for etcd's own election (the etcd3 client's `election().campaign()`), the peer baseline;
 * 3. planned handoff (join, graceful leave) with many in-process members, with store round trips counted;
 * 4. the coordinator's placement compute against its targets;
 * 5. the longest store stall a member rides out without fencing, per backend, as a ratio to the TTL
 *    (`groups-stall.ts`).
 * 6. a store outage past the TTL (every session lost; Redis paused): starts per resource until stable, against the
 *    ideal 1.0, with the defaults of before (no debounce, no rejoin grace period) and of now.
 * 7. (only when named: `--sections scale`) many resources on many member processes, see groups-scale.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { place, type Assignment } from '../src/placement/index.js';
import { GroupAdmin } from '../src/runtime/groups/registry.js';
import { joinGroup, type GroupMember } from '../src/runtime/groups/member.js';
import type {
  RangeResult,
  Session,
  SessionOptions,
  Store,
  Txn,
  TxnResult,
  WatchHint,
  Watcher,
} from '../src/store/contract.js';
import { openStore } from '../src/store/open.js';
import { startEtcd, startPostgres, startRedis, startZookeeper, stopAllServers } from '../test/harness/servers.js';
import { stallSection, STALL_TTL_MS, type StallResult } from './groups-stall.js';
import { runScale, scaleReport, type ScaleCase } from './groups-scale.js';
import { round, table } from './stats.js';

const TTL_MS = 2000;
const WORKERS = 3;
const RESOURCES = 12;
const ALL = ['sqlite', 'postgres', 'redis', 'etcd', 'zookeeper'] as const;

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function log(msg: string): void {
  process.stderr.write(`groups bench: ${msg}\n`);
}

// ---- worker processes ------------------------------------------------------------------

interface WorkerEvent {
  ev: string;
  r?: string;
  t: number;
}

class Worker {
  readonly proc: ChildProcess;
  readonly exited: Promise<void>;
  #listeners = new Set<(e: WorkerEvent) => void>();

  constructor(
    readonly name: string,
    args: string[],
  ) {
    this.proc = spawn(process.execPath, ['--import', 'tsx', 'bench/groups-worker.ts', ...args], {
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
      for (const l of [...this.#listeners]) l(e);
    });
    this.proc.stderr!.on('data', (d: Buffer) => {
      if (process.env['BENCH_VERBOSE'] !== undefined) process.stderr.write(`[${name}] ${d.toString()}`);
    });
  }

  on(l: (e: WorkerEvent) => void): void {
    this.#listeners.add(l);
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

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(signal);
    await Promise.race([this.exited, sleep(5000)]);
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGKILL');
      await this.exited;
    }
  }
}

const allWorkers = new Set<Worker>();
function worker(name: string, args: string[]): Worker {
  const w = new Worker(name, args);
  allWorkers.add(w);
  void w.exited.then(() => allWorkers.delete(w));
  return w;
}
async function killAllWorkers(): Promise<void> {
  await Promise.all([...allWorkers].map((w) => w.kill('SIGKILL')));
}

// ---- 1. failover after kill -9 ------------------------------------------------------------------

interface Backend {
  url: string;
  close(): Promise<void>;
}

async function backend(name: string): Promise<Backend> {
  switch (name) {
    case 'sqlite': {
      const dir = mkdtempSync(join(tmpdir(), 'rebalancer-gbench-'));
      return {
        url: `sqlite:${join(dir, 'groups.db')}`,
        close: async () => rmSync(dir, { recursive: true, force: true }),
      };
    }
    case 'postgres': {
      const s = await startPostgres();
      return { url: s.url, close: () => s.stop() };
    }
    case 'redis': {
      const s = await startRedis();
      return { url: s.url, close: () => s.stop() };
    }
    case 'etcd': {
      const s = await startEtcd();
      return { url: s.url, close: () => s.stop() };
    }
    case 'zookeeper': {
      const s = await startZookeeper();
      return { url: s.url, close: () => s.stop() };
    }
  }
  throw new Error(`unknown backend ${name}`);
}

interface FailoverRun {
  ms: number;
  moved: number;
  /** Time from the kill until the first of the dead worker's resources started elsewhere. */
  firstMs: number;
}

async function failoverOnce(url: string, rep: number): Promise<FailoverRun> {
  const namespace = `gb${rep}x${Date.now().toString(36)}`;
  const group = 'bench';
  const admin = await openStore(url, { namespace });
  try {
    await new GroupAdmin(admin, group).add(Array.from({ length: RESOURCES }, (_, i) => `r${i}`));
  } finally {
    await admin.close();
  }
  const owner = new Map<string, string>();
  const workers: Worker[] = [];
  try {
    for (let i = 0; i < WORKERS; i++) {
      const w = worker(`w${i}`, ['member', url, namespace, group, `w${i}`, String(TTL_MS)]);
      w.on((e) => {
        if (e.ev === 'start' && e.r !== undefined) owner.set(e.r, w.name);
        if (e.ev === 'stop' && e.r !== undefined && owner.get(e.r) === w.name) owner.delete(e.r);
      });
      workers.push(w);
    }
    await Promise.all(workers.map((w) => w.waitFor((e) => e.ev === 'ready', 30_000)));
    // Wait until all run and the spread is settled (each worker holds its share).
    const settledBy = Date.now() + 30_000;
    for (;;) {
      const counts = workers.map((w) => [...owner.values()].filter((o) => o === w.name).length);
      if (owner.size === RESOURCES && counts.every((c) => c === RESOURCES / WORKERS)) break;
      if (Date.now() > settledBy) {
        if (owner.size === RESOURCES) break; // all run, unevenly: still a valid failover
        throw new Error(`only ${owner.size}/${RESOURCES} resources started within 30 s`);
      }
      await sleep(20);
    }
    await sleep(300); // let keep-alives and watches settle
    const counts = workers.map((w) => [...owner.values()].filter((o) => o === w.name).length);
    const victim = workers[counts.indexOf(Math.max(...counts))]!;
    const theirs = [...owner].filter(([, o]) => o === victim.name).map(([r]) => r);
    const survivors = workers.filter((w) => w !== victim);
    const startedAt = new Map<string, number>();
    const done = new Promise<void>((resolve) => {
      for (const w of survivors) {
        w.on((e) => {
          if (e.ev !== 'start' || e.r === undefined || !theirs.includes(e.r) || startedAt.has(e.r)) return;
          startedAt.set(e.r, e.t);
          if (startedAt.size === theirs.length) resolve();
        });
      }
    });
    const t0 = Date.now();
    victim.proc.kill('SIGKILL');
    const timeout = TTL_MS * 10;
    await Promise.race([
      done,
      sleep(timeout).then(() => {
        throw new Error(`failover not complete after ${timeout} ms (${startedAt.size}/${theirs.length})`);
      }),
    ]);
    const times = [...startedAt.values()];
    return { ms: Math.max(...times) - t0, firstMs: Math.min(...times) - t0, moved: theirs.length };
  } finally {
    await Promise.all(workers.map((w) => w.kill('SIGKILL')));
  }
}

interface FailoverResult {
  runs: FailoverRun[];
  medianMs: number;
  medianFirstMs: number;
  ratioToTtl: number;
}

async function failover(name: string, reps: number, deadline: number): Promise<FailoverResult> {
  const b = await backend(name);
  try {
    const runs: FailoverRun[] = [];
    for (let i = 0; i < reps; i++) {
      if (i > 0 && Date.now() > deadline) break;
      runs.push(await failoverOnce(b.url, i));
      log(`  ${name} failover #${i + 1}: ${runs.at(-1)!.ms} ms`);
    }
    const m = median(runs.map((r) => r.ms));
    return {
      runs,
      medianMs: m,
      medianFirstMs: median(runs.map((r) => r.firstMs)),
      ratioToTtl: round(m / TTL_MS, 2),
    };
  } finally {
    await b.close();
  }
}

// ---- 2. etcd election peer ------------------------------------------------------------------

interface ElectionResult {
  runs: number[];
  medianMs: number;
  ratioToTtl: number;
}

async function etcdElection(reps: number, deadline: number): Promise<ElectionResult> {
  const s = await startEtcd();
  try {
    const runs: number[] = [];
    for (let i = 0; i < reps; i++) {
      if (i > 0 && Date.now() > deadline) break;
      const name = `bench-el-${i}-${Date.now()}`;
      const hp = `${s.host}:${s.port}`;
      const ttlS = String(Math.round(TTL_MS / 1000));
      // a first, so that it is the leader; b then queues behind it.
      const a = worker('el-a', ['election', hp, name, 'a', ttlS]);
      let b: Worker | undefined;
      try {
        await a.waitFor((e) => e.ev === 'elected', 30_000);
        b = worker('el-b', ['election', hp, name, 'b', ttlS]);
        await b.waitFor((e) => e.ev === 'ready', 30_000);
        await sleep(500); // b's campaign is queued behind a
        const bElected = b.waitFor((e) => e.ev === 'elected', TTL_MS * 10);
        const t0 = Date.now();
        a.proc.kill('SIGKILL');
        const e = await bElected;
        runs.push(e.t - t0);
        log(`  etcd election #${i + 1}: ${runs.at(-1)} ms`);
      } finally {
        await Promise.all([a.kill(), b?.kill()]);
      }
    }
    const m = median(runs);
    return { runs, medianMs: m, ratioToTtl: round(m / TTL_MS, 2) };
  } finally {
    await s.stop();
  }
}

// ---- 3. planned handoff ------------------------------------------------------------------

interface Counts {
  txn: number;
  get: number;
  range: number;
  keepAlive: number;
  watchHints: number;
  /** Transactions reading several whole prefixes (the coordinator's full group view). */
  groupReads: number;
}

const zero = (): Counts => ({ txn: 0, get: 0, range: 0, keepAlive: 0, watchHints: 0, groupReads: 0 });

/** A Store that delegates everything and counts its round trips (and the watch hints it delivers). */
class CountingStore implements Store {
  readonly counts: Counts = zero();
  constructor(readonly inner: Store) {}
  get backend(): string {
    return this.inner.backend;
  }
  get namespace(): string {
    return this.inner.namespace;
  }
  get limits(): Store['limits'] {
    return this.inner.limits;
  }
  get clock(): Store['clock'] {
    return this.inner.clock;
  }
  get dataLosses(): number {
    return this.inner.dataLosses;
  }
  verifyData(): Promise<void> {
    return this.inner.verifyData();
  }
  async openSession(options: SessionOptions): Promise<Session> {
    const s = await this.inner.openSession(options);
    // The session's own keep-alive loop calls this.keepAlive(): count by shadowing the method on the
    // instance (the backend recognises its sessions by identity, so no proxy object).
    const orig = s.keepAlive.bind(s);
    const counts = this.counts;
    (s as { keepAlive: () => Promise<void> }).keepAlive = () => {
      counts.keepAlive++;
      return orig();
    };
    return s;
  }
  get(key: string): ReturnType<Store['get']> {
    this.counts.get++;
    return this.inner.get(key);
  }
  range(prefix: string): Promise<RangeResult> {
    this.counts.range++;
    return this.inner.range(prefix);
  }
  txn(txn: Txn): Promise<TxnResult> {
    this.counts.txn++;
    if (txn.then.filter((o) => o.op === 'range').length >= 3) this.counts.groupReads++;
    return this.inner.txn(txn);
  }
  watch(prefix: string, onHint: (hint: WatchHint) => void): Promise<Watcher> {
    return this.inner.watch(prefix, (h) => {
      this.counts.watchHints++;
      onHint(h);
    });
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

function sumCounts(stores: readonly CountingStore[]): Counts {
  const c = zero();
  for (const s of stores) for (const k of Object.keys(c) as (keyof Counts)[]) c[k] += s.counts[k];
  return c;
}
function diff(a: Counts, b: Counts): Counts {
  const c = zero();
  for (const k of Object.keys(c) as (keyof Counts)[]) c[k] = a[k] - b[k];
  return c;
}
const trips = (c: Counts): number => c.txn + c.get + c.range + c.keepAlive;

interface HandoffCase {
  nodes: number;
  resources: number;
  /** Initial convergence: all resources running. */
  setupMs: number;
  join?: { ms: number; newNodeStartedMs: number; moved: number; trips: number; counts: Counts; phases: Phases };
  leave?: { ms: number; leaveReturnedMs: number; moved: number; trips: number; counts: Counts; phases: Phases };
  /** One get on the admin client before any member joined. */
  idleRoundTripMs?: number;
  /** The same, measured in the settled group (1.5 s after convergence): the bench process's own load shows here. */
  rawRoundTripMs?: number;
  /** Round trips per second of all members in the settled group (nothing changing). */
  settledTripsPerS?: number;
  settledHintsPerS?: number;
  error?: string;
}

async function handoffCase(
  url: string,
  nodes: number,
  resources: number,
  setupBudgetMs: number,
  stepBudgetMs: number,
): Promise<HandoffCase> {
  const namespace = `gh${nodes}x${resources}x${Date.now().toString(36)}`;
  const group = 'bench';
  const stores: CountingStore[] = [];
  const members = new Map<string, GroupMember>();
  const owner = new Map<string, string>();
  const out: HandoffCase = { nodes, resources, setupMs: Number.NaN };
  let until = Date.now() + setupBudgetMs;
  const waitUntil = async (what: string, pred: () => boolean): Promise<void> => {
    while (!pred()) {
      if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
      await sleep(5);
    }
  };
  const events: { kind: string; node: string; generation: number }[] = [];
  /** performance.now() of each assigned / revoked / released event, for the phase timeline. */
  const timeline: { kind: 'assigned' | 'revoked' | 'released'; node: string; resource: string; at: number }[] = [];
  let coordStartedAt = Number.NaN;
  const handler = async ({ signal }: { signal: AbortSignal }): Promise<void> => {
    await new Promise<void>((resolve) => {
      if (signal.aborted) resolve();
      else signal.addEventListener('abort', () => resolve(), { once: true });
    });
  };
  const addMember = async (id: string): Promise<GroupMember> => {
    const s = new CountingStore(await openStore(url, { namespace }));
    stores.push(s);
    const m = await joinGroup({
      store: s,
      group,
      node: { id },
      sessionTtlMs: TTL_MS * 5,
      reconcileIntervalMs: 1000,
      drainTimeoutMs: 30_000,
      // The handoff's own cost, without the debounce that holds a join's moves back (500 ms by default).
      rebalanceDebounceMs: 0,
      handler,
    });
    m.on('assigned', ({ resource }) => {
      owner.set(resource, id);
      timeline.push({ kind: 'assigned', node: id, resource, at: performance.now() });
    });
    m.on('released', ({ resource }) => {
      if (owner.get(resource) === id) owner.delete(resource);
      timeline.push({ kind: 'released', node: id, resource, at: performance.now() });
    });
    m.on('revoked', ({ resource }) => {
      if (owner.get(resource) === id) owner.delete(resource);
      timeline.push({ kind: 'revoked', node: id, resource, at: performance.now() });
    });
    m.on('rebalanceStarted', ({ generation }) => {
      events.push({ kind: 'started', node: id, generation });
      coordStartedAt = performance.now();
    });
    m.on('rebalanceCompleted', ({ generation }) => events.push({ kind: 'completed', node: id, generation }));
    members.set(id, m);
    return m;
  };
  const admin = await openStore(url, { namespace });
  try {
    {
      const r0 = performance.now();
      for (let i = 0; i < 50; i++) await admin.get('bench/missing');
      out.idleRoundTripMs = round((performance.now() - r0) / 50);
    }
    const t0 = Date.now();
    await new GroupAdmin(admin, group).add(Array.from({ length: resources }, (_, i) => `res-${i}`));
    // Join in parallel batches (one process, each member with its own store client).
    for (let i = 0; i < nodes; i += 10) {
      await Promise.all(
        Array.from({ length: Math.min(10, nodes - i) }, (_, j) => addMember(`n${String(i + j).padStart(4, '0')}`)),
      );
    }
    const share = Math.floor(resources / nodes);
    const counts = (): Map<string, number> => {
      const c = new Map<string, number>();
      for (const o of owner.values()) c.set(o, (c.get(o) ?? 0) + 1);
      return c;
    };
    await waitUntil('initial convergence', () => {
      if (owner.size !== resources) return false;
      const c = counts();
      return [...members.keys()].every((id) => (c.get(id) ?? 0) >= share);
    });
    out.setupMs = Date.now() - t0;
    await sleep(1500); // quiet down: trailing reconciles and rebalanceCompleted
    // raw round trip: a get on the admin client, and the load of the settled group over 2 s
    const quiet0 = sumCounts(stores);
    const q0 = performance.now();
    const r0 = performance.now();
    for (let i = 0; i < 50; i++) await admin.get('bench/missing');
    out.rawRoundTripMs = round((performance.now() - r0) / 50);
    await sleep(Math.max(0, 2000 - (performance.now() - q0)));
    const quiet = diff(sumCounts(stores), quiet0);
    const quietS = (performance.now() - q0) / 1000;
    out.settledTripsPerS = round(trips(quiet) / quietS, 1);
    out.settledHintsPerS = round(quiet.watchHints / quietS, 1);
    until = Date.now() + stepBudgetMs;

    // (a) join one node
    {
      const newId = 'zz-new';
      const before = sumCounts(stores);
      const evFrom = events.length;
      const logFrom = timeline.length;
      const joinCall = addMember(newId);
      const m = await joinCall;
      const tJoined = performance.now();
      const startedGen = await (async () => {
        await waitUntil('rebalanceStarted after join', () => events.slice(evFrom).some((e) => e.kind === 'started'));
        return events.slice(evFrom).find((e) => e.kind === 'started')!.generation;
      })();
      let newNodeDone = Number.NaN;
      const target = Math.floor(resources / (nodes + 1));
      void (async () => {
        while (Date.now() < until) {
          if ((counts().get(newId) ?? 0) >= target) {
            newNodeDone = performance.now() - tJoined;
            return;
          }
          await sleep(2);
        }
      })();
      await waitUntil('rebalanceCompleted after join', () =>
        events.slice(evFrom).some((e) => e.kind === 'completed' && e.generation >= startedGen),
      );
      const ms = performance.now() - tJoined;
      await waitUntil('new node started its share', () => !Number.isNaN(newNodeDone));
      const c = diff(sumCounts(stores), before);
      out.join = {
        ms: round(ms, 1),
        newNodeStartedMs: round(newNodeDone, 1),
        moved: counts().get(newId) ?? 0,
        trips: trips(c),
        counts: c,
        phases: phases(timeline, logFrom, tJoined, coordStartedAt),
      };
      void m;
      await sleep(1500);
    }

    // (b) graceful leave of one node that is not the coordinator
    until = Date.now() + stepBudgetMs;
    {
      const leaver = [...members.values()].find((m) => !m.isCoordinator && m.nodeId !== 'zz-new')!;
      const theirs = [...owner].filter(([, o]) => o === leaver.nodeId).map(([r]) => r);
      const before = sumCounts(stores);
      const logFrom = timeline.length;
      const t0l = performance.now();
      let leaveReturned = Number.NaN;
      const leaving = leaver.leave().then(() => {
        leaveReturned = performance.now() - t0l;
      });
      await waitUntil('resources of the leaver running elsewhere', () =>
        theirs.every((r) => {
          const o = owner.get(r);
          return o !== undefined && o !== leaver.nodeId;
        }),
      );
      const ms = performance.now() - t0l;
      await leaving;
      const c = diff(sumCounts(stores), before);
      members.delete(leaver.nodeId);
      out.leave = {
        ms: round(ms, 1),
        leaveReturnedMs: round(leaveReturned, 1),
        moved: theirs.length,
        trips: trips(c),
        counts: c,
        phases: phases(timeline, logFrom, t0l, coordStartedAt),
      };
    }
  } catch (err) {
    out.error = err instanceof Error ? err.message : String(err);
  } finally {
    // Close stores directly (sessions are revoked); leave() of 100 nodes one by one would take long.
    await Promise.all(stores.map((s) => s.close().catch(() => undefined)));
    await admin.close();
  }
  return out;
}

/** Phase timeline of one step, ms after its start: grants written, first/last revoke, release and start. */
interface Phases {
  grantsWritten: number | undefined;
  firstRevoked: number | undefined;
  lastReleased: number | undefined;
  firstStarted: number | undefined;
  lastStarted: number | undefined;
}

function phases(timeline: readonly { kind: string; at: number }[], from: number, t0: number, grantsAt: number): Phases {
  const rel = (x: number): number | undefined => (Number.isFinite(x) ? round(x - t0, 1) : undefined);
  const of = (k: string): number[] =>
    timeline
      .slice(from)
      .filter((e) => e.kind === k)
      .map((e) => e.at);
  const rv = of('revoked');
  const rl = of('released');
  const st = of('assigned');
  return {
    grantsWritten: grantsAt >= t0 ? rel(grantsAt) : undefined,
    firstRevoked: rel(Math.min(...rv)),
    lastReleased: rel(Math.max(...rl)),
    firstStarted: rel(Math.min(...st)),
    lastStarted: rel(Math.max(...st)),
  };
}

// ---- 4. coordinator compute ------------------------------------------------------------------

interface ComputeCase {
  resources: number;
  nodes: number;
  targetMs: number;
  freshMs: number;
  afterLeaveMs: number;
  moved: number;
}

function computeCase(resources: number, nodes: number, targetMs: number, runs: number): ComputeCase {
  const ns = Array.from({ length: nodes }, (_, i) => ({ id: `node-${i}` }));
  const rs = Array.from({ length: resources }, (_, i) => `queue-${i}`);
  let prev: Assignment = new Map();
  const fresh: number[] = [];
  for (let i = 0; i < runs + 1; i++) {
    const t0 = performance.now();
    prev = place('sticky-balanced', { nodes: ns, resources: rs });
    if (i > 0) fresh.push(performance.now() - t0); // first run warms up
  }
  const remaining = ns.slice(1);
  const after: number[] = [];
  let next: Assignment = new Map();
  for (let i = 0; i < runs + 1; i++) {
    const t0 = performance.now();
    next = place('sticky-balanced', { nodes: remaining, resources: rs, current: prev });
    if (i > 0) after.push(performance.now() - t0);
  }
  let moved = 0;
  for (const [r, o] of next) if (prev.get(r) !== o) moved++;
  return {
    resources,
    nodes,
    targetMs,
    freshMs: round(median(fresh), 2),
    afterLeaveMs: round(median(after), 2),
    moved,
  };
}

// ---- 5. store outage past the TTL ------------------------------------------------------------------

const STORM_WORKERS = 5;
const STORM_RESOURCES = 20;

interface StormRun {
  /** Handler starts per resource from the store's return until stable (ideal 1.0: each starts once, somewhere). */
  movesPerResource: number;
  maxMoves: number;
  /** From the store's return until the last start. */
  stableMs: number;
}

interface StormResult {
  config: string;
  runs: StormRun[];
  medianMovesPerResource: number;
  medianStableMs: number;
}

/**
 * N worker processes share M resources on a private Redis; Redis is paused (SIGSTOP) for 2.5 × TTL, so every
 * session expires on it (the data stays: grants and resources are kept) and every worker stops its handlers; then
 * it resumes. Count handler starts per resource until nothing has started for 2 × TTL and every resource runs.
 */
async function stormOnce(
  server: { url: string; pause(): void; resume(): void },
  rep: number,
  settings: readonly string[],
): Promise<StormRun> {
  const namespace = `gs${rep}x${Date.now().toString(36)}`;
  const group = 'bench';
  const names = Array.from({ length: STORM_RESOURCES }, (_, i) => `r${i}`);
  const admin = await openStore(server.url, { namespace });
  try {
    await new GroupAdmin(admin, group).add(names);
  } finally {
    await admin.close();
  }
  const owner = new Map<string, string>();
  const starts: { r: string; t: number }[] = [];
  const workers: Worker[] = [];
  try {
    for (let i = 0; i < STORM_WORKERS; i++) {
      const w = worker(`s${i}`, ['member', server.url, namespace, group, `s${i}`, String(TTL_MS), ...settings]);
      w.on((e) => {
        if (e.ev === 'start' && e.r !== undefined) {
          owner.set(e.r, w.name);
          starts.push({ r: e.r, t: e.t });
        }
        if (e.ev === 'stop' && e.r !== undefined && owner.get(e.r) === w.name) owner.delete(e.r);
      });
      workers.push(w);
    }
    await Promise.all(workers.map((w) => w.waitFor((e) => e.ev === 'ready', 30_000)));
    const stable = async (what: string): Promise<void> => {
      const by = Date.now() + 60_000;
      for (;;) {
        const last = starts.at(-1)?.t ?? 0;
        if (owner.size === STORM_RESOURCES && Date.now() - last >= 2 * TTL_MS) return;
        if (Date.now() > by) throw new Error(`${what}: not stable within 60 s (${owner.size}/${STORM_RESOURCES} run)`);
        await sleep(50);
      }
    };
    await stable('before the outage');
    server.pause();
    await sleep(2.5 * TTL_MS);
    const before = starts.length;
    const t0 = Date.now();
    server.resume();
    await stable('after the outage');
    const after = starts.slice(before);
    const per = new Map<string, number>();
    for (const s of after) per.set(s.r, (per.get(s.r) ?? 0) + 1);
    return {
      movesPerResource: round(after.length / STORM_RESOURCES, 2),
      maxMoves: Math.max(0, ...per.values()),
      stableMs: Math.max(0, (after.at(-1)?.t ?? t0) - t0),
    };
  } finally {
    server.resume();
    await Promise.all(workers.map((w) => w.kill('SIGKILL')));
  }
}

async function storms(reps: number): Promise<StormResult[]> {
  const server = await startRedis();
  try {
    const out: StormResult[] = [];
    for (const [config, settings] of [
      ['before: debounce 0, no rejoin grace', ['0', '0']],
      ['now: the defaults', []],
    ] as const) {
      const runs: StormRun[] = [];
      for (let i = 0; i < reps; i++) {
        runs.push(await stormOnce(server, i, settings));
        log(`  outage, ${config} #${i + 1}: ${JSON.stringify(runs.at(-1))}`);
      }
      out.push({
        config,
        runs,
        medianMovesPerResource: median(runs.map((r) => r.movesPerResource)),
        medianStableMs: median(runs.map((r) => r.stableMs)),
      });
    }
    return out;
  } finally {
    await server.stop();
  }
}

// ---- main ------------------------------------------------------------------

export async function run(args: string[]): Promise<void> {
  const json = args.includes('--json');
  const quick = args.includes('--quick');
  const bArg = args.indexOf('--backends');
  const backends = bArg >= 0 ? (args[bArg + 1] ?? '').split(',') : [...ALL];
  const rArg = args.indexOf('--reps');
  const reps = rArg >= 0 ? Number(args[rArg + 1]) : quick ? 1 : 3;
  const sArg = args.indexOf('--sections');
  const sections = new Set(
    sArg >= 0 ? (args[sArg + 1] ?? '').split(',') : ['failover', 'election', 'handoff', 'compute', 'stall', 'restart'],
  );
  const stalls: Record<string, StallResult | { error: string }> = {};
  const cArg = args.indexOf('--cases');
  const started = Date.now();
  const failovers: Record<string, FailoverResult | { error: string }> = {};
  let election: ElectionResult | { error: string } = { error: 'not run' };
  const handoff: Record<string, HandoffCase[]> = {};
  let compute: ComputeCase[] = [];
  let restart: StormResult[] | { error: string } = [];
  let scale: ScaleCase[] = [];
  const onSignal = (): void => {
    void killAllWorkers().finally(() => stopAllServers().finally(() => process.exit(130)));
  };
  process.once('SIGINT', onSignal);
  try {
    // 4 first: pure CPU, before the machine is busy with servers.
    if (sections.has('compute')) {
      log('coordinator compute…');
      compute = [computeCase(10_000, 100, 5, quick ? 5 : 9), computeCase(100_000, 1000, 50, quick ? 3 : 5)];
    }

    const deadline = started + (quick ? 40_000 : 150_000);
    for (const b of sections.has('failover') ? backends : []) {
      log(`failover after kill -9: ${b}…`);
      try {
        failovers[b] = await failover(b, reps, deadline);
      } catch (err) {
        failovers[b] = { error: err instanceof Error ? err.message : String(err) };
      }
    }
    if (sections.has('election')) {
      log('etcd election peer…');
      try {
        election = await etcdElection(reps, deadline + 20_000);
      } catch (err) {
        election = { error: err instanceof Error ? err.message : String(err) };
      }
    }

    const cases: [number, number][] =
      cArg >= 0
        ? (args[cArg + 1] ?? '').split(',').map((c) => c.split('x').map(Number) as [number, number])
        : quick
          ? [
              [10, 1000],
              [100, 1000],
            ]
          : [
              [10, 1000],
              [100, 1000],
              [10, 10_000],
              [100, 10_000],
            ];
    const handoffBackends = quick ? ['redis', 'sqlite'] : ['redis'];
    for (const hb of sections.has('handoff') ? handoffBackends : []) {
      const be = await backend(hb);
      try {
        handoff[hb] = [];
        for (const [n, r] of cases) {
          log(`planned handoff on ${hb}: ${n} nodes × ${r} resources…`);
          handoff[hb].push(await handoffCase(be.url, n, r, quick ? 30_000 : 90_000, quick ? 20_000 : 30_000));
        }
      } finally {
        await be.close();
      }
    }
    for (const b of sections.has('stall') ? backends : []) {
      log(`longest stall survived: ${b}…`);
      const dir = mkdtempSync(join(tmpdir(), 'rebalancer-gstall-'));
      try {
        stalls[b] = await stallSection(b, dir, quick ? 3 : 4);
      } catch (err) {
        stalls[b] = { error: err instanceof Error ? err.message : String(err) };
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
    if (sections.has('restart')) {
      log('store outage past the TTL (Redis paused)…');
      try {
        restart = await storms(quick ? 1 : reps);
      } catch (err) {
        restart = { error: err instanceof Error ? err.message : String(err) };
      }
    }
    if (sections.has('scale')) {
      const arg = (name: string): string | undefined => {
        const i = args.indexOf(name);
        return i >= 0 ? args[i + 1] : undefined;
      };
      const sizes = (arg('--scale') ?? (quick ? '10000' : '10000,30000,100000')).split(',').map(Number);
      scale = await runScale(
        bArg >= 0 ? backends : ['sqlite', 'redis'],
        sizes,
        Number(arg('--scale-nodes') ?? 10),
        Number(arg('--scale-timeout-s') ?? 120) * 1000,
        log,
      );
    }
  } finally {
    process.off('SIGINT', onSignal);
    await killAllWorkers();
    await stopAllServers();
  }
  if (sections.size === 1 && sections.has('scale')) {
    process.stdout.write(`${scaleReport(scale)}\n`);
    if (json) process.stdout.write(`${JSON.stringify({ bench: 'groups', scale, totalMs: Date.now() - started })}\n`);
    if (scale.some((c) => c.error !== undefined || c.convergedMs === undefined)) process.exitCode = 1;
    return;
  }

  // ---- report
  const out: string[] = [];
  out.push(`1. Failover after kill -9 (${WORKERS} worker processes, ${RESOURCES} resources, session TTL ${TTL_MS} ms)`);
  const f: string[][] = [
    ['backend', 'runs', 'first moved (median)', 'all moved (median)', 'ratio to TTL', 'runs (ms)'],
  ];
  for (const [b, r] of Object.entries(failovers)) {
    if ('error' in r) f.push([b, 'ERROR', r.error.slice(0, 70), '', '', '']);
    else
      f.push([
        b,
        String(r.runs.length),
        `${r.medianFirstMs} ms`,
        `${r.medianMs} ms`,
        `${r.ratioToTtl}×`,
        r.runs.map((x) => x.ms).join(', '),
      ]);
  }
  if (!sections.has('election')) {
    // not run
  } else if ('error' in election) f.push(['etcd election (peer)', 'ERROR', election.error.slice(0, 70), '', '', '']);
  else
    f.push([
      'etcd election (peer)',
      String(election.runs.length),
      '',
      `${election.medianMs} ms`,
      `${election.ratioToTtl}×`,
      election.runs.join(', '),
    ]);
  out.push(table(f));
  out.push(
    'ratio to TTL: time from SIGKILL until every resource of the killed worker (or, for the peer, the new leader) ' +
      'has started elsewhere, over the session TTL. Keep-alives go out every TTL/5, so the server expires a killed ' +
      "process's session between 0.8× and 1.0× TTL after the kill: that window is the floor for any lease-based failover; " +
      'what lies above it is detection (watch/poll) and the acquire path',
  );
  out.push('');
  out.push('2. Planned handoff (one process, one store client per member, resource barrier, debounce 0)');
  const h: string[][] = [
    [
      'backend',
      'nodes×resources',
      'setup',
      'join: completed',
      'new node started',
      'moved',
      'round trips',
      'leave: moved away',
      'leave() returned',
      'moved',
      'round trips',
      'rt idle/settled',
      'settled trips/s',
    ],
  ];
  for (const [b, cs] of Object.entries(handoff)) {
    for (const c of cs) {
      const j = c.join;
      const l = c.leave;
      h.push([
        b,
        `${c.nodes}×${c.resources}`,
        Number.isNaN(c.setupMs) ? '-' : `${c.setupMs} ms`,
        j ? `${j.ms} ms` : (c.error?.slice(0, 40) ?? '-'),
        j ? `${j.newNodeStartedMs} ms` : '',
        j ? String(j.moved) : '',
        j ? `${j.trips} (${j.counts.txn} txn)` : '',
        l ? `${l.ms} ms` : j ? (c.error?.slice(0, 40) ?? '-') : '',
        l ? `${l.leaveReturnedMs} ms` : '',
        l ? String(l.moved) : '',
        l ? `${l.trips} (${l.counts.txn} txn)` : '',
        `${c.idleRoundTripMs ?? '-'}/${c.rawRoundTripMs ?? '-'} ms`,
        c.settledTripsPerS !== undefined ? `${c.settledTripsPerS} (${c.settledHintsPerS} hints/s)` : '',
      ]);
    }
  }
  out.push(table(h));
  const ph: string[][] = [
    [
      'backend',
      'nodes×resources',
      'step',
      'grants written',
      '1st revoke',
      'last release',
      '1st start',
      'last start',
      'watch hints',
      'full group reads',
    ],
  ];
  const fmt = (x: number | undefined): string => (x === undefined ? '-' : `${x}`);
  for (const [b, cs] of Object.entries(handoff)) {
    for (const c of cs) {
      for (const [step, x] of [
        ['join', c.join],
        ['leave', c.leave],
      ] as const) {
        if (x === undefined) continue;
        const p = x.phases;
        ph.push([
          b,
          `${c.nodes}×${c.resources}`,
          step,
          fmt(p.grantsWritten),
          fmt(p.firstRevoked),
          fmt(p.lastReleased),
          fmt(p.firstStarted),
          fmt(p.lastStarted),
          String(x.counts.watchHints),
          String(x.counts.groupReads),
        ]);
      }
    }
  }
  out.push('phases (ms after joinGroup resolved / leave() was called):');
  out.push(table(ph));
  out.push(
    'round trips: txn + get + range + keep-alive calls of all members during the step (watch hints not counted); ' +
      'rt idle/settled: one get on a separate client before the members joined / in the settled group (the bench ' +
      "process's own event-loop load shows in the second); settled trips/s: store calls of all members while nothing changes",
  );
  out.push('');
  out.push("3. Coordinator compute: place('sticky-balanced'), median");
  const c: string[][] = [['resources×nodes', 'fresh', 'after one node leaves', 'moved', 'target', 'ratio to target']];
  for (const x of compute) {
    c.push([
      `${x.resources}×${x.nodes}`,
      `${x.freshMs} ms`,
      `${x.afterLeaveMs} ms`,
      String(x.moved),
      `${x.targetMs} ms`,
      `${round(Math.max(x.freshMs, x.afterLeaveMs) / x.targetMs, 2)}×`,
    ]);
  }
  out.push(table(c));
  out.push('ratio to target: the slower of the two placements over the target (≤ 1× meets it)');
  if (sections.has('stall')) {
    out.push('');
    out.push(
      `4. Longest store stall survived without fencing (session TTL ${STALL_TTL_MS} ms, etcd 2000 ms; margin TTL/5; server SIGSTOPped, ` +
        'SQLite: write lock held by another connection)',
    );
    const st: string[][] = [
      [
        'backend',
        'phase',
        'survived',
        'fenced at',
        'promised',
        'fenced after the answer',
        'trials (ratio: ok/FENCED/LOST)',
        'time',
      ],
    ];
    for (const [b, r] of Object.entries(stalls)) {
      if ('error' in r) {
        st.push([b, 'ERROR', r.error.slice(0, 70), '', '', '', '', '']);
        continue;
      }
      for (const [phase, x] of [
        ['after an ack', r.afterAck],
        ['catches a keep-alive', r.catchesKeepAlive],
      ] as const) {
        st.push([
          b,
          phase,
          `${x.survivedRatio}×`,
          x.fencedRatio === undefined ? '-' : `${x.fencedRatio}×`,
          `${x.boundRatio}×`,
          `${x.fencedAfterResume}/${x.trials.length}`,
          x.trials.map((t) => `${t.ratio}:${t.lost ? 'LOST' : t.fenced ? 'FENCED' : 'ok'}`).join(' '),
          phase === 'after an ack' ? `${Math.round(r.totalMs / 1000)} s (TTL ${r.ttlMs} ms)` : '',
        ]);
      }
    }
    out.push(table(st));
    out.push(
      'survived: the longest stall (over the TTL) after which the member had not fenced, from the stall until 0.7 TTL ' +
        'after it; fenced at: the shortest that fenced or lost the session. promised: TTL × 0.99 − margin (after an ' +
        'ack), one beat (TTL/5) less when the stall catches a keep-alive in flight; a round trip less in both. A bisection ' +
        'of a few steps: ± one step. fenced after the answer: trials in which the member fenced once the store had ' +
        'answered again (before keep-alives were scheduled from the deadline: 5 of the 6 trials that fenced on Redis, ' +
        'about TTL/2 after the answer; after: 0)',
    );
  }
  if (sections.has('restart')) {
    out.push('');
    out.push(
      `5. Store outage past the TTL (Redis paused ${2.5 * TTL_MS} ms: every session lost, data kept; ` +
        `${STORM_WORKERS} worker processes, ${STORM_RESOURCES} resources, TTL ${TTL_MS} ms)`,
    );
    const st: string[][] = [
      ['settings', 'runs', 'starts per resource (median)', 'ratio to ideal', 'max', 'stable after (median)', 'runs'],
    ];
    if ('error' in restart) st.push(['ERROR', restart.error.slice(0, 70), '', '', '', '', '']);
    else
      for (const x of restart)
        st.push([
          x.config,
          String(x.runs.length),
          String(x.medianMovesPerResource),
          `${round(x.medianMovesPerResource / 1, 2)}×`,
          String(Math.max(...x.runs.map((r) => r.maxMoves))),
          `${x.medianStableMs} ms`,
          x.runs.map((r) => `${r.movesPerResource}/${r.stableMs} ms`).join(', '),
        ]);
    out.push(table(st));
    out.push(
      'starts per resource: handler starts from the resume until stable (every resource runs, nothing started for ' +
        '2 × TTL), over the resources; ideal 1.0 (every handler stopped during the outage starts once, somewhere); ' +
        'stable after: from the resume to the last start',
    );
  }
  if (sections.has('scale')) {
    out.push('');
    out.push(`6. ${scaleReport(scale)}`);
  }
  process.stdout.write(`${out.join('\n')}\n`);
  if (json) {
    process.stdout.write(
      `${JSON.stringify({ bench: 'groups', quick, ttlMs: TTL_MS, failover: failovers, etcdElection: election, handoff, compute, stall: stalls, restart, scale, totalMs: Date.now() - started })}\n`,
    );
  }
  const anyError =
    Object.values(failovers).some((r) => 'error' in r) ||
    (sections.has('election') && 'error' in election) ||
    Object.values(handoff).some((cs) => cs.some((x) => x.error !== undefined)) ||
    Object.values(stalls).some((r) => 'error' in r) ||
    'error' in restart;
  if (anyError) process.exitCode = 1;
}
