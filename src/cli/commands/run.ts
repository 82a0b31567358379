/**
 * `rebalancer run`: the language-agnostic sidecar. Joins a group and runs a
 * shell command per assigned resource (src/sidecar/, docs/sidecar.md).
 *
 * Output: the children's stdout and stderr go to ours, each line prefixed
 * with `[resource] ` (unless --no-prefix); the sidecar's own events go to
 * stderr, as text or (--json) as JSON lines.
 */
import type { Command } from 'commander';
import { PLACEMENT_STRATEGIES, type PlacementStrategy } from '../../placement/index.js';
import { PROTOCOLS, type Protocol } from '../../protocol/groups/keys.js';
import {
  Sidecar,
  SIDECAR_CHECKS,
  SIDECAR_EVENTS,
  SIDECAR_MUTANT_NAMES,
  SIDECAR_MUTANTS,
  SIDECAR_RANGES,
  type SidecarEvents,
  type SidecarMutant,
} from '../../sidecar/sidecar.js';
import { openStore } from '../../store/open.js';
import { RebalancerError } from '../../errors.js';
import { EXIT, globalOptions, stdioClosed } from '../context.js';
import { exitCodeOf } from '../errors.js';
import { checkedFlag, choiceFlag, decimalFlag, integerFlag } from '../input.js';

/** The flags, parsed: each by the sidecar's own check or range (see register). */
interface RunFlags {
  group: string;
  exec: string;
  node?: string;
  zone?: string;
  weight: number;
  ttlMs: number;
  drainTimeoutMs: number;
  protocol: Protocol;
  strategy?: PlacementStrategy;
  restartDelayMs: number;
  maxRestartDelayMs: number;
  prefix: boolean;
  mutant?: SidecarMutant;
}

function replacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) return { name: value.name, message: value.message };
  return value;
}

function describe(event: keyof SidecarEvents, p: Record<string, unknown>): string {
  const r = String(p['resource']);
  switch (event) {
    case 'childStarted':
      return `started the child of ${r} (pid ${p['pid']}, fencing token ${p['fencingToken']})`;
    case 'childStopping':
      return `stopping the child of ${r} (pid ${p['pid']}, ${p['reason']}): SIGTERM, SIGKILL in ${p['graceMs']} ms`;
    case 'childKilled':
      return `SIGKILL to the child of ${r} (pid ${p['pid']}) after ${p['afterMs']} ms`;
    case 'childExited':
      return (
        `the child of ${r} (pid ${p['pid']}) exited with ${p['signal'] === null ? `code ${p['code']}` : `signal ${p['signal']}`}` +
        ` after ${p['ranForMs']} ms (${p['cause'] === 'exited' ? 'by itself' : `stopped: ${p['cause']}`})` +
        (p['restart'] === true ? '; restarting it after a backoff' : '')
      );
    default: {
      const fields = Object.entries(p)
        .map(([k, v]) => {
          if (typeof v === 'string') return `${k}=${v}`;
          if (typeof v === 'number' && !Number.isInteger(v)) return `${k}=${Math.round(v)}`;
          return `${k}=${JSON.stringify(v, replacer)}`;
        })
        .join(' ');
      return fields === '' ? event : `${event} ${fields}`;
    }
  }
}

