/**
 * `rebalancer fleet …`: a fleet of Raft groups (docs/fleet.md) from an operator's machine, which is not a node.
 *
 * - `status [--watch]`, `add`, `remove` read and write the fleet's records in the store only (readFleetView +
 *   fleetStatus; addGroup/removeGroup): no secret needed, nothing to connect to but the store.
 * - `command` and `query` go to the nodes: a FleetClient (connectFleet) with the fleet's secret, over client-mode
 *   transport connections. The secret comes from a file (--secret-file) or REBALANCER_FLEET_SECRET, never the
 *   command line, where every user of the machine could read it in the process list.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { InvalidArgumentError } from '../../errors.js';
import { addGroup, checkMachineRunners, machineRunners, readFleetView, removeGroup } from '../../protocol/fleet/io.js';
import {
  FleetKeys,
  validateFleetGroupName,
  validateFleetName,
  validateMachineName,
} from '../../protocol/fleet/keys.js';
import { fleetStatus, type FleetStatus, type GroupHealth } from '../../protocol/fleet/status.js';
import { MAX_REPLICAS } from '../../placement/slots.js';
import type { Consistency } from '../../raft/node/group.js';
import { connectFleet } from '../../runtime/fleet/client.js';
import { CorruptionReports } from '../../runtime/corruption.js';
import type { Store } from '../../store/contract.js';
import { EXIT, out, withStore, type GlobalOptions } from '../context.js';
import { watchView } from '../watch.js';
import { checkedFlag, choiceFlag, integerFlag } from '../input.js';

/** Where the secret of `fleet command|query` comes from when there is no --secret-file. */
export const SECRET_ENV = 'REBALANCER_FLEET_SECRET';

const CONSISTENCIES: readonly Consistency[] = ['linearizable', 'lease', 'stale'];

/** Worst first: the order of the group lines and of the summary. */
const HEALTH_ORDER: readonly GroupHealth[] = ['majority-lost', 'stuck', 'unplaced', 'unknown', 'moving', 'converged'];

const fleetFlag = (): ReturnType<typeof checkedFlag> =>
  checkedFlag('--fleet <name>', 'fleet name (the nodes’ `fleet` option)', (v) => {
    try {
      validateFleetName(v as string);
      return undefined;
    } catch (err) {
      return `is invalid: ${(err as Error).message}`;
    }
  }).makeOptionMandatory();

