/**
 * Mutual TLS: a throwaway CA made with openssl in a temp dir (scripts/install-servers.sh installs openssl; without it
 * this test fails, it is not skipped). Nodes with
 * certificates of the cluster's CA talk; a node with a certificate of another CA gets nothing, even with the secret.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { heartbeat, startCluster, startNode, waitFor, type Node, releasePorts } from './transport-helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'raft-tls-'));

function openssl(...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
}

/** A certificate signed by it for 127.0.0.1 usable as client and server. */
function issue(ca: string, name: string): { key: string; cert: string; ca: string } {
  writeFileSync(
    join(dir, 'ext.cnf'),
    'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n',
  );
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl('req', ...ec, '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.csr`);
  openssl(
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    `${ca}.crt`,
    '-CAkey',
    `${ca}.key`,
    '-CAcreateserial',
    '-days',
    '1',
    '-extfile',
    'ext.cnf',
    '-out',
    `${name}.crt`,
  );
  const read = (f: string): string => readFileSync(join(dir, f), 'utf8');
  return { key: read(`${name}.key`), cert: read(`${name}.crt`), ca: read(`${ca}.crt`) };
}

/** A self-signed CA. */
function ca(name: string): void {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1'];
  openssl('req', '-x509', ...ec, '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.crt`);
}

let nodes: Node[] = [];
afterEach(async () => {
  for (const n of nodes) await n.t.close();
  nodes = [];
  releasePorts();
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('raft transport with mutual TLS', () => {
  it('nodes with the cluster CA talk; a node with another CA gets nothing', async () => {
    ca('ca');
    ca('rogue');
    const certs = { a: issue('ca', 'a'), b: issue('ca', 'b') };
    const rogueCert = issue('rogue', 'a');
    nodes = await startCluster(['a', 'b'], (id) => ({ tls: certs[id as 'a' | 'b'] }));
    const [a, b] = nodes as [Node, Node];
    a.t.send('b', 'g', heartbeat('a', 'b', 1));
    b.t.send('a', 'g', heartbeat('b', 'a', 2));
    await waitFor(() => a.got.length === 1 && b.got.length === 1, 'messages over TLS');

    // The rogue has the secret and claims to be a, but its certificate is not the cluster CA's.
    const rogue = await startNode(
      'a',
      new Map([
        ['a', 0],
        ['b', b.t.port],
      ]),
      { tls: { ...rogueCert } },
    );
    nodes.push(rogue);
    rogue.t.send('b', 'g', heartbeat('a', 'b', 666));
    await new Promise((r) => setTimeout(r, 300)); // several dial attempts
    expect(rogue.t.stats('b').connections).toBe(0);
    expect(rogue.got).toEqual([]);
    expect(b.got.map((r) => (r.message as { round: number }).round)).toEqual([1]);
    // The real a still talks to b.
    a.t.send('b', 'g', heartbeat('a', 'b', 3));
    await waitFor(() => b.got.length === 2, 'the real peer after the rogue');
  });
});
