/**
 * One fleet node in a process of its own, for test/fleet/processes.test.ts. Run as
 * `node --import tsx test/fleet/fleet-worker.ts` with its configuration as JSON in FLEET_WORKER_CONFIG
 * (FleetWorkerConfig below).
 *
 * It joins the fleet (joinFleet) with one state machine, `kv` (src/sim/raft-kv.ts: the checker's key-value model, so
 * a client history goes to the checker as it is; `append` makes a lost or doubled command visible), and takes
 * commands from its control file: one JSON object a line ({ id, cmd, … }, see ControlCommand), read from the start
 * (each process gets a file of its own, so a restarted node never replays its predecessor's commands). It answers
 * each on stdout as a JSON line `{ reply: id, ok, … }`; other lines are events (`{ ev: … }`).
 *
 * Clients run inside the worker (several per node, on every group), so a kill -9 kills them mid-request, as it
 * would an application's. Each operation goes to the history file as two lines, written synchronously: `c` before
 * the request leaves (so a process killed with it in flight leaves a call without a return: an unknown outcome) and
 * `r` once it is answered. Times are milliseconds of the host's monotonic clock (process.hrtime: one clock for
 * every process of the host), so they compare across processes. Not performance.timeOrigin + performance.now():
 * a process's timeOrigin is now and then off by 100 ms or more (seen here on a loaded machine: 1 process of 160
 * started at once), which made a correct history look non-linearizable.
 *
 * Signal handlers are installed before "ready": SIGTERM and SIGINT close the node (no drain) and exit 0.
 */
import { appendFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  FleetGroupExistsError,
  FleetGroupNotFoundError,
  NoQuorumError,
  RebalancerError,
  TimeoutError,
} from '../../src/errors.js';
import { joinFleet, type FleetNode } from '../../src/runtime/fleet/node.js';
import type { KvOutput } from '../../src/sim/linearizability-models.js';
import { kvStateMachine } from '../../src/sim/raft-kv.js';
import { openStore } from '../../src/store/open.js';
import { LineTail } from '../harness/fleet.js';

export interface FleetWorkerConfig {
  readonly storeUrl: string;
  readonly namespace: string;
  readonly fleet: string;
  readonly id: string;
  readonly zone: string;
  readonly port: number;
  readonly dataDir: string;
  /** Commands, one JSON line each (this process's own file). */
  readonly controlFile: string;
  /** Client operations, two JSON lines each (this process's own file). */
  readonly historyFile: string;
  /** Names this process's clients (unique over the test: the node id and its start count). */
  readonly instance: string;
  readonly tickMs: number;
  readonly electionTicks: number;
  readonly sessionTtlMs: number;
  readonly gracePeriodMs: number;
  readonly minNodes: number;
  readonly requestTimeoutMs: number;
}

export type ControlCommand =
  | { readonly id: number; readonly cmd: 'add'; readonly groups: readonly string[]; readonly replicas: number }
  /** Start `clients` client loops over `groups` (appends mostly, linearizable reads now and then). */
  | { readonly id: number; readonly cmd: 'clients'; readonly groups: readonly string[]; readonly clients: number }
  /** Stop the client loops; answered once each has finished its operation in flight. */
  | { readonly id: number; readonly cmd: 'stop-clients' }
  | { readonly id: number; readonly cmd: 'status' }
  /** This node's replicas and their Raft status (for a failure message). */
  | { readonly id: number; readonly cmd: 'replicas' }
  /**
   * Reads of each group's list (key = group name), retried within `timeoutMs`: linearizable, or `stale` (this
   * node's own replica, when it holds one: whether it caught up).
   */
  | {
      readonly id: number;
      readonly cmd: 'read';
      readonly groups: readonly string[];
      readonly timeoutMs: number;
      readonly consistency?: 'linearizable' | 'stale';
    }
  /** Drain, leave, exit 0. */
  | { readonly id: number; readonly cmd: 'deactivate'; readonly timeoutMs: number };

