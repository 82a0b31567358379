/**
 * `npm run bench -- groups --sections scale [--backends sqlite,redis] [--scale 10000,30000,100000]
 *   [--scale-nodes 10] [--scale-timeout-s 120]`
 *
 * Many resources on many member processes (what users run): N resources are added with GroupAdmin.add to a group
 * whose members already run, one per process (groups-worker.ts `scale`). Measured: how long the add takes, how long
 * until every resource runs (from the start of the add), whether it stays so for a few seconds, the longest
 * event-loop stall of any member process (perf_hooks monitorEventLoopDelay, against the session TTL), the largest
 * resident memory of a member process, error events and session losses over all members.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { GroupAdmin } from '../src/runtime/groups/registry.js';
import { openStore } from '../src/store/open.js';
import { startRedis } from '../test/harness/servers.js';
import { table } from './stats.js';

const TTL_MS = 10_000;
/** How long every resource must keep running once all started. */
const HOLD_MS = 5000;

interface Stats {
  running: number;
  stallMs: number;
  rssMb: number;
  errors: number;
  lost: number;
  coord: boolean;
  firstErrors?: string[];
}

export interface ScaleCase {
  backend: string;
  nodes: number;
  resources: number;
  addMs?: number;
  /** From the start of the add until every resource ran; undefined if it never did within the timeout. */
  convergedMs?: number;
  /** Fewest resources running during the hold after convergence (= resources when it held). */
  heldMin?: number;
  /** Most resources running at once at the end (when not converged). */
  bestRunning: number;
  maxStallMs: number;
  rssMbBefore: number;
  maxRssMb: number;
  errors: number;
  sessionsLost: number;
  /** Most members that believed at once to be the coordinator. */
  maxCoordinators: number;
  firstError?: string | undefined;
  error?: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

class ScaleWorker {
  readonly proc: ChildProcess;
  readonly exited: Promise<void>;
  ready = false;
  last: Stats | undefined;
  constructor(name: string, args: string[]) {
    // SCALE_CPU_PROF=<dir>: every member writes a CPU profile there (node --cpu-prof) when it is told to stop.
    const prof = process.env['SCALE_CPU_PROF'];
    const flags = prof === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', prof];
    this.proc = spawn(process.execPath, [...flags, '--import', 'tsx', 'bench/groups-worker.ts', 'scale', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.exited = new Promise((resolve) => this.proc.once('exit', () => resolve()));
    createInterface({ input: this.proc.stdout! }).on('line', (line) => {
      try {
        const e = JSON.parse(line) as { ev: string } & Stats;
        if (e.ev === 'ready') this.ready = true;
        if (e.ev === 'stats') this.last = e;
      } catch {
        // not ours
      }
    });
    this.proc.stderr!.on('data', (d: Buffer) => {
      if (process.env['BENCH_VERBOSE'] !== undefined) process.stderr.write(`[${name}] ${d.toString()}`);
    });
  }
  async kill(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGTERM');
    await Promise.race([this.exited, sleep(5000)]);
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
    await this.exited;
  }
}

async function scaleCase(url: string, backend: string, nodes: number, resources: number, timeoutMs: number) {
  const namespace = `sc${Date.now().toString(36)}`;
  const group = 'scale';
  const workers: ScaleWorker[] = [];
  const c: ScaleCase = {
    backend,
    nodes,
    resources,
    bestRunning: 0,
    maxStallMs: 0,
    rssMbBefore: 0,
    maxRssMb: 0,
    errors: 0,
    sessionsLost: 0,
    maxCoordinators: 0,
  };
  const observe = (): number => {
    let running = 0;
    let coords = 0;
    for (const w of workers) {
      const s = w.last;
      if (s === undefined) continue;
      running += s.running;
      if (s.coord) coords++;
      c.maxStallMs = Math.max(c.maxStallMs, s.stallMs);
      c.maxRssMb = Math.max(c.maxRssMb, s.rssMb);
      c.firstError ??= s.firstErrors?.[0];
    }
    c.errors = workers.reduce((a, w) => a + (w.last?.errors ?? 0), 0);
    c.sessionsLost = workers.reduce((a, w) => a + (w.last?.lost ?? 0), 0);
    c.maxCoordinators = Math.max(c.maxCoordinators, coords);
    c.bestRunning = running;
    return running;
  };
  try {
    for (let i = 0; i < nodes; i++) {
      workers.push(new ScaleWorker(`w${i}`, [url, namespace, group, `w${i}`, String(TTL_MS)]));
    }
    const readyBy = Date.now() + 120_000;
    while (!workers.every((w) => w.ready && w.last !== undefined)) {
      if (Date.now() > readyBy) throw new Error('members did not join within 120 s');
      await sleep(50);
    }
    observe();
    c.rssMbBefore = c.maxRssMb;
    const admin = await openStore(url, { namespace });
    const t0 = Date.now();
    try {
      await new GroupAdmin(admin, group).add(Array.from({ length: resources }, (_, i) => `resource-${i}`));
    } finally {
      await admin.close();
    }
    c.addMs = Date.now() - t0;
    const deadline = t0 + timeoutMs;
    while (Date.now() < deadline) {
      await sleep(100);
      if (observe() === resources) {
        c.convergedMs = Date.now() - t0;
        break;
      }
    }
    if (c.convergedMs !== undefined) {
      let min = resources;
      const holdUntil = Date.now() + HOLD_MS;
      while (Date.now() < holdUntil) {
        await sleep(250);
        min = Math.min(min, observe());
      }
      c.heldMin = min;
    }
  } catch (err) {
    c.error = err instanceof Error ? err.message : String(err);
  } finally {
    observe();
    await Promise.all(workers.map((w) => w.kill()));
  }
  return c;
}

export async function runScale(
  backends: readonly string[],
  sizes: readonly number[],
  nodes: number,
  timeoutMs: number,
  log: (msg: string) => void,
): Promise<ScaleCase[]> {
  const out: ScaleCase[] = [];
  for (const b of backends) {
    if (b !== 'sqlite' && b !== 'redis') continue;
    for (const n of sizes) {
      // A fresh store per case, so one case's leftovers cannot slow the next.
      let url: string;
      let close: () => Promise<void>;
      if (b === 'sqlite') {
        const dir = mkdtempSync(join(tmpdir(), 'rebalancer-scale-'));
        url = `sqlite:${join(dir, 'scale.db')}`;
        close = async () => rmSync(dir, { recursive: true, force: true });
      } else {
        const s = await startRedis();
        url = s.url;
        close = () => s.stop();
      }
      log(`scale: ${b}, ${nodes} member processes, ${n} resources…`);
      try {
        out.push(await scaleCase(url, b, nodes, n, timeoutMs));
      } finally {
        await close();
      }
    }
  }
  return out;
}

export function scaleReport(cases: readonly ScaleCase[]): string {
  const rows: string[][] = [
    [
      'backend',
      'nodes×resources',
      'add',
      'all running',
      `held ${HOLD_MS / 1000} s`,
      'max stall',
      'stall/TTL',
      'RSS before→max',
      'errors',
      'sessions lost',
      'max coordinators',
    ],
  ];
  for (const c of cases) {
    rows.push([
      c.backend,
      `${c.nodes}×${c.resources}`,
      c.addMs === undefined ? '-' : `${c.addMs} ms`,
      c.convergedMs !== undefined ? `${c.convergedMs} ms` : `NO (${c.bestRunning} at the end)`,
      c.heldMin === undefined ? '-' : c.heldMin === c.resources ? 'yes' : `no (min ${c.heldMin})`,
      `${c.maxStallMs} ms`,
      `${Math.round((c.maxStallMs / TTL_MS) * 1000) / 10} %`,
      `${c.rssMbBefore}→${c.maxRssMb} MB`,
      String(c.errors),
      String(c.sessionsLost),
      String(c.maxCoordinators),
    ]);
  }
  const notes = cases
    .filter((c) => c.error !== undefined || c.firstError !== undefined)
    .map((c) => `  ${c.backend} ${c.resources}: ${c.error ?? ''} ${c.firstError ?? ''}`.trimEnd());
  return [
    `Scale: resources added at once to a group of member processes (session TTL ${TTL_MS} ms); times from the start of the add`,
    table(rows),
    'max stall: the longest event-loop delay of any member process (monitorEventLoopDelay); RSS: the largest member process',
    ...(notes.length > 0 ? ['first errors:', ...notes] : []),
  ].join('\n');
}
