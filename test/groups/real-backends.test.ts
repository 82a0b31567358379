/**
 * Resource groups on real backends with real node processes (test/groups/worker.ts).
 *
 * Per backend: 3 workers start, 8 resources registered with GroupAdmin, session TTL 2000 ms; then a 4th worker
 * joins, one leaves gracefully (SIGTERM → member.leave()), one is kill -9'd, one is SIGSTOPped for 2.5 × TTL and
 * resumed, the store server restarts (networked backends), and the registry churns (remove 2, add 1, re-add a
 * removed name while its old owner may still be stopping).
 *
 * The oracle lives outside the library: every worker's handler appends JSON lines to a shared file (see
 * worker.ts). From them the test checks, after every step:
 *  - no two owners of a resource have overlapping active intervals (an interval ends at its `stop` line, at its
 *    worker's SIGKILL, or — for a worker that was SIGSTOPped while it ran — at its last side effect);
 *  - no side effect of an owner is logged at or after a later owner's (higher token's) start;
 *  - the fencing tokens of successive owners strictly increase;
 * and, within a bound, that every registered resource runs on exactly one live worker and removed ones on none.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GroupAdmin } from '../../src/runtime/groups/registry.js';
import type { Store } from '../../src/store/contract.js';
import { openStore } from '../../src/store/open.js';
import { Fleet, LineTail, type FleetWorker } from '../harness/fleet.js';
import { startEtcd, startPostgres, startRedis, startZookeeper, type ServerHandle } from '../harness/servers.js';
import { eventually, sleep } from '../harness/wait.js';

const WORKER = fileURLToPath(new URL('./worker.ts', import.meta.url));
const TTL_MS = 2000;
const GROUP = 'workers';
/** Bound for a step's convergence (session expiry + rejoin + rebalance, on a loaded 2-core machine). */
const STEP_BOUND_MS = 15_000;

/** Poll every 100 ms (real processes: no need to spin faster). */
const POLL_MS = 100;

/** Retry an idempotent admin call while the store is briefly unavailable (e.g. reconnecting after a restart). */
async function retry<T>(what: string, fn: () => Promise<T>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (error) {
      if (Date.now() >= deadline) throw new Error(`${what} kept failing for ${timeoutMs} ms`, { cause: error });
      await sleep(200);
    }
  }
}

// ---------------------------------------------------------------- oracle

interface Line {
  node: string;
  resource: string;
  token: number;
  event: 'start' | 'effect' | 'stillOwnerFalse' | 'aborted' | 'stop';
  t: number;
}

interface Interval {
  node: string;
  resource: string;
  token: number;
  start: number;
  lastEffect: number | undefined;
  effects: number[];
  stillOwnerFalse: number | undefined;
  stop: number | undefined;
}

/** Reads the shared oracle file incrementally (only whole lines). */
class Oracle {
  readonly intervals = new Map<string, Interval>();
  readonly #tail: LineTail;
  lines = 0;
  constructor(readonly path: string) {
    writeFileSync(path, '');
    this.#tail = new LineTail(path);
  }

  refresh(): void {
    for (const raw of this.#tail.read()) this.#add(JSON.parse(raw) as Line);
  }

  #add(l: Line): void {
    this.lines++;
    const id = `${l.node}|${l.resource}|${l.token}`;
    let iv = this.intervals.get(id);
    // A handler restarted under the same, never released lock (same node, same token: e.g. a removed name
    // re-added to its old owner before it released) is a new interval.
    if (iv === undefined || (l.event === 'start' && iv.stop !== undefined)) {
      if (iv !== undefined) this.intervals.set(`${id}|${l.t}|${this.lines}`, iv);
      iv = {
        node: l.node,
        resource: l.resource,
        token: l.token,
        start: l.t,
        lastEffect: undefined,
        effects: [],
        stillOwnerFalse: undefined,
        stop: undefined,
      };
      this.intervals.set(id, iv);
    }
    switch (l.event) {
      case 'start':
        iv.start = Math.min(iv.start, l.t);
        break;
      case 'effect':
        iv.effects.push(l.t);
        iv.lastEffect = Math.max(iv.lastEffect ?? 0, l.t);
        break;
      case 'stillOwnerFalse':
        iv.stillOwnerFalse ??= l.t;
        break;
      case 'aborted':
        break;
      case 'stop':
        iv.stop = l.t;
        break;
    }
  }

