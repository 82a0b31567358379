/**
 * The fleet demo (`rebalancer demo --fleet`): Raft groups moving over fleet nodes, in one screen. Three fleet nodes
 * run in this process on loopback (each its own Raft log in a temp dir), sharing the embedded SQLite store; a few
 * counter groups of three replicas are added, and a client outside the fleet (connectFleet) keeps adding to every
 * counter through all that follows: a fourth node joins and gets its share, then drains and leaves, then the
 * coordinator stops without draining, as in a crash, and its replicas are placed on the survivors. At the end every
 * counter is read back: it must hold every command the client saw acknowledged, each exactly once.
 *
 * Like run.ts, this module only runs the scenario and reports (steps, membership changes as they happen, status
 * snapshots); the CLI renders (src/cli/commands/demo.ts).
 */
import { randomBytes } from 'node:crypto';
import { createWriteStream, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe } from '../errors.js';
import type { MembershipChange } from '../raft/messages.js';
import type { StateMachine } from '../raft/node/state-machine.js';
import { readFleetView } from '../protocol/fleet/io.js';
import { FleetKeys } from '../protocol/fleet/keys.js';
import { fleetStatus, type FleetStatus } from '../protocol/fleet/status.js';
import { connectFleet, type FleetClient } from '../runtime/fleet/client.js';
import { joinFleet, type FleetNode } from '../runtime/fleet/node.js';
import type { Store } from '../store/contract.js';
import { openStore } from '../store/open.js';
import { DemoFailedError } from './run.js';

export interface FleetDemoOptions {
  /** Counter groups (default 4). */
  readonly groups?: number | undefined;
  /** Pause after each step so a viewer can see the state (the view keeps updating meanwhile). Default 0. */
  readonly paceMs?: number | undefined;
  /** Give up on a step after this long (default 30 s). */
  readonly stepTimeoutMs?: number | undefined;
  /** Keep the temp dir (store, Raft logs, node log) even when all went well. */
  readonly keep?: boolean | undefined;
  readonly onStep?: ((step: FleetDemoStep) => void) | undefined;
  /** Called with every status snapshot the demo takes (about 5 per second). */
  readonly onStatus?: ((view: FleetDemoView) => void) | undefined;
  readonly signal?: AbortSignal | undefined;
}

export interface FleetDemoStep {
  /** `move`: a membership change or a new leader, as it happened (not a step of the scenario). */
  readonly step: 'start' | 'settled' | 'join' | 'joined' | 'drain' | 'drained' | 'kill' | 'failover' | 'check' | 'move';
  /** Since the demo started. */
  readonly atMs: number;
  readonly message: string;
  readonly durationMs?: number | undefined;
}

export interface FleetDemoView {
  readonly status: FleetStatus | undefined;
  /** Nodes running now. */
  readonly live: readonly string[];
  readonly steps: readonly FleetDemoStep[];
  readonly current: string;
  /** Commands the client saw acknowledged, and those whose outcome it could not know (timed out once handed over). */
  readonly acknowledged: number;
  readonly inDoubt: number;
}

export interface FleetDemoSummary {
  readonly store: string;
  readonly groups: number;
  /** From adding the groups to every group converged on its desired members and leader. */
  readonly settleMs: number;
  /** From the fourth node's start to every group converged with its share on it. */
  readonly joinMs: number;
  /** From deactivate() on the fourth node until it left and every group converged without it. */
  readonly drainMs: number;
  /** From the stop (without draining) until every group converged on the survivors (includes the grace period). */
  readonly failoverMs: number;
  readonly sessionTtlMs: number;
  readonly gracePeriodMs: number;
  /** Membership changes made (learner added, promoted, removed), and leader changes seen. */
  readonly moves: number;
  readonly leaderChanges: number;
  readonly acknowledged: number;
  readonly inDoubt: number;
  /** Commands the client saw acknowledged that the final counters do not hold (must be 0), with the reasons. */
  readonly lost: number;
  readonly problems: readonly string[];
  readonly steps: readonly FleetDemoStep[];
  readonly totalMs: number;
  /** Where the store, Raft logs and node log are (kept on failure or with `keep`). */
  readonly dir: string | undefined;
}

interface Counter {
  readonly total: number;
}