export function register(program: Command): void {
  const fleet = program
    .command('fleet')
    .description('a fleet of Raft groups: status, add and remove groups, commands and queries (docs/fleet.md)');

  fleet
    .command('status')
    .description('nodes, coordinator, groups with desired members, leader, lag and health, moves in flight')
    .addOption(fleetFlag())
    .option('--watch', 'live view: redraw on every change until Ctrl-C')
    .addOption(
      integerFlag(
        '--limit <n>',
        'group lines to print (text output; --json prints all)',
        { min: 0, max: 1_000_000 },
        40,
      ),
    )
    .action(async (o: { fleet: string; watch?: boolean; limit: number }) => {
      await withStore(program, async (store, g) => {
        const where = `${g.store} (namespace ${store.namespace})`;
        if (o.watch === true) return watchFleet(store, o.fleet, { json: g.json === true, limit: o.limit, where });
        const s = await readStatus(store, o.fleet);
        if (g.json === true) out(JSON.stringify(s));
        else out(renderFleetStatus(s, { limit: o.limit, where }));
        // Nothing at all under that name: most likely a typo in --fleet, --store or --namespace.
        if (s.nodes.length === 0 && s.groups.length === 0) process.exitCode = EXIT.failed;
      });
    });

  fleet
    .command('add')
    .description('add a group: N replicas of a state machine the nodes run (the coordinator places it)')
    .argument('<group>', 'group name (1-80 of A-Z a-z 0-9 . _ : / -)')
    .addOption(fleetFlag())
    .addOption(
      integerFlag('--replicas <n>', 'Raft members (3 or 5 is usual)', {
        min: 1,
        max: MAX_REPLICAS,
      }).makeOptionMandatory(),
    )
    .requiredOption('--machine <name>', 'state machine: a key of the nodes’ `machines` option')
    .option(
      '--no-machine-check',
      'add it even though live nodes run and none runs --machine (it waits, unplaced, for a node that does)',
    )
    .action(async (group: string, o: { fleet: string; replicas: number; machine: string; machineCheck: boolean }) => {
      await withStore(program, async (store, g) => {
        validateFleetGroupName(group);
        validateMachineName(o.machine);
        const keys = new FleetKeys(o.fleet);
        // As addGroup on a node or a client: a misspelt machine would only wait, unplaced. With no node live yet
        // (groups added before the fleet starts) there is nothing to check against: added, and said.
        const view = await readFleetView(store, keys, new CorruptionReports(() => undefined).report);
        const runners = o.machineCheck
          ? checkMachineRunners(view, o.fleet, group, o.machine, 'add --no-machine-check')
          : machineRunners(view, o.machine);
        const rec = await addGroup(store, keys, group, { replicas: o.replicas, machine: o.machine });
        const waits = runners.length === 0;
        if (g.json === true) out(JSON.stringify({ fleet: o.fleet, added: rec, runners }));
        else {
          out(
            `added group ${rec.name} to fleet ${o.fleet} (generation ${rec.generation}): ${rec.replicas} replicas of ` +
              `${rec.machine}; ` +
              (waits
                ? `no live node runs ${rec.machine} yet: it is placed once one with it in its \`machines\` joins`
                : 'the coordinator places it') +
              ` (rebalancer fleet status --fleet ${o.fleet})`,
          );
        }
      });
    });

  fleet
    .command('remove')
    .description('remove a group: its replicas stop and delete their data on every node')
    .argument('<group>', 'group name')
    .addOption(fleetFlag())
    .action(async (group: string, o: { fleet: string }) => {
      await withStore(program, async (store, g) => {
        const rec = await removeGroup(store, new FleetKeys(o.fleet), validateFleetGroupName(group));
        if (g.json === true) out(JSON.stringify({ fleet: o.fleet, removed: rec }));
        else out(`removed group ${rec.name} (generation ${rec.generation}): its replicas stop and delete their data`);
      });
    });

  const requestOptions = (c: Command): Command =>
    c
      .addOption(fleetFlag())
      .option('--secret-file <path>', `file holding the fleet's secret (default: the ${SECRET_ENV} variable)`)
      .addOption(
        integerFlag(
          '--timeout-ms <ms>',
          'give up after this long (a new group is waited for)',
          { min: 1, max: 3_600_000 },
          10_000,
        ),
      );

  requestOptions(
    fleet
      .command('command')
      .description("apply a command to a group exactly once; prints the state machine's result as JSON")
      .argument('<group>', 'group name')
      .argument('<json>', 'the command, as JSON (- reads it from stdin)'),
  ).action(async (group: string, json: string, o: RequestFlags) => {
    const command = parseJson(json, 'the command');
    await withClient(program, o, async (client, g) => {
      const result = await client.command(group, command, { timeoutMs: o.timeoutMs });
      // A state machine may return nothing: printed as null, so that the output is always JSON.
      out(JSON.stringify(g.json === true ? { fleet: o.fleet, group, result: result ?? null } : (result ?? null)));
    });
  });

  requestOptions(
    fleet
      .command('query')
      .description("read a group with its state machine's query; prints the answer as JSON")
      .argument('<group>', 'group name')
      .argument('<json>', 'the query, as JSON (- reads it from stdin)')
      .addOption(choiceFlag('--consistency <c>', 'read consistency', CONSISTENCIES, 'linearizable')),
  ).action(async (group: string, json: string, o: RequestFlags & { consistency: Consistency }) => {
    const query = parseJson(json, 'the query');
    await withClient(program, o, async (client, g) => {
      const answer = await client.query(group, query, { timeoutMs: o.timeoutMs, consistency: o.consistency });
      out(
        g.json === true
          ? JSON.stringify({ fleet: o.fleet, group, consistency: o.consistency, answer: answer ?? null })
          : JSON.stringify(answer ?? null),
      );
    });
  });
}

