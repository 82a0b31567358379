/**
 * `rebalancer demo` as a newcomer runs it (a child process, SQLite in a temp
 * dir): it completes every step, and its oracle finds no double ownership —
 * and does find it when the workers' handlers are deliberately broken
 * (work left running in the background after the handler returned).
 */
import { describe, expect, it } from 'vitest';
import { cliAsync } from './cli-process.js';

interface Summary {
  violations: number;
  violationList: { kind: string }[];
  failoverMs: number;
  joinMs: number;
  leaveMs: number;
  moves: number;
  starts: number;
  effects: number;
  sessionTtlMs: number;
  steps: { step: string }[];
}

// Not spawnSync: a demo runs for up to a minute on a loaded box, and a worker blocked that long misses vitest's RPC
// deadline ("Timeout calling onTaskUpdate", an unhandled error that fails the run).
async function demo(
  env: Record<string, string> = {},
): Promise<{ code: number | null; summary: Summary; lines: string[] }> {
  const r = await cliAsync(['--json', 'demo'], { env: { ...process.env, ...env }, timeoutMs: 120_000 });
  const lines = r.out.split('\n').filter((l) => l !== '');
  if (lines.length === 0) throw new Error(`demo printed nothing (exit ${r.code}): ${r.err}`);
  return { code: r.code, summary: JSON.parse(lines.at(-1)!) as Summary, lines };
}

describe('rebalancer demo', () => {
  it('runs every step and its oracle finds no double ownership', async () => {
    const { code, summary, lines } = await demo();
    expect(code).toBe(0);
    expect(summary.steps.map((s) => s.step)).toEqual([
      'start',
      'settled',
      'kill',
      'failover',
      'add',
      'joined',
      'stop',
      'left',
      'shutdown',
    ]);
    // Every step was also printed as its own JSON line before the summary.
    expect(lines).toHaveLength(summary.steps.length + 1);
    expect(summary.violations).toBe(0);
    // A killed worker's resources wait for its session to expire: not sooner than a fraction of the TTL
    // (the last keep-alive may be up to a third of it old), and within a bound on a loaded machine.
    expect(summary.failoverMs).toBeGreaterThan(summary.sessionTtlMs / 3);
    expect(summary.failoverMs).toBeLessThan(summary.sessionTtlMs * 5);
    // 12 resources on 3 workers: the victim's 4 move, the new worker takes 4, the leaver's 4 move.
    expect(summary.moves).toBeGreaterThanOrEqual(12);
    expect(summary.moves).toBeLessThanOrEqual(16);
    expect(summary.effects).toBeGreaterThan(summary.starts);
  }, 120_000);

  it('catches work a broken handler leaves running after it returned', async () => {
    const { code, summary } = await demo({ REBALANCER_DEMO_BROKEN: 'background-work' });
    expect(summary.violations).toBeGreaterThan(0);
    expect(summary.violationList.map((v) => v.kind)).toContain('late-effect');
    expect(code).toBe(1);
  }, 120_000);
});
