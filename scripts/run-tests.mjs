// Runs vitest and prints, from the same run, which store backends ran the
// conformance suite and passed. Fails if any backend did not run or any test
// failed or was skipped (a skipped conformance test proves nothing).
//
//   node scripts/run-tests.mjs                 all tests (npm test)
//   node scripts/run-tests.mjs --conformance   only the conformance suite
//   extra arguments are passed to vitest (e.g. a file filter)
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';

const BACKENDS = ['memory', 'sqlite', 'postgres', 'redis', 'etcd', 'zookeeper'];
const args = process.argv.slice(2);
const conformanceOnly = args.includes('--conformance');
const passThrough = args.filter((a) => a !== '--conformance');
const filters = passThrough.filter((a) => !a.startsWith('-'));
const dir = mkdtempSync(join(tmpdir(), 'rebalancer-vitest-'));
const out = join(dir, 'results.json');
const vitest = createRequire(import.meta.url).resolve('vitest/vitest.mjs');
const vitestArgs = [
  vitest,
  'run',
  ...(conformanceOnly && filters.length === 0 ? ['test/conformance'] : []),
  ...passThrough,
  '--reporter=default',
  '--reporter=json',
  `--outputFile.json=${out}`,
];
const run = spawnSync(process.execPath, vitestArgs, { stdio: 'inherit' });

let results;
try {
  results = JSON.parse(readFileSync(out, 'utf8'));
} catch {
  console.error(`vitest produced no results (exit ${run.status}, signal ${run.signal})`);
  process.exit(run.status || 1);
} finally {
  rmSync(dir, { recursive: true, force: true });
}

const perBackend = new Map();
let passed = 0;
let failed = 0;
let skipped = 0;
for (const file of results.testResults ?? []) {
  for (const t of file.assertionResults ?? []) {
    if (t.status === 'passed') passed++;
    else if (t.status === 'failed') failed++;
    else skipped++;
    const m = /^store conformance: (.+)$/.exec(t.ancestorTitles?.[0] ?? '');
    if (!m) continue;
    const row = perBackend.get(m[1]) ?? { passed: 0, failed: 0, skipped: 0 };
    if (t.status === 'passed') row.passed++;
    else if (t.status === 'failed') row.failed++;
    else row.skipped++;
    perBackend.set(m[1], row);
  }
}
// A file that failed to load (e.g. its server did not start) has no assertions: count it.
for (const file of results.testResults ?? []) {
  if ((file.assertionResults ?? []).length === 0 && file.status === 'failed') failed++;
}

const checkConformance = conformanceOnly || filters.length === 0;
let conformanceOk = true;
if (checkConformance) {
  console.log('\nstore conformance by backend:');
  for (const b of BACKENDS) {
    const row = perBackend.get(b);
    const ok = row !== undefined && row.passed > 0 && row.failed === 0 && row.skipped === 0;
    if (!ok) conformanceOk = false;
    const detail =
      row === undefined ? 'DID NOT RUN' : `${row.passed} passed, ${row.failed} failed, ${row.skipped} skipped`;
    console.log(`  ${ok ? 'PASS' : 'FAIL'}  ${b.padEnd(10)} ${detail}`);
  }
}
const ok = run.status === 0 && failed === 0 && skipped === 0 && conformanceOk;
if (skipped > 0) console.log(`${skipped} test(s) were skipped: a skipped test proves nothing`);
console.log(`\ntotal: ${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(ok ? 0 : 1);