/** A history line: a call (`c`) or its return (`r`). */
export type HistoryLine =
  | { readonly c: string; readonly g: string; readonly op: 'append' | 'get'; readonly v?: string; readonly t: number }
  | {
      readonly r: string;
      readonly t: number;
      readonly out: 'ok' | 'unknown' | 'failed';
      readonly value?: KvOutput;
      /** The error of a call that did not return a value (for a failure's report). */
      readonly error?: string;
    };

/** Pause between two operations of one client: the load stays modest on a shared 2-core machine. */
const CLIENT_PAUSE_MS = 30;
/** Share of reads among client operations. */
const READ_SHARE = 0.2;
const CONTROL_POLL_MS = 50;
/**
 * FLEET_WORKER_BROKEN=fake-ack: now and then a client records an append as acknowledged without sending it — for
 * checking that the test's checks fail (a lost acknowledged command, a history that is not linearizable).
 */
const BROKEN = process.env['FLEET_WORKER_BROKEN'] ?? '';

const raw = process.env['FLEET_WORKER_CONFIG'];
if (raw === undefined) {
  process.stderr.write('test/fleet/fleet-worker.ts is started by test/fleet/processes.test.ts (FLEET_WORKER_CONFIG)\n');
  process.exit(2);
}
const config = JSON.parse(raw) as FleetWorkerConfig;

const now = (): number => Number(process.hrtime.bigint()) / 1e6;