  byResource(): Map<string, Interval[]> {
    const m = new Map<string, Interval[]>();
    for (const iv of this.intervals.values()) {
      const list = m.get(iv.resource) ?? [];
      list.push(iv);
      m.set(iv.resource, list);
    }
    for (const list of m.values()) list.sort((a, b) => a.start - b.start || a.token - b.token);
    return m;
  }
}

// ---------------------------------------------------------------- workers

interface Worker {
  readonly node: string;
  /** The process: its log, exit, signals. */
  readonly proc: FleetWorker;
  /** The test sent SIGTERM. */
  terminated: boolean;
  killedAt: number | undefined;
  /** SIGSTOP..SIGCONT periods. */
  readonly pauses: { from: number; to: number }[];
}

class Cluster {
  readonly workers = new Map<string, Worker>();
  readonly oracle: Oracle;
  readonly fleet: Fleet;
  #next = 1;
  readonly steps: string[] = [];

  constructor(
    readonly url: string,
    readonly namespace: string,
    readonly dir: string,
  ) {
    this.oracle = new Oracle(join(dir, 'oracle.jsonl'));
    this.fleet = new Fleet(dir);
  }

  spawnWorker(): Worker {
    const node = `w${this.#next++}`;
    const proc = this.fleet.spawn({
      name: node,
      script: WORKER,
      args: [this.url, this.namespace, node, this.oracle.path],
      env: { REBALANCER_TEST_GROUP: GROUP },
    });
    const w: Worker = { node, proc, terminated: false, killedAt: undefined, pauses: [] };
    this.workers.set(node, w);
    return w;
  }

  live(): Worker[] {
    return [...this.workers.values()].filter((w) => !w.proc.exited && w.killedAt === undefined);
  }

  async terminate(w: Worker): Promise<void> {
    w.terminated = true;
    await w.proc.terminate(15_000, () => this.kill(w));
  }

  kill(w: Worker): void {
    if (w.proc.exited) return;
    w.killedAt = Date.now();
    w.proc.kill();
  }

  pause(w: Worker): void {
    w.pauses.push({ from: Date.now(), to: Infinity });
    w.proc.pause();
  }

  /**
   * Like pause(), but on SQLite at a moment the worker is not inside a write transaction: stopped in one, it
   * would block every writer of the file until resumed (docs/backends/sqlite.md, "A process stopped while
   * holding the write lock") and the others could not take its work. Other backends: pause().
   */
  async pauseBetweenWrites(w: Worker): Promise<void> {
    if (!this.url.startsWith('sqlite:')) return this.pause(w);
    const file = this.url.slice('sqlite:'.length);
    w.pauses.push({ from: Date.now(), to: Infinity });
    const stops = await w.proc.pauseOutsideLocks([file, `${file}-wal`, `${file}-shm`]);
    if (stops > 1) this.steps.push(`(${w.node} stopped ${stops} times to find it outside a write)`);
  }

  resume(w: Worker): void {
    w.proc.resume();
    const p = w.pauses[w.pauses.length - 1];
    if (p !== undefined) p.to = Date.now();
  }

  async killAll(): Promise<void> {
    await this.fleet.killAll();
  }

  // ---- checks

  /** The end of an interval's active part (see the file comment); Infinity while it may still be running. */
  activeEnd(iv: Interval): number {
    const w = this.workers.get(iv.node);
    const pausedWhileRunning = w?.pauses.some((p) => p.from < (iv.stop ?? Infinity) && p.to > iv.start) ?? false;
    if (pausedWhileRunning) return Math.max(iv.start, iv.lastEffect ?? iv.start);
    if (iv.stop !== undefined) return iv.stop;
    if (w?.killedAt !== undefined) return w.killedAt;
    if (w?.proc.exited === true) return Math.max(iv.start, iv.lastEffect ?? iv.start); // exited (after leave)
    return Infinity;
  }

