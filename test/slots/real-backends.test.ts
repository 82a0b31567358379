/**
 * Slots on real backends with real site processes (test/slots/site-worker.ts).
 *
 * Per backend (Redis, PostgreSQL, etcd, ZooKeeper; private servers): 128 slots, R = 2, session TTL 2000 ms.
 * Three sites start; a fourth joins; one leaves gracefully (SIGTERM → leave()); one is kill -9'd (and a new one
 * joins, so that R sites stay live); one is SIGSTOPped for 2.5 × TTL and resumed.
 *
 * The oracle lives outside the library: every site's application appends JSON lines to one shared file (see
 * site-worker.ts), and the test appends its own markers (kill, pause, resume, exit, planned phases) to the same
 * file, so the file's order is one total order of everything that happened. From it the test checks, all the
 * time:
 *  - per slot, the epochs of successive primaries grow;
 *  - a primary's interval (gain … lost) ends before the next primary of the slot gains it — or, for a site that
 *    was SIGSTOPped while primary (it cannot log its loss until it runs again), that it writes nothing after the
 *    next primary gained; a kill -9 ends the interval at the kill;
 *  - every write of an epoch lies inside that epoch's interval (after its gain, before its loss);
 *  - during the planned steps (the join and the graceful leave), no slot that had min(R, live sites) ready
 *    replicas has fewer at any point;
 * and, after each step within a bound, that every slot has exactly min(R, live sites) ready replicas and one
 * acting primary (from the oracle), and that every live site's routing table (asked for by SIGUSR2) is the same
 * and names that primary with that epoch and those replicas.
 *
 * A last part runs a deliberately broken application (REBALANCER_TEST_BROKEN=keep-writing: it goes on writing to
 * slots after primaryLost) and requires the checks to report it.
 */
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodePlanChunk, decodeReady, hasReady, PLAN_CHUNK_SLOTS, SlotKeys } from '../../src/protocol/slots/keys.js';
import { openStore } from '../../src/store/open.js';
import { Fleet, LineTail, type FleetWorker } from '../harness/fleet.js';
import { startEtcd, startPostgres, startRedis, startZookeeper, type ServerHandle } from '../harness/servers.js';
import { sleep } from '../harness/wait.js';

const WORKER = fileURLToPath(new URL('./site-worker.ts', import.meta.url));
const SLOTS = 128;
const R = 2;
const TTL_MS = 2000;
/** Bound for a step's convergence (session expiry + rejoin + migrations, on a loaded 2-core machine). */
const STEP_BOUND_MS = 30_000;

// ---------------------------------------------------------------- oracle

type Line =
  | { k: 'hello'; site: string; t: number }
  | { k: 'ready' | 'release' | 'dropped'; site: string; slot: number; t: number }
  | { k: 'gain'; site: string; slot: number; epoch: number; t: number }
  | { k: 'lost'; site: string; slot: number; epoch: number; reason: string; t: number }
  | { k: 'write'; site: string; w: [number, number][]; t: number }
  | {
      k: 'mark';
      what: 'killed' | 'paused' | 'resumed' | 'exited' | 'leaving' | 'planned' | 'unplanned';
      site?: string;
      t: number;
    };

interface Interval {
  readonly site: string;
  readonly slot: number;
  readonly epoch: number;
  readonly gainAt: number;
  /** Position of the lost line, or of the kill / exit marker that ended it. */
  endAt: number | undefined;
  /** The site was SIGSTOPped while it held the role. */
  paused: boolean;
  /** Position of the next primary's gain while this one was still open (only a paused site may be left so). */
  supersededAt: number | undefined;
  writes: number;
}

interface SiteInfo {
  hello: boolean;
  paused: boolean;
  gone: boolean;
  leaving: boolean;
}

/**
 * Replays the shared oracle file incrementally, in file order (the order of the appends), and keeps the
 * violations it finds.
 */
