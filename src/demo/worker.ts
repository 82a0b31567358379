/**
 * One demo worker: a real process that joins the group and "runs" each
 * resource it is given. Started by the demo (run.ts), never by hand.
 *
 *   worker <storeUrl> <namespace> <group> <nodeId> <oracleFile> <sessionTtlMs>
 *
 * The handler is the demo's evidence: it appends `start`, then an `effect`
 * every 100 ms while `ctx.stillOwner()` holds, then `stop` to the oracle file
 * (see oracle.ts). Library events go to stdout as JSON lines. SIGTERM leaves
 * the group gracefully and exits 0.
 *
 * REBALANCER_DEMO_BROKEN=background-work makes the handler return at once on
 * revoke but keep acting for 2 s in the background (the classic bug of
 * fire-and-forget work): the demo's oracle must report it.
 */
import { appendFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { joinGroup, type GroupEvents } from '../runtime/groups/member.js';
import type { ResourceContext } from '../runtime/groups/options.js';
import { openStore } from '../store/open.js';

const [url, namespace, group, nodeId, oracleFile, ttl] = process.argv.slice(2);
if (
  url === undefined ||
  namespace === undefined ||
  group === undefined ||
  nodeId === undefined ||
  oracleFile === undefined
) {
  process.stderr.write('usage: worker <storeUrl> <namespace> <group> <nodeId> <oracleFile> <sessionTtlMs>\n');
  process.exit(2);
}
const BROKEN = process.env['REBALANCER_DEMO_BROKEN'] ?? '';
const EFFECT_EVERY_MS = 100;

function oracle(resource: string, token: number, event: string): void {
  appendFileSync(oracleFile!, `${JSON.stringify({ node: nodeId, resource, token, event, t: Date.now() })}\n`);
}

function say(what: string, detail: unknown = {}): void {
  process.stdout.write(
    `${JSON.stringify({ t: Date.now(), node: nodeId, what, detail }, (_k, v: unknown) =>
      v instanceof Error ? { name: v.name, message: v.message } : v,
    )}\n`,
  );
}

async function handler(ctx: ResourceContext): Promise<void> {
  const { resource, fencingToken: token } = ctx;
  oracle(resource, token, 'start');
  while (!ctx.signal.aborted && ctx.stillOwner()) {
    oracle(resource, token, 'effect');
    await sleep(EFFECT_EVERY_MS);
  }
  oracle(resource, token, 'stop');
  if (BROKEN === 'background-work') {
    void (async () => {
      for (const end = Date.now() + 2000; Date.now() < end;) {
        oracle(resource, token, 'effect');
        await sleep(EFFECT_EVERY_MS);
      }
    })();
  }
}

const store = await openStore(url, { namespace });
const member = await joinGroup({
  store,
  group,
  node: { id: nodeId },
  handler,
  sessionTtlMs: Number(ttl ?? 2000),
  drainTimeoutMs: 5000,
});
const events: (keyof GroupEvents)[] = [
  'coordinatorElected',
  'assigned',
  'revoked',
  'fenced',
  'sessionLost',
  'handlerFailed',
  'handlerStuck',
  'error',
];
for (const e of events) member.on(e, (detail: unknown) => say(e, detail));
say('ready', { sessionId: member.sessionId });

let leaving = false;
process.on('SIGTERM', () => {
  if (leaving) return;
  leaving = true;
  void (async () => {
    try {
      await member.leave();
      await store.close();
      say('left');
      process.exit(0);
    } catch (error) {
      say('leaveFailed', { error });
      process.exit(1);
    }
  })();
});
// The member's timers are unref'd; a worker has no other reason to stay up, so keep the event loop alive.
setInterval(() => undefined, 1000);
