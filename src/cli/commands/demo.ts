/**
 * `rebalancer demo`: the first minute with Rebalancer. Worker processes share
 * resources through a store (a SQLite file in a temp dir unless --store is
 * given); the demo kills one with SIGKILL, adds one, stops one gracefully,
 * and prints each transition's timing and an oracle's verdict on ownership.
 * A live view in a terminal, plain lines with --no-tty, JSON lines with
 * --json (the last line is the summary).
 *
 * `demo --fleet`: the same for a fleet of Raft groups (src/demo/fleet.ts):
 * nodes join, drain and die while a client keeps writing, and every
 * acknowledged command is checked at the end.
 */
import type { Command } from 'commander';
import { runFleetDemo, type FleetDemoStep, type FleetDemoView } from '../../demo/fleet.js';
import { DemoFailedError, runDemo, type DemoStep, type DemoView } from '../../demo/run.js';
import { InvalidArgumentError } from '../../errors.js';
import { STORE_LIMITS } from '../../store/validate.js';
import { EXIT, globalOptions, out } from '../context.js';
import { integerFlag } from '../input.js';

export function register(program: Command): void {
  program
    .command('demo')
    .description(
      'watch worker processes share resources: kill -9 one, add one, stop one; timings and an ownership check',
    )
    .addOption(integerFlag('--workers <n>', 'worker processes at the start', { min: 2, max: 20 }, 3))
    .addOption(integerFlag('--resources <k>', 'resources to share', { min: 1, max: 1000 }, 12))
    .addOption(
      integerFlag(
        '--ttl-ms <ms>',
        'session TTL: how long a killed worker keeps its resources',
        // The workers' sessions cannot be shorter than any store allows (below it they could not join).
        { min: STORE_LIMITS.minSessionTtlMs, max: 60_000 },
        2000,
      ),
    )
    .option('--no-tty', 'plain lines instead of the live view')
    .addOption(
      integerFlag('--pace-ms <ms>', 'pause after each step (default: 1500 in the live view, else 0)', {
        min: 0,
        max: 60_000,
      }),
    )
    .option('--keep', 'keep the temp dir (store, oracle file, worker logs)')
    .option('--fleet', 'the fleet demo instead: Raft groups move over in-process fleet nodes that join, drain and die')
    .addOption(integerFlag('--groups <n>', 'with --fleet: counter groups (3 replicas each)', { min: 1, max: 20 }, 4))
    .action(
      async (o: {
        fleet?: boolean;
        groups: number;
        workers: number;
        resources: number;
        ttlMs: number;
        tty: boolean;
        keep?: boolean;
        paceMs?: number;
      }) => {
        const g = globalOptions(program);
        if (o.fleet === true) return fleetDemo(program, o);
        if (program.commands.find((c) => c.name() === 'demo')!.getOptionValueSource('groups') === 'cli') {
          throw new InvalidArgumentError('--groups applies to demo --fleet only (the resource demo has --resources)');
        }
        const { workers, resources, ttlMs: sessionTtlMs } = o;
        const json = g.json === true;
        const live = !json && o.tty && process.stdout.isTTY;
        const paceMs = o.paceMs ?? (live ? 1500 : 0);
        // Only an explicit --store replaces the demo's own temp-dir SQLite file.
        const explicitStore = program.getOptionValueSource('store') === 'cli';
        const explicitNs = program.getOptionValueSource('namespace') === 'cli';
        const abort = new AbortController();
        const onSignal = (): void => abort.abort(new DemoFailedError('interrupted'));
        process.once('SIGINT', onSignal);
        let lastFrame = 0;
        let view: DemoView | undefined;
        const draw = (force = false): void => {
          if (!live || view === undefined) return;
          const now = Date.now();
          if (!force && now - lastFrame < 100) return;
          lastFrame = now;
          process.stdout.write(`\x1b[H\x1b[2J${renderLive(view, { workers, resources, sessionTtlMs })}\n`);
        };
        if (!live && !json) {
          out(
            `Rebalancer demo: ${workers} worker processes share ${resources} resources; each resource runs on exactly one of them.`,
          );
        }
        try {
          const summary = await runDemo({
            storeUrl: explicitStore ? g.store : undefined,
            namespace: explicitNs ? g.namespace : undefined,
            workers,
            resources,
            sessionTtlMs,
            keep: o.keep,
            paceMs,
            broken: process.env['REBALANCER_DEMO_BROKEN'],
            signal: abort.signal,
            onStep: (s) => {
              if (json) out(JSON.stringify(s));
              else if (!live) out(stepLine(s));
              else draw(true);
            },
            onStatus: (v) => {
              view = v;
              draw();
            },
          });
          if (live && view !== undefined) {
            view = { ...view, current: 'done' };
            draw(true);
          }
          if (json) {
            out(JSON.stringify(summary));
          } else {
            out('');
            out(`store            ${summary.store} (namespace ${summary.namespace})`);
            out(`settle           ${ms(summary.settleMs)}  (register ${resources} resources → all running, balanced)`);
            out(
              `failover         ${ms(summary.failoverMs)}  (kill -9 → last of its resources running elsewhere; TTL ${ms(sessionTtlMs)})`,
            );
            out(`join             ${ms(summary.joinMs)}  (new worker started → balanced)`);
            out(`graceful leave   ${ms(summary.leaveMs)}  (SIGTERM → its resources running elsewhere)`);
            out(`moves            ${summary.moves}`);
            out(
              summary.violations === 0
                ? `double ownership none: the oracle checked ${summary.starts} runs and ${summary.effects} side effects`
                : `VIOLATIONS      ${summary.violations}:\n${summary.violationList
                    .slice(0, 10)
                    .map((v) => `  ${v.kind} ${v.resource}: ${v.detail}`)
                    .join('\n')}`,
            );
            if (summary.dir !== undefined) out(`files            ${summary.dir}`);
            out(`total            ${ms(summary.totalMs)}`);
          }
          if (summary.violations > 0) process.exitCode = EXIT.failed;
        } catch (err) {
          if (!(err instanceof DemoFailedError)) throw err;
          process.stderr.write(`rebalancer demo: ${err.message}\n`);
          process.exitCode = EXIT.failed;
        } finally {
          process.off('SIGINT', onSignal);
        }
      },
    );
}

