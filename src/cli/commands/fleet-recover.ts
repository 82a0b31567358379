/**
 * `rebalancer fleet recover GROUP --fleet NAME --from NODE --unsafe [--force]`: the explicit, unsafe recovery of a
 * fleet group that lost its majority (docs/fleet.md, "A group that lost its majority"), through the store alone. Registered under the
 * `fleet` command, which it creates only if no other module has.
 */
import type { Command } from 'commander';
import { recoverGroup } from '../../protocol/fleet/recover.js';
import { out, withStore } from '../context.js';

interface RecoverOptions {
  readonly fleet: string;
  readonly from: string;
  readonly unsafe?: boolean;
  readonly force?: boolean;
}

export function register(program: Command): void {
  const fleet =
    program.commands.find((c) => c.name() === 'fleet') ??
    program.command('fleet').description('the fleet: many Raft groups over many nodes (docs/fleet.md)');
  fleet
    .command('recover')
    .description(
      'UNSAFE: restart GROUP, which lost a majority of its voters, from the replica on node --from (live, holding ' +
        'one): a new generation starts from the state that replica applied. Entries the lost voters committed that ' +
        'it had not applied are lost for good; the old replicas are dropped wherever they are. Read ' +
        'docs/fleet.md, "A group that lost its majority" first',
    )
    .argument('<group>', 'the group to recover')
    .requiredOption('--fleet <name>', "the fleet's name (as given to joinFleet)")
    .requiredOption('--from <node>', 'the node whose replica becomes the group (the least behind live one)')
    .option('--unsafe', 'say that you accept losing what the lost voters committed (required)')
    .option('--force', 'recover even if the group has not lost its majority (its other replicas are thrown away)')
    .action(async (group: string, o: RecoverOptions) => {
      await withStore(program, async (store, opts) => {
        const r = await recoverGroup(store, o.fleet, group, {
          from: o.from,
          unsafe: o.unsafe as true,
          force: o.force === true,
        });
        if (opts.json === true) return out(JSON.stringify(r));
        out(r.warning);
        out(
          `group ${group} of fleet ${o.fleet}: generation ${r.previousGeneration} abandoned, generation ` +
            `${r.group.generation} starts on node ${o.from} alone and is placed on other nodes once it has a ` +
            'leader; `rebalancer fleet status` shows its progress',
        );
      });
    });
}
