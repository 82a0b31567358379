/**
 * Corrupt data as an operator meets it on the command line (a SQLite file, the CLI as a child process): `status`
 * names the unreadable key, says what is wrong and how to repair it; `groups repair` lists what it would delete and
 * deletes it with --delete; `store repair-revision` has nothing to do on SQLite.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createSqliteStore } from '../../src/backends/sqlite/index.js';
import { GroupAdmin } from '../../src/runtime/groups/registry.js';
import { cli } from './cli-process.js';

const dir = mkdtempSync(join(tmpdir(), 'rb-cli-repair-'));
const path = join(dir, 'cli.db');
const SQLITE = `sqlite:${path}`;
const STATE = 'g/g1/state';

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('repairing corrupt data with the CLI', () => {
  it('status shows the key and the repair; groups repair lists, then deletes it', async () => {
    const store = await createSqliteStore({ path });
    try {
      await new GroupAdmin(store, 'g1').add(['a', 'b']);
      await store.txn({ compare: [], then: [{ op: 'put', key: STATE, value: 'not json' }] });
    } finally {
      await store.close();
    }
    const status = await cli(['--store', SQLITE, 'status', '--group', 'g1']);
    expect(status.code).toBe(0);
    expect(status.out).toContain('WARNING: 1 key(s) hold data Rebalancer cannot read:');
    expect(status.out).toContain(`  ${STATE}\n    problem: ${STATE} does not hold valid JSON`);
    expect(status.out).toContain('rebalancer groups repair --group g1 --delete');
    expect(status.out).toContain('The coordinator stopped coordinating');
    const json = JSON.parse((await cli(['--json', '--store', SQLITE, 'status', '--group', 'g1'])).out) as {
      problems: { key: string; repair: string }[];
    };
    expect(json.problems.map((p) => p.key)).toEqual([STATE]);

    const dry = await cli(['--store', SQLITE, 'groups', 'repair', '--group', 'g1']);
    expect(dry.code).toBe(0);
    expect(dry.out).toContain(`${STATE}: would-delete`);
    expect(dry.out).toContain('run again with --delete');
    const done = await cli(['--json', '--store', SQLITE, 'groups', 'repair', '--group', 'g1', '--delete']);
    expect(JSON.parse(done.out)).toMatchObject({ group: 'g1', steps: [{ key: STATE, action: 'deleted' }] });
    expect((await cli(['--store', SQLITE, 'status', '--group', 'g1'])).out).not.toContain('WARNING');
    expect((await cli(['--store', SQLITE, 'groups', 'repair', '--group', 'g1'])).out).toContain('nothing to repair');
  }, 120_000);

  it('store repair-revision: nothing to do on SQLite', async () => {
    const r = await cli(['--store', SQLITE, 'store', 'repair-revision']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/the sqlite store keeps no separate revision counter/);
  }, 60_000);
});
