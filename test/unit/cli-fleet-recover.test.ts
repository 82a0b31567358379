/**
 * `rebalancer fleet recover` as a user runs it (a child process on a SQLite file): refused without --unsafe and
 * for a healthy or missing group; with --unsafe on a group that lost its majority it writes the new generation and
 * says what may be lost.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createSqliteStore } from '../../src/backends/sqlite/index.js';
import { addGroup, readFleetView, registerNode, reportObserved } from '../../src/protocol/fleet/io.js';
import { FleetKeys } from '../../src/protocol/fleet/keys.js';
import { fleetStatus } from '../../src/protocol/fleet/status.js';
import { cliAsync, type CliResult } from './cli-process.js';

const dir = mkdtempSync(join(tmpdir(), 'rb-cli-fleet-'));
const path = join(dir, 'cli.db');

// Not spawnSync: the test's store session must be kept alive while the CLI runs (on a loaded box three blocking
// runs outlasted its TTL and node n1 was no longer live).
function cli(args: string[]): Promise<CliResult> {
  return cliAsync(['--store', `sqlite:${path}`, '--namespace', 'ns', ...args]);
}

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('rebalancer fleet recover', () => {
  it('refuses without --unsafe, for a missing group and a healthy one; recovers a group that lost its majority', async () => {
    const store = await createSqliteStore({ path, namespace: 'ns' });
    try {
      const keys = new FleetKeys('f');
      const session = await store.openSession({ ttlMs: 30_000 });
      await registerNode(store, keys, session, { id: 'n1', address: '127.0.0.1:1', incarnation: 'i1' });
      const g = await addGroup(store, keys, 'g', { replicas: 3, machine: 'kv' });
      const report = (voters: string[]) =>
        reportObserved(store, keys, {
          name: 'g',
          generation: g.generation,
          reporter: voters[0]!,
          term: 2,
          leader: voters[0]!,
          voters,
          learners: [],
          membershipIndex: 0,
          committed: 7,
          lag: { n1: 2 },
          status: 'converged',
          detail: '',
        });
      await report(['n1']); // one voter, live: healthy

      const noUnsafe = await cli(['fleet', 'recover', 'g', '--fleet', 'f', '--from', 'n1']);
      expect(noUnsafe.code).toBe(2);
      expect(noUnsafe.err).toMatch(/--unsafe/);
      const missing = await cli(['fleet', 'recover', 'nope', '--fleet', 'f', '--from', 'n1', '--unsafe']);
      expect(missing.code).toBe(1);
      const healthy = await cli(['fleet', 'recover', 'g', '--fleet', 'f', '--from', 'n1', '--unsafe']);
      expect(healthy.code).toBe(2);
      expect(healthy.err).toMatch(/has not lost its majority/);
      expect((await readFleetView(store, keys, () => undefined)).groups.get('g')!.generation).toBe(g.generation);

      await report(['n2', 'n1', 'n3']); // n2 and n3 are not live: majority lost
      const r = await cli(['fleet', 'recover', 'g', '--fleet', 'f', '--from', 'n1', '--unsafe']);
      expect(r.code, r.err).toBe(0);
      expect(r.out).toMatch(/^UNSAFE: group g now starts again .*lost for good \(it was 2 entries behind/);
      expect(r.out).toMatch(/starts on node n1 alone/);
      const view = await readFleetView(store, keys, () => undefined);
      const recovered = view.groups.get('g')!;
      expect(recovered.generation).toBe(g.generation + 1);
      expect(recovered.seed).toEqual({ node: 'n1', generation: g.generation, tag: g.tag, initial: ['n2', 'n1', 'n3'] });
      expect(recovered.tag).toMatch(/^[A-Za-z0-9_-]{8}$/);
      expect(recovered.tag).not.toBe(g.tag);
      expect(recovered.observed).toBeUndefined();
      expect(view.meta).toMatchObject({ lastGeneration: g.generation + 1, groups: 1, id: expect.any(String) });
      expect(fleetStatus('f', view).groups[0]).toMatchObject({
        health: 'unplaced',
        detail: expect.stringMatching(/being recovered \(unsafe\) from node n1's replica of generation 1/),
      });
      // Once recovered, the new generation has no report yet: a second recovery is refused (nothing to judge).
      const again = await cli([
        '--json',
        'fleet',
        'recover',
        'g',
        '--fleet',
        'f',
        '--from',
        'n2',
        '--unsafe',
        '--force',
      ]);
      expect(again.code).toBe(2);
      expect(JSON.parse(again.err || again.out)).toMatchObject({ error: { code: 'INVALID_ARGUMENT' } });
    } finally {
      await store.close();
    }
  }, 60_000);
});
