/**
 * `rebalancer fleet …` as an operator runs it: child processes on the SQLite file of a fleet whose nodes run in this
 * test process (so the CLI runs without blocking this process: the nodes must keep answering). The operator's
 * machine is no node: status, add and remove touch only the store; command and query reach the nodes as a client.
 * Plus the rendering of a fleet in trouble, from a hand-made status.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSqliteStore } from '../../src/backends/sqlite/index.js';
import { parseJson, readSecret, renderFleetStatus, summaryLine } from '../../src/cli/commands/fleet.js';
import { readFleetView } from '../../src/protocol/fleet/io.js';
import { FleetKeys } from '../../src/protocol/fleet/keys.js';
import type { FleetStatus } from '../../src/protocol/fleet/status.js';
import { joinFleet, type FleetNode } from '../../src/runtime/fleet/node.js';
import type { Store } from '../../src/store/contract.js';
import { allocatePorts } from '../harness/ports.js';
import { releasePort } from '../harness/processes.js';
import { counter } from '../harness/counter.js';
import { eventually } from '../harness/wait.js';
import { CLI, cliAsync, REPO, type CliResult } from './cli-process.js';

const SECRET = 'the cli test fleet secret';

describe('rebalancer fleet (a fleet of in-process nodes, the CLI as child processes)', () => {
  let dir: string;
  let storeUrl: string;
  let store: Store;
  let ports: number[];
  const nodes: FleetNode[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rb-cli-fleet-'));
    storeUrl = `sqlite:${join(dir, 'fleet.db')}`;
    store = await createSqliteStore({ path: join(dir, 'fleet.db'), namespace: 'rebalancer' });
    ports = await allocatePorts(3);
    for (let i = 0; i < 3; i++) {
      nodes.push(
        await joinFleet({
          store,
          fleet: 'ops',
          node: { id: `n${i + 1}`, zone: `z${i + 1}`, address: `127.0.0.1:${ports[i]}` },
          dataDir: join(dir, `n${i + 1}`),
          secret: SECRET,
          machines: { counter },
          sessionTtlMs: 5000,
          gracePeriodMs: 1000,
          tickMs: 50,
          minNodes: 3,
        }),
      );
    }
  }, 60_000);

  afterAll(async () => {
    for (const n of nodes) await n.close().catch(() => undefined);
    await store?.close();
    await rm(dir, { recursive: true, force: true });
    for (const p of ports ?? []) releasePort(p);
  });

  const cli = (args: string[], env: Record<string, string> = {}): Promise<CliResult> =>
    cliAsync(['--store', storeUrl, ...args], { env: { ...process.env, ...env }, timeoutMs: 60_000 });
  const withSecret = { REBALANCER_FLEET_SECRET: SECRET };

  it('adds a group, runs commands and queries on it from outside the fleet, shows it, and removes it', async () => {
    const added = await cli(['fleet', 'add', 'orders', '--fleet', 'ops', '--replicas', '3', '--machine', 'counter']);
    expect(added.err).toBe('');
    expect(added.code).toBe(0);
    expect(added.out).toMatch(/added group orders to fleet ops \(generation 1\): 3 replicas of counter/);
    const again = await cli(['fleet', 'add', 'orders', '--fleet', 'ops', '--replicas', '3', '--machine', 'counter']);
    expect(again.code).toBe(2); // CONFLICT: fix the invocation
    expect(again.err).toMatch(/already has a group "orders"/);

    // The first command waits for the group to be placed and to elect a leader (--timeout-ms covers it).
    const first = await cli(
      ['fleet', 'command', 'orders', '{"add":2}', '--fleet', 'ops', '--timeout-ms', '30000'],
      withSecret,
    );
    expect(first.err).toBe('');
    expect(first.out.trim()).toBe('2');
    const secretFile = join(dir, 'secret');
    await writeFile(secretFile, `${SECRET}\n`); // a file's final line end is not part of the secret
    const second = await cli([
      '--json',
      'fleet',
      'command',
      'orders',
      '{"add":3}',
      '--fleet',
      'ops',
      '--secret-file',
      secretFile,
    ]);
    expect(JSON.parse(second.out)).toEqual({ fleet: 'ops', group: 'orders', result: 5 });
    const q = await cli(
      ['fleet', 'query', 'orders', '"total"', '--fleet', 'ops', '--consistency', 'linearizable'],
      withSecret,
    );
    expect(q.out.trim()).toBe('5');
    // The nodes saw each command once.
    expect(await nodes[1]!.query('orders', 'total')).toBe(5);

    // Status from the store alone, once the group converged.
    await eventually(
      async () => {
        const s = await cli(['--json', 'fleet', 'status', '--fleet', 'ops']);
        const status = JSON.parse(s.out) as FleetStatus;
        expect(status.groups.map((g) => [g.name, g.health])).toEqual([['orders', 'converged']]);
        return true;
      },
      { what: 'orders converged in `fleet status --json`', timeoutMs: 30_000, intervalMs: 500 },
    );
    const text = await cli(['fleet', 'status', '--fleet', 'ops']);
    expect(text.code).toBe(0);
    expect(text.out).toMatch(/^fleet ops on sqlite:.* · coordinator n\d/);
    expect(text.out).toMatch(/NODE +ZONE +STATE +DESIRED +LEADS +ADDRESS/);
    expect(text.out).toMatch(/n1\b.* z1 +active +1 /);
    expect(text.out).toMatch(/orders +counter +n\d,n\d,n\d +n\d +\d+ +.* +converged/);
    expect(text.out).toContain('3 nodes · 1 group: 1 converged');

    const removed = await cli(['fleet', 'remove', 'orders', '--fleet', 'ops']);
    expect(removed.out).toMatch(/removed group orders \(generation 1\)/);
    const gone = await cli(['fleet', 'command', 'orders', '{"add":1}', '--fleet', 'ops'], withSecret);
    expect(gone.code).toBe(1); // NOT_FOUND
    expect(gone.err).toMatch(/has no group "orders"/);
  }, 180_000);

  it('exits 2 on bad input, 1 on a wrong secret or nothing found, before or instead of doing anything', async () => {
    await nodes[0]!.addGroup('audit', { replicas: 1, machine: 'counter' });
    const noSecret = await cli(['fleet', 'command', 'audit', '{"add":1}', '--fleet', 'ops'], {
      REBALANCER_FLEET_SECRET: '',
    });
    expect(noSecret.code).toBe(2);
    expect(noSecret.err).toMatch(/need the fleet's secret: give --secret-file PATH or set REBALANCER_FLEET_SECRET/);
    const badJson = await cli(['fleet', 'query', 'audit', 'total', '--fleet', 'ops'], withSecret);
    expect(badJson.code).toBe(2);
    expect(badJson.err).toMatch(/the query must be JSON/);
    const badFleet = await cli(['fleet', 'status', '--fleet', 'no spaces']);
    expect(badFleet.code).toBe(2);
    const badReplicas = await cli(['fleet', 'add', 'x', '--fleet', 'ops', '--replicas', '0', '--machine', 'counter']);
    expect(badReplicas.code).toBe(2);
    // A machine no live node runs (a typo, most likely): refused while nodes run, added when asked for or when no
    // node runs yet (groups added before the fleet starts), with what it waits for.
    const typo = await cli(['fleet', 'add', 'x', '--fleet', 'ops', '--replicas', '3', '--machine', 'countr']);
    expect(typo.code).toBe(2);
    expect(typo.err).toMatch(/no live node of fleet ops runs state machine "countr" \(the live nodes run: counter\)/);
    expect(typo.err).toMatch(/--no-machine-check/);
    expect((await readFleetView(store, new FleetKeys('ops'), () => undefined)).groups.has('x')).toBe(false);
    const forced = await cli([
      'fleet',
      'add',
      'x',
      '--fleet',
      'ops',
      '--replicas',
      '3',
      '--machine',
      'countr',
      '--no-machine-check',
    ]);
    expect(forced.code).toBe(0);
    expect(forced.out).toMatch(/no live node runs countr yet: it is placed once one with it in its `machines` joins/);
    expect((await cli(['fleet', 'remove', 'x', '--fleet', 'ops'])).code).toBe(0);
    const early = await cli(['fleet', 'add', 'y', '--fleet', 'not-started', '--replicas', '3', '--machine', 'countr']);
    expect(early.code).toBe(0);
    expect(early.out).toMatch(/no live node runs countr yet/);
    const noFleet = await cli(['fleet', 'status', '--fleet', 'typo']);
    expect(noFleet.code).toBe(1);
    expect(noFleet.out).toMatch(/nothing under this fleet name: check --fleet, --store and --namespace/);

    const wrong = await cli(
      ['--json', 'fleet', 'command', 'audit', '{"add":1}', '--fleet', 'ops', '--timeout-ms', '3000'],
      { REBALANCER_FLEET_SECRET: 'a wrong secret, long enough' },
    );
    expect(wrong.code).toBe(1);
    const error = (JSON.parse(wrong.err) as { error: { code: string; message: string } }).error;
    expect(error.code).toBe('UNAUTHENTICATED');
    expect(error.message).toMatch(/refused this client's proof/);
    // Nothing was applied by the refused client.
    expect(await nodes[0]!.query('audit', 'total')).toBe(0);
  }, 120_000);

  it('status --watch prints a new view on every change and ends with exit 0 on SIGINT', async () => {
    const child = spawn(
      process.execPath,
      [...CLI, '--store', storeUrl, '--json', 'fleet', 'status', '--fleet', 'ops', '--watch'],
      {
        cwd: REPO,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    const views: FleetStatus[] = [];
    createInterface({ input: child.stdout }).on('line', (l) => views.push(JSON.parse(l) as FleetStatus));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      await eventually(() => views.length > 0, { what: 'the first view', timeoutMs: 30_000 });
      expect(views[0]!.groups.some((g) => g.name === 'watched')).toBe(false);
      await nodes[0]!.addGroup('watched', { replicas: 3, machine: 'counter' });
      await eventually(() => views.some((v) => v.groups.some((g) => g.name === 'watched')), {
        what: 'a view with the new group',
        timeoutMs: 30_000,
      });
    } finally {
      child.kill('SIGINT');
    }
    expect(await exited).toBe(0);
  }, 90_000);
});

describe('fleet status rendering and input', () => {
  const status: FleetStatus = {
    restoring: [],
    fleet: 'f',
    coordinator: 'a',
    nodes: [
      { id: 'a', zone: 'z1', weight: 1, address: '10.0.0.1:7001', state: 'active', desired: 2, leads: 1 },
      { id: 'b', zone: '', weight: 1, address: '10.0.0.2:7001', state: 'deactivating', desired: 0, leads: 0 },
    ],
    groups: [
      {
        name: 'ok',
        replicas: 3,
        machine: 'm',
        generation: 1,
        desired: ['a', 'c', 'd'],
        desiredLeader: 'a',
        leader: 'a',
        term: 4,
        voters: ['a', 'c', 'd'],
        learners: [],
        lag: { a: 0, c: 0, d: 12 },
        health: 'converged',
        detail: '',
      },
      {
        name: 'lost',
        replicas: 3,
        machine: 'm',
        generation: 2,
        desired: ['a', 'c', 'd'],
        desiredLeader: 'a',
        leader: 'x',
        term: 2,
        voters: ['x', 'y', 'a'],
        learners: [],
        lag: {},
        health: 'majority-lost',
        detail: 'only 1 of its 3 voters (x, y, a) are live',
      },
      {
        name: 'moving',
        replicas: 3,
        machine: 'm',
        generation: 3,
        desired: ['a', 'c', 'd'],
        desiredLeader: 'a',
        leader: 'a',
        term: 1,
        voters: ['a', 'c'],
        learners: ['d'],
        lag: { d: 300 },
        health: 'moving',
        detail: 'd catching up',
      },
    ],
    counts: { converged: 1, moving: 1, unknown: 0, unplaced: 0, stuck: 0, 'majority-lost': 1 },
    unreadable: ['f/f/groups/bad'],
  };

  it('lists groups without quorum first, marked, with a warning, and a summary line that counts them', () => {
    const text = renderFleetStatus(status, { limit: 40 });
    const lines = text.split('\n');
    const groupLines = lines.filter((l) => /^(ok|lost|moving) /.test(l));
    expect(groupLines.map((l) => l.split(' ')[0])).toEqual(['lost', 'moving', 'ok']);
    expect(groupLines[0]).toMatch(/!! majority-lost$/);
    expect(groupLines[1]).toMatch(/d\+300 +moving \(learners d\)$/);
    expect(groupLines[2]).toMatch(/a,c,d +a +4 +d\+12 +converged$/);
    expect(text).toContain('WARNING: 1 group(s) without a working quorum:\n  lost: only 1 of its 3 voters');
    expect(text).toContain('f/f/groups/bad');
    expect(text).toMatch(/a ★ +z1 +active +2 +1 +10\.0\.0\.1:7001/);
    expect(text).toMatch(/b +- +deactivating/);
    expect(summaryLine(status)).toBe(
      '2 nodes · 3 groups: 1 majority-lost · 1 moving (moves in flight) · 1 converged · 1 WITHOUT QUORUM',
    );
    expect(renderFleetStatus(status, { limit: 1 })).toContain('… 2 more (--limit, or --json)');
    expect(text).not.toContain('on their way back');
    // Groups claimed after a loss of the control store's records, not written back yet.
    const restoring = renderFleetStatus(
      { ...status, restoring: [{ name: 'x', generation: 4, node: 'a' }] },
      { limit: 40 },
    );
    expect(restoring).toContain('NOTE: 1 group(s) on their way back after the control store lost its records');
    expect(restoring).toContain('  x (generation 4, kept on a)');
  });

  it('reads JSON arguments and the secret one way', () => {
    expect(parseJson('{"add":1}', 'the command')).toEqual({ add: 1 });
    expect(parseJson('-', 'the command', () => '"total"\n')).toBe('total');
    expect(() => parseJson('total', 'the query')).toThrow(/the query must be JSON/);
    expect(readSecret(undefined, { REBALANCER_FLEET_SECRET: 's3cret' })).toBe('s3cret');
    expect(() => readSecret(undefined, {})).toThrow(/--secret-file PATH or set REBALANCER_FLEET_SECRET/);
    expect(() => readSecret('/nonexistent/secret', {})).toThrow(/--secret-file \/nonexistent\/secret cannot be read/);
  });
});
