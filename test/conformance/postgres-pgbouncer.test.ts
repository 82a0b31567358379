/**
 * The whole conformance suite again, every client going through pgbouncer in
 * transaction-pooling mode (server connections are shared between clients
 * transaction by transaction), with `listen=false`: watches rely on the
 * revision poll. This proves the backend keeps no session state.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPostgresStore } from '../../src/backends/postgres/index.js';
import type { Store, WatchHint } from '../../src/store/contract.js';
import { startPostgres } from '../harness/servers.js';
import { describe, expect, it } from 'vitest';
import { type ConformanceTarget, describeConformance } from './suite.js';

const PGBOUNCER = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer'].find((p) => existsSync(p));

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

async function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = createConnection(port, '127.0.0.1');
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

/** pgbouncer refuses to run as root: run it as the postgres user, like the server. */
async function startPgbouncer(pgPort: number): Promise<{ port: number; stop(): Promise<void> }> {
  if (PGBOUNCER === undefined) {
    throw new Error('pgbouncer is not installed: apt-get install -y pgbouncer (scripts/install-servers.sh should)');
  }
  const dir = mkdtempSync(join(tmpdir(), 'pgbouncer-'));
  chmodSync(dir, 0o777);
  const port = await freePort();
  writeFileSync(join(dir, 'users.txt'), '"postgres" ""\n');
  writeFileSync(
    join(dir, 'pgbouncer.ini'),
    [
      '[databases]',
      `postgres = host=127.0.0.1 port=${pgPort} dbname=postgres`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = trust',
      `auth_file = ${join(dir, 'users.txt')}`,
      'pool_mode = transaction',
      'default_pool_size = 4',
      'max_client_conn = 200',
      // Default 15 s: after a failed login during the server's restart pgbouncer would wait that long to retry.
      'server_login_retry = 1',
      `logfile = ${join(dir, 'pgbouncer.log')}`,
      '',
    ].join('\n'),
  );
  const asRoot = process.getuid?.() === 0;
  const cmd = asRoot ? 'setpriv' : PGBOUNCER;
  const args = asRoot
    ? ['--reuid=postgres', '--regid=postgres', '--init-groups', PGBOUNCER, join(dir, 'pgbouncer.ini')]
    : [join(dir, 'pgbouncer.ini')];
  const proc: ChildProcess = spawn(cmd, args, { stdio: 'ignore' });
  const deadline = Date.now() + 10_000;
  while (!(await canConnect(port))) {
    if (Date.now() > deadline || proc.exitCode !== null) throw new Error('pgbouncer did not start');
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGTERM');
        await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
        if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const NAME = 'postgres via pgbouncer (transaction pooling, listen=false)';

if (PGBOUNCER === undefined) {
  // Not installed on this machine: fail loudly (scripts/install-servers.sh installs it) rather than pass silently.
  describe(`store conformance: ${NAME}`, () => {
    it('needs pgbouncer', () => {
      throw new Error('pgbouncer is not installed: run bash scripts/install-servers.sh (apt-get install -y pgbouncer)');
    });
  });
} else {
  describeConformance(NAME, setup);

  describe('postgres via pgbouncer with a direct LISTEN session', () => {
    it('hears changes at once through listenConnection while every query goes through the pooler', async () => {
      const server = await startPostgres();
      const bouncer = await startPgbouncer(server.port);
      const stores: Store[] = [];
      try {
        const pooled = `postgres://postgres@127.0.0.1:${bouncer.port}/postgres`;
        // A long poll interval: a hint within it can only have come from NOTIFY.
        const options = { connectionString: pooled, listenConnection: server.url, pollIntervalMs: 60_000 };
        const a = await createPostgresStore({ ...options, namespace: 'l' });
        const b = await createPostgresStore({ ...options, namespace: 'l' });
        stores.push(a, b);
        const hints: WatchHint[] = [];
        const w = await a.watch('k/', (h) => hints.push(h));
        const r = await b.txn({ compare: [], then: [{ op: 'put', key: 'k/1', value: 'v' }] });
        const deadline = Date.now() + 5000;
        while (!hints.some((h) => h.revision >= r.revision) && Date.now() < deadline) {
          await new Promise((x) => setTimeout(x, 20));
        }
        expect(hints.some((h) => h.revision >= r.revision && h.reason === 'change')).toBe(true);
        await w.close();
      } finally {
        for (const s of stores) await s.close();
        await bouncer.stop();
        await server.stop();
      }
    });
  });
}

async function setup(): Promise<ConformanceTarget> {
  const server = await startPostgres();
  const bouncer = await startPgbouncer(server.port);
  const url = `postgres://postgres@127.0.0.1:${bouncer.port}/postgres`;
  const pollIntervalMs = 250;
  return {
    backend: 'postgres',
    url: `${url}?listen=false&pollIntervalMs=${pollIntervalMs}`,
    ttlMs: 1000,
    expiryBoundMs: pollIntervalMs + 500,
    open: (namespace) => createPostgresStore({ connectionString: url, namespace, listen: false, pollIntervalMs }),
    // The server restarts behind the pooler, which reconnects to it.
    restartServer: () => server.restart(),
    teardown: async () => {
      await bouncer.stop();
      await server.stop();
    },
  };
}
