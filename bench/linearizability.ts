/**
 * `npm run bench -- linearizability [--json] [--quick] [--sections kv,one-key,illegal,budget]`
 *
 * The linearizability checker (src/sim/linearizability.ts) on made-up linearizable key-value histories
 * (test/harness/histories.ts: a real sequential execution, intervals drawn around each linearization point,
 * clients that issue one operation at a time), each figure against the 1 s target for 10 000 operations:
 * 1. kv: 10 000 operations over 100 keys, 8 clients (with and without 5 % unknown outcomes);
 * 2. one-key: the same on a single key (no partitioning to help);
 * 3. illegal: the 100-key history with one read changed to a value never written, near its end;
 * 4. budget: search steps per second on a history that needs an exhaustive search (40 concurrent writes, then a read
 *    of a value none wrote), to size `maxStepsPerPartition` against a wall-clock allowance.
 *
 * Pure CPU: wall and CPU time, medians of several runs after a warm-up.
 */
import { checkOperations, type CheckResult } from '../src/sim/linearizability.js';
import { kvModel, registerModel, type KvOperation } from '../src/sim/linearizability-models.js';
import { kvHistory } from '../test/harness/histories.js';
import { round, table } from './stats.js';

const TARGET_MS = 1000;

function log(msg: string): void {
  process.stderr.write(`linearizability bench: ${msg}\n`);
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

interface Case {
  readonly name: string;
  readonly ops: number;
  readonly result: string;
  readonly steps: number;
  readonly cacheEntries: number;
  readonly wallMs: number;
  readonly cpuMs: number;
  readonly ratioToTarget: number;
}

function timeCheck(name: string, check: () => CheckResult<unknown, unknown>, ops: number, runs: number): Case {
  let last = check();
  const wall: number[] = [];
  const cpu: number[] = [];
  for (let i = 0; i < runs; i++) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    last = check();
    wall.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    cpu.push((c.user + c.system) / 1000);
  }
  const wallMs = round(median(wall), 1);
  return {
    name,
    ops,
    result: last.result,
    steps: last.stats.steps,
    cacheEntries: last.stats.maxCacheEntries,
    wallMs,
    cpuMs: round(median(cpu), 1),
    ratioToTarget: round(wallMs / TARGET_MS, 3),
  };
}

export async function run(args: string[]): Promise<void> {
  const json = args.includes('--json');
  const quick = args.includes('--quick');
  const sArg = args.indexOf('--sections');
  const sections = new Set(sArg >= 0 ? (args[sArg + 1] ?? '').split(',') : ['kv', 'one-key', 'illegal', 'budget']);
  const runs = quick ? 3 : 7;
  const kv = kvModel();
  const check = (h: readonly KvOperation[]) => (): CheckResult<unknown, unknown> =>
    checkOperations(kv, h) as CheckResult<unknown, unknown>;
  const result: Record<string, unknown> = { bench: 'linearizability', quick };
  const cases: Case[] = [];
  const base = { ops: 10_000, keys: 100, clients: 8, spread: 6 };

  if (sections.has('kv')) {
    log('10 000 operations over 100 keys…');
    cases.push(timeCheck('100 keys, 8 clients', check(kvHistory(1, base)), base.ops, runs));
    cases.push(
      timeCheck('100 keys, 8 clients, wide intervals', check(kvHistory(2, { ...base, spread: 30 })), base.ops, runs),
    );
    cases.push(
      timeCheck(
        '100 keys, 8 clients, 5 % unknown outcomes',
        check(kvHistory(3, { ...base, unknownRate: 0.05, neverAppliedRate: 0.5 })),
        base.ops,
        runs,
      ),
    );
  }
  if (sections.has('one-key')) {
    log('10 000 operations on one key…');
    cases.push(timeCheck('1 key, 8 clients', check(kvHistory(4, { ...base, keys: 1 })), base.ops, runs));
  }
  if (sections.has('illegal')) {
    log('a history with one impossible read…');
    const h = kvHistory(5, base);
    const at = h.findLastIndex((o, i) => i < h.length - 200 && o.input.op === 'get' && o.returnTime !== undefined);
    const bad = h.map((o, i) => (i === at ? { ...o, output: 'never-written' } : o));
    cases.push(timeCheck('100 keys, one read of a value never written', check(bad), base.ops, runs));
  }
  if (sections.has('budget')) {
    log('steps per second on an exhaustive search…');
    const reg = registerModel(0);
    const hard = [
      ...Array.from({ length: 40 }, (_, i) => ({
        client: i,
        input: { op: 'write' as const, value: i + 1 },
        callTime: 0,
        returnTime: 100,
        output: 0,
      })),
      { client: 40, input: { op: 'read' as const }, callTime: 200, returnTime: 201, output: -1 },
    ];
    const steps = quick ? 200_000 : 1_000_000;
    const c = timeCheck(
      `40 concurrent writes, budget ${steps} steps`,
      () => checkOperations(reg, hard, { maxStepsPerPartition: steps }) as CheckResult<unknown, unknown>,
      hard.length,
      quick ? 1 : 3,
    );
    cases.push(c);
    result['stepsPerSecond'] = Math.round(steps / (c.wallMs / 1000));
  }
  result['cases'] = cases;
  const out = [
    'Linearizability checker (median of runs; target: 10 000 operations in well under 1 s)',
    table([
      ['history', 'ops', 'result', 'steps', 'cache', 'wall', 'cpu', '÷ 1 s'],
      ...cases.map((c) => [
        c.name,
        String(c.ops),
        c.result,
        String(c.steps),
        String(c.cacheEntries),
        `${c.wallMs} ms`,
        `${c.cpuMs} ms`,
        `${c.ratioToTarget}×`,
      ]),
    ]),
  ];
  if (result['stepsPerSecond'] !== undefined) {
    out.push(`exhaustive search: ${String(result['stepsPerSecond'])} steps/s (cache grows with it)`);
  }
  process.stdout.write(`${out.join('\n')}\n`);
  if (json) process.stdout.write(`${JSON.stringify(result)}\n`);
}
