/**
 * Worker process of `npm run bench -- groups` (not a benchmark by itself).
 *
 *   node --import tsx bench/groups-worker.ts member <storeUrl> <namespace> <group> <nodeId> <ttlMs>
 *     [<rebalanceDebounceMs> <rejoinGracePeriodMs>]   (default: the library's defaults)
 *   node --import tsx bench/groups-worker.ts election <etcdHostPort> <name> <id> <ttlSeconds>
 *   node --import tsx bench/groups-worker.ts scale <storeUrl> <namespace> <group> <nodeId> <ttlMs>
 *
 * Reports on stdout, one JSON object per line, with `t` = Date.now() (all
 * processes run on one host):
 *   {"ev":"ready"}                       joined (member) / campaigning (election)
 *   {"ev":"start","r":"…","t":…}         a resource's handler started
 *   {"ev":"stop","r":"…","t":…}          a resource's handler stopped
 *   {"ev":"elected","t":…}               this process won the etcd election
 *   {"ev":"stats","running":…,"stallMs":…,"rssMb":…,"errors":…,"lost":…,"coord":…,"t":…}
 *                                        scale mode, every 250 ms instead of per-resource lines: handlers running,
 *                                        the longest event-loop stall so far, resident memory, error events,
 *                                        sessions lost, whether this process coordinates
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { joinGroup } from '../src/runtime/groups/member.js';
import { openStore } from '../src/store/open.js';

function say(o: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ ...o, t: Date.now() })}\n`);
}

const [mode, ...rest] = process.argv.slice(2);

if (mode === 'member') {
  const [url, namespace, group, nodeId, ttl, debounce, initialDelay] = rest as [
    string,
    string,
    string,
    string,
    string,
    string | undefined,
    string | undefined,
  ];
  const store = await openStore(url, { namespace });
  const member = await joinGroup({
    store,
    group,
    node: { id: nodeId },
    sessionTtlMs: Number(ttl),
    ...(debounce === undefined ? {} : { rebalanceDebounceMs: Number(debounce) }),
    ...(initialDelay === undefined ? {} : { rejoinGracePeriodMs: Number(initialDelay) }),
    handler: async ({ resource, signal }) => {
      say({ ev: 'start', r: resource });
      await new Promise<void>((resolve) => {
        if (signal.aborted) resolve();
        else signal.addEventListener('abort', () => resolve(), { once: true });
      });
      say({ ev: 'stop', r: resource });
    },
  });
  member.on('error', ({ context }) => process.stderr.write(`${nodeId}: error ${context}\n`));
  say({ ev: 'ready' });
  const bye = (): void => {
    void member
      .leave()
      .finally(() => store.close())
      .finally(() => process.exit(0));
  };
  process.on('SIGTERM', bye);
  process.on('SIGINT', bye);
  setInterval(() => undefined, 60_000); // stay alive
} else if (mode === 'scale') {
  const [url, namespace, group, nodeId, ttl] = rest as [string, string, string, string, string];
  const stall = monitorEventLoopDelay({ resolution: 10 });
  stall.enable();
  const store = await openStore(url, { namespace });
  let running = 0;
  let errors = 0;
  let lost = 0;
  let peakRss = 0;
  const firstErrors: string[] = [];
  const member = await joinGroup({
    store,
    group,
    node: { id: nodeId },
    sessionTtlMs: Number(ttl),
    handler: async ({ signal }) => {
      running++;
      await new Promise<void>((resolve) => {
        if (signal.aborted) resolve();
        else signal.addEventListener('abort', () => resolve(), { once: true });
      });
      running--;
    },
  });
  member.on('error', ({ error, context }) => {
    errors++;
    if (firstErrors.length < 3)
      firstErrors.push(`${context}: ${error instanceof Error ? error.message : String(error)}`);
  });
  member.on('sessionLost', () => lost++);
  // From here on: loading modules and joining are not what is measured.
  stall.reset();
  say({ ev: 'ready' });
  setInterval(() => {
    peakRss = Math.max(peakRss, process.memoryUsage.rss());
    say({
      ev: 'stats',
      running,
      stallMs: Math.round(stall.max / 1e6),
      rssMb: Math.round(peakRss / 1e6),
      errors,
      lost,
      coord: member.isCoordinator,
      firstErrors,
    });
  }, 250);
  process.on('SIGTERM', () => process.exit(0));
} else if (mode === 'election') {
  const [hostPort, name, id, ttlSeconds] = rest as [string, string, string, string];
  const { Etcd3 } = await import('etcd3');
  const client = new Etcd3({ hosts: `http://${hostPort}` });
  const campaign = client.election(name, Number(ttlSeconds)).campaign(id);
  campaign.on('elected', () => say({ ev: 'elected' }));
  campaign.on('error', (err: unknown) => say({ ev: 'error', error: String(err) }));
  say({ ev: 'ready' });
  process.on('SIGTERM', () => {
    client.close();
    process.exit(0);
  });
  setInterval(() => undefined, 60_000);
} else {
  process.stderr.write('usage: groups-worker.ts member|election …\n');
  process.exit(2);
}
