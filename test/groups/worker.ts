/**
 * One real group member for test/groups/real-backends.test.ts.
 * Usage: node --import tsx worker.ts <storeUrl> <namespace> <nodeId> <oracleFile>
 *
 * Its handler is the test's oracle, outside the library: it appends JSON lines
 * `{node, resource, token, event, t}` to the shared oracle file (O_APPEND, one
 * small write per line) — `start` when the handler starts, `effect` for each
 * simulated side effect (every ~50 ms, only while ctx.stillOwner() is true),
 * `stillOwnerFalse` the first time the check fails, `aborted` when it sees its
 * signal, and `stop` when it settles.
 *
 * SIGTERM: leave the group gracefully (member.leave()), close the store, exit 0.
 * Events go to stdout as JSON lines (the test sends them to a log file).
 *
 * Deliberately broken handlers, for checking that the test's assertions can fail:
 * REBALANCER_TEST_BROKEN_HANDLER=never-stops ignores its signal and stillOwner() for good;
 * REBALANCER_TEST_BROKEN_HANDLER=slow-unchecked ignores stillOwner() and keeps acting for 3 s after its signal.
 */
import { appendFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { joinGroup, type GroupEvents } from '../../src/runtime/groups/member.js';
import type { ResourceContext } from '../../src/runtime/groups/options.js';
import { openStore } from '../../src/store/open.js';

const [url, namespace, nodeId, oracleFile] = process.argv.slice(2);
if (url === undefined || namespace === undefined || nodeId === undefined || oracleFile === undefined) {
  process.stderr.write('usage: worker.ts <storeUrl> <namespace> <nodeId> <oracleFile>\n');
  process.exit(2);
}
const GROUP = process.env['REBALANCER_TEST_GROUP'] ?? 'workers';
const TTL_MS = Number(process.env['REBALANCER_TEST_TTL_MS'] ?? 2000);
const BROKEN = process.env['REBALANCER_TEST_BROKEN_HANDLER'] ?? '';
const EFFECT_EVERY_MS = 50;
/** Time a handler takes to wind down after its signal (no side effects meanwhile). */
const DRAIN_MS = 50;

function oracle(resource: string, token: number, event: string): void {
  appendFileSync(oracleFile!, `${JSON.stringify({ node: nodeId, resource, token, event, t: Date.now() })}\n`);
}

function say(what: string, detail: unknown = {}): void {
  process.stdout.write(`${JSON.stringify({ t: Date.now(), node: nodeId, what, detail }, replacer)}\n`);
}

function replacer(_key: string, value: unknown): unknown {
  return value instanceof Error ? { name: value.name, message: value.message } : value;
}

async function handler(ctx: ResourceContext): Promise<void> {
  const { resource, fencingToken: token } = ctx;
  oracle(resource, token, 'start');
  let warned = false;
  let abortedAt: number | undefined;
  const goOn = (): boolean => {
    if (BROKEN === 'never-stops') return true;
    if (!ctx.signal.aborted) return true;
    abortedAt ??= Date.now();
    return BROKEN === 'slow-unchecked' && Date.now() < abortedAt + 3000;
  };
  while (goOn()) {
    if (BROKEN !== '' || ctx.stillOwner()) {
      oracle(resource, token, 'effect');
    } else if (!warned) {
      warned = true;
      oracle(resource, token, 'stillOwnerFalse');
    }
    await sleep(EFFECT_EVERY_MS);
  }
  oracle(resource, token, 'aborted');
  await sleep(DRAIN_MS);
  oracle(resource, token, 'stop');
}

// The longest TTL of the namespace (every client of it agrees): after the store lost its data, nothing is granted
// for this long (docs/adr/0009). Twice the TTL keeps the real-process test quick.
const store = await openStore(url, { namespace, maxSessionTtlMs: TTL_MS * 2 });
const member = await joinGroup({
  store,
  group: GROUP,
  node: { id: nodeId },
  handler,
  sessionTtlMs: TTL_MS,
  drainTimeoutMs: 5000,
});
const events: (keyof GroupEvents)[] = [
  'joined',
  'coordinatorElected',
  'coordinatorLost',
  'rebalanceStarted',
  'rebalanceCompleted',
  'assigned',
  'revoked',
  'released',
  'fenced',
  'unfenced',
  'sessionLost',
  'handlerFailed',
  'handlerStuck',
  'error',
  'left',
];
for (const e of events) member.on(e, (detail: unknown) => say(e, detail));
say('ready', { sessionId: member.sessionId });

let leaving = false;
process.on('SIGTERM', () => {
  if (leaving) return;
  leaving = true;
  say('sigterm');
  void (async () => {
    try {
      await member.leave();
      await store.close();
      say('exit');
      process.exit(0);
    } catch (error) {
      say('leaveFailed', { error });
      process.exit(1);
    }
  })();
});

// Event-loop stalls explain missed keep-alives: report any tick more than 500 ms late.
// This interval also keeps the process alive: the member's own timers are unref'd ("background"), so on
// sqlite (no socket) a member with no handler running lets the event loop empty and the process exits
// silently with code 0 (seen: a freshly elected coordinator vanished right after its first rebalance).
// A real application has its own reason to stay up; so does this worker, until SIGTERM.
let lastTick = Date.now();
setInterval(() => {
  const now = Date.now();
  if (now - lastTick > 700) say('eventLoopStall', { ms: now - lastTick - 200 });
  lastTick = now;
}, 200);
process.on('exit', (code) => say('processExit', { code }));