interface RequestFlags {
  readonly fleet: string;
  readonly secretFile?: string;
  readonly timeoutMs: number;
}

/** A command or query argument: JSON, or `-` for JSON on stdin. */
export function parseJson(raw: string, what: string, readStdin = (): string => readFileSync(0, 'utf8')): unknown {
  const text = raw === '-' ? readStdin() : raw;
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new InvalidArgumentError(
      `${what} must be JSON (a string needs its quotes: '"total"'), got ${JSON.stringify(text.slice(0, 200))}: ` +
        `${(err as Error).message}`,
    );
  }
}

/** The fleet's secret: the file's content without its final line end, or the environment variable. */
export function readSecret(secretFile: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  if (secretFile !== undefined) {
    let text: string;
    try {
      text = readFileSync(secretFile, 'utf8');
    } catch (err) {
      throw new InvalidArgumentError(`--secret-file ${secretFile} cannot be read: ${(err as Error).message}`);
    }
    return text.replace(/\r?\n$/, '');
  }
  const v = env[SECRET_ENV];
  if (v === undefined || v === '') {
    throw new InvalidArgumentError(
      `fleet command and query connect to the nodes and need the fleet's secret: give --secret-file PATH or set ` +
        `${SECRET_ENV}`,
    );
  }
  return v;
}

async function withClient(
  program: Command,
  o: RequestFlags,
  fn: (client: Awaited<ReturnType<typeof connectFleet>>, g: GlobalOptions) => Promise<void>,
): Promise<void> {
  const secret = readSecret(o.secretFile);
  await withStore(program, async (store, g) => {
    const client = await connectFleet({ store, fleet: o.fleet, secret, requestTimeoutMs: o.timeoutMs });
    // What goes wrong with the nodes (a refused secret) is the call's error; the events would only repeat it.
    client.on('error', () => undefined);
    try {
      await fn(client, g);
    } finally {
      await client.close();
    }
  });
}

async function readStatus(store: Store, fleet: string): Promise<FleetStatus> {
  const keys = new FleetKeys(fleet);
  // Unreadable keys are listed in the status itself.
  const view = await readFleetView(store, keys, new CorruptionReports(() => undefined).report);
  return fleetStatus(fleet, view);
}

async function watchFleet(
  store: Store,
  fleet: string,
  o: { json: boolean; limit: number; where: string },
): Promise<void> {
  await watchView(store, new FleetKeys(fleet).root, o.json, async () => {
    const s = await readStatus(store, fleet);
    return { text: o.json ? JSON.stringify(s) : renderFleetStatus(s, o), stamped: s };
  });
}

