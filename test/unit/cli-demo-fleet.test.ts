/**
 * `rebalancer demo --fleet` as a newcomer runs it (a child process; fleet nodes in it, SQLite in a temp dir): every
 * step completes, members move, and every command the client saw acknowledged is in the final counters. The check
 * itself is tested on made-up histories: it must catch a lost and a doubled command.
 */
import { describe, expect, it } from 'vitest';
import { checkCounter, type FleetDemoSummary } from '../../src/demo/fleet.js';
import { cliAsync } from './cli-process.js';

describe('rebalancer demo --fleet', () => {
  it('runs every step and finds every acknowledged command in the counters', async () => {
    const r = await cliAsync(['--json', 'demo', '--fleet'], { timeoutMs: 120_000 });
    const lines = r.out.split('\n').filter((l) => l !== '');
    if (lines.length === 0) throw new Error(`demo --fleet printed nothing (exit ${r.code}): ${r.err}`);
    const summary = JSON.parse(lines.at(-1)!) as FleetDemoSummary;
    expect(r.code, r.err).toBe(0);
    expect(summary.problems).toEqual([]);
    expect(summary.steps.filter((s) => s.step !== 'move').map((s) => s.step)).toEqual([
      'start',
      'settled',
      'join',
      'joined',
      'drain',
      'drained',
      'kill',
      'failover',
      'check',
    ]);
    // Every step and every move was printed as its own JSON line before the summary.
    expect(lines).toHaveLength(summary.steps.length + 1);
    expect(summary.steps.at(-1)!.message).toMatch(/^every acknowledged command survived: \d+ commands/);
    expect(summary.acknowledged).toBeGreaterThan(0);
    expect(summary.lost).toBe(0);
    // n4 was added (learner, then voter) and removed again, and the stopped node's members were removed.
    const moves = summary.steps.filter((s) => s.step === 'move').map((s) => s.message);
    expect(moves.some((m) => /n4 added as a learner/.test(m))).toBe(true);
    expect(moves.some((m) => /n4 promoted to voter/.test(m))).toBe(true);
    expect(moves.some((m) => /n4 removed/.test(m))).toBe(true);
    expect(summary.moves).toBeGreaterThanOrEqual(3);
    expect(summary.dir).toBeUndefined(); // cleaned up after a run that went well
  }, 120_000);

  it('refuses the resource demo’s options', async () => {
    const r = await cliAsync(['demo', '--fleet', '--workers', '4']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/--workers does not apply to demo --fleet/);
  });
});

describe('the fleet demo’s check', () => {
  it('passes a counter holding every acknowledged command once, with commands in doubt applied or not', () => {
    expect(checkCounter('c', [1, 2, 3], 0, 3)).toEqual({ lost: 0, problems: [] });
    expect(checkCounter('c', [1, 3], 1, 3)).toEqual({ lost: 0, problems: [] }); // the one in doubt applied
    expect(checkCounter('c', [1, 2], 1, 2)).toEqual({ lost: 0, problems: [] }); // it did not
  });

  it('catches a lost command and a command applied twice', () => {
    const lost = checkCounter('c', [1, 2, 3], 0, 2);
    expect(lost.lost).toBe(1);
    expect(lost.problems.join('; ')).toMatch(/above the final total 2 \(lost\).*total 2 < 3 acknowledged/);
    expect(checkCounter('c', [1, 2], 0, 3).problems).toEqual([
      'c: total 3 > 2 acknowledged + 0 in doubt (applied twice?)',
    ]);
    expect(checkCounter('c', [1, 1], 0, 2).problems).toEqual(['c: 1 results acknowledged twice']);
  });
});
