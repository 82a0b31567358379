/**
 * One site of a small sharded, replicated key-value service built on `rebalancer/slots`.
 *
 *   npx tsx examples/slots-kv/site.ts --id ID [--port 0] [--store URL] [--slots 256] [--replicas 2] [--ttl 2000]
 *
 * HTTP: `GET /kv/:key`, `PUT /kv/:key` (body: the value); `GET /internal/status` (slot counts, for tests). Any site answers: a site that is not the primary of the
 * key's slot forwards the request to the primary named by its routing table (no store call per request). The
 * primary stamps each write with (epoch, sequence), stores it and replicates it synchronously to the slot's other
 * ready replicas and to replicas still migrating in; it acknowledges only when all of them took it. A replica
 * refuses writes stamped with an epoch lower than one it has seen, so a deposed primary cannot write.
 *
 * Migration: on `prepare`, the site pulls a snapshot of the slot from the primary (which registers it as a
 * follower and sends it every later write), pulls again if the primary changed meanwhile, then `markReady`s it.
 * On `releasable` it releases the slot, then drops its data.
 *
 * Prints one JSON line `{"listening": "http://127.0.0.1:PORT"}` when it serves. SIGTERM: leave gracefully.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { openStore } from 'rebalancer';
import { joinSlots } from 'rebalancer/slots';

const { values: args } = parseArgs({
  options: {
    id: { type: 'string', default: `kv-${process.pid}` },
    port: { type: 'string', default: '0' },
    store: { type: 'string', default: 'sqlite:./rebalancer-kv.db' },
    slots: { type: 'string', default: '256' },
    replicas: { type: 'string', default: '2' },
    ttl: { type: 'string', default: '2000' },
  },
});

/** A value's version: the primary's epoch, then a sequence within it. Higher wins. */
type Version = readonly [epoch: number, seq: number];
interface Entry {
  value: string;
  version: Version;
}
const newer = (a: Version, b: Version): boolean => a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]);

/** slot → key → entry: only the slots this site holds (preparing or ready). */
const data = new Map<number, Map<string, Entry>>();
/** slot → the highest primary epoch seen (writes stamped lower are refused). */
const maxEpoch = new Map<number, number>();
/** slot → addresses of sites migrating the slot in from here (they get every write too). */
const followers = new Map<number, Set<string>>();
let seq = 0;

function log(msg: string): void {
  process.stderr.write(`[${args.id}] ${msg}\n`);
}

// ---- HTTP plumbing ------------------------------------------------------------------------

async function body(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function send(res: ServerResponse, status: number, payload: unknown, headers: Record<string, string> = {}): void {
  const text = typeof payload === 'string' ? payload : JSON.stringify(payload);
  res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(text);
}

async function call(url: string, init: RequestInit = {}): Promise<Response> {
  return fetch(url, { ...init, signal: AbortSignal.timeout(2000) });
}

// ---- the application --------------------------------------------------------------------

const server = createServer((req, res) => {
  handle(req, res).catch((error: unknown) => send(res, 500, { error: String(error) }));
});
await new Promise<void>((resolve) => server.listen(Number(args.port), '127.0.0.1', resolve));
const address = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

const store = await openStore(args.store);
// Joined before the listeners below are added: events are held until this module has the member.
const site = await joinSlots({
  store,
  cluster: 'kv',
  node: { id: args.id, address },
  slotCount: Number(args.slots),
  replicas: Number(args.replicas),
  sessionTtlMs: Number(args.ttl),
});

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', address);
  const parts = url.pathname.split('/').slice(1).map(decodeURIComponent);
  if (parts[0] === 'kv' && parts.length === 2) return handleKv(req, res, parts[1]!);
  if (parts[0] === 'internal' && parts[1] === 'snapshot') {
    return handleSnapshot(res, Number(parts[2]), url.searchParams.get('follower'));
  }
  if (parts[0] === 'internal' && parts[1] === 'replicate') return handleReplicate(req, res, Number(parts[2]));
  if (parts[0] === 'internal' && parts[1] === 'status') {
    const states = [...site.slots().values()];
    let primaries = 0;
    for (let s = 0; s < site.config.slotCount; s++) if (site.isPrimary(s)) primaries++;
    return send(res, 200, {
      id: site.nodeId,
      ready: states.filter((x) => x === 'ready').length,
      preparing: states.filter((x) => x === 'preparing').length,
      primaries,
      keys: [...data.values()].reduce((n, m) => n + m.size, 0),
    });
  }
  send(res, 404, { error: 'not found' });
}

async function handleKv(req: IncomingMessage, res: ServerResponse, key: string): Promise<void> {
  const slot = site.slotForKey(key);
  if (!site.isPrimary(slot)) return forward(req, res, key);
  if (req.method === 'GET') {
    const e = data.get(slot)?.get(key);
    return e === undefined ? send(res, 404, { key }) : send(res, 200, { key, value: e.value, version: e.version });
  }
  if (req.method !== 'PUT') return send(res, 405, { error: 'GET or PUT' });
  const value = await body(req);
  const epoch = site.epoch(slot);
  if (epoch === undefined || !site.isPrimary(slot)) return send(res, 503, { error: 'primary moved' });
  const version: Version = [epoch, ++seq];
  const slotData = data.get(slot);
  if (slotData === undefined) return send(res, 503, { error: 'slot not held' });
  slotData.set(key, { value, version });
  // Synchronous fan-out: to the other ready replicas and to those migrating in. All must take it.
  const route = site.route(slot);
  const targets = new Set<string>(followers.get(slot) ?? []);
  for (const s of route.secondaries) if (s.address !== undefined) targets.add(s.address);
  targets.delete(address);
  const results = await Promise.all(
    [...targets].map(async (t) => {
      try {
        const r = await call(`${t}/internal/replicate/${slot}`, {
          method: 'POST',
          body: JSON.stringify({ key, value, version }),
        });
        if (r.status === 410) followers.get(slot)?.delete(t); // it no longer holds the slot
        return r.ok || r.status === 410;
      } catch {
        return false;
      }
    }),
  );
  if (results.every(Boolean)) return send(res, 200, { key, version });
  send(res, 503, { error: 'not every replica took the write; retry' });
}