class Oracle {
  readonly violations: string[] = [];
  readonly sites = new Map<string, SiteInfo>();
  /** slot → sites holding a ready copy. */
  readonly ready: Set<string>[] = Array.from({ length: SLOTS }, () => new Set<string>());
  /** slot → every primary interval, in gain order. */
  readonly intervals: Interval[][] = Array.from({ length: SLOTS }, () => []);
  readonly #open = new Map<string, Interval>();
  /** slot → the ready count it reached in the current planned phase (checked while planned). */
  #reached: number[] = [];
  planned = false;
  lines = 0;
  writes = 0;
  readonly #tail: LineTail;

  constructor(readonly path: string) {
    writeFileSync(path, '');
    this.#tail = new LineTail(path);
  }

  mark(what: string, site?: string): void {
    appendFileSync(this.path, `${JSON.stringify({ k: 'mark', what, ...(site ? { site } : {}), t: Date.now() })}\n`);
  }

  refresh(): void {
    for (const raw of this.#tail.read()) this.#add(JSON.parse(raw) as Line);
  }

  site(id: string): SiteInfo {
    let s = this.sites.get(id);
    if (s === undefined) {
      s = { hello: false, paused: false, gone: false, leaving: false };
      this.sites.set(id, s);
    }
    return s;
  }

  /** Sites that count for min(R, live): running, not leaving, not gone. */
  liveCount(): number {
    return [...this.sites.values()].filter((s) => s.hello && !s.gone && !s.leaving).length;
  }

  #violation(msg: string): void {
    if (this.violations.length < 200) this.violations.push(`line ${this.lines}: ${msg}`);
  }

  #add(l: Line): void {
    const pos = ++this.lines;
    switch (l.k) {
      case 'hello':
        this.site(l.site).hello = true;
        return;
      case 'ready':
        this.ready[l.slot]!.add(l.site);
        this.#noteReached(l.slot);
        return;
      case 'release':
      case 'dropped':
        this.ready[l.slot]!.delete(l.site);
        this.#checkReady(l.slot, `${l.site} ${l.k} it`);
        return;
      case 'gain': {
        const list = this.intervals[l.slot]!;
        const prev = list[list.length - 1];
        if (prev !== undefined && l.epoch <= prev.epoch) {
          this.#violation(`slot ${l.slot}: epoch did not grow: ${prev.site}#${prev.epoch} then ${l.site}#${l.epoch}`);
        }
        for (const iv of this.#openOf(l.slot)) {
          if (iv.paused) {
            // It cannot log its loss while stopped; from now on it must not write.
            iv.supersededAt ??= pos;
          } else {
            this.#violation(
              `slot ${l.slot}: two primaries: ${iv.site}#${iv.epoch} (gained at line ${iv.gainAt}) had not lost ` +
                `the role when ${l.site}#${l.epoch} gained it`,
            );
          }
        }
        const iv: Interval = {
          site: l.site,
          slot: l.slot,
          epoch: l.epoch,
          gainAt: pos,
          endAt: undefined,
          paused: this.site(l.site).paused,
          supersededAt: undefined,
          writes: 0,
        };
        list.push(iv);
        this.#open.set(`${l.slot}|${l.site}|${l.epoch}`, iv);
        return;
      }
      case 'lost': {
        const key = `${l.slot}|${l.site}|${l.epoch}`;
        const iv = this.#open.get(key);
        if (iv === undefined) {
          this.#violation(`slot ${l.slot}: ${l.site} lost epoch ${l.epoch} it did not hold`);
          return;
        }
        iv.endAt = pos;
        this.#open.delete(key);
        return;
      }
      case 'write':
        for (const [slot, epoch] of l.w) {
          this.writes++;
          const iv = this.#open.get(`${slot}|${l.site}|${epoch}`);
          if (iv === undefined) {
            this.#violation(`slot ${slot}: ${l.site} wrote with epoch ${epoch} outside its interval`);
            continue;
          }
          iv.writes++;
          if (iv.supersededAt !== undefined) {
            this.#violation(
              `slot ${slot}: ${l.site}#${epoch} wrote after a later primary gained the slot (line ${iv.supersededAt})`,
            );
          }
        }
        return;
      case 'mark':
        this.#mark(l, pos);
        return;
    }
  }

  #mark(l: Extract<Line, { k: 'mark' }>, pos: number): void {
    if (l.what === 'planned') {
      this.planned = true;
      this.#reached = this.ready.map((s) => s.size);
      return;
    }
    if (l.what === 'unplanned') {
      this.planned = false;
      return;
    }
    const id = l.site ?? '?';
    const s = this.site(id);
    switch (l.what) {
      case 'paused':
        s.paused = true;
        for (const iv of this.#open.values()) if (iv.site === id) iv.paused = true;
        return;
      case 'resumed':
        s.paused = false;
        return;
      case 'leaving':
        s.leaving = true;
        return;
      case 'killed':
      case 'exited':
        s.gone = true;
        for (const [key, iv] of this.#open) {
          if (iv.site !== id) continue;
          if (l.what === 'exited' && !iv.paused) this.#violation(`slot ${iv.slot}: ${id} exited while primary`);
          iv.endAt = pos;
          this.#open.delete(key);
        }
        for (let slot = 0; slot < SLOTS; slot++) {
          if (this.ready[slot]!.delete(id)) this.#checkReady(slot, `${id} ${l.what} with a ready copy`);
        }
        return;
    }
  }

  #openOf(slot: number): Interval[] {
    return [...this.#open.values()].filter((iv) => iv.slot === slot);
  }

  #need(): number {
    return Math.min(R, this.liveCount());
  }

  #noteReached(slot: number): void {
    if (this.planned) this.#reached[slot] = Math.max(this.#reached[slot] ?? 0, this.ready[slot]!.size);
  }

  #checkReady(slot: number, why: string): void {
    if (!this.planned) return;
    const need = this.#need();
    const had = Math.min(need, this.#reached[slot] ?? 0);
    const now = this.ready[slot]!.size;
    if (now < had) {
      this.#violation(`slot ${slot}: ${now} ready replica(s) during a planned step (had ${had}, need ${need}): ${why}`);
    }
  }

  /** slot → the acting primary intervals (open, not superseded) on running sites. */
  actingPrimaries(slot: number): Interval[] {
    return this.#openOf(slot).filter((iv) => iv.supersededAt === undefined && !this.site(iv.site).gone);
  }

  intervalCount(): number {
    return this.intervals.reduce((n, l) => n + l.length, 0);
  }
}

