/**
 * `rebalancer status --group G [--watch]`: one group's nodes, coordinator,
 * generation and every resource's owner, fencing token and moves in flight,
 * from one consistent snapshot of the store. `--watch` redraws on every
 * change (a watch on the group's keys, plus a 1 s re-read in case a hint is
 * lost) until Ctrl-C.
 */
import type { Command } from 'commander';
import { GroupKeys } from '../../protocol/groups/keys.js';
import { GroupNotFoundError } from '../../errors.js';
import { groupStatus, type GroupStatus } from '../../runtime/groups/status.js';
import type { Store } from '../../store/contract.js';
import { out, withStore } from '../context.js';
import { watchView } from '../watch.js';
import { integerFlag } from '../input.js';

export function register(program: Command): void {
  program
    .command('status')
    .description("a group's nodes, coordinator, generation, and each resource's owner, fencing token and moves")
    .requiredOption('--group <name>', 'group name')
    .option('--watch', 'live view: redraw on every change until Ctrl-C')
    .addOption(
      integerFlag(
        '--limit <n>',
        'resource lines to print (text output; --json prints all)',
        { min: 0, max: 1_000_000 },
        40,
      ),
    )
    .action(async ({ group, watch, limit }: { group: string; watch?: boolean; limit: number }) => {
      await withStore(program, async (store, opts) => {
        const json = opts.json === true;
        if (watch !== true) {
          const s = await groupStatus(store, group);
          if (json) out(JSON.stringify(s));
          else out(renderStatus(s, { limit, where: `${opts.store} (namespace ${store.namespace})` }));
          return;
        }
        await watchStatus(store, group, { json, limit, where: `${opts.store} (namespace ${store.namespace})` });
      });
    });
}

async function watchStatus(
  store: Store,
  group: string,
  o: { json: boolean; limit: number; where: string },
): Promise<void> {
  await watchView(store, new GroupKeys(group).root, o.json, async () => {
    try {
      const s = await groupStatus(store, group);
      return { text: o.json ? JSON.stringify({ ...s, revision: undefined }) : renderStatus(s, o), stamped: s };
    } catch (err) {
      if (!(err instanceof GroupNotFoundError)) throw err;
      return {
        text: o.json
          ? JSON.stringify({ group, found: false })
          : `group ${group} not found in ${o.where} yet; waiting (Ctrl-C to stop)`,
      };
    }
  });
}

/** The human-readable status: a header, one line per node, then resources (at most `limit` lines). */
export function renderStatus(s: GroupStatus, o: { limit: number; where?: string }): string {
  const lines: string[] = [];
  lines.push(
    `group ${s.group}${o.where === undefined ? '' : ` on ${o.where}`}` +
      ` · generation ${s.generation}${s.protocol === undefined ? '' : ` · ${s.protocol}, ${s.phase ?? '?'}`}`,
  );
  lines.push(
    s.coordinator === undefined
      ? 'coordinator: none elected (no live member)'
      : `coordinator: ${s.coordinator.nodeId} (token ${s.coordinator.token})`,
  );
  lines.push('');
  const rows: string[][] = [['NODE', 'ZONE', 'WEIGHT', 'ASSIGNED', 'OWNED', '']];
  for (const n of s.nodes) {
    rows.push([
      n.id,
      n.zone === '' ? '-' : n.zone,
      String(n.weight),
      String(n.assigned),
      String(n.owned),
      [n.coordinator ? 'coordinator' : '', n.static ? 'static' : ''].filter((x) => x !== '').join(', '),
    ]);
  }
  lines.push(...table(rows));
  if (s.nodes.length === 0) lines.push('(no live nodes)');
  lines.push('');
  const c = s.counts;
  lines.push(
    `RESOURCES ${s.resources.length}: ${c.active} active · ${s.movesInFlight} moving ` +
      `(${c.starting} starting, ${c.moving} handing over, ${c.stopping} stopping, ${c.removing} removing) · ` +
      `${c.unassigned} unassigned`,
  );
  // Moves first: they are what an operator looks for.
  const order: Record<string, number> = { moving: 0, starting: 1, stopping: 2, removing: 3, unassigned: 4, active: 5 };
  const shown = [...s.resources].sort((a, b) => (order[a.state] ?? 9) - (order[b.state] ?? 9)).slice(0, o.limit);
  const rrows: string[][] = [];
  for (const r of shown) {
    const who =
      r.assignedTo !== undefined && r.owner !== undefined
        ? `${r.owner} → ${r.assignedTo}`
        : r.assignedTo !== undefined
          ? `→ ${r.assignedTo}`
          : (r.owner ?? '-');
    rrows.push([r.name, r.state, who, r.fencingToken === undefined ? '' : `token ${r.fencingToken}`]);
  }
  lines.push(...table(rrows).map((l) => `  ${l}`));
  if (s.resources.length > shown.length) lines.push(`  … ${s.resources.length - shown.length} more (--limit)`);
  if (s.data === 'recovering') {
    lines.push(
      '',
      "NOTE: the namespace's data is new and the store may have lost what it held (a restart without persistence?):",
      '      no session is granted until every lease from before has ended (maxSessionTtlMs), then members rejoin.',
      '      Resources registered by hand went with the data: register them again (rebalancer resources add).',
    );
  } else if (s.resources.length === 0 && s.nodes.length > 0) {
    lines.push(
      '',
      'NOTE: no resources are registered (rebalancer resources add); if there were, the store lost its data.',
    );
  }
  if (s.problems.length > 0) {
    const halts = s.problems.some((p) => p.key === `g/${s.group}/state` || p.key.startsWith(`g/${s.group}/grants/`));
    lines.push('', `WARNING: ${s.problems.length} key(s) hold data Rebalancer cannot read:`);
    for (const p of s.problems.slice(0, 5))
      lines.push(`  ${p.key}`, `    problem: ${p.problem}`, `    repair:  ${p.repair}`);
    if (s.problems.length > 5) lines.push(`  … ${s.problems.length - 5} more (--json lists all)`);
    if (halts)
      lines.push(
        '  The coordinator stopped coordinating (it never overwrites what it could not read): members keep what they',
        '  run while their lease holds, nothing moves or starts until the key is repaired.',
      );
  }
  return lines.join('\n');
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
