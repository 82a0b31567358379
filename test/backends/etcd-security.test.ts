/**
 * Connecting securely: TLS with a private CA and client certificates (mutual
 * TLS), and etcd user authentication with a role limited to the
 * `rebalancer/` prefix. Certificates are made with openssl for each run.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEtcdStore, type EtcdStore } from '../../src/backends/etcd/index.js';
import { InvalidArgumentError, StoreUnavailableError } from '../../src/errors.js';
import { startEtcd, type ServerHandle } from '../harness/servers.js';
import { startLocalEtcd, type LocalEtcd } from './etcd-local.js';

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: 'ignore' });
}

/** A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA. */
function makeCerts(dir: string): void {
  openssl(
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '2',
      '-subj',
      '/CN=rb-test-ca',
      '-keyout',
      'ca.key',
      '-out',
      'ca.crt',
    ],
    dir,
  );
  writeFileSync(
    join(dir, 'server.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n',
  );
  writeFileSync(join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
  for (const who of ['server', 'client']) {
    openssl(
      ['req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=rb-${who}`, '-keyout', `${who}.key`, '-out', `${who}.csr`],
      dir,
    );
    openssl(
      [
        'x509',
        '-req',
        '-in',
        `${who}.csr`,
        '-CA',
        'ca.crt',
        '-CAkey',
        'ca.key',
        '-CAcreateserial',
        '-days',
        '2',
        '-extfile',
        `${who}.ext`,
        '-out',
        `${who}.crt`,
      ],
      dir,
    );
  }
}

describe('etcd over mutual TLS', () => {
  let dir: string;
  let server: LocalEtcd;
  const stores: EtcdStore[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'rb-etcd-tls-'));
    makeCerts(dir);
    server = await startLocalEtcd({
      tls: {
        certFile: join(dir, 'server.crt'),
        keyFile: join(dir, 'server.key'),
        caFile: join(dir, 'ca.crt'),
        clientCertAuth: true,
        clientCertFile: join(dir, 'client.crt'),
        clientKeyFile: join(dir, 'client.key'),
      },
    });
  }, 60_000);
  afterAll(async () => {
    for (const s of stores) await s.close();
    await server?.stop();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  it('works with the CA and a client certificate', async () => {
    expect(server.url.startsWith('etcds://')).toBe(true);
    const s = await createEtcdStore({
      url: server.url,
      namespace: 'tls',
      etcd: {
        credentials: {
          rootCertificate: readFileSync(join(dir, 'ca.crt')),
          privateKey: readFileSync(join(dir, 'client.key')),
          certChain: readFileSync(join(dir, 'client.crt')),
        },
      },
    });
    stores.push(s);
    const session = await s.openSession({ ttlMs: 2000 });
    const hints: number[] = [];
    const w = await s.watch('', (h) => hints.push(h.revision));
    const r = await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v', session }] });
    expect((await s.get('k'))?.sessionId).toBe(session.id);
    await new Promise((res) => setTimeout(res, 200));
    expect(Math.max(0, ...hints)).toBeGreaterThanOrEqual(r.revision);
    await w.close();
    await session.close();
  });

  it('fails, bounded and typed, without a client certificate or with an unknown CA', async () => {
    for (const credentials of [
      { rootCertificate: readFileSync(join(dir, 'ca.crt')) },
      undefined, // the system CAs do not know our private CA
    ]) {
      const started = Date.now();
      const err = await createEtcdStore({
        url: server.url,
        namespace: 'tls',
        requestTimeoutMs: 1500,
        ...(credentials === undefined ? {} : { etcd: { credentials } }),
      }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(StoreUnavailableError);
      expect(Date.now() - started).toBeLessThan(5000);
    }
  });
});

describe('etcd with user authentication', () => {
  let server: ServerHandle;
  const stores: EtcdStore[] = [];
  const ctl = (...args: string[]): void => {
    execFileSync('etcdctl', ['--endpoints', `127.0.0.1:${server.port}`, ...args], {
      stdio: 'ignore',
      env: { ...process.env, ETCDCTL_API: '3' },
    });
  };

  beforeAll(async () => {
    server = await startEtcd();
    ctl('user', 'add', 'root', '--new-user-password=rootpw');
    ctl('user', 'add', 'app', '--new-user-password=app pw');
    ctl('user', 'add', 'nobody', '--new-user-password=nobodypw');
    ctl('role', 'add', 'rebalancer');
    ctl('role', 'grant-permission', 'rebalancer', '--prefix=true', 'readwrite', 'rebalancer/');
    ctl('user', 'grant-role', 'app', 'rebalancer');
    ctl('auth', 'enable');
  }, 60_000);
  afterAll(async () => {
    for (const s of stores) await s.close();
    await server?.stop();
  });

  it('authenticates with credentials in the URL or in the options', async () => {
    const viaUrl = await createEtcdStore({ url: `etcd://app:app%20pw@127.0.0.1:${server.port}`, namespace: 'auth' });
    stores.push(viaUrl);
    const session = await viaUrl.openSession({ ttlMs: 2000 });
    await viaUrl.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v', session }] });
    const viaOptions = await createEtcdStore({
      url: server.url,
      namespace: 'auth',
      etcd: { auth: { username: 'app', password: 'app pw' } },
    });
    stores.push(viaOptions);
    expect((await viaOptions.get('k'))?.sessionId).toBe(session.id);
    const seen: string[] = [];
    const w = await viaOptions.watch('', (h) => seen.push(h.reason));
    await viaUrl.txn({ compare: [], then: [{ op: 'put', key: 'k2', value: 'v' }] });
    await new Promise((res) => setTimeout(res, 200));
    expect(seen).toContain('change');
    await w.close();
    await session.close();
  });

  it('reports a wrong password or a missing permission as a configuration error', async () => {
    const wrong = await createEtcdStore({ url: `etcd://app:nope@127.0.0.1:${server.port}`, namespace: 'auth' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(wrong).toBeInstanceOf(InvalidArgumentError);
    const denied = await createEtcdStore({
      url: `etcd://nobody:nobodypw@127.0.0.1:${server.port}`,
      namespace: 'auth',
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(denied).toBeInstanceOf(InvalidArgumentError);
    expect((denied as Error).message).toMatch(/permission denied/);
    const anonymous = await createEtcdStore({ url: server.url, namespace: 'auth', requestTimeoutMs: 1500 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(anonymous).toBeInstanceOf(InvalidArgumentError);
  });
});