// ---------------------------------------------------------------- sites

interface Worker {
  readonly id: string;
  /** The process: its log, exit, signals. */
  readonly proc: FleetWorker;
  terminated: boolean;
  killed: boolean;
}

interface RoutingState {
  site: string;
  t: number;
  version: number;
  digest: string;
  table: [string | null, number | null, string[]][];
  local: [number, string][];
}

class Cluster {
  readonly workers = new Map<string, Worker>();
  readonly oracle: Oracle;
  readonly fleet: Fleet;
  readonly stateDir: string;
  readonly steps: string[] = [];
  #next = 1;

  constructor(
    readonly url: string,
    readonly namespace: string,
    readonly dir: string,
  ) {
    this.oracle = new Oracle(join(dir, 'oracle.jsonl'));
    this.fleet = new Fleet(dir);
    this.stateDir = join(dir, 'state');
    mkdirSync(this.stateDir);
  }

  spawnSite(env: Record<string, string> = {}): Worker {
    const id = `s${this.#next++}`;
    const proc = this.fleet.spawn({
      name: id,
      script: WORKER,
      args: [this.url, this.namespace, id, this.oracle.path, this.stateDir],
      env: {
        REBALANCER_TEST_SLOTS: String(SLOTS),
        REBALANCER_TEST_R: String(R),
        REBALANCER_TEST_TTL_MS: String(TTL_MS),
        ...env,
      },
    });
    const w: Worker = { id, proc, terminated: false, killed: false };
    // Marked as the exit is seen (before whoever awaits it goes on).
    void proc.exit.then(() => {
      if (w.terminated && !w.killed) this.oracle.mark('exited', id);
    });
    this.workers.set(id, w);
    return w;
  }

