/**
 * One node of a small replicated, sharded key-value service on `rebalancer/fleet` (README.md next to this file).
 *
 *   NODE_ID=kv-1 HTTP_PORT=8001 RAFT_PORT=7001 npx tsx examples/fleet-kv/node.ts     # from the repository root
 *
 * HTTP on 127.0.0.1:HTTP_PORT: `GET /kv/:key` (200 with the value as the body, 404 when absent), `PUT /kv/:key`
 * (the body is the value; 200), `DELETE /kv/:key` (200, 404 when absent), `GET /status` (the fleet as JSON).
 * Errors are JSON `{ error, message, outcome }` with 503 and `Retry-After` when the client should retry: `outcome`
 * is `not-applied` (safe to send again) or `unknown` (a write that may still apply: read before retrying).
 *
 * The keys are spread by a hash over KV_GROUPS Raft groups (`kv-0`…), each with REPLICAS replicas placed by the
 * fleet; every node creates the groups that are missing when it starts. Any node answers any key: `command()` and
 * `query()` go to the group's replica here or to a node that holds one.
 *
 * Prints `<id> serving http://127.0.0.1:<port>` once it serves. SIGTERM or Ctrl-C drains (the node's replicas move
 * to the others first, the node keeps answering meanwhile) and then exits; a second one leaves at once.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { openStore } from 'rebalancer';
import {
  FleetGroupExistsError,
  FleetGroupNotFoundError,
  InvalidArgumentError,
  joinFleet,
  LimitExceededError,
  NoQuorumError,
  RebalancerError,
  type StateMachine,
} from 'rebalancer/fleet';

const env = (name: string, fallback: string): string => process.env[name] ?? fallback;
function intEnv(name: string, fallback: number, min: number): number {
  const value = Number(env(name, String(fallback)));
  if (!Number.isInteger(value) || value < min) {
    throw new Error(`${name} must be an integer ≥ ${min}, got ${JSON.stringify(process.env[name])}`);
  }
  return value;
}
const id = env('NODE_ID', 'kv-1');
const host = env('HOST', '127.0.0.1');
const httpPort = intEnv('HTTP_PORT', 8001, 0);
const raftPort = intEnv('RAFT_PORT', 7001, 0);
// Fixed for the life of the fleet: the same on every node, or keys would be looked for in the wrong group.
const groupCount = intEnv('KV_GROUPS', 16, 1);
const replicas = intEnv('REPLICAS', 3, 1);
/** Largest value accepted, in bytes: a command is one Raft log entry, replicated to every member. */
const MAX_VALUE_BYTES = 64 * 1024;
const MAX_KEY_CHARS = 512;

// ---- the state machine: one map per group ---------------------------------------------------------------------

type KvCommand =
  | { readonly op: 'put'; readonly key: string; readonly value: string }
  | { readonly op: 'delete'; readonly key: string };

// Deterministic and never throws: every replica of a group holds the same map.
const kv: StateMachine<Map<string, string>, KvCommand, string, boolean, string | null> = {
  initial: () => new Map(),
  command: (state, c) => {
    // The result says whether the key existed before (for DELETE's 404).
    const existed = state.has(c.key);
    if (c.op === 'put') state.set(c.key, c.value);
    else state.delete(c.key);
    return { state, result: existed };
  },
  query: (state, key) => state.get(key) ?? null,
  snapshot: (state) => new TextEncoder().encode(JSON.stringify([...state])),
  restore: (bytes) => new Map(JSON.parse(new TextDecoder().decode(bytes)) as [string, string][]),
};

/** The group of a key: FNV-1a over its UTF-16 code units, modulo the number of groups. */
function groupOf(key: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  return `kv-${(h >>> 0) % groupCount}`;
}

// ---- the fleet node -------------------------------------------------------------------------------------------

const store = await openStore(env('REBALANCER_STORE', 'sqlite:./fleet-kv.db'));
const node = await joinFleet({
  store,
  fleet: 'kv',
  node: { id, zone: env('ZONE', ''), address: `${host}:${raftPort}` },
  dataDir: env('DATA_DIR', `./fleet-kv-data/${id}`),
  secret: env('FLEET_SECRET', 'use 32 random bytes, the same on every node'),
  machines: { kv },
  // New groups wait until this many nodes run, so that they start on all their replicas instead of moving.
  minNodes: intEnv('MIN_NODES', replicas, 1),
  sessionTtlMs: intEnv('SESSION_TTL_MS', 10_000, 1),
  gracePeriodMs: intEnv('GRACE_PERIOD_MS', 5000, 0),
});
node.on('error', (e) => console.error(`${id}: ${e.context}: ${String(e.error)}`));
node.on('stuck', ({ group, detail }) => console.error(`${id}: ${group} is stuck: ${detail}`));

// Every node creates the groups that are missing, so any node can start first; a group another node created
// meanwhile is refused with FleetGroupExistsError, which is the same outcome.
for (let i = 0; i < groupCount; i++) {
  await node.addGroup(`kv-${i}`, { replicas, machine: 'kv' }).catch((error: unknown) => {
    if (!(error instanceof FleetGroupExistsError)) throw error;
  });
}

