/**
 * A private one-node etcd with TLS (optionally mutual), which the shared
 * harness (test/harness/servers.ts) does not start; every other etcd test uses
 * the harness. Only ever kills the process it started.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface LocalEtcd {
  readonly url: string;
  readonly port: number;
  readonly dataDir: string;
  kill(): Promise<void>;
  pause(): void;
  resume(): void;
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export interface LocalEtcdTls {
  readonly certFile: string;
  readonly keyFile: string;
  readonly caFile: string;
  /** Require client certificates signed by the CA (mutual TLS). */
  readonly clientCertAuth: boolean;
  /** A client certificate for the health probe when clientCertAuth is on. */
  readonly clientCertFile: string;
  readonly clientKeyFile: string;
}

function httpsHealth(url: string, tls: LocalEtcdTls): Promise<boolean> {
  return new Promise((resolve) => {
    const req = httpsRequest(
      `${url}/health`,
      {
        ca: readFileSync(tls.caFile),
        cert: readFileSync(tls.clientCertFile),
        key: readFileSync(tls.clientKeyFile),
        timeout: 500,
      },
      (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve(body.includes('"health":"true"')));
      },
    );
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

async function waitHealthy(url: string, timeoutMs: number, tls?: LocalEtcdTls): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (tls !== undefined) {
        if (await httpsHealth(url, tls)) return;
      } else {
        const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(500) });
        if (res.ok && ((await res.json()) as { health?: string }).health === 'true') return;
      }
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`etcd at ${url} not healthy within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function startLocalEtcd(
  options: { tls?: LocalEtcdTls; args?: readonly string[] } = {},
): Promise<LocalEtcd> {
  const dataDir = mkdtempSync(join(tmpdir(), 'rb-etcd-'));
  const port = await freePort();
  const peerPort = await freePort();
  const tls = options.tls;
  const http = `${tls === undefined ? 'http' : 'https'}://127.0.0.1:${port}`;
  const tlsArgs =
    tls === undefined
      ? []
      : [
          '--cert-file',
          tls.certFile,
          '--key-file',
          tls.keyFile,
          '--trusted-ca-file',
          tls.caFile,
          ...(tls.clientCertAuth ? ['--client-cert-auth'] : []),
        ];
  let proc: ChildProcess | undefined;
  const launch = async (): Promise<void> => {
    const peer = `http://127.0.0.1:${peerPort}`;
    proc = spawn(
      'etcd',
      [
        '--name',
        'n1',
        '--data-dir',
        dataDir,
        '--listen-client-urls',
        http,
        '--advertise-client-urls',
        http,
        '--listen-peer-urls',
        peer,
        '--initial-advertise-peer-urls',
        peer,
        '--initial-cluster',
        `n1=${peer}`,
        '--log-level',
        'error',
        ...tlsArgs,
        ...(options.args ?? []),
      ],
      { stdio: 'ignore' },
    );
    await waitHealthy(http, 20_000, tls);
  };
  const killNow = async (): Promise<void> => {
    const p = proc;
    if (p === undefined || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise<void>((r) => p.once('exit', () => r()));
    p.kill('SIGCONT');
    p.kill('SIGKILL');
    await exited;
  };
  await launch();
  return {
    url: `${tls === undefined ? 'etcd' : 'etcds'}://127.0.0.1:${port}`,
    port,
    dataDir,
    kill: killNow,
    pause: () => void proc?.kill('SIGSTOP'),
    resume: () => void proc?.kill('SIGCONT'),
    async restart() {
      await killNow();
      await launch();
    },
    async stop() {
      await killNow();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