export function register(program: Command): void {
  // Every flag is read under its own name against the sidecar's own checks and ranges (SIDECAR_CHECKS,
  // SIDECAR_RANGES: one rule for the library and the command line), before the store is opened; the Sidecar then
  // reads the result with its option reader like any caller's options.
  const R = SIDECAR_RANGES;
  program
    .command('run')
    .description(
      'sidecar: join a group and run a shell command for each resource assigned to this node ' +
        '(environment: REBALANCER_RESOURCE, REBALANCER_FENCING_TOKEN, REBALANCER_GROUP, REBALANCER_NODE)',
    )
    .requiredOption('--group <name>', 'group to join')
    .addOption(
      checkedFlag(
        '--exec <command>',
        'shell command to run per assigned resource (through /bin/sh -c)',
        SIDECAR_CHECKS.command,
      ).makeOptionMandatory(),
    )
    .addOption(checkedFlag('--node <id>', 'node id (default: host name and pid)', SIDECAR_CHECKS.nodeId))
    .option('--zone <zone>', 'failure domain, for placements that spread')
    .addOption(decimalFlag('--weight <w>', 'relative capacity', R.weight, R.weight.fallback))
    .addOption(
      integerFlag(
        '--ttl-ms <n>',
        'session TTL: how long after this process dies its resources stay unowned',
        R.sessionTtlMs,
        R.sessionTtlMs.fallback,
      ),
    )
    .addOption(
      integerFlag(
        '--drain-timeout-ms <n>',
        'time between SIGTERM and SIGKILL when a child is stopped',
        R.drainTimeoutMs,
        R.drainTimeoutMs.fallback,
      ),
    )
    .addOption(choiceFlag('--protocol <name>', 'protocol', PROTOCOLS, 'resource-barrier'))
    .addOption(choiceFlag('--strategy <name>', 'placement', PLACEMENT_STRATEGIES))
    .addOption(
      integerFlag(
        '--restart-delay-ms <n>',
        'first restart delay of a child that exits by itself (doubles each time)',
        R.restartInitialMs,
        R.restartInitialMs.fallback,
      ),
    )
    .addOption(
      integerFlag('--max-restart-delay-ms <n>', 'longest restart delay', R.restartMaxMs, R.restartMaxMs.fallback),
    )
    .option('--no-prefix', "pass the children's output through untouched (default: each line prefixed [resource])")
    .addOption(
      choiceFlag('--mutant <name>', 'deliberately broken variant, for tests only', SIDECAR_MUTANT_NAMES).hideHelp(),
    )
    .action(async (o: RunFlags) => {
      const g = globalOptions(program);
      const json = g.json === true;
      const mutant = o.mutant;
      const store = await openStore(g.store, { namespace: g.namespace });
      let sidecar: Sidecar;
      try {
        sidecar = new Sidecar({
          store,
          group: o.group,
          command: o.exec,
          nodeId: o.node,
          zone: o.zone,
          weight: o.weight,
          sessionTtlMs: o.ttlMs,
          drainTimeoutMs: o.drainTimeoutMs,
          protocol: o.protocol,
          strategy: o.strategy,
          restartBackoff: { initialMs: o.restartDelayMs, maxMs: o.maxRestartDelayMs },
          prefixOutput: o.prefix,
          mutant,
        });
      } catch (err) {
        await store.close();
        throw err;
      }
      const nodeId = sidecar.nodeId;
      // A closed stdout or stderr (EPIPE) must not crash or end the sidecar while it supervises children.
      stdioClosed.exit = false;
      process.stdout.on('error', () => undefined);
      process.stderr.on('error', () => undefined);
      const say = (event: keyof SidecarEvents, payload: object): void => {
        const p = payload as Record<string, unknown>;
        process.stderr.write(
          json
            ? `${JSON.stringify({ t: Date.now(), node: nodeId, event, ...p }, replacer)}\n`
            : `rebalancer run [${nodeId}]: ${describe(event, p)}\n`,
        );
      };
      for (const e of SIDECAR_EVENTS) sidecar.on(e, (p) => say(e, p));
      if (mutant !== undefined)
        say('error', { error: `BROKEN ON PURPOSE: --mutant ${mutant}: ${SIDECAR_MUTANTS[mutant]}` });

      // The member's own timers do not keep the process alive (on sqlite nothing else may): this does, until we stop.
      const keepAlive = setInterval(() => undefined, 1 << 30);
      let exitCode: number = EXIT.ok;
      let resolveDone!: () => void;
      const done = new Promise<void>((r) => (resolveDone = r));
      let stopRequested = false;
      let started = false;
      const stop = (): void => {
        void sidecar.stop().then(resolveDone, (error: unknown) => {
          say('error', { error, context: 'leaving the group' });
          exitCode = EXIT.failed;
          resolveDone();
        });
      };
      const onSignal = (signal: NodeJS.Signals): void => {
        if (!stopRequested) {
          stopRequested = true;
          process.stderr.write(
            json
              ? `${JSON.stringify({ t: Date.now(), node: nodeId, event: 'shutdown', signal })}\n`
              : `rebalancer run [${nodeId}]: ${signal}: leaving the group (stopping every child); SIGINT again to force\n`,
          );
          if (started) stop();
          return;
        }
        if (signal === 'SIGINT') {
          process.stderr.write(
            json
              ? `${JSON.stringify({ t: Date.now(), node: nodeId, event: 'forced', signal })}\n`
              : `rebalancer run [${nodeId}]: SIGINT again: SIGKILL to every child, exiting now\n`,
          );
          sidecar.kill();
          process.exit(130);
        }
      };
      const signals: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP'];
      for (const s of signals) process.on(s, onSignal);
      // The member gives up by itself when another process took its node id while it rejoined: the same CONFLICT
      // as at the start, so the same exit code (2); anything else that ends it is a failure (1).
      let conflict: RebalancerError | undefined;
      sidecar.on('error', ({ error }) => {
        if (error instanceof RebalancerError && error.code === 'CONFLICT') conflict = error;
      });
      sidecar.on('left', () => {
        if (stopRequested) return;
        stopRequested = true;
        exitCode = conflict === undefined ? EXIT.failed : exitCodeOf(conflict);
        stop();
      });

      try {
        await sidecar.start();
      } catch (err) {
        clearInterval(keepAlive);
        for (const s of signals) process.off(s, onSignal);
        await store.close().catch(() => undefined);
        throw err;
      }
      started = true;
      if (stopRequested) stop();
      await done;
      await store.close().catch(() => undefined);
      clearInterval(keepAlive);
      process.exitCode = exitCode;
      // Nothing should be left, but never hang on a stray handle.
      setTimeout(() => process.exit(exitCode), 2000).unref();
    });
}
