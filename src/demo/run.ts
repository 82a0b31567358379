/**
 * The demo: real worker processes share resources through a store, while the
 * demo kills one with SIGKILL, adds one and stops one gracefully, timing each
 * transition and checking ownership with an oracle that trusts only what the
 * workers' handlers did (oracle.ts). The rendering (live view, plain lines,
 * JSON) is the CLI's (src/cli/commands/demo.ts); this module only runs the
 * scenario and reports.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, createWriteStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { GroupAdmin } from '../runtime/groups/registry.js';
import { GroupNotFoundError } from '../errors.js';
import { groupStatus, type GroupStatus } from '../runtime/groups/status.js';
import type { Store } from '../store/contract.js';
import { openStore } from '../store/open.js';
import { checkOracle, parseOracle, type OracleViolation } from './oracle.js';

export interface DemoOptions {
  /** Store URL; default: a SQLite file in a fresh temp dir. */
  readonly storeUrl?: string | undefined;
  /** Namespace; default `demo-<random>` so a shared store is not disturbed. */
  readonly namespace?: string | undefined;
  readonly workers: number;
  readonly resources: number;
  readonly sessionTtlMs: number;
  /** Pause after each step so a viewer can see the state (the view keeps updating meanwhile). Default 0. */
  readonly paceMs?: number | undefined;
  /** Give up on a step after this long. */
  readonly stepTimeoutMs?: number | undefined;
  /** Keep the temp dir (store, oracle, worker logs) even when all went well. */
  readonly keep?: boolean | undefined;
  /** Passed to the workers as REBALANCER_DEMO_BROKEN (a deliberately broken handler, to show the oracle catches it). */
  readonly broken?: string | undefined;
  readonly onStep?: ((step: DemoStep) => void) | undefined;
  /** Called with every status snapshot the demo takes (about 10 per second). */
  readonly onStatus?: ((view: DemoView) => void) | undefined;
  readonly signal?: AbortSignal | undefined;
}

export interface DemoStep {
  readonly step: 'start' | 'settled' | 'kill' | 'failover' | 'add' | 'joined' | 'stop' | 'left' | 'shutdown';
  /** Since the demo started. */
  readonly atMs: number;
  readonly message: string;
  readonly durationMs?: number | undefined;
  readonly moves?: number | undefined;
}

export interface DemoView {
  readonly status: GroupStatus | undefined;
  readonly live: readonly string[];
  readonly steps: readonly DemoStep[];
  readonly current: string;
}

export interface DemoSummary {
  readonly store: string;
  readonly namespace: string;
  readonly workers: number;
  readonly resources: number;
  readonly sessionTtlMs: number;
  /** From registering the resources to every one running once, balanced. */
  readonly settleMs: number;
  /** From the SIGKILL until the last of the killed worker's resources started elsewhere. */
  readonly failoverMs: number;
  /** From the new worker's start until the group was balanced again. */
  readonly joinMs: number;
  /** From SIGTERM to a worker until its resources ran elsewhere and the group was balanced. */
  readonly leaveMs: number;
  /** Ownership changes (a resource started on a different node than its previous owner). */
  readonly moves: number;
  readonly starts: number;
  readonly effects: number;
  readonly violations: number;
  readonly violationList: readonly OracleViolation[];
  readonly steps: readonly DemoStep[];
  readonly totalMs: number;
  /** Where the store, oracle and worker logs are (kept on failure or with `keep`). */
  readonly dir: string | undefined;
}

/** A step did not complete in time, or a worker misbehaved (the message says where the logs are). */
export class DemoFailedError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DemoFailedError';
  }
}

const GROUP = 'demo';

interface Worker {
  readonly id: string;
  readonly child: ChildProcess;
  readonly ready: Promise<void>;
  readonly exited: Promise<number | null>;
  alive: boolean;
}