/** The demo's state machine: a counter; a command adds, its result is the new total. */
const counter: StateMachine<Counter, { add: number }, 'total', number, number> = {
  initial: () => ({ total: 0 }),
  command: (state, c) => ({ state: { total: state.total + c.add }, result: state.total + c.add }),
  query: (state) => state.total,
  snapshot: (state) => new TextEncoder().encode(JSON.stringify(state)),
  restore: (bytes) => JSON.parse(new TextDecoder().decode(bytes)) as Counter,
};

const FLEET = 'demo';
/**
 * Short on purpose: a node that stops without draining has its replicas placed elsewhere after the grace period (one
 * killed outright: after its session TTL plus the grace period).
 */
const SESSION_TTL_MS = 2000;
const GRACE_PERIOD_MS = 1000;
const TICK_MS = 50;

/** A free loopback port (the node records its address before it listens, so it must be known first). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

function describeChange(c: MembershipChange): string {
  return c.type === 'addLearner'
    ? `${c.node} added as a learner (catching up)`
    : c.type === 'addVoter'
      ? `${c.node} promoted to voter`
      : `${c.node} removed`;
}

/**
 * The demo's verdict on one counter, from what the client saw alone: each acknowledged command's result is the total
 * it made, so the results are all distinct and none is above the final total; the final total is at least their
 * number (nothing acknowledged was lost) and at most that plus the commands in doubt (nothing applied twice).
 */
export function checkCounter(
  name: string,
  acknowledgedResults: readonly number[],
  inDoubt: number,
  total: number,
): { lost: number; problems: string[] } {
  const problems: string[] = [];
  const distinct = new Set(acknowledgedResults).size;
  if (distinct !== acknowledgedResults.length) {
    problems.push(`${name}: ${acknowledgedResults.length - distinct} results acknowledged twice`);
  }
  const above = acknowledgedResults.filter((r) => r > total).length;
  if (above > 0) problems.push(`${name}: ${above} acknowledged totals above the final total ${total} (lost)`);
  const lost = Math.max(0, acknowledgedResults.length - total);
  if (lost > 0) problems.push(`${name}: total ${total} < ${acknowledgedResults.length} acknowledged commands`);
  if (total > acknowledgedResults.length + inDoubt) {
    problems.push(
      `${name}: total ${total} > ${acknowledgedResults.length} acknowledged + ${inDoubt} in doubt (applied twice?)`,
    );
  }
  return { lost, problems };
}

