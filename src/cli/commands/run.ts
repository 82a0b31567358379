/**
 * `rebalancer run`: the language-agnostic sidecar. Joins a group and runs a
 * shell command per assigned resource (src/sidecar/, docs/sidecar.md).
 *
 * Output: the children's stdout and stderr go to ours, each line prefixed
 * with `[resource] ` (unless --no-prefix); the sidecar's own events go to
 * stderr, as text or (--json) as JSON lines.
 */
import { Option, type Command } from 'commander';
import { InvalidArgumentError } from '../../errors.js';
import { PLACEMENT_STRATEGIES, type PlacementStrategy } from '../../placement/index.js';
import { PROTOCOLS, type Protocol } from '../../protocol/groups/keys.js';
import {
  isSidecarMutant,
  Sidecar,
  SIDECAR_MUTANTS,
  validateCommand,
  type SidecarEvents,
} from '../../sidecar/sidecar.js';
import { openStore } from '../../store/open.js';
import { STORE_LIMITS } from '../../store/validate.js';
import { EXIT, globalOptions } from '../context.js';
import { decimalOption, integerOption } from '../input.js';

interface RunOptions {
  group: string;
  exec: string;
  node?: string;
  zone?: string;
  weight?: string;
  ttlMs: string;
  drainTimeoutMs: string;
  protocol: string;
  strategy?: string;
  restartDelayMs: string;
  maxRestartDelayMs: string;
  prefix: boolean;
  mutant?: string;
}

const EVENTS: readonly (keyof SidecarEvents)[] = [
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
  'childStarted',
  'childStopping',
  'childKilled',
  'childExited',
  'childFailedToStart',
  'reaperError',
];

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
  program
    .command('run')
    .description(
      'sidecar: join a group and run a shell command for each resource assigned to this node ' +
        '(environment: REBALANCER_RESOURCE, REBALANCER_FENCING_TOKEN, REBALANCER_GROUP, REBALANCER_NODE)',
    )
    .requiredOption('--group <name>', 'group to join')
    .requiredOption('--exec <command>', 'shell command to run per assigned resource (through /bin/sh -c)')
    .option('--node <id>', 'node id (default: host name and pid)')
    .option('--zone <zone>', 'failure domain, for placements that spread')
    .option('--weight <w>', 'relative capacity (above 0, at most 1000000, default 1)')
    .option(
      '--ttl-ms <n>',
      'session TTL: how long after this process dies its resources stay unowned (1000-300000)',
      '10000',
    )
    .option('--drain-timeout-ms <n>', 'time between SIGTERM and SIGKILL when a child is stopped (1-3600000)', '10000')
    .option('--protocol <name>', PROTOCOLS.join(' | '), 'resource-barrier')
    .option('--strategy <name>', `placement: ${PLACEMENT_STRATEGIES.join(' | ')}`)
    .option(
      '--restart-delay-ms <n>',
      'first restart delay of a child that exits by itself (doubles each time; 1-3600000)',
      '1000',
    )
    .option('--max-restart-delay-ms <n>', 'longest restart delay (1-3600000)', '30000')
    .option('--no-prefix', "pass the children's output through untouched (default: each line prefixed [resource])")
    .addOption(new Option('--mutant <name>', 'deliberately broken variant, for tests only').hideHelp())
    .action(async (o: RunOptions) => {
      const g = globalOptions(program);
      const json = g.json === true;
      const command = validateCommand(o.exec);
      const protocol = o.protocol as Protocol;
      if (!PROTOCOLS.includes(protocol)) throw new InvalidArgumentError(`--protocol must be ${PROTOCOLS.join(' or ')}`);
      const strategy = o.strategy as PlacementStrategy | undefined;
      if (strategy !== undefined && !PLACEMENT_STRATEGIES.includes(strategy)) {
        throw new InvalidArgumentError(`--strategy must be one of ${PLACEMENT_STRATEGIES.join(', ')}`);
      }
      const weight = decimalOption('--weight', o.weight, { min: 0, aboveMin: true, max: 1_000_000 });
      const ttlMs = integerOption('--ttl-ms', o.ttlMs, {
        min: STORE_LIMITS.minSessionTtlMs,
        max: STORE_LIMITS.maxSessionTtlMs,
      });
      const drainTimeoutMs = integerOption('--drain-timeout-ms', o.drainTimeoutMs, { min: 1, max: 3_600_000 });
      const initialMs = integerOption('--restart-delay-ms', o.restartDelayMs, { min: 1, max: 3_600_000 });
      const maxMs = integerOption('--max-restart-delay-ms', o.maxRestartDelayMs, { min: 1, max: 3_600_000 });
      if (o.mutant !== undefined && !isSidecarMutant(o.mutant)) {
        throw new InvalidArgumentError(`unknown --mutant; one of ${Object.keys(SIDECAR_MUTANTS).join(', ')}`);
      }
      const mutant = o.mutant;

      const store = await openStore(g.store, { namespace: g.namespace });
      let sidecar: Sidecar;
      try {
        sidecar = new Sidecar({
          store,
          group: o.group,
          nodeId: o.node,
          zone: o.zone,
          weight,
          command,
          sessionTtlMs: ttlMs,
          drainTimeoutMs,
          protocol,
          strategy,
          restartBackoff: { initialMs, maxMs },
          prefixOutput: o.prefix,
          mutant,
        });
      } catch (err) {
        await store.close();
        throw err;
      }
      const nodeId = sidecar.nodeId;
      // A closed stdout or stderr (EPIPE) must not crash the sidecar while it supervises children.
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
      for (const e of EVENTS) sidecar.on(e, (p) => say(e, p));
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
      // The member gave up by itself (e.g. another process took its node id while it rejoined).
      sidecar.on('left', () => {
        if (stopRequested) return;
        stopRequested = true;
        exitCode = EXIT.failed;
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
