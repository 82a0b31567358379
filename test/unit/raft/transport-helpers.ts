/** Helpers for the transport tests: start transports on loopback, collect what they receive, wait for conditions. */
import type { RebalancerError } from '../../../src/errors.js';
import type { Message } from '../../../src/raft/messages.js';
import { Transport, type TransportOptions } from '../../../src/raft/transport/index.js';
import { allocatePorts } from '../../harness/ports.js';
import { releasePort } from '../../harness/processes.js';

export const SECRET = 'a shared secret of enough bytes';

export interface Received {
  from: string;
  groupId: string;
  message: Message;
}

export interface Node {
  id: string;
  t: Transport;
  got: Received[];
  errors: RebalancerError[];
}

const reserved: number[] = [];

/** Release the ports startCluster reserved (call once the transports are closed). */
export function releasePorts(): void {
  for (const p of reserved.splice(0)) releasePort(p);
}

export async function waitFor(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Start transports for `ids` on loopback, each knowing every other one (ports learnt after listening). */
export async function startCluster(
  ids: readonly string[],
  extra: Partial<TransportOptions> | ((id: string) => Partial<TransportOptions>) = {},
): Promise<Node[]> {
  // Ports from the harness's reservation scheme (safe against other test processes), released by releasePorts().
  const allocated = await allocatePorts(ids.length);
  reserved.push(...allocated);
  const ports = new Map<string, number>(ids.map((id, i) => [id, allocated[i]!]));
  const nodes: Node[] = [];
  for (const id of ids) nodes.push(await startNode(id, ports, typeof extra === 'function' ? extra(id) : extra));
  return nodes;
}

export async function startNode(
  id: string,
  ports: ReadonlyMap<string, number>,
  extra: Partial<TransportOptions> = {},
): Promise<Node> {
  const peers: Record<string, { host: string; port: number }> = {};
  for (const [peer, port] of ports) if (peer !== id) peers[peer] = { host: '127.0.0.1', port };
  const node: Node = { id, t: undefined as unknown as Transport, got: [], errors: [] };
  node.t = await Transport.start({
    id,
    clusterId: 'c',
    secret: SECRET,
    listen: { host: '127.0.0.1', port: ports.get(id) ?? 0 },
    peers,
    reconnectBaseMs: 10,
    reconnectMaxMs: 100,
    onMessage: (from, groupId, message) => node.got.push({ from, groupId, message }),
    onError: (e) => node.errors.push(e),
    ...extra,
  });
  return node;
}

export function heartbeat(from: string, to: string, round: number): Message {
  return { type: 'heartbeat', from, to, term: 1, commit: 0, round, quiesce: false };
}