  /** Safety: throws (with details) on any violation seen so far. */
  checkSafety(): void {
    this.oracle.refresh();
    const problems: string[] = [];
    for (const w of this.workers.values()) {
      if (w.proc.exited && !w.terminated && w.killedAt === undefined)
        problems.push(`${w.node} exited on its own (${w.proc.exitStatus ?? '?'}); see ${w.proc.logPath}`);
    }
    for (const [resource, list] of this.oracle.byResource()) {
      for (let i = 0; i < list.length; i++) {
        const a = list[i]!;
        for (let j = i + 1; j < list.length; j++) {
          const b = list[j]!;
          const show = (iv: Interval): string =>
            `${iv.node}#${iv.token} [${iv.start}..${iv.stop ?? 'open'}] lastEffect=${iv.lastEffect ?? '-'} activeEnd=${this.activeEnd(iv)}`;
          // Later start ⇒ strictly higher token (fencing tokens grow with every new owner).
          // (The one exception: the same node restarting under the lock it never released.)
          const sameLock = b.token === a.token && b.node === a.node && a.stop !== undefined && a.stop <= b.start;
          if (b.token <= a.token && !sameLock)
            problems.push(`${resource}: token did not grow: ${show(a)} then ${show(b)}`);
          // The earlier owner's active interval ends before the later one starts.
          if (this.activeEnd(a) > b.start) problems.push(`${resource}: overlapping owners: ${show(a)} and ${show(b)}`);
        }
      }
      // No side effect of an owner at or after the start of a higher token.
      for (const a of list) {
        for (const b of list) {
          if (b.token < a.token || (b.token === a.token && b.start <= a.start)) continue;
          const late = a.effects.filter((t) => t >= b.start);
          if (late.length > 0) {
            problems.push(
              `${resource}: ${a.node}#${a.token} did ${late.length} side effect(s) (first at ${late[0]}) after ` +
                `${b.node}#${b.token} started at ${b.start}`,
            );
          }
        }
      }
    }
    if (problems.length > 0) {
      throw new Error(`oracle violations (${problems.length}):\n${problems.slice(0, 20).join('\n')}\n${this.where()}`);
    }
  }

  /** resource → nodes whose handler for it is running now (open interval on a live, unpaused worker). */
  runningOwners(): Map<string, string[]> {
    this.oracle.refresh();
    const now = Date.now();
    const m = new Map<string, string[]>();
    for (const iv of this.oracle.intervals.values()) {
      if (iv.stop !== undefined) continue;
      const w = this.workers.get(iv.node);
      if (w === undefined || w.proc.exited || w.killedAt !== undefined) continue;
      if (w.pauses.some((p) => p.to === Infinity)) continue;
      // Running: it logged a side effect recently (a fenced handler does not).
      if (iv.lastEffect === undefined || now - iv.lastEffect > 1000) continue;
      const list = m.get(iv.resource) ?? [];
      list.push(iv.node);
      m.set(iv.resource, list);
    }
    return m;
  }

  /** Every resource in `expected` runs on exactly one live worker; nothing else runs. */
  converged(expected: readonly string[], extra?: (owners: Map<string, string[]>) => boolean): boolean {
    const owners = this.runningOwners();
    for (const r of expected) if (owners.get(r)?.length !== 1) return false;
    for (const r of owners.keys()) if (!expected.includes(r)) return false;
    return extra === undefined || extra(owners);
  }

  describeOwners(): string {
    const owners = this.runningOwners();
    return [...owners]
      .map(([r, n]) => `${r}:${n.join('+')}`)
      .sort()
      .join(' ');
  }

  where(): string {
    const procs = [...this.workers.values()]
      .map(
        (w) =>
          `${w.node}(pid ${w.proc.pid}): ${w.proc.exited ? `exited (${w.proc.exitStatus ?? '?'})` : w.killedAt !== undefined ? 'killed' : w.proc.procState()}`,
      )
      .join(', ');
    return `steps: ${this.steps.join(' → ')}\nowners now: ${this.describeOwners()}\nworkers: ${procs}\nlogs: ${this.dir}`;
  }

