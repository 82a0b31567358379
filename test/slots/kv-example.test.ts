/**
 * examples/slots-kv end to end: real site processes on a private Redis, 128 slots, R = 2, TTL 2000 ms.
 *
 * Three sites start; keys are written through random sites; a fourth joins; half the keys are overwritten; one
 * site leaves gracefully (SIGTERM); one is kill -9'd. After each step every key must read back its last
 * acknowledged value through every live site (a site that is not the key's primary forwards to it). Requests that
 * get 503 (no primary for a moment, e.g. until the killed site's session expires) are retried within a bound.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedis, type ServerHandle } from '../harness/servers.js';
import { sleep } from '../harness/wait.js';

const SITE = fileURLToPath(new URL('../../examples/slots-kv/site.ts', import.meta.url));
const REPO = fileURLToPath(new URL('../..', import.meta.url));
const SLOTS = 128;
const R = 2;
const KEYS = 150;
const BOUND_MS = 30_000;

interface Site {
  readonly id: string;
  readonly proc: ChildProcess;
  readonly logPath: string;
  url: string | undefined;
  readonly exit: Promise<void>;
  exited: boolean;
}

interface Status {
  id: string;
  ready: number;
  preparing: number;
  primaries: number;
  keys: number;
}

describe('examples/slots-kv on Redis with real site processes', () => {
  let server: ServerHandle | undefined;
  let dir: string | undefined;
  const sites: Site[] = [];
  let failed = true;

  beforeAll(async () => {
    server = await startRedis();
    dir = mkdtempSync(join(tmpdir(), 'rebalancer-slots-kv-'));
  });

  afterAll(async () => {
    for (const s of sites) if (!s.exited) s.proc.kill('SIGKILL');
    await Promise.all(sites.map((s) => s.exit));
    await server?.stop().catch(() => undefined);
    if (!failed && dir !== undefined) rmSync(dir, { recursive: true, force: true });
    else if (dir !== undefined) console.error(`[slots-kv] site logs kept in ${dir}`);
  });

  function spawnSite(id: string): Site {
    const logPath = join(dir!, `${id}.log`);
    const fd = openSync(logPath, 'a');
    const proc = spawn(
      process.execPath,
      ['--import', 'tsx', SITE, '--id', id, '--store', server!.url, '--slots', String(SLOTS)].concat([
        '--replicas',
        String(R),
        '--ttl',
        '2000',
      ]),
      { cwd: REPO, stdio: ['ignore', 'pipe', fd] },
    );
    closeSync(fd);
    let resolveExit!: () => void;
    const site: Site = {
      id,
      proc,
      logPath,
      url: undefined,
      exit: new Promise((r) => (resolveExit = r)),
      exited: false,
    };
    let buf = '';
    proc.stdout!.on('data', (chunk: Buffer) => {
      buf += chunk.toString('utf8');
      const m = /\{"listening":"([^"]+)"/.exec(buf);
      if (m !== null) site.url = m[1];
    });
    proc.once('exit', () => {
      site.exited = true;
      resolveExit();
    });
    sites.push(site);
    return site;
  }

  const live = (): Site[] => sites.filter((s) => !s.exited && s.url !== undefined);

  /** A request retried on 503 / connection errors until the bound. */
  async function request(site: Site, method: 'GET' | 'PUT', key: string, value?: string): Promise<Response> {
    const deadline = Date.now() + BOUND_MS;
    let last = '';
    for (;;) {
      try {
        const r = await fetch(`${site.url!}/kv/${encodeURIComponent(key)}`, {
          method,
          ...(value !== undefined ? { body: value } : {}),
          signal: AbortSignal.timeout(5000),
        });
        if (r.status !== 503) return r;
        last = `503 ${await r.text()}`;
      } catch (error) {
        // not reachable for a moment
        last = String(error);
      }
      if (Date.now() > deadline) {
        // What the sites say of themselves, for the report: a 503 that never ends is a routing or replication bug.
        const states = await Promise.all(live().map(async (s) => `${s.id}: ${JSON.stringify(await status(s))}`));
        throw new Error(
          `${method} ${key} via ${site.id}: still failing after ${BOUND_MS} ms (last: ${last.slice(0, 300)}); ` +
            `sites: ${states.join('; ')}; logs: ${dir}`,
        );
      }
      await sleep(200);
    }
  }

  async function status(s: Site): Promise<Status | undefined> {
    try {
      return (await (await fetch(`${s.url!}/internal/status`, { signal: AbortSignal.timeout(2000) })).json()) as Status;
    } catch {
      return undefined;
    }
  }

  /** Every slot on R live sites, none preparing, one primary each, every site with its share. */
  async function waitSettled(step: string, count: number): Promise<void> {
    const deadline = Date.now() + BOUND_MS;
    let last = '';
    while (Date.now() < deadline) {
      const ss = live();
      if (ss.length === count) {
        const st = await Promise.all(ss.map(status));
        last = JSON.stringify(st);
        const ok =
          st.every((x) => x !== undefined && x.preparing === 0 && x.ready > 0 && x.primaries > 0) &&
          st.reduce((n, x) => n + x!.ready, 0) === SLOTS * Math.min(R, count) &&
          st.reduce((n, x) => n + x!.primaries, 0) === SLOTS;
        if (ok) return;
      }
      await sleep(250);
    }
    throw new Error(`${step}: not settled within ${BOUND_MS} ms: ${last}\nlogs: ${dir}`);
  }

  const expected = new Map<string, string>();

  async function writeKeys(from: number, to: number, tag: string): Promise<void> {
    for (let i = from; i < to; i++) {
      const key = `user:${i}`;
      const value = `${tag}-${i}`;
      const via = live()[i % live().length]!;
      const r = await request(via, 'PUT', key, value);
      expect(r.status, `${key} via ${via.id}: ${await r.clone().text()}`).toBe(200);
      expected.set(key, value);
    }
  }

  async function readAll(step: string): Promise<void> {
    const wrong: string[] = [];
    for (const via of live()) {
      await Promise.all(
        [...expected].map(async ([key, value]) => {
          const r = await request(via, 'GET', key);
          const got = r.status === 200 ? ((await r.json()) as { value: string }).value : `HTTP ${r.status}`;
          if (got !== value) wrong.push(`${key} via ${via.id}: ${got}, expected ${value}`);
        }),
      );
    }
    expect(wrong, `${step}: ${wrong.length} wrong reads\nlogs: ${dir}`).toEqual([]);
  }

  it('every key reads back its last value through any live site after a join, a graceful leave and a kill -9', async () => {
    const [a, b] = [spawnSite('kv1'), spawnSite('kv2'), spawnSite('kv3')];
    const t0 = Date.now();
    while (live().length < 3 && Date.now() - t0 < BOUND_MS) await sleep(100);
    await waitSettled('3 sites', 3);
    await writeKeys(0, KEYS, 'v1');
    await readAll('after the first writes');

    spawnSite('kv4');
    while (live().length < 4 && Date.now() - t0 < 2 * BOUND_MS) await sleep(100);
    await waitSettled('kv4 joined', 4);
    await readAll('after kv4 joined');
    await writeKeys(0, KEYS / 2, 'v2');

    a!.proc.kill('SIGTERM');
    await a!.exit;
    await waitSettled('kv1 left', 3);
    await readAll('after kv1 left');

    b!.proc.kill('SIGKILL');
    await b!.exit;
    await readAll('right after kv2 was killed'); // served by the surviving replicas (once the lock expired)
    await waitSettled('kv2 killed', 2);
    await readAll('after re-replication');
    const logs = sites.map((s) => readFileSync(s.logPath, 'utf8')).join('');
    expect(logs).not.toMatch(/Error|error/);
    failed = false;
  }, 150_000);
});