  live(): Worker[] {
    return [...this.workers.values()].filter((w) => !w.proc.exited && !w.killed && !w.terminated);
  }

  async terminate(w: Worker): Promise<void> {
    w.terminated = true;
    this.oracle.mark('leaving', w.id);
    await w.proc.terminate(40_000, () => this.kill(w));
  }

  kill(w: Worker): void {
    if (w.proc.exited) return;
    w.killed = true;
    w.proc.kill();
    this.oracle.mark('killed', w.id);
  }

  pause(w: Worker): void {
    this.oracle.mark('paused', w.id);
    w.proc.pause();
  }

  resume(w: Worker): void {
    w.proc.resume();
    this.oracle.mark('resumed', w.id);
  }

  async killAll(): Promise<void> {
    for (const w of this.workers.values()) this.kill(w);
    await this.fleet.killAll();
  }

  /** Throws (with details) on any violation seen so far. */
  checkSafety(): void {
    this.oracle.refresh();
    const problems = [...this.oracle.violations];
    for (const w of this.workers.values()) {
      if (w.proc.exited && !w.terminated && !w.killed) {
        problems.push(`${w.id} exited on its own (${w.proc.exitStatus ?? '?'})`);
      }
      if (w.proc.exited && w.terminated && !w.killed && w.proc.exitStatus !== 'code 0') {
        problems.push(`${w.id} did not leave cleanly (${w.proc.exitStatus ?? '?'})`);
      }
    }
    if (problems.length > 0) {
      throw new Error(`oracle violations (${problems.length}):\n${problems.slice(0, 20).join('\n')}\n${this.where()}`);
    }
  }

  /** Ask every live site for its routing table; undefined until all answered. */
  async routingStates(timeoutMs = 5000): Promise<RoutingState[] | undefined> {
    const live = this.live();
    const asked = Date.now();
    for (const w of live) w.proc.signal('SIGUSR2');
    const deadline = asked + timeoutMs;
    for (;;) {
      const states: RoutingState[] = [];
      for (const w of live) {
        const path = join(this.stateDir, `${w.id}.json`);
        if (!existsSync(path)) break;
        const st = JSON.parse(readFileSync(path, 'utf8')) as RoutingState;
        if (st.t < asked) break;
        states.push(st);
      }
      if (states.length === live.length) return states;
      if (Date.now() >= deadline) return undefined;
      await sleep(50);
    }
  }

  /**
   * Converged: every live site said hello; per slot, exactly min(R, live) ready copies, all on live sites, and
   * exactly one acting primary among them (oracle); and every live site's routing table is the same and names
   * that primary, with its epoch, and the other ready copies as secondaries. Returns what is still wrong.
   */
  async notConverged(): Promise<string | undefined> {
    this.oracle.refresh();
    const live = this.live();
    const liveIds = new Set(live.map((w) => w.id));
    for (const w of live) if (!this.oracle.site(w.id).hello) return `${w.id} has not started`;
    const need = Math.min(R, live.length);
    for (let s = 0; s < SLOTS; s++) {
      const ready = [...this.oracle.ready[s]!];
      if (ready.length !== need || ready.some((x) => !liveIds.has(x))) return `slot ${s}: ready on ${ready.join(',')}`;
      const p = this.oracle.actingPrimaries(s);
      if (p.length !== 1 || !ready.includes(p[0]!.site)) {
        return `slot ${s}: acting primaries ${p.map((x) => `${x.site}#${x.epoch}`).join(',')}`;
      }
    }
    // Every live site has its share (right after a join or a rejoin the old layout also looks settled).
    for (const id of liveIds) {
      if (!this.oracle.ready.some((r) => r.has(id))) return `${id} holds no slot yet`;
      const primaryOf = this.oracle.ready.filter((_, s) => this.oracle.actingPrimaries(s)[0]?.site === id).length;
      if (primaryOf === 0) return `${id} is primary of no slot yet`;
    }
    const states = await this.routingStates();
    if (states === undefined) return 'not every site answered SIGUSR2';
    if (new Set(states.map((x) => x.digest)).size !== 1) {
      return `routing tables differ: ${states.map((x) => `${x.site}:${x.digest}@${x.version}`).join(' ')}`;
    }
    this.oracle.refresh();
    const table = states[0]!.table;
    for (let s = 0; s < SLOTS; s++) {
      const p = this.oracle.actingPrimaries(s);
      const [primary, epoch, secondaries] = table[s]!;
      const others = [...this.oracle.ready[s]!].filter((x) => x !== p[0]?.site).sort();
      if (p.length !== 1 || primary !== p[0]!.site || epoch !== p[0]!.epoch) {
        return `slot ${s}: routing names ${primary}#${epoch}, the oracle ${p.map((x) => `${x.site}#${x.epoch}`).join(',')}`;
      }
      if (JSON.stringify(secondaries) !== JSON.stringify(others)) {
        return `slot ${s}: routing secondaries ${secondaries.join(',')}, oracle ${others.join(',')}`;
      }
    }
    return undefined;
  }