  /** Wait until `expected` runs exactly once each; checks safety before and after. */
  async waitConverged(
    step: string,
    expected: readonly string[],
    extra?: (owners: Map<string, string[]>) => boolean,
    stableMs = 0,
  ): Promise<number> {
    this.steps.push(step);
    const t0 = Date.now();
    let okSince: number | undefined;
    const waiting = {
      what: `step "${step}" to converge`,
      timeoutMs: STEP_BOUND_MS + stableMs,
      intervalMs: POLL_MS,
      context: () => this.where(),
    };
    // A safety violation is the failure to report, also when it is what kept the step from converging.
    await eventually(() => {
      this.checkSafety();
      if (!this.converged(expected, extra)) {
        okSince = undefined;
        return false;
      }
      okSince ??= Date.now();
      return Date.now() - okSince >= stableMs;
    }, waiting).finally(() => this.checkSafety());
    return Date.now() - t0;
  }
}

function perNode(owners: Map<string, string[]>): Map<string, number> {
  const m = new Map<string, number>();
  for (const nodes of owners.values()) for (const n of nodes) m.set(n, (m.get(n) ?? 0) + 1);
  return m;
}

// ---------------------------------------------------------------- scenario

interface Backend {
  readonly name: string;
  start(): Promise<{ url: string; server: ServerHandle | undefined; cleanup(): Promise<void> }>;
}

const BACKENDS: Backend[] = [
  {
    name: 'sqlite',
    start() {
      const dir = mkdtempSync(join(tmpdir(), 'rebalancer-groups-sqlite-'));
      return Promise.resolve({
        url: `sqlite:${join(dir, 'store.db')}`,
        server: undefined,
        cleanup: () => Promise.resolve(rmSync(dir, { recursive: true, force: true })),
      });
    },
  },
  ...(
    [
      ['postgres', () => startPostgres()],
      // Data must survive the restart: the registry and the group state live in it.
      ['redis', () => startRedis({ appendOnly: true })],
      ['etcd', () => startEtcd()],
      ['zookeeper', () => startZookeeper()],
    ] as const
  ).map(([name, boot]) => ({
    name,
    async start() {
      const server = await boot();
      return { url: server.url, server, cleanup: () => server.stop() };
    },
  })),
];

const INITIAL = Array.from({ length: 8 }, (_, i) => `r${i}`);