// ---- HTTP ------------------------------------------------------------------------------------------------------

/** The body, or undefined when it is larger than MAX_VALUE_BYTES. */
async function readBody(req: IncomingMessage): Promise<string | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).byteLength;
    if (size > MAX_VALUE_BYTES) return undefined;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function send(res: ServerResponse, status: number, body: string | object, headers: Record<string, string> = {}): void {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  const type = typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json';
  res.writeHead(status, { 'content-type': type, ...headers }).end(text);
}

/**
 * A library error as HTTP. For a write, `outcome` says whether it may still apply: `not-applied` when it surely was
 * not (no leader during the call, the group not created yet), else what the error carries, else `unknown`.
 */
function sendError(res: ServerResponse, error: unknown, write: boolean): void {
  if (error instanceof InvalidArgumentError || error instanceof LimitExceededError) {
    send(res, 400, { error: error.name, message: error.message });
    return;
  }
  const carried = error instanceof RebalancerError && 'outcome' in error ? String(error.outcome) : undefined;
  const outcome =
    !write || error instanceof NoQuorumError || error instanceof FleetGroupNotFoundError
      ? 'not-applied'
      : (carried ?? 'unknown');
  if (error instanceof RebalancerError) {
    send(res, 503, { error: error.name, message: error.message, outcome }, { 'retry-after': '1' });
    return;
  }
  console.error(`${id}: ${String(error)}`);
  send(res, 500, { error: 'InternalError', message: String(error), outcome });
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://localhost');
  if (url.pathname === '/status' && req.method === 'GET') {
    send(res, 200, await node.status());
    return;
  }
  const match = /^\/kv\/(.+)$/.exec(url.pathname);
  if (match === null) {
    send(res, 404, { error: 'NotFound', message: 'use /kv/:key or /status' });
    return;
  }
  let key: string;
  try {
    key = decodeURIComponent(match[1]!);
  } catch {
    send(res, 400, { error: 'BadKey', message: 'the key is not valid percent-encoded UTF-8' });
    return;
  }
  if (key.length > MAX_KEY_CHARS) {
    send(res, 400, { error: 'KeyTooLong', message: `keys are at most ${MAX_KEY_CHARS} characters` });
    return;
  }
  const group = groupOf(key);
  switch (req.method) {
    case 'GET': {
      // Linearizable: confirmed with the group's leader, so it sees every write acknowledged before it started.
      const value = await node.query<string | null>(group, key, { consistency: 'linearizable' });
      if (value === null) send(res, 404, { error: 'NotFound', message: `no key ${JSON.stringify(key)}` });
      else send(res, 200, value);
      return;
    }
    case 'PUT': {
      const value = await readBody(req);
      if (value === undefined) {
        send(res, 413, { error: 'TooLarge', message: `values are at most ${MAX_VALUE_BYTES} bytes` });
        return;
      }
      await node.command(group, { op: 'put', key, value });
      send(res, 200, { key, group });
      return;
    }
    case 'DELETE': {
      const existed = await node.command<boolean>(group, { op: 'delete', key });
      if (existed) send(res, 200, { key, group });
      else send(res, 404, { error: 'NotFound', message: `no key ${JSON.stringify(key)}` });
      return;
    }
    default:
      send(res, 405, { error: 'MethodNotAllowed', message: 'GET, PUT or DELETE' }, { allow: 'GET, PUT, DELETE' });
  }
}

const server = createServer((req, res) => {
  handle(req, res).catch((error: unknown) => sendError(res, error, req.method === 'PUT' || req.method === 'DELETE'));
});
await new Promise<void>((resolve) => server.listen(httpPort, host, resolve));
console.log(`${id} serving http://${host}:${(server.address() as AddressInfo).port}`);

// ---- stopping --------------------------------------------------------------------------------------------------

let stopping = false;
async function drainAndExit(): Promise<void> {
  console.log(`${id} draining`);
  try {
    // Draining needs another active node to move to (and when every node stops at once, none is left): the last
    // one leaves at once, its replicas stay on its disk for when the fleet starts again.
    const others = (await node.status()).nodes.filter((n) => n.id !== id && n.state === 'active');
    // The node keeps answering while its replicas move to the other nodes; then it leaves the fleet.
    if (others.length > 0) await node.deactivate({ timeoutMs: 120_000 });
    else await node.close();
  } catch (error) {
    console.error(`${id}: draining failed, leaving anyway: ${String(error)}`);
    await node.close();
  }
  server.closeIdleConnections();
  await new Promise((resolve) => server.close(resolve));
  await store.close();
  console.log(`${id} left`);
}
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => {
    if (!stopping) {
      stopping = true;
      void drainAndExit();
      return;
    }
    // A second signal: leave at once; the others replace this node's replicas after the grace period.
    console.log(`${id} leaving without draining`);
    server.closeAllConnections();
    void node.close().then(() => process.exit(0));
  });
}
