/** The registry commands of the CLI, as a user runs them (a child process on a SQLite file). */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'rb-cli-'));
const store = `sqlite:${join(dir, 'cli.db')}`;

function cli(args: string[], input?: string): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', '--store', store, ...args], {
    cwd: REPO,
    input,
    encoding: 'utf8',
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('rebalancer resources / groups', () => {
  it('adds (from arguments and stdin), removes, lists, and lists groups', () => {
    expect(cli(['resources', 'add', '--group', 'q', 'a', 'b', 'c']).out).toContain('3 added');
    expect(cli(['resources', 'add', '--group', 'q', '-'], 'c\nd\n\n').out).toContain('1 added, 1 already registered');
    const removed = cli(['--json', 'resources', 'remove', '--group', 'q', 'a', 'zz']);
    expect(JSON.parse(removed.out)).toEqual({ group: 'q', removed: 1, missing: 1 });
    expect(removed.code).toBe(1); // something asked for was not there
    expect(JSON.parse(cli(['--json', 'resources', 'list', '--group', 'q']).out)).toEqual({
      group: 'q',
      resources: ['b', 'c', 'd'],
    });
    expect(JSON.parse(cli(['--json', 'groups', 'list']).out)).toEqual({
      groups: [{ group: 'q', members: 0, resources: 3 }],
    });
  }, 60_000);

  it('rejects bad input with exit code 2 and a message that says what to do', () => {
    const badGroup = cli(['resources', 'add', '--group', 'no spaces', 'x']);
    expect(badGroup.code).toBe(2);
    expect(badGroup.err).toMatch(/group name .* is invalid: use/);
    const badName = cli(['resources', 'add', '--group', 'q', 'x'.repeat(600)]);
    expect(badName.code).toBe(2);
    expect(cli(['resources', 'list']).code).toBe(2); // --group missing
    // Nothing was written by the failed calls.
    const groups = (JSON.parse(cli(['--json', 'groups', 'list']).out) as { groups: { group: string }[] }).groups;
    expect(groups.map((g) => g.group)).not.toContain('no spaces');
    expect(cli(['resources', 'list', '--group', 'q']).out).not.toContain('xxxx');
  }, 60_000);
});