for (const backend of BACKENDS) {
  describe(`resource groups on ${backend.name} with real worker processes`, () => {
    let env: Awaited<ReturnType<Backend['start']>> | undefined;
    let cluster: Cluster | undefined;
    let admin: GroupAdmin | undefined;
    let adminStore: Store | undefined;
    let dir: string | undefined;
    let failed = true;

    beforeAll(async () => {
      env = await backend.start();
      dir = mkdtempSync(join(tmpdir(), `rebalancer-groups-${backend.name}-`));
      const namespace = `greal-${backend.name}-${process.pid}`;
      cluster = new Cluster(env.url, namespace, dir);
      adminStore = await openStore(env.url, { namespace });
      admin = new GroupAdmin(adminStore, GROUP);
    });

    afterAll(async () => {
      await cluster?.killAll();
      await adminStore?.close().catch(() => undefined);
      await env?.cleanup().catch(() => undefined);
      if (!failed && dir !== undefined && existsSync(dir)) rmSync(dir, { recursive: true, force: true });
      else if (dir !== undefined) console.error(`[${backend.name}] worker logs and oracle kept in ${dir}`);
    });

    it('join, leave, kill -9, pause past the TTL, server restart and churn: one owner at a time, none lost', async () => {
      const c = cluster!;
      const timings: string[] = [];
      const step = async (
        name: string,
        expected: readonly string[],
        extra?: (owners: Map<string, string[]>) => boolean,
        stableMs = 0,
      ): Promise<void> => {
        const ms = await c.waitConverged(name, expected, extra, stableMs);
        timings.push(`${name} ${ms}ms`);
      };

      // 1. Three workers, eight resources.
      await retry('add initial', () => admin!.add(INITIAL));
      const [w1, w2, w3] = [c.spawnWorker(), c.spawnWorker(), c.spawnWorker()];
      await step('start 3 workers', INITIAL, (o) => perNode(o).size === 3);

      // 2. A fourth joins: the placement balances to 2 each.
      const w4 = c.spawnWorker();
      await step('join w4', INITIAL, (o) => {
        const n = perNode(o);
        return n.size === 4 && [...n.values()].every((k) => k === 2);
      });

      // 3. Graceful leave.
      await c.terminate(w1!);
      await step('w1 leaves (SIGTERM)', INITIAL, (o) => !perNode(o).has(w1!.node) && perNode(o).size === 3);

      // 4. kill -9: its resources come back after its session expires.
      c.kill(w2!);
      await step('w2 killed (SIGKILL)', INITIAL, (o) => perNode(o).size === 2);
      const w5 = c.spawnWorker();
      await step('join w5', INITIAL, (o) => perNode(o).size === 3);

      // 5. SIGSTOP past the TTL: the others take its resources; resumed, it must not act on revoked work.
      await c.pauseBetweenWrites(w3!);
      await sleep(TTL_MS * 2.5);
      // While w3 is frozen its resources already run elsewhere (nothing it held may stay unowned).
      c.steps.push('w3 frozen 2.5 TTL');
      await eventually(() => c.converged(INITIAL), {
        what: "w3's resources to run elsewhere while it is frozen",
        timeoutMs: 3000,
        intervalMs: POLL_MS,
        context: () => c.where(),
      }).finally(() => c.checkSafety());
      c.resume(w3!);
      await step('w3 resumed (SIGCONT)', INITIAL, (o) => perNode(o).size === 3);
      // Give it time to run into whatever revoked work it had, then check it did nothing with it.
      await sleep(1000);
      c.checkSafety();

      // 6. The store server restarts. Right after it, owners may still be running on sessions that are about
      // to be judged lost, so wait past a TTL's worth of fallout and require the group to stay converged.
      if (env!.server !== undefined) {
        c.steps.push('server restart');
        await env!.server.restart();
        await sleep(TTL_MS * 2);
        await step('after server restart', INITIAL, undefined, 1500);
      }

      // 6b. Redis restarts WITHOUT its data while a worker is paused for less than a TTL (a GC pause): every lock
      // is gone at once, up to a TTL before its holder's deadline. The members must notice (DATA_LOST), stop, and
      // grant nothing until the paused one's lease has surely ended; the registry went with the data, so it is
      // registered again, as the error event tells an operator to.
      if (backend.name === 'redis' && env!.server !== undefined) {
        c.steps.push('server loses its data while a worker is paused');
        const victim = c.live()[0]!;
        c.pause(victim);
        await env!.server.kill();
        rmSync(join(env!.server.dataDir, 'appendonlydir'), { recursive: true, force: true });
        await env!.server.restart();
        await sleep(TTL_MS * 0.6);
        c.resume(victim);
        await sleep(TTL_MS * 0.5);
        c.checkSafety();
        await retry('register again after the data loss', () => admin!.add(INITIAL));
        await step('after the data loss', INITIAL, undefined, 1500);
        const told = c
          .live()
          .filter((w) => w.proc.lines().some((l) => l.includes('"what":"error"') && l.includes('StoreDataLostError')));
        expect(told.length, `every live worker reports DATA_LOST; ${c.where()}`).toBe(c.live().length);
      }

      // 7. Churn: remove two, add one, re-add a removed name while its old owner may still be stopping.
      await retry('remove r6 r7', () => admin!.remove(['r6', 'r7']));
      await retry('add r8', () => admin!.add(['r8']));
      await retry('re-add r6', () => admin!.add(['r6']));
      const after = ['r0', 'r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r8'];
      await step('churn: -r6 -r7 +r8 +r6', after);
      // Still stable a moment later.
      await sleep(1000);
      c.checkSafety();
      expect(c.converged(after), c.where()).toBe(true);

      // 8. Everyone leaves; nothing overlaps at the end either.
      await Promise.all(c.live().map((w) => c.terminate(w)));
      c.checkSafety();
      void w4;
      void w5;
      console.log(
        `[${backend.name}] ${c.oracle.lines} oracle lines, ${c.oracle.intervals.size} owner intervals; ${timings.join(', ')}`,
      );
      failed = false;
    }, 120_000);
  });
}