  /** Wait until converged (checking safety all along); returns the time it took. */
  async waitConverged(step: string): Promise<number> {
    this.steps.push(step);
    const t0 = Date.now();
    let why: string | undefined = 'not checked';
    while (Date.now() - t0 < STEP_BOUND_MS) {
      this.checkSafety();
      why = await this.notConverged();
      if (why === undefined) break;
      await sleep(250);
    }
    this.checkSafety();
    if (why !== undefined) {
      const slot = /^slot (\d+):/.exec(why)?.[1];
      const store = slot === undefined ? '' : await this.describeSlot(Number(slot)).catch((e: unknown) => String(e));
      throw new Error(
        `step "${step}" did not converge within ${STEP_BOUND_MS} ms: ${why}\nin the store: ${store}\n${this.where()}`,
      );
    }
    return Date.now() - t0;
  }

  /** Diagnostics only: what the store says about a slot (plan entry, ready bits, primary lock). */
  async describeSlot(slot: number): Promise<string> {
    const store = await openStore(this.url, { namespace: this.namespace });
    try {
      const k = new SlotKeys('kv');
      const chunk = Math.floor(slot / PLAN_CHUNK_SLOTS);
      const plan = await store.get(k.planChunk(chunk));
      const entry =
        plan === undefined
          ? undefined
          : decodePlanChunk(plan.key, plan.value, SLOTS).slots[slot - chunk * PLAN_CHUNK_SLOTS];
      const ready = (await store.range(k.ready)).kvs.map((kv) => ({
        site: kv.key.slice(k.ready.length),
        has: hasReady(decodeReady(kv.key, kv.value, SLOTS), slot),
      }));
      const lock = await store.get(k.primary(slot));
      const sites = (await store.range(k.sites)).kvs.map((kv) => kv.key.slice(k.sites.length));
      return JSON.stringify({ sites, entry, ready, lock: lock && { value: lock.value, epoch: lock.createRevision } });
    } finally {
      await store.close();
    }
  }

  where(): string {
    const procs = [...this.workers.values()]
      .map(
        (w) =>
          `${w.id}(pid ${w.proc.pid}): ${w.proc.exited ? `exited (${w.proc.exitStatus ?? '?'})` : w.killed ? 'killed' : 'running'}`,
      )
      .join(', ');
    return `steps: ${this.steps.join(' → ')}\nsites: ${procs}\nlogs: ${this.dir}`;
  }
}

// ---------------------------------------------------------------- scenario

const BACKENDS: [string, () => Promise<ServerHandle>][] = [
  ['redis', () => startRedis()],
  ['postgres', () => startPostgres()],
  ['etcd', () => startEtcd()],
  ['zookeeper', () => startZookeeper()],
];