/** The human-readable fleet status: a header, the nodes, the groups (worst first, at most `limit`), a summary. */
export function renderFleetStatus(s: FleetStatus, o: { limit: number; where?: string }): string {
  const lines: string[] = [];
  lines.push(
    `fleet ${s.fleet}${o.where === undefined ? '' : ` on ${o.where}`} · coordinator ` +
      (s.coordinator ?? 'none elected (no live node)'),
  );
  lines.push('');
  if (s.nodes.length === 0) lines.push('(no live nodes)');
  else {
    const rows = [['NODE', 'ZONE', 'STATE', 'DESIRED', 'LEADS', 'ADDRESS']];
    for (const n of s.nodes) {
      rows.push([
        `${n.id}${n.id === s.coordinator ? ' ★' : ''}`,
        n.zone === '' ? '-' : n.zone,
        n.state,
        String(n.desired),
        String(n.leads),
        n.address,
      ]);
    }
    lines.push(...table(rows));
  }
  lines.push('');
  const order = (h: GroupHealth): number => HEALTH_ORDER.indexOf(h);
  const shown = [...s.groups].sort((a, b) => order(a.health) - order(b.health)).slice(0, o.limit);
  if (s.groups.length === 0) lines.push('(no groups: rebalancer fleet add GROUP --replicas 3 --machine NAME)');
  else {
    const rows = [['GROUP', 'MACHINE', 'DESIRED', 'LEADER', 'TERM', 'LAG', 'HEALTH']];
    for (const g of shown) {
      const lagging = Object.entries(g.lag)
        .filter(([, n]) => n > 0)
        .map(([m, n]) => `${m}+${n}`);
      // Groups without a working quorum are marked (and listed first): they are what an operator must act on.
      const mark = g.health === 'majority-lost' || g.health === 'stuck' ? '!! ' : '';
      const learners = g.learners.length > 0 ? ` (learners ${g.learners.join(',')})` : '';
      rows.push([
        g.name,
        g.machine,
        g.desired.length === 0 ? '-' : g.desired.join(','),
        g.leader ?? '-',
        g.term === undefined ? '-' : String(g.term),
        lagging.length === 0 ? '-' : lagging.join(' '),
        `${mark}${g.health}${learners}`,
      ]);
    }
    lines.push(...table(rows));
    if (s.groups.length > shown.length) lines.push(`… ${s.groups.length - shown.length} more (--limit, or --json)`);
  }
  const lost = s.groups.filter((g) => g.health === 'majority-lost' || g.health === 'stuck');
  if (lost.length > 0) {
    lines.push('', `WARNING: ${lost.length} group(s) without a working quorum:`);
    for (const g of lost.slice(0, 10)) lines.push(`  ${g.name}: ${g.detail}`);
    if (lost.length > 10) lines.push(`  … ${lost.length - 10} more (--json lists all)`);
  }
  if (s.restoring.length > 0) {
    lines.push(
      '',
      `NOTE: ${s.restoring.length} group(s) on their way back after the control store lost its records ` +
        '(their leaders write them back; adding these names is refused until then):',
    );
    for (const r of s.restoring.slice(0, 10)) lines.push(`  ${r.name} (generation ${r.generation}, kept on ${r.node})`);
    if (s.restoring.length > 10) lines.push(`  … ${s.restoring.length - 10} more (--json lists all)`);
  }
  if (s.unreadable.length > 0) {
    lines.push(
      '',
      `WARNING: ${s.unreadable.length} key(s) hold data Rebalancer cannot read (nothing overwrites them):`,
    );
    for (const k of s.unreadable.slice(0, 5)) lines.push(`  ${k}`);
  }
  lines.push('');
  lines.push(summaryLine(s));
  if (s.nodes.length === 0 && s.groups.length === 0) {
    lines.push('NOTE: nothing under this fleet name: check --fleet, --store and --namespace');
  }
  return lines.join('\n');
}

/** `3 nodes · 6 groups: 4 converged · 2 moving (moves in flight) · 0 without quorum`. */
export function summaryLine(s: FleetStatus): string {
  const c = s.counts;
  const parts = HEALTH_ORDER.filter((h) => c[h] > 0).map((h) =>
    h === 'moving' ? `${c[h]} moving (moves in flight)` : `${c[h]} ${h}`,
  );
  const noQuorum = c['majority-lost'] + c.stuck;
  return (
    `${s.nodes.length} node${s.nodes.length === 1 ? '' : 's'} · ${s.groups.length} group${s.groups.length === 1 ? '' : 's'}` +
    `${parts.length === 0 ? '' : `: ${parts.join(' · ')}`}` +
    (noQuorum > 0 ? ` · ${noQuorum} WITHOUT QUORUM` : '')
  );
}

function table(rows: readonly string[][]): string[] {
  const widths: number[] = [];
  for (const r of rows) r.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, [...cell].length)));
  return rows.map((r) =>
    r
      .map((cell, i) => (i === r.length - 1 ? cell : cell + ' '.repeat((widths[i] ?? 0) - [...cell].length)))
      .join('  ')
      .trimEnd(),
  );
}