export async function runFleetDemo(o: FleetDemoOptions = {}): Promise<FleetDemoSummary> {
  const t0 = Date.now();
  const since = (): number => Date.now() - t0;
  const dir = mkdtempSync(join(tmpdir(), 'rebalancer-fleet-demo-'));
  const storeUrl = `sqlite:${join(dir, 'fleet.db')}`;
  const log = createWriteStream(join(dir, 'nodes.log'));
  const stepTimeoutMs = o.stepTimeoutMs ?? 30_000;
  const groupCount = o.groups ?? 4;
  const names = Array.from({ length: groupCount }, (_, i) => `counter-${i + 1}`);
  const secret = randomBytes(32).toString('hex');
  const steps: FleetDemoStep[] = [];
  const nodes = new Map<string, FleetNode>();
  let current = 'starting three fleet nodes';
  let lastStatus: FleetStatus | undefined;
  let moves = 0;
  let leaderChanges = 0;
  let acknowledged = 0;
  let inDoubt = 0;
  let failed = true;
  let store: Store | undefined;
  let client: FleetClient | undefined;
  /** Per group: the results (new totals) of acknowledged commands, and commands in doubt. */
  const acked = new Map<string, number[]>(names.map((n) => [n, []]));
  const doubt = new Map<string, number>(names.map((n) => [n, 0]));

  const step = (s: Omit<FleetDemoStep, 'atMs'>): void => {
    const full = { ...s, atMs: since() };
    steps.push(full);
    o.onStep?.(full);
  };
  const view = (): FleetDemoView => ({
    status: lastStatus,
    live: [...nodes.keys()],
    steps,
    current,
    acknowledged,
    inDoubt,
  });

  const startNode = async (id: string, zone: string): Promise<FleetNode> => {
    let node: FleetNode;
    for (let attempt = 1; ; attempt++) {
      try {
        node = await joinFleet({
          store: store!,
          fleet: FLEET,
          node: { id, zone, address: `127.0.0.1:${await freePort()}` },
          dataDir: join(dir, id),
          secret,
          machines: { counter },
          sessionTtlMs: SESSION_TTL_MS,
          gracePeriodMs: GRACE_PERIOD_MS,
          tickMs: TICK_MS,
          minNodes: 3,
        });
        break;
      } catch (err) {
        // The free port was taken by another process between our probe and the node's listen: take another.
        if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= 3) throw err;
      }
    }
    node.on('error', (e) => log.write(`${since()} ${id} ${e.context}: ${describe(e.error)}\n`));
    node.on('moved', ({ group, change }) => {
      moves++;
      step({ step: 'move', message: `${group}: ${describeChange(change)} (by its leader ${id})` });
    });
    node.on('led', ({ group, term }) => {
      leaderChanges++;
      step({ step: 'move', message: `${group}: ${id} leads (term ${term})` });
    });
    nodes.set(id, node);
    return node;
  };

  /** Poll the fleet's status until `pred` holds; report each snapshot. */
  const until = async (what: string, pred: (s: FleetStatus) => boolean): Promise<FleetStatus> => {
    current = what;
    const end = Date.now() + stepTimeoutMs;
    const keys = new FleetKeys(FLEET);
    for (;;) {
      o.signal?.throwIfAborted();
      lastStatus = fleetStatus(FLEET, await readFleetView(store!, keys, () => undefined));
      o.onStatus?.(view());
      if (pred(lastStatus)) return lastStatus;
      if (Date.now() > end) {
        throw new DemoFailedError(`the fleet demo gave up waiting ${stepTimeoutMs} ms for: ${what}; see ${dir}`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  /** Every group converged on desired members that are all running nodes. */
  const converged = (s: FleetStatus): boolean =>
    s.groups.length === names.length &&
    s.groups.every((g) => g.health === 'converged' && g.desired.every((m) => nodes.has(m)));
  const hold = async (): Promise<void> => {
    const paceMs = o.paceMs ?? 0;
    if (paceMs <= 0) return;
    const end = Date.now() + paceMs;
    await until(current, () => Date.now() >= end);
  };
  const leaders = (s: FleetStatus): string =>
    s.nodes.map((n) => `${n.id} leads ${s.groups.filter((g) => g.leader === n.id).length}`).join(' · ');

  // The client's writes: one command at a time per group, through every step of the scenario.
  let writing = true;
  const writer = async (name: string): Promise<void> => {
    while (writing) {
      try {
        const total = await client!.command<number>(name, { add: 1 }, { timeoutMs: 10_000 });
        acked.get(name)!.push(total);
        acknowledged++;
      } catch (err) {
        const e = err as { outcome?: unknown };
        // Refused before it reached a leader: not applied, nothing to account for. Otherwise it may have applied.
        if (e.outcome !== 'not-applied') {
          doubt.set(name, doubt.get(name)! + 1);
          inDoubt++;
        }
        log.write(`${since()} client ${name}: ${describe(err)}\n`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  let writers: Promise<void>[] = [];

  try {
    store = await openStore(storeUrl, { namespace: 'rebalancer' });
    for (const [id, zone] of [
      ['n1', 'z1'],
      ['n2', 'z2'],
      ['n3', 'z3'],
    ] as const) {
      await startNode(id, zone);
    }
    client = await connectFleet({ store, fleet: FLEET, secret, requestTimeoutMs: 10_000 });
    client.on('error', (e) => log.write(`${since()} client ${e.context}: ${describe(e.error)}\n`));
    step({
      step: 'start',
      message: `3 fleet nodes joined fleet "${FLEET}" (zones z1 z2 z3); adding ${names.length} counter groups of 3 replicas`,
    });

    const tAdd = Date.now();
    for (const n of names) await client.addGroup(n, { replicas: 3, machine: 'counter' });
    let s = await until('waiting for every group to elect its leader on its desired node', converged);
    const settleMs = Date.now() - tAdd;
    step({
      step: 'settled',
      message: `every group runs on 3 nodes, one per zone: ${leaders(s)}`,
      durationMs: settleMs,
    });
    writers = names.map((n) => writer(n));
    await hold();

    // 1. A fourth node joins: the coordinator gives it a share; each group's leader adds it as a learner, promotes
    //    it once caught up, then removes the member it replaces — one change at a time, never below a quorum.
    const tJoin = Date.now();
    step({ step: 'join', message: 'n4 joins in zone z1: groups move members to it, one change at a time' });
    await startNode('n4', 'z1');
    s = await until(
      'waiting for n4 to get its share',
      (x) => converged(x) && x.groups.some((g) => g.desired.includes('n4')),
    );
    const joinMs = Date.now() - tJoin;
    const onN4 = s.groups.filter((g) => g.desired.includes('n4')).length;
    step({ step: 'joined', message: `n4 holds ${onN4} of ${names.length} groups: ${leaders(s)}`, durationMs: joinMs });
    await hold();

    // 2. It drains: its members move back, the groups it leads hand leadership over, then it leaves.
    const tDrain = Date.now();
    step({ step: 'drain', message: 'n4 drains (deactivate): its members move away, then it leaves' });
    await nodes.get('n4')!.deactivate({ timeoutMs: stepTimeoutMs });
    nodes.delete('n4');
    s = await until('waiting for the groups to converge without n4', converged);
    const drainMs = Date.now() - tDrain;
    step({ step: 'drained', message: `n4 left; every group converged without it: ${leaders(s)}`, durationMs: drainMs });
    await hold();

    // 3. The coordinator stops without draining (close(): for the other replicas, a crash; its node record goes at
    //    once, so the coordinator waits only the grace period): the groups it led elect new leaders at once (a
    //    majority remains), and after the grace period its replicas are placed on the survivors. (A process killed
    //    with SIGKILL is noticed when its session expires: the session TTL comes first.)
    const victim = s.coordinator ?? 'n1';
    const led = s.groups.filter((g) => g.leader === victim).map((g) => g.name);
    const tKill = Date.now();
    await nodes.get(victim)!.close();
    nodes.delete(victim);
    step({
      step: 'kill',
      message:
        `${victim} (the coordinator, leading ${led.length === 0 ? 'no group' : led.join(' ')}) stops without ` +
        `draining, as in a crash; its replicas are replaced after the grace period (${GRACE_PERIOD_MS} ms)`,
    });
    s = await until(`waiting for ${victim}'s replicas to be replaced`, converged);
    const failoverMs = Date.now() - tKill;
    step({
      step: 'failover',
      message: `every group converged on the survivors (${[...nodes.keys()].join(', ')}); coordinator now ${s.coordinator ?? '?'}`,
      durationMs: failoverMs,
    });
    await hold();

    // Stop writing, then read every counter back (linearizable: it reflects every acknowledged command).
    current = 'reading every counter back';
    writing = false;
    await Promise.all(writers);
    const problems: string[] = [];
    let lost = 0;
    for (const n of names) {
      const total = await client.query<number>(n, 'total', { consistency: 'linearizable', timeoutMs: 10_000 });
      const c = checkCounter(n, acked.get(n)!, doubt.get(n)!, total);
      lost += c.lost;
      problems.push(...c.problems);
    }
    step({
      step: 'check',
      message:
        problems.length === 0
          ? `every acknowledged command survived: ${acknowledged} commands, each applied exactly once` +
            (inDoubt > 0 ? ` (${inDoubt} timed out in doubt, counted at most once)` : '')
          : `PROBLEMS: ${problems.join('; ')}`,
    });
    failed = problems.length > 0;
    return {
      store: storeUrl,
      groups: names.length,
      settleMs,
      joinMs,
      drainMs,
      failoverMs,
      sessionTtlMs: SESSION_TTL_MS,
      gracePeriodMs: GRACE_PERIOD_MS,
      moves,
      leaderChanges,
      acknowledged,
      inDoubt,
      lost,
      problems,
      steps,
      totalMs: since(),
      dir: failed || o.keep === true ? dir : undefined,
    };
  } finally {
    writing = false;
    await Promise.allSettled(writers);
    await client?.close().catch(() => undefined);
    for (const n of nodes.values()) await n.close().catch(() => undefined);
    await store?.close().catch(() => undefined);
    await new Promise<void>((resolve) => log.end(resolve));
    if (!failed && o.keep !== true) rmSync(dir, { recursive: true, force: true });
  }
}