export async function runDemo(o: DemoOptions): Promise<DemoSummary> {
  const t0 = Date.now();
  const since = (): number => Date.now() - t0;
  const dir = mkdtempSync(join(tmpdir(), 'rebalancer-demo-'));
  const storeUrl = o.storeUrl ?? `sqlite:${join(dir, 'demo.db')}`;
  const namespace = o.namespace ?? `demo-${Math.random().toString(36).slice(2, 8)}`;
  const oracleFile = join(dir, 'oracle.jsonl');
  writeFileSync(oracleFile, '');
  const stepTimeoutMs = o.stepTimeoutMs ?? Math.max(30_000, 10 * o.sessionTtlMs);
  const steps: DemoStep[] = [];
  let current = 'starting workers';
  let lastStatus: GroupStatus | undefined;
  const workers = new Map<string, Worker>();
  const live = (): string[] => [...workers.values()].filter((w) => w.alive).map((w) => w.id);
  const step = (s: Omit<DemoStep, 'atMs'>): void => {
    const full = { ...s, atMs: since() };
    steps.push(full);
    o.onStep?.(full);
  };
  const names = Array.from({ length: o.resources }, (_, i) => `r${String(i + 1).padStart(2, '0')}`);
  let failed = true;
  let store: Store | undefined;

  const here = fileURLToPath(import.meta.url);
  const workerPath = join(dirname(here), here.endsWith('.ts') ? 'worker.ts' : 'worker.js');
  let nextId = 1;
  const startWorker = (): Worker => {
    const id = `w${nextId++}`;
    const child = spawn(
      process.execPath,
      [...process.execArgv, workerPath, storeUrl, namespace, GROUP, id, oracleFile, String(o.sessionTtlMs)],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, REBALANCER_DEMO_BROKEN: o.broken ?? '' },
      },
    );
    const log = createWriteStream(join(dir, `${id}.log`));
    child.stderr?.pipe(log);
    let onReady: () => void = () => undefined;
    const ready = new Promise<void>((resolve) => (onReady = resolve));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      log.write(`${line}\n`);
      if (line.includes('"what":"ready"')) onReady();
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const w: Worker = { id, child, ready, exited, alive: true };
    void exited.then(() => (w.alive = false));
    workers.set(id, w);
    return w;
  };
  const killAll = (): void => {
    for (const w of workers.values()) if (w.alive) w.child.kill('SIGKILL');
  };
  process.once('exit', killAll);

  /** Poll the status until `pred` holds; report each snapshot. */
  const until = async (what: string, pred: (s: GroupStatus) => boolean): Promise<GroupStatus> => {
    current = what;
    const end = Date.now() + stepTimeoutMs;
    for (;;) {
      o.signal?.throwIfAborted();
      try {
        lastStatus = await groupStatus(store!, GROUP);
      } catch (err) {
        if (!(err instanceof GroupNotFoundError)) throw err;
      }
      o.onStatus?.({ status: lastStatus, live: live(), steps, current });
      if (lastStatus !== undefined && pred(lastStatus)) return lastStatus;
      if (Date.now() > end) {
        throw new DemoFailedError(
          `the demo gave up waiting ${stepTimeoutMs} ms for: ${what}; worker logs and the store are in ${dir}`,
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  /** Every resource runs on exactly one live worker, nothing is moving, and the counts differ by at most one. */
  const balanced = (s: GroupStatus): boolean => {
    const alive = new Set(live());
    if (s.counts.active !== names.length || s.movesInFlight !== 0) return false;
    if (s.nodes.length !== alive.size || s.nodes.some((n) => !alive.has(n.id))) return false;
    if (s.resources.some((r) => r.owner === undefined || !alive.has(r.owner))) return false;
    const owned = s.nodes.map((n) => n.owned);
    return Math.max(...owned) - Math.min(...owned) <= 1;
  };
  /** Keep showing the state for a while (the live view's pace). */
  const hold = async (): Promise<void> => {
    const until_ = Date.now() + (o.paceMs ?? 0);
    if (o.paceMs === undefined || o.paceMs <= 0) return;
    await until(current, () => Date.now() >= until_);
  };
  const startsSince = (tMs: number): { resource: string; node: string; t: number }[] =>
    parseOracle(readFileSync(oracleFile, 'utf8'))
      .filter((l) => l.event === 'start' && l.t >= tMs && l.resource !== undefined)
      .map((l) => ({ resource: l.resource!, node: l.node, t: l.t }));
  const spread = (s: GroupStatus): string => s.nodes.map((n) => `${n.id} ${n.owned}`).join(' · ');

  try {
    store = await openStore(storeUrl, { namespace });
    for (let i = 0; i < o.workers; i++) startWorker();
    await Promise.race([
      Promise.all([...workers.values()].map((w) => w.ready)),
      new Promise((_, reject) =>
        setTimeout(
          () => reject(new DemoFailedError(`workers did not join within ${stepTimeoutMs} ms; logs in ${dir}`)),
          stepTimeoutMs,
        ).unref(),
      ),
    ]);
    step({
      step: 'start',
      message: `${o.workers} workers joined group "${GROUP}"; registering ${names.length} resources`,
    });
    const tReg = Date.now();
    await new GroupAdmin(store, GROUP).add(names);
    let s = await until('waiting for every resource to run on exactly one worker', balanced);
    const settleMs = Date.now() - tReg;
    step({
      step: 'settled',
      message: `every resource runs on exactly one worker: ${spread(s)}`,
      durationMs: settleMs,
    });

    await hold();

    // 1. SIGKILL the coordinator: its resources wait for its session to expire, then a new coordinator moves them.
    const victim = s.coordinator?.nodeId ?? live()[0]!;
    const victimResources = s.resources.filter((r) => r.owner === victim).map((r) => r.name);
    const tKill = Date.now();
    workers.get(victim)!.child.kill('SIGKILL');
    // The oracle's record that nothing of the victim's can come later (it cannot write after this).
    appendFileSync(oracleFile, `${JSON.stringify({ node: victim, event: 'killed', t: Date.now() })}\n`);
    workers.get(victim)!.alive = false;
    step({
      step: 'kill',
      message: `kill -9 ${victim} (the coordinator) holding ${victimResources.join(' ')}; its session expires after ${o.sessionTtlMs} ms`,
    });
    s = await until(`failover: waiting for ${victim}'s resources to restart elsewhere`, balanced);
    const restarted = new Map<string, number>();
    for (const st of startsSince(tKill))
      if (victimResources.includes(st.resource) && !restarted.has(st.resource)) restarted.set(st.resource, st.t);
    const failoverMs = Math.max(0, ...[...restarted.values()].map((t) => t - tKill));
    step({
      step: 'failover',
      message:
        `${victimResources.length} resources of ${victim} restarted on ${[...new Set(s.resources.filter((r) => victimResources.includes(r.name)).map((r) => r.owner))].join(', ')}` +
        ` ${(failoverMs / 1000).toFixed(2)} s after the kill (${(failoverMs / o.sessionTtlMs).toFixed(2)} × TTL); new coordinator ${s.coordinator?.nodeId ?? '?'}`,
      durationMs: failoverMs,
      moves: victimResources.length,
    });

    await hold();

    // 2. Add a worker: the coordinator moves a share to it, stopping each on its old owner first.
    const tAdd = Date.now();
    const added = startWorker();
    step({ step: 'add', message: `starting ${added.id}` });
    s = await until(`waiting for ${added.id} to get its share`, balanced);
    const joinMs = Date.now() - tAdd;
    const joinMoves = startsSince(tAdd).length;
    step({
      step: 'joined',
      message: `${added.id} took ${joinMoves} resources (stop-before-start): ${spread(s)}`,
      durationMs: joinMs,
      moves: joinMoves,
    });

    await hold();

    // 3. Stop a worker gracefully: it hands its resources over before it exits.
    const leaver = live().find((id) => id !== s.coordinator?.nodeId && id !== added.id) ?? live()[0]!;
    const leaverResources = s.resources.filter((r) => r.owner === leaver).length;
    const tStop = Date.now();
    workers.get(leaver)!.child.kill('SIGTERM');
    step({
      step: 'stop',
      message: `SIGTERM ${leaver}: it leaves the group and hands over ${leaverResources} resources`,
    });
    const code = await workers.get(leaver)!.exited;
    if (code !== 0)
      throw new DemoFailedError(`${leaver} exited with code ${code} on SIGTERM; see ${dir}/${leaver}.log`);
    s = await until(`waiting for ${leaver}'s resources to move`, balanced);
    const leaveMs = Date.now() - tStop;
    step({
      step: 'left',
      message: `${leaver} left; its resources run elsewhere: ${spread(s)}`,
      durationMs: leaveMs,
      moves: leaverResources,
    });

    await hold();

    // Shut down: every worker leaves; then the oracle reads what the handlers did.
    current = 'stopping the workers';
    const remaining = [...workers.values()].filter((w) => w.alive);
    for (const w of remaining) w.child.kill('SIGTERM');
    await Promise.all(remaining.map((w) => w.exited));
    const report = checkOracle(parseOracle(readFileSync(oracleFile, 'utf8')));
    step({
      step: 'shutdown',
      message: `all workers stopped; the oracle checked ${report.starts} runs and ${report.effects} side effects`,
    });
    await new GroupAdmin(store, GROUP).remove(names).catch(() => undefined);
    failed = report.violations.length > 0;
    return {
      store: storeUrl,
      namespace,
      workers: o.workers,
      resources: names.length,
      sessionTtlMs: o.sessionTtlMs,
      settleMs,
      failoverMs,
      joinMs,
      leaveMs,
      moves: report.moves,
      starts: report.starts,
      effects: report.effects,
      violations: report.violations.length,
      violationList: report.violations,
      steps,
      totalMs: since(),
      dir: failed || o.keep === true ? dir : undefined,
    };
  } finally {
    killAll();
    process.off('exit', killAll);
    await store?.close().catch(() => undefined);
    if (!failed && o.keep !== true) rmSync(dir, { recursive: true, force: true });
  }
}