/** Not the primary here: pass the request to the primary from the routing table (a hop limit stops loops). */
async function forward(req: IncomingMessage, res: ServerResponse, key: string): Promise<void> {
  const hops = Number(req.headers['x-kv-hops'] ?? 0);
  const primary = site.routeKey(key).primary;
  if (primary?.address === undefined || primary.address === address || hops >= 3) {
    return send(res, 503, { error: 'no primary right now; retry' }, { 'retry-after': '1' });
  }
  const method = req.method ?? 'GET';
  try {
    const r = await call(`${primary.address}/kv/${encodeURIComponent(key)}`, {
      method,
      headers: { 'x-kv-hops': String(hops + 1) },
      ...(method === 'PUT' ? { body: await body(req) } : {}),
    });
    send(res, r.status, await r.text());
  } catch (error) {
    send(res, 503, { error: `primary ${primary.id} unreachable: ${String(error)}` });
  }
}

function handleSnapshot(res: ServerResponse, slot: number, follower: string | null): void {
  const slotData = data.get(slot);
  if (slotData === undefined || site.slots().get(slot) !== 'ready') return send(res, 410, { error: 'not held' });
  // Same tick as the copy: every write after this snapshot is sent to the follower too.
  if (follower !== null) {
    const set = followers.get(slot) ?? new Set<string>();
    set.add(follower);
    followers.set(slot, set);
  }
  send(res, 200, { entries: [...slotData].map(([k, e]) => [k, e.value, e.version]) });
}

async function handleReplicate(req: IncomingMessage, res: ServerResponse, slot: number): Promise<void> {
  const { key, value, version } = JSON.parse(await body(req)) as { key: string; value: string; version: Version };
  const slotData = data.get(slot);
  if (slotData === undefined) return send(res, 410, { error: 'not held' });
  if (version[0] < (maxEpoch.get(slot) ?? 0)) return send(res, 409, { error: 'stale epoch' });
  maxEpoch.set(slot, version[0]);
  const old = slotData.get(key);
  if (old === undefined || newer(version, old.version)) slotData.set(key, { value, version });
  send(res, 200, { ok: true });
}

function merge(slot: number, entries: [string, string, Version][]): void {
  const slotData = data.get(slot);
  if (slotData === undefined) return;
  for (const [k, value, version] of entries) {
    const old = slotData.get(k);
    if (old === undefined || newer(version, old.version)) slotData.set(k, { value, version });
    maxEpoch.set(slot, Math.max(maxEpoch.get(slot) ?? 0, version[0]));
  }
}

/** Pull the slot from its primary (or a ready secondary), again if the primary changed meanwhile; then ready. */
async function migrateIn(slot: number): Promise<void> {
  data.set(slot, new Map());
  for (let attempt = 0; site.slots().get(slot) === 'preparing'; attempt++) {
    const route = site.route(slot);
    const sources = [route.primary, ...route.secondaries].filter(
      (s) => s?.address !== undefined && s.id !== site.nodeId,
    );
    if (sources.length === 0) break; // nobody holds it: a new slot, nothing to copy
    let pulled = false;
    for (const s of sources) {
      try {
        const r = await call(`${s!.address}/internal/snapshot/${slot}?follower=${encodeURIComponent(address)}`);
        if (!r.ok) continue;
        merge(slot, ((await r.json()) as { entries: [string, string, Version][] }).entries);
        pulled = true;
        break;
      } catch {
        // try the next one
      }
    }
    const same = site.route(slot).primary;
    if (pulled && same?.id === route.primary?.id && same?.epoch === route.primary?.epoch) break;
    await new Promise((r) => setTimeout(r, Math.min(1000, 100 * (attempt + 1))));
  }
  // Cancelled meanwhile (a routine outcome, not an error): drop what came in.
  const r = await site.markReady(slot).catch(() => ({ ready: false }));
  if (!r.ready) data.delete(slot);
}

site.on('prepare', ({ slots }) => slots.forEach((s) => void migrateIn(s)));
site.on('cancelled', ({ slots }) => slots.forEach((s) => data.delete(s)));
site.on('releasable', ({ slots }) => {
  for (const s of slots) {
    site.release(s).then(
      (r) => {
        // A refusal (the plan moved on, a replica elsewhere is not ready yet) is routine: it is announced again.
        if (!r.released) return;
        data.delete(s);
        followers.delete(s);
      },
      (error: unknown) => log(`release ${s}: ${String(error)}`),
    );
  }
});
site.on('slotsDropped', ({ slots }) => slots.forEach((s) => data.delete(s)));
site.on('primaryGained', ({ slots }) => {
  for (const { slot, epoch } of slots) maxEpoch.set(slot, Math.max(maxEpoch.get(slot) ?? 0, epoch));
});
site.on('error', ({ error, context }) => log(`${context}: ${String(error)}`));

process.stdout.write(`${JSON.stringify({ listening: address, id: args.id })}\n`);

process.once('SIGTERM', () => {
  site
    .leave() // serves until its slots are ready elsewhere, then releases them
    .finally(() => store.close()) // leave() does not close the store
    .catch((error: unknown) => {
      log(`leaving failed: ${String(error)}`);
      process.exitCode = 1;
    })
    // Now, rather than once the keep-alive connections to and from the other sites have timed out.
    .finally(() => process.exit());
});