function ms(v: number): string {
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`;
}

function stepLine(s: DemoStep | FleetDemoStep): string {
  const at = `[${(s.atMs / 1000).toFixed(1).padStart(5)} s]`;
  return `${at} ${s.message}${s.durationMs === undefined ? '' : ` (${ms(s.durationMs)})`}`;
}

function renderLive(v: DemoView, o: { workers: number; resources: number; sessionTtlMs: number }): string {
  const lines: string[] = [];
  lines.push(`Rebalancer demo — worker processes share ${o.resources} resources through one store.`);
  lines.push(
    'Each resource runs on exactly one worker; a move stops it on the old worker before the new one starts it.',
  );
  lines.push('');
  const s = v.status;
  const owned = new Map<string, string[]>();
  const moving: string[] = [];
  for (const r of s?.resources ?? []) {
    if (r.owner !== undefined) owned.set(r.owner, [...(owned.get(r.owner) ?? []), r.name]);
    if (r.state !== 'active') {
      moving.push(
        `${r.name} ${r.state}${r.owner === undefined ? '' : ` on ${r.owner}`}${r.assignedTo === undefined ? '' : ` → ${r.assignedTo}`}`,
      );
    }
  }
  const nodes = new Set([...v.live, ...(s?.nodes.map((n) => n.id) ?? []), ...owned.keys()]);
  for (const id of [...nodes].sort((a, b) => Number(a.slice(1)) - Number(b.slice(1)))) {
    const isLive = v.live.includes(id);
    const coord = s?.coordinator?.nodeId === id ? '★' : ' ';
    const state = isLive ? '' : ' (killed or stopped; its session not yet expired)';
    lines.push(`  ${id.padEnd(4)} ${coord} ${(owned.get(id) ?? []).join(' ') || '-'}${state}`);
  }
  lines.push(`  ★ coordinator${moving.length > 0 ? `   in flight: ${moving.join(', ')}` : ''}`);
  lines.push('');
  for (const st of v.steps) lines.push(`✓ ${stepLine(st)}`);
  if (v.current !== 'done') lines.push(`… ${v.current}`);
  return lines.join('\n');
}

/** `demo --fleet`: rendered like the resource demo (a live view, plain lines, or JSON lines and a summary). */
async function fleetDemo(
  program: Command,
  o: { groups: number; tty: boolean; keep?: boolean; paceMs?: number },
): Promise<void> {
  const g = globalOptions(program);
  const demo = program.commands.find((c) => c.name() === 'demo')!;
  for (const flag of ['workers', 'resources', 'ttlMs'] as const) {
    if (demo.getOptionValueSource(flag) === 'cli') {
      throw new InvalidArgumentError(`--${flag === 'ttlMs' ? 'ttl-ms' : flag} does not apply to demo --fleet`);
    }
  }
  // The fleet demo runs its own embedded SQLite store in a temp dir: another store would outlive its nodes' data.
  if (program.getOptionValueSource('store') === 'cli') {
    throw new InvalidArgumentError('demo --fleet runs on its own SQLite store in a temp dir: leave out --store');
  }
  const json = g.json === true;
  const live = !json && o.tty && process.stdout.isTTY;
  const paceMs = o.paceMs ?? (live ? 1500 : 0);
  const abort = new AbortController();
  const onSignal = (): void => abort.abort(new DemoFailedError('interrupted'));
  process.once('SIGINT', onSignal);
  let lastFrame = 0;
  let view: FleetDemoView | undefined;
  const moves: string[] = [];
  const draw = (force = false): void => {
    if (!live || view === undefined) return;
    const now = Date.now();
    if (!force && now - lastFrame < 100) return;
    lastFrame = now;
    process.stdout.write(`\x1b[H\x1b[2J${renderFleetLive(view, moves, o.groups)}\n`);
  };
  if (!live && !json) {
    out(
      `Rebalancer fleet demo: ${o.groups} counter groups (Raft, 3 replicas each) on fleet nodes in this process; ` +
        'a client outside the fleet keeps adding to every counter.',
    );
  }
  try {
    const summary = await runFleetDemo({
      groups: o.groups,
      paceMs,
      keep: o.keep,
      signal: abort.signal,
      onStep: (s) => {
        if (json) out(JSON.stringify(s));
        else if (!live) out(s.step === 'move' ? `          ${s.message}` : stepLine(s));
        else {
          if (s.step === 'move') moves.push(stepLine(s));
          draw(true);
        }
      },
      onStatus: (v) => {
        view = v;
        draw();
      },
    });
    if (live && view !== undefined) {
      view = { ...view, current: 'done' };
      draw(true);
    }
    if (json) out(JSON.stringify(summary));
    else {
      out('');
      out(
        `settle           ${ms(summary.settleMs)}  (add ${summary.groups} groups → every leader on its desired node)`,
      );
      out(`join             ${ms(summary.joinMs)}  (n4 started → its share moved to it, one change at a time)`);
      out(`drain            ${ms(summary.drainMs)}  (n4 deactivated → its members moved away, it left)`);
      out(
        `failover         ${ms(summary.failoverMs)}  (coordinator stopped without draining → its replicas ` +
          `on the survivors; grace period ${ms(summary.gracePeriodMs)})`,
      );
      out(`moves            ${summary.moves} membership changes, ${summary.leaderChanges} new leaders`);
      out(
        summary.problems.length === 0
          ? `commands         every acknowledged command survived: ${summary.acknowledged} acknowledged, each ` +
              `applied exactly once${summary.inDoubt > 0 ? ` (${summary.inDoubt} in doubt)` : ''}`
          : `PROBLEMS         ${summary.problems.join('\n                 ')}`,
      );
      if (summary.dir !== undefined) out(`files            ${summary.dir}`);
      out(`total            ${ms(summary.totalMs)}`);
    }
    if (summary.problems.length > 0) process.exitCode = EXIT.failed;
  } catch (err) {
    if (!(err instanceof DemoFailedError)) throw err;
    process.stderr.write(`rebalancer demo --fleet: ${err.message}\n`);
    process.exitCode = EXIT.failed;
  } finally {
    process.off('SIGINT', onSignal);
  }
}

function renderFleetLive(v: FleetDemoView, moves: readonly string[], groups: number): string {
  const lines: string[] = [];
  lines.push(`Rebalancer fleet demo — ${groups} counter groups (Raft, 3 replicas each) over fleet nodes.`);
  lines.push('A client outside the fleet keeps adding to every counter; members move one change at a time.');
  lines.push('');
  const s = v.status;
  for (const n of s?.nodes ?? []) {
    const leads = s!.groups.filter((g) => g.leader === n.id).map((g) => g.name);
    const holds = s!.groups.filter((g) => g.voters.includes(n.id) || g.learners.includes(n.id)).length;
    const coord = s!.coordinator === n.id ? '★' : ' ';
    const state = !v.live.includes(n.id)
      ? ' (stopped: its record not gone yet)'
      : n.state === 'deactivating'
        ? ' (draining)'
        : '';
    lines.push(
      `  ${n.id.padEnd(3)} ${coord} ${n.zone.padEnd(3)} ${String(holds).padStart(2)} replicas  leads ${leads.join(' ') || '-'}${state}`,
    );
  }
  const moving = (s?.groups ?? []).filter((g) => g.health !== 'converged');
  lines.push(
    `  ★ coordinator${moving.length > 0 ? `   moving: ${moving.map((g) => `${g.name} (${g.health})`).join(', ')}` : ''}`,
  );
  lines.push(`  commands acknowledged ${v.acknowledged}${v.inDoubt > 0 ? ` · in doubt ${v.inDoubt}` : ''}`);
  lines.push('');
  for (const m of moves.slice(-8)) lines.push(`  ${m}`);
  if (moves.length > 0) lines.push('');
  for (const st of v.steps.filter((x) => x.step !== 'move')) lines.push(`✓ ${stepLine(st)}`);
  if (v.current !== 'done') lines.push(`… ${v.current}`);
  return lines.join('\n');
}