for (const [name, boot] of BACKENDS) {
  describe(`slots on ${name} with real site processes`, () => {
    let server: ServerHandle | undefined;
    let cluster: Cluster | undefined;
    let dir: string | undefined;
    let failed = true;

    beforeAll(async () => {
      server = await boot();
      dir = mkdtempSync(join(tmpdir(), `rebalancer-slots-${name}-`));
      cluster = new Cluster(server.url, `sreal-${name}-${process.pid}`, dir);
    });

    afterAll(async () => {
      await cluster?.killAll();
      await server?.stop().catch(() => undefined);
      if (!failed && dir !== undefined && existsSync(dir)) rmSync(dir, { recursive: true, force: true });
      else if (dir !== undefined) console.error(`[slots ${name}] site logs and oracle kept in ${dir}`);
    });

    it('join, graceful leave, kill -9, pause past the TTL: one primary per slot, never below R when planned, same routes', async () => {
      const c = cluster!;
      const o = c.oracle;
      const timings: string[] = [];
      const step = async (s: string): Promise<void> => {
        timings.push(`${s} ${await c.waitConverged(s)}ms`);
      };

      const [s1, s2, s3] = [c.spawnSite(), c.spawnSite(), c.spawnSite()];
      await step('start 3 sites');

      // Planned steps: a join and a graceful leave. No slot may drop below R ready copies meanwhile.
      o.mark('planned');
      c.spawnSite();
      await step('s4 joins');
      await c.terminate(s1!);
      await step('s1 leaves (SIGTERM)');
      o.mark('unplanned');

      // kill -9: its copies are gone; the others re-replicate after its session expires.
      c.kill(s2!);
      await step('s2 killed (SIGKILL)');
      c.spawnSite();
      await step('s5 joins');

      // SIGSTOP past the TTL: the others take over its slots; resumed, it must not act as primary any more.
      c.pause(s3!);
      await sleep(TTL_MS * 2.5);
      c.resume(s3!);
      await step('s3 resumed (SIGCONT)');
      await sleep(1000); // let it run into whatever it had left, then check again
      await step('still converged 1 s later');
      console.log(
        `[slots ${name}] ${o.lines} oracle lines, ${o.intervalCount()} primary intervals, ${o.writes} writes; ` +
          timings.join(', '),
      );
      failed = false;
    }, 150_000);
  });
}

describe('slots: the oracle catches a broken application', () => {
  let server: ServerHandle | undefined;
  let cluster: Cluster | undefined;
  let dir: string | undefined;
  let failed = true;

  beforeAll(async () => {
    server = await startRedis();
    dir = mkdtempSync(join(tmpdir(), 'rebalancer-slots-broken-'));
    cluster = new Cluster(server.url, `sreal-broken-${process.pid}`, dir);
  });

  afterAll(async () => {
    await cluster?.killAll();
    await server?.stop().catch(() => undefined);
    if (!failed && dir !== undefined && existsSync(dir)) rmSync(dir, { recursive: true, force: true });
    else if (dir !== undefined) console.error(`[slots broken] site logs and oracle kept in ${dir}`);
  });

  it('an application that keeps writing after primaryLost is reported', async () => {
    const c = cluster!;
    const broken = { REBALANCER_TEST_BROKEN: 'keep-writing' };
    // Sites start one after another: primaries move to each newcomer as it becomes ready, and the broken
    // application goes on writing to the slots it handed over.
    c.spawnSite(broken);
    await sleep(1500);
    c.spawnSite(broken);
    c.spawnSite(broken);
    c.steps.push('3 broken sites');
    let problems: string[] = [];
    const t0 = Date.now();
    while (Date.now() - t0 < STEP_BOUND_MS && problems.length === 0) {
      await sleep(200);
      c.oracle.refresh();
      problems = c.oracle.violations;
    }
    expect(problems.length, `no violation reported\n${c.where()}`).toBeGreaterThan(0);
    expect(problems.join('\n')).toMatch(/outside its interval|wrote after a later primary/);
    console.log(`[slots broken] reported as expected: ${problems.slice(0, 2).join(' | ')}`);
    failed = false;
  }, 90_000);
});
