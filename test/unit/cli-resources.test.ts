/** The registry commands of the CLI, as a user runs them (a child process on a SQLite file). */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { eventually } from '../harness/wait.js';
import { CLI, cli as runCli, REPO, type CliResult } from './cli-process.js';

const dir = mkdtempSync(join(tmpdir(), 'rb-cli-'));
const store = `sqlite:${join(dir, 'cli.db')}`;

function cli(args: string[], input?: string): Promise<CliResult> {
  return runCli(['--store', store, ...args], { input });
}

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('rebalancer resources / groups', () => {
  it('adds (from arguments and stdin), removes, lists, and lists groups', async () => {
    expect((await cli(['resources', 'add', '--group', 'q', 'a', 'b', 'c'])).out).toContain('3 added');
    expect((await cli(['resources', 'add', '--group', 'q', '-'], 'c\r\n  d \r\n')).out).toContain(
      '1 added, 1 already registered',
    );
    const removed = await cli(['--json', 'resources', 'remove', '--group', 'q', 'a', 'zz']);
    expect(JSON.parse(removed.out)).toEqual({ group: 'q', removed: 1, missing: 1 });
    expect(removed.code).toBe(1); // something asked for was not there
    expect(JSON.parse((await cli(['--json', 'resources', 'list', '--group', 'q'])).out)).toEqual({
      group: 'q',
      resources: ['b', 'c', 'd'],
    });
    expect(JSON.parse((await cli(['--json', 'groups', 'list'])).out)).toEqual({
      groups: [{ group: 'q', members: 0, resources: 3 }],
    });
  }, 60_000);

  it('rejects bad input with exit code 2 and a message that says what to do', async () => {
    const badGroup = await cli(['resources', 'add', '--group', 'no spaces', 'x']);
    expect(badGroup.code).toBe(2);
    expect(badGroup.err).toMatch(/group name .* is invalid: use/);
    const badName = await cli(['resources', 'add', '--group', 'q', 'x'.repeat(600)]);
    expect(badName.code).toBe(2);
    expect((await cli(['resources', 'list'])).code).toBe(2); // --group missing
    // Nothing was written by the failed calls.
    const groups = (JSON.parse((await cli(['--json', 'groups', 'list'])).out) as { groups: { group: string }[] })
      .groups;
    expect(groups.map((g) => g.group)).not.toContain('no spaces');
    expect((await cli(['resources', 'list', '--group', 'q'])).out).not.toContain('xxxx');
  }, 60_000);

  it('one rule for names from arguments and from stdin: trimmed, and refused when empty after trimming', async () => {
    // Arguments are trimmed like stdin lines: " e " typed is the same resource as "e" piped.
    expect((await cli(['--json', 'resources', 'add', '--group', 't', ' e ', '\tf'])).out).toBe(
      '{"group":"t","added":2,"existing":0}\n',
    );
    expect((await cli(['--json', 'resources', 'add', '--group', 't', '-'], ' e\nf \n')).out).toBe(
      '{"group":"t","added":0,"existing":2}\n',
    );
    expect(JSON.parse((await cli(['--json', 'resources', 'list', '--group', 't'])).out)).toEqual({
      group: 't',
      resources: ['e', 'f'],
    });
    const refused: [string[], string | undefined, string][] = [
      [['g', ''], undefined, 'the resource name in argument 2 is empty; give a name or leave it out'],
      [['  '], undefined, 'the resource name in argument 1 is empty after trimming white space'],
      [['-'], 'g\n\nh\n', 'the resource name on line 2 of standard input is empty'],
      [['-'], 'g\n \t \n', 'the resource name on line 2 of standard input is empty after trimming white space'],
      [['g', '-'], 'h\n', '"-" (read the names from standard input) must be the only name given'],
    ];
    for (const [names, input, message] of refused) {
      for (const command of ['add', 'remove']) {
        const r = await cli(['resources', command, '--group', 't', ...names], input);
        expect([r.code, r.err], `${command} ${JSON.stringify(names)} ${JSON.stringify(input)}`).toEqual([
          2,
          expect.stringContaining(`rebalancer: ${message}`),
        ]);
      }
    }
    // Nothing was written by the refused calls (g and h are valid names; they came with an empty one).
    expect(JSON.parse((await cli(['--json', 'resources', 'list', '--group', 't'])).out)).toEqual({
      group: 't',
      resources: ['e', 'f'],
    });
  }, 120_000);

  it('status: unknown group exits 1 naming what to check; a registered group prints its resources', async () => {
    const unknown = await cli(['status', '--group', 'nobody']);
    expect(unknown.code).toBe(1);
    expect(unknown.err).toMatch(/group "nobody" has no members.*--namespace/);
    const s = await cli(['--json', 'status', '--group', 'q']);
    expect(s.code).toBe(0);
    const status = JSON.parse(s.out) as { nodes: unknown[]; coordinator?: unknown; counts: { unassigned: number } };
    expect(status.nodes).toEqual([]);
    expect(status.coordinator).toBeUndefined();
    expect(status.counts.unassigned).toBe(3);
    expect((await cli(['status', '--group', 'q'])).out).toMatch(/coordinator: none elected/);
    expect((await cli(['status', '--group', 'q', '--limit', 'x'])).code).toBe(2);
  }, 60_000);

  it('status --watch prints a new snapshot on each change and stops on SIGTERM with exit 0', async () => {
    const child = spawn(process.execPath, [...CLI, '--store', store, '--json', 'status', '--group', 'w', '--watch'], {
      cwd: REPO,
    });
    let outText = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (outText += d));
    const lines = (): { found?: boolean; resources?: { name: string }[] }[] =>
      outText
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as { found?: boolean; resources?: { name: string }[] });
    const waitFor = (what: string, pred: () => boolean): Promise<true> =>
      eventually(pred, { what, timeoutMs: 30_000, intervalMs: 50, context: () => `output so far: ${outText}` });
    await waitFor('a status of the group not found', () => lines().some((l) => l.found === false));
    await cli(['resources', 'add', '--group', 'w', 'one']);
    await waitFor('a status with one resource', () => lines().some((l) => l.resources?.length === 1));
    await cli(['resources', 'add', '--group', 'w', 'two']);
    await waitFor('a status with two resources', () => lines().some((l) => l.resources?.length === 2));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  }, 60_000);
  it('adds 100 000 names with progress on stderr, and refuses a group above 100 000 resources saying what to do', async () => {
    const many = Array.from({ length: 100_000 }, (_, i) => `r-${i}`);
    const added = await cli(['resources', 'add', '--group', 'big', '-'], `${many.join('\n')}\n`);
    expect(added.code).toBe(0);
    expect(added.out).toContain('100000 added');
    // Progress while it writes, and the end.
    expect(added.err).toMatch(/group big: \d+ of 100000 registered \(\d+ %\)/);
    expect(added.err).toContain('group big: 100000 of 100000 registered (100 %)');
    // One more is over the limit: refused (usage error), nothing written.
    const over = await cli(['resources', 'add', '--group', 'big', 'one-more']);
    expect(over.code).toBe(2);
    expect(over.err).toMatch(/group big would have 100001 resources, above the limit of 100000 per group/);
    expect(over.err).toMatch(/Split the resources over several groups/);
    const groups = (
      JSON.parse((await cli(['--json', 'groups', 'list'])).out) as { groups: { group: string; resources: number }[] }
    ).groups;
    expect(groups.find((g) => g.group === 'big')?.resources).toBe(100_000);
    // A few names: no progress lines.
    expect((await cli(['resources', 'add', '--group', 'small', 'a', 'b'])).err).toBe('');
  }, 120_000);
});