function say(line: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function describe(err: unknown): string {
  if (err instanceof RebalancerError) return `${err.code}: ${err.message}`;
  return err instanceof Error ? (err.stack ?? err.message) : String(err);
}

/** The node once joined (a signal during the join just exits). */
const running: { node?: FleetNode } = {};
let exiting = false;
const shutdown = (signal: string): void => {
  if (exiting) return;
  exiting = true;
  say({ ev: 'signal', signal });
  void (running.node?.close() ?? Promise.resolve()).finally(() => process.exit(0));
};
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

const store = await openStore(config.storeUrl, {
  namespace: config.namespace,
  maxSessionTtlMs: 2 * config.sessionTtlMs,
});
const fleet: FleetNode = await joinFleet({
  store,
  fleet: config.fleet,
  node: { id: config.id, zone: config.zone, address: `127.0.0.1:${config.port}` },
  dataDir: config.dataDir,
  secret: 'the secret of the fleet process test',
  machines: { kv: { stateMachine: kvStateMachine(), snapshotEntries: 500 } },
  tickMs: config.tickMs,
  electionTicks: config.electionTicks,
  sessionTtlMs: config.sessionTtlMs,
  gracePeriodMs: config.gracePeriodMs,
  minNodes: config.minNodes,
  requestTimeoutMs: config.requestTimeoutMs,
});
running.node = fleet;
// Errors are printed, never swallowed; the test reads them when something fails.
fleet.on('error', (e) => say({ ev: 'error', context: e.context, error: describe(e.error) }));
fleet.on('stuck', (e) => say({ ev: 'stuck', ...e }));

// ---- clients ----

let clientsRunning = false;
const clientLoops: Promise<void>[] = [];
let clientCount = 0;

function history(line: HistoryLine): void {
  appendFileSync(config.historyFile, `${JSON.stringify(line)}\n`);
}

async function client(name: string, groups: readonly string[]): Promise<void> {
  let seq = 0;
  while (clientsRunning) {
    const g = groups[Math.floor(Math.random() * groups.length)]!;
    const opId = `${name}.${seq++}`;
    const read = Math.random() < READ_SHARE;
    // A delimited token: the final list splits on ';' into the appended tokens.
    const value = `${opId};`;
    history(read ? { c: opId, g, op: 'get', t: now() } : { c: opId, g, op: 'append', v: value, t: now() });
    if (BROKEN === 'fake-ack' && !read && seq % 20 === 5) {
      history({ r: opId, t: now(), out: 'ok', value: null });
      continue;
    }
    try {
      const result = read
        ? await fleet.query<KvOutput>(g, { op: 'get', key: g }, { consistency: 'linearizable' })
        : await fleet.command<KvOutput>(g, { op: 'append', key: g, value });
      history({ r: opId, t: now(), out: 'ok', value: result });
    } catch (err) {
      // The library says which failures certainly did not apply; anything else may have.
      const notApplied =
        read ||
        err instanceof NoQuorumError ||
        (err instanceof TimeoutError && err.outcome === 'not-applied') ||
        err instanceof FleetGroupNotFoundError;
      history({ r: opId, t: now(), out: notApplied ? 'failed' : 'unknown', error: describe(err).slice(0, 400) });
      if (!(err instanceof RebalancerError)) say({ ev: 'client-bug', op: opId, error: describe(err) });
    }
    await sleep(CLIENT_PAUSE_MS);
  }
}

// ---- commands ----

async function handle(c: ControlCommand): Promise<Record<string, unknown>> {
  switch (c.cmd) {
    case 'add': {
      for (const g of c.groups) {
        try {
          await fleet.addGroup(g, { replicas: c.replicas, machine: 'kv' });
        } catch (err) {
          if (!(err instanceof FleetGroupExistsError)) throw err;
        }
      }
      return {};
    }
    case 'clients': {
      clientsRunning = true;
      for (let i = 0; i < c.clients; i++) {
        clientLoops.push(client(`${config.instance}.c${clientCount++}`, c.groups));
      }
      return {};
    }
    case 'stop-clients': {
      clientsRunning = false;
      await Promise.all(clientLoops.splice(0));
      return {};
    }
    case 'status':
      return { status: await fleet.status() };
    case 'replicas':
      return {
        replicas: fleet.replicas().map(({ group, status: s }) => ({
          group,
          id: s.group,
          role: s.role,
          term: s.term,
          leader: s.leader,
          voters: s.membership.voters,
          learners: s.membership.learners,
          committed: s.committed,
          applied: s.applied,
          lastIndex: s.lastIndex,
          votesHeld: s.votesHeld,
          quiesced: s.quiesced,
          progress: Object.fromEntries(s.progress),
          failed: s.failed?.message,
        })),
        // Connections per peer: a test that fails prints them (one-way traffic shows as sent without received).
        peers: Object.fromEntries(
          Object.entries(fleet.peerStats()).map(([peer, p]) => [
            peer,
            `${p.connected ? 'up' : 'DOWN'} conns ${p.connections} sent ${p.sentMessages} recv ${p.receivedMessages} ` +
              `queued ${p.queuedMessages} dropped ${p.droppedFull + p.droppedOversized + p.droppedMisaddressed}`,
          ]),
        ),
      };
    case 'read': {
      const deadline = Date.now() + c.timeoutMs;
      const values: Record<string, KvOutput> = {};
      for (const g of c.groups) {
        for (;;) {
          try {
            values[g] = await fleet.query<KvOutput>(
              g,
              { op: 'get', key: g },
              { consistency: c.consistency ?? 'linearizable' },
            );
            break;
          } catch (err) {
            if (Date.now() > deadline) throw err;
            await sleep(100);
          }
        }
      }
      return { values };
    }
    case 'deactivate': {
      await fleet.deactivate({ timeoutMs: c.timeoutMs });
      await store.close();
      setTimeout(() => process.exit(0), 50);
      return {};
    }
  }
}

const control = new LineTail(config.controlFile);
const poll = (): void => {
  for (const line of control.read()) {
    const c = JSON.parse(line) as ControlCommand;
    void handle(c).then(
      (result) => say({ reply: c.id, ok: true, ...result }),
      (err: unknown) => say({ reply: c.id, ok: false, error: describe(err) }),
    );
  }
  setTimeout(poll, CONTROL_POLL_MS);
};
say({ ev: 'ready', id: config.id, pid: process.pid });
poll();
