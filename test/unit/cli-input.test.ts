/**
 * What every command accepts as a number, as a user runs it (child processes on a SQLite file): plain decimal
 * digits within the documented range, nothing else. `Number()` reads "1e4", " 3000", "0x10" and "" as numbers;
 * each of those must be refused with exit code 2 and a message naming the option, the value and the range —
 * before anything starts (no demo, no sidecar, no simulation).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cliAsync, type CliResult } from './cli-process.js';

const dir = mkdtempSync(join(tmpdir(), 'rb-cli-input-'));
const store = `sqlite:${join(dir, 'cli.db')}`;

/** Run many CLI calls, a few at a time (each is a Node process start). */
async function all(calls: readonly (readonly string[])[]): Promise<CliResult[]> {
  const results: CliResult[] = [];
  for (let i = 0; i < calls.length; i += 4) {
    // Killed after 30 s: a value wrongly accepted would start a demo or a sidecar.
    const batch = calls.slice(i, i + 4).map((a) => cliAsync(['--store', store, ...a], { timeoutMs: 30_000 }));
    results.push(...(await Promise.all(batch)));
  }
  return results;
}

afterAll(() => rmSync(dir, { recursive: true, force: true }));

const RUN = ['run', '--group', 'g', '--exec', 'true'];

/** Every integer option of every command: how to call it, its flag and its documented range. */
const INTEGER_OPTIONS: readonly { prefix: string[]; flag: string; min: number; max: number }[] = [
  { prefix: ['status', '--group', 'g'], flag: '--limit', min: 0, max: 1_000_000 },
  { prefix: ['demo'], flag: '--workers', min: 2, max: 20 },
  { prefix: ['demo'], flag: '--resources', min: 1, max: 1000 },
  { prefix: ['demo'], flag: '--ttl-ms', min: 1000, max: 60_000 },
  { prefix: ['demo'], flag: '--pace-ms', min: 0, max: 60_000 },
  { prefix: ['sim'], flag: '--seeds', min: 1, max: 1_000_000 },
  { prefix: ['sim'], flag: '--seed', min: 0, max: 2 ** 32 - 1 },
  { prefix: ['sim'], flag: '--nodes', min: 1, max: 50 },
  { prefix: ['sim', '--scenario', 'slots'], flag: '--sites', min: 1, max: 50 },
  { prefix: ['sim'], flag: '--resources', min: 0, max: 5000 },
  { prefix: ['sim', '--scenario', 'slots'], flag: '--slots', min: 1, max: 5000 },
  { prefix: RUN, flag: '--ttl-ms', min: 1000, max: 300_000 },
  { prefix: RUN, flag: '--drain-timeout-ms', min: 1, max: 3_600_000 },
  { prefix: RUN, flag: '--restart-delay-ms', min: 1, max: 86_400_000 },
  { prefix: RUN, flag: '--max-restart-delay-ms', min: 1, max: 86_400_000 },
];

/** Values `Number()` would take as whole numbers (most of them inside every range above), and other near misses. */
const NOT_DIGITS = ['1e4', ' 3000', '3000 ', '0x10', '+5', '-1', '', '1.0', '1_000', '2.5', 'ten', '١٢'];

describe('integer options: plain decimal digits within the documented range', () => {
  it('every form that is not plain digits is refused, on one option, with exit 2, the value and the range', async () => {
    const results = await all(NOT_DIGITS.map((v) => ['status', '--group', 'g', '--limit', v]));
    NOT_DIGITS.forEach((v, i) => {
      expect([results[i]!.code, results[i]!.err], JSON.stringify(v)).toEqual([
        2,
        `rebalancer: --limit must be a whole number from 0 to 1000000 (decimal digits only), got ${JSON.stringify(v)}\n`,
      ]);
    });
  }, 120_000);

  it('every integer option of every command refuses an exponent, surrounding space and values out of range', async () => {
    const cases: { o: (typeof INTEGER_OPTIONS)[number]; v: string }[] = [];
    for (const o of INTEGER_OPTIONS) {
      // Number() reads "1000e0" and " 1000" as 1000: inside the range, so accepted before.
      for (const v of [`${o.min}e0`, ` ${o.min}`, String(o.max + 1)]) cases.push({ o, v });
      if (o.min > 0) cases.push({ o, v: String(o.min - 1) });
    }
    const results = await all(cases.map(({ o, v }) => [...o.prefix, o.flag, v]));
    results.forEach((r, i) => {
      const { o, v } = cases[i]!;
      expect([r.code, r.err], [...o.prefix, o.flag, JSON.stringify(v)].join(' ')).toEqual([
        2,
        `rebalancer: ${o.flag} must be a whole number from ${o.min} to ${o.max} (decimal digits only), got ${JSON.stringify(v)}\n`,
      ]);
    });
  }, 300_000);

  it('--weight (a decimal number above 0) is read the same strict way', async () => {
    const bad = ['1e2', ' 2', '0', '0.0', '-1', '.5', '5.', '1000001', ''];
    const results = await all(bad.map((v) => [...RUN, '--weight', v]));
    bad.forEach((v, i) => {
      expect([results[i]!.code, results[i]!.err], JSON.stringify(v)).toEqual([
        2,
        expect.stringContaining(`--weight must be a number above 0 and at most 1000000`),
      ]);
      expect(results[i]!.err).toContain(`got ${JSON.stringify(v)}`);
    });
  }, 120_000);

  it('plain digits within range are accepted (leading zeros too), and the command runs', async () => {
    const [limit, sim] = await all([
      ['--json', 'status', '--group', 'nobody', '--limit', '007'],
      ['sim', '--seeds', '1', '--seed', '0', '--nodes', '03', '--resources', '0'],
    ]);
    expect(limit!.code).toBe(1); // past the options: the group is unknown
    expect(sim!.code).toBe(0);
    expect(sim!.out).toMatch(/^1 seeds, \d+ steps, 0 violations/);
  }, 120_000);
});
