/**
 * `rebalancer demo`: the first minute with Rebalancer. Worker processes share
 * resources through a store (a SQLite file in a temp dir unless --store is
 * given); the demo kills one with SIGKILL, adds one, stops one gracefully,
 * and prints each transition's timing and an oracle's verdict on ownership.
 * A live view in a terminal, plain lines with --no-tty, JSON lines with
 * --json (the last line is the summary).
 */
import type { Command } from 'commander';
import { DemoFailedError, runDemo, type DemoStep, type DemoView } from '../../demo/run.js';
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
    .action(
      async (o: {
        workers: number;
        resources: number;
        ttlMs: number;
        tty: boolean;
        keep?: boolean;
        paceMs?: number;
      }) => {
        const g = globalOptions(program);
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

function stepLine(s: DemoStep): string {
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
