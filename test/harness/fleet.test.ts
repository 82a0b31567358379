/**
 * The worker fleet of the real-process tests (fleet.ts): spawning with arguments and environment, lines and events
 * from the log, signals, pause and resume, exits, and cleanup that kills the fleet's own processes and nothing else,
 * also when the test process ends without cleaning up or is killed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { Fleet, LineTail } from './fleet.js';
import { isProcessAlive } from './processes.js';
import { eventually, sleep } from './wait.js';

const WORKER = fileURLToPath(new URL('./fixtures/fleet-worker.ts', import.meta.url));
const OWNER = fileURLToPath(new URL('./fixtures/fleet-owner.ts', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'rebalancer-fleet-test-'));
const fleet = new Fleet(dir);
const others: ChildProcess[] = [];

afterAll(async () => {
  await fleet.killAll();
  for (const p of others) p.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

const ready = { timeoutMs: 20_000 } as const;

describe('LineTail', () => {
  it('returns only whole new lines, keeps a partial line (even a split character) for later, skips empty ones', () => {
    const path = join(dir, 'tail.txt');
    const tail = new LineTail(join(dir, 'missing.txt'));
    expect(tail.read()).toEqual([]);
    writeFileSync(path, '');
    const t = new LineTail(path);
    appendFileSync(path, 'one\n\ntw');
    expect(t.read()).toEqual(['one']);
    const euro = Buffer.from('€');
    appendFileSync(path, Buffer.concat([Buffer.from('o '), euro.subarray(0, 1)]));
    expect(t.read()).toEqual([]);
    appendFileSync(path, Buffer.concat([euro.subarray(1), Buffer.from('\nthree\n')]));
    expect(t.read()).toEqual(['two €', 'three']);
    expect(t.read()).toEqual([]);
  });
});

describe('Fleet', () => {
  it('spawns a worker with its arguments and environment; its stdout and stderr lines and JSON events', async () => {
    const w = fleet.spawn({ name: 'args', script: WORKER, args: ['a', 'b c'], env: { FLEET_TEST_VALUE: 'v' } });
    const e = await w.waitForEvent<{ what: string; args: string[]; env: string }>((x) => x.what === 'ready', ready);
    expect(e).toEqual({ what: 'ready', args: ['a', 'b c'], env: 'v' });
    expect(await w.waitForLine(/on stderr/, ready)).toBe('a line on stderr');
    await w.waitForLine((l) => l === 'tick', { ...ready, what: 'a tick' });
    expect(w.logPath).toBe(join(dir, 'args.log'));
    expect(w.events()[0]).toEqual(e);
    expect(() => fleet.spawn({ name: 'args', script: WORKER })).toThrow(/exists already/);
    // Lines from `since` on only: a second signal's line is not the first one's.
    w.signal('SIGUSR2');
    await w.waitForLine(/^usr2$/, ready);
    const since = w.lines().length;
    w.signal('SIGUSR2');
    await w.waitForLine(/^usr2$/, { ...ready, since });
    expect(w.lines().filter((l) => l === 'usr2')).toHaveLength(2);
  });

  it('pause stops every thread until resume; the log shows it stood still', async () => {
    const w = fleet.spawn({ name: 'pause', script: WORKER });
    await w.waitForEvent((x) => x['what'] === 'ready', ready);
    w.pause();
    await w.waitStopped();
    expect(w.procState()).toMatch(/^state T /);
    const n = w.lines().length;
    await sleep(300);
    expect(w.lines().length).toBe(n);
    w.resume();
    await w.waitForLine(() => true, { ...ready, since: n, what: 'a tick after the resume' });
    expect(w.procState()).toMatch(/^state [RS] /);
  });

  it('terminate: SIGTERM and the exit code; a worker that ignores it is killed after the grace period', async () => {
    const polite = fleet.spawn({ name: 'polite', script: WORKER });
    const stubborn = fleet.spawn({ name: 'stubborn', script: WORKER, env: { FLEET_TEST_MODE: 'ignore-term' } });
    await Promise.all([polite, stubborn].map((w) => w.waitForEvent((x) => x['what'] === 'ready', ready)));
    await polite.terminate(10_000);
    expect(polite.exited).toBe(true);
    expect(polite.exitStatus).toBe('code 0');
    expect(polite.events().some((e) => e['what'] === 'sigterm')).toBe(true);
    let overdue = 0;
    const t0 = Date.now();
    await stubborn.terminate(500, () => {
      overdue++;
      stubborn.kill();
    });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(450);
    expect([overdue, stubborn.exitStatus]).toEqual([1, 'SIGKILL']);
    expect(stubborn.signal('SIGTERM')).toBe(false); // exited: nothing is sent to a pid that may be reused
    expect(stubborn.procState()).toBe('exited (SIGKILL)');
  });

  it('waitForLine fails at once when the worker exits without the line, and says what it waited for on timeout', async () => {
    const early = fleet.spawn({ name: 'early', script: WORKER, env: { FLEET_TEST_MODE: 'exit-early' } });
    await expect(early.waitForLine(/never/, { timeoutMs: 20_000, what: 'the never line' })).rejects.toThrow(
      /early exited \(code 3\) before printing the never line/,
    );
    expect(early.lines()).toEqual(['bye']);
    const w = fleet.spawn({ name: 'quiet', script: WORKER });
    await expect(w.waitForLine(/never/, { timeoutMs: 300 })).rejects.toThrow(
      /timed out waiting for a line matching \/never\/ from quiet: .*\n.*quiet\.log/,
    );
  });

  it('killAll kills its workers, paused ones too, and no other process', async () => {
    const own = new Fleet(dir);
    const a = own.spawn({ name: 'own-a', script: WORKER });
    const b = own.spawn({ name: 'own-b', script: WORKER });
    const outsider = fleet.spawn({ name: 'outsider', script: WORKER });
    const unrelated = spawn('sleep', ['30'], { stdio: 'ignore' });
    others.push(unrelated);
    await Promise.all([a, b, outsider].map((w) => w.waitForEvent((x) => x['what'] === 'ready', ready)));
    b.pause();
    await b.waitStopped();
    await own.killAll();
    expect([a.exitStatus, b.exitStatus]).toEqual(['SIGKILL', 'SIGKILL']);
    expect(own.running()).toEqual([]);
    expect(outsider.exited).toBe(false);
    expect(isProcessAlive(unrelated.pid!)).toBe(true);
  });

  describe('when the test process ends without killAll', () => {
    /** Runs fleet-owner.ts; resolves with it and the pid of its worker once that worker is ready. */
    async function owner(mode: 'exit' | 'wait', pdeathsig: boolean): Promise<{ proc: ChildProcess; worker: number }> {
      const env = { ...process.env, REBALANCER_TEST_NO_PDEATHSIG: pdeathsig ? '0' : '1' };
      const proc = spawn(process.execPath, ['--import', 'tsx', OWNER, mode, dir], {
        env,
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      others.push(proc);
      let out = '';
      proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      const line = await eventually(() => /^\{.*\}\n/.exec(out)?.[0] ?? false, {
        what: 'the owner to report its worker',
        timeoutMs: 30_000,
      });
      return { proc, worker: (JSON.parse(line) as { pid: number }).pid };
    }

    it('its exit hook kills the workers when it exits normally', async () => {
      const { worker } = await owner('exit', false);
      await eventually(() => !isProcessAlive(worker), { what: 'the worker to die with its owner', timeoutMs: 10_000 });
    });

    it('pdeathsig kills the workers when it is killed -9 (and without pdeathsig they would survive)', async () => {
      const killed = await owner('wait', true);
      killed.proc.kill('SIGKILL');
      await eventually(() => !isProcessAlive(killed.worker), {
        what: 'the worker to die with its owner',
        timeoutMs: 10_000,
      });
      // The control: no pdeathsig, no hook (SIGKILL runs none): the worker outlives its owner.
      const control = await owner('wait', false);
      control.proc.kill('SIGKILL');
      await sleep(1000);
      expect(isProcessAlive(control.worker)).toBe(true);
      process.kill(control.worker, 'SIGKILL');
    });
  });
});
