/**
 * One real slots site for test/slots/real-backends.test.ts.
 * Usage: node --import tsx site-worker.ts <storeUrl> <namespace> <siteId> <oracleFile> <stateDir>
 *
 * The application here is the test's oracle, outside the library. It appends JSON lines to the shared oracle
 * file (one fd opened O_APPEND, one write() per line, so the file's order is the order of the writes):
 *  - `{k:'ready', site, slot}` when a slot's (simulated) migration is done, just before markReady(slot);
 *  - `{k:'release', site, slot}` after release(slot) succeeded (the copy is dropped);
 *  - `{k:'dropped', site, slot}` when a copy goes otherwise (slotsDropped, or markReady refused);
 *  - `{k:'gain', site, slot, epoch}` on primaryGained, `{k:'lost', site, slot, epoch, reason}` on primaryLost;
 *  - `{k:'write', site, w: [[slot, epoch], …]}` every WRITE_EVERY_MS: the side effects it did as primary, each
 *    done only while site.isPrimary(slot) is true.
 * Every line also has `t` (Date.now()).
 *
 * SIGUSR2: write `<stateDir>/<siteId>.json` (atomically) with the routing table as this site sees it, a digest of
 * it, the routing version and the local slot states. SIGTERM: leave() gracefully, close the store, exit 0.
 * Library events go to stdout as JSON lines (the test sends them to a log file).
 *
 * REBALANCER_TEST_BROKEN=keep-writing: a deliberately broken application that goes on writing to the slots it lost
 * (ignores primaryLost and isPrimary), for checking that the test's assertions can fail.
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, renameSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { joinSlots, type SlotsEvents } from '../../src/slots/index.js';
import { openStore } from '../../src/store/open.js';

const [url, namespace, siteId, oracleFile, stateDir] = process.argv.slice(2);
if (
  url === undefined ||
  namespace === undefined ||
  siteId === undefined ||
  oracleFile === undefined ||
  stateDir === undefined
) {
  process.stderr.write('usage: site-worker.ts <storeUrl> <namespace> <siteId> <oracleFile> <stateDir>\n');
  process.exit(2);
}
const SLOTS = Number(process.env['REBALANCER_TEST_SLOTS'] ?? 256);
const R = Number(process.env['REBALANCER_TEST_R'] ?? 2);
const TTL_MS = Number(process.env['REBALANCER_TEST_TTL_MS'] ?? 2000);
const MIGRATE_MS = Number(process.env['REBALANCER_TEST_MIGRATE_MS'] ?? 50);
const BROKEN = process.env['REBALANCER_TEST_BROKEN'] ?? '';
const WRITE_EVERY_MS = 100;

const oracleFd = openSync(oracleFile, 'a');
function oracle(line: Record<string, unknown>): void {
  writeSync(oracleFd, `${JSON.stringify({ ...line, site: siteId, t: Date.now() })}\n`);
}

function say(what: string, detail: unknown = {}): void {
  process.stdout.write(`${JSON.stringify({ t: Date.now(), site: siteId, what, detail }, replacer)}\n`);
}
function replacer(_key: string, value: unknown): unknown {
  return value instanceof Error ? { name: value.name, message: value.message } : value;
}

const store = await openStore(url, { namespace });
// The listeners below are added right after the join resolves: its events are held until then.
const site = await joinSlots({
  store,
  cluster: 'kv',
  node: { id: siteId, address: `${siteId}.test:7000` },
  slotCount: SLOTS,
  replicas: R,
  sessionTtlMs: TTL_MS,
  leaveTimeoutMs: 30_000,
});

/** slot → epoch of the primary role the application acts on. */
const acting = new Map<number, number>();

site.on('prepare', ({ slots }) => {
  for (const slot of slots) {
    setTimeout(() => {
      if (site.slots().get(slot) !== 'preparing') return; // cancelled meanwhile
      oracle({ k: 'ready', slot });
      site.markReady(slot).then(
        (r) => {
          if (r.ready) return;
          oracle({ k: 'dropped', slot });
          say('markReadyRefused', { slot, reason: r.reason });
        },
        (error: unknown) => {
          oracle({ k: 'dropped', slot });
          say('markReadyFailed', { slot, error });
        },
      );
    }, MIGRATE_MS);
  }
});
site.on('releasable', ({ slots }) => {
  for (const slot of slots) {
    site.release(slot).then(
      (r) => {
        // Refused: not yet (a later releasable says when), or an earlier call released it already.
        if (r.released) oracle({ k: 'release', slot });
        else say('releaseRefused', { slot, reason: r.reason });
      },
      (error: unknown) => say('releaseFailed', { slot, error }),
    );
  }
});
site.on('slotsDropped', ({ slots }) => {
  for (const slot of slots) oracle({ k: 'dropped', slot });
});
site.on('primaryGained', ({ slots }) => {
  for (const { slot, epoch } of slots) {
    acting.set(slot, epoch);
    oracle({ k: 'gain', slot, epoch });
  }
});
site.on('primaryLost', ({ slots, reason }) => {
  for (const slot of slots) {
    oracle({ k: 'lost', slot, epoch: acting.get(slot) ?? -1, reason });
    if (BROKEN !== 'keep-writing') acting.delete(slot);
  }
});

// The side effects, as a primary does them: each only while isPrimary(slot) (the synchronous ownership check).
setInterval(() => {
  const w: [number, number][] = [];
  for (const [slot, epoch] of acting) if (BROKEN === 'keep-writing' || site.isPrimary(slot)) w.push([slot, epoch]);
  if (w.length > 0) oracle({ k: 'write', w });
}, WRITE_EVERY_MS);

const events: (keyof SlotsEvents)[] = [
  'joined',
  'coordinatorElected',
  'planWritten',
  'fenced',
  'unfenced',
  'sessionLost',
  'slotsDropped',
  'error',
  'left',
];
for (const e of events) site.on(e, (detail: unknown) => say(e, detail));

function routingState(): Record<string, unknown> {
  const table: [string | null, number | null, string[]][] = [];
  for (let s = 0; s < SLOTS; s++) {
    const r = site.route(s);
    table.push([r.primary?.id ?? null, r.primary?.epoch ?? null, r.secondaries.map((x) => x.id).sort()]);
  }
  const digest = createHash('sha256').update(JSON.stringify(table)).digest('hex').slice(0, 16);
  return { site: siteId, t: Date.now(), version: site.routingVersion, digest, table, local: [...site.slots()] };
}

process.on('SIGUSR2', () => {
  const path = join(stateDir, `${siteId}.json`);
  writeFileSync(`${path}.tmp`, JSON.stringify(routingState()));
  renameSync(`${path}.tmp`, path);
});

let leaving = false;
process.on('SIGTERM', () => {
  if (leaving) return;
  leaving = true;
  say('sigterm');
  void (async () => {
    try {
      await site.leave();
      await store.close();
      say('exit');
      closeSync(oracleFd);
      process.exit(0);
    } catch (error) {
      say('leaveFailed', { error });
      process.exit(1);
    }
  })();
});

oracle({ k: 'hello' }); // the test signals (SIGUSR2) only sites that said hello: the handler is in place
say('started');

// Event-loop stalls explain missed keep-alives: report any tick more than 500 ms late.
let lastTick = Date.now();
setInterval(() => {
  const now = Date.now();
  if (now - lastTick > 700) say('eventLoopStall', { ms: now - lastTick - 200 });
  lastTick = now;
}, 200);
process.on('exit', (code) => say('processExit', { code }));
