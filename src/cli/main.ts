/**
 * The `rebalancer` command line: global options, the commands (one module
 * each under commands/), and the report of an error that ends a command
 * (errors.ts: its exit code and what is printed).
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { DEFAULT_STORE_URL, EXIT, stdioClosed } from './context.js';
import { reportError } from './errors.js';
import * as bench from './commands/bench.js';
import * as demo from './commands/demo.js';
import * as fleet from './commands/fleet.js';
import * as fleetRecover from './commands/fleet-recover.js';
import * as groups from './commands/groups.js';
import * as ping from './commands/ping.js';
import * as resources from './commands/resources.js';
import * as run from './commands/run.js';
import * as sim from './commands/sim.js';
import * as status from './commands/status.js';
import * as storeCommands from './commands/store.js';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

// Output piped into a reader that stopped (`rebalancer sim … | head`): nobody reads what is left, so stop quietly
// with the status of a process killed by SIGPIPE (141, as Unix tools end), instead of an unhandled EPIPE with a
// stack trace. `rebalancer run` opts out (stdioClosed): a sidecar supervising children must outlive its log reader.
const EXIT_SIGPIPE = 128 + 13;
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EPIPE') throw error;
    if (stdioClosed.exit) process.exit(EXIT_SIGPIPE);
  });
}

const program = new Command()
  .name('rebalancer')
  .description('Share work among the live instances of a service, on the coordination store you already run.')
  .version(pkg.version)
  .option(
    '--store <url>',
    'store URL: sqlite:PATH, postgres://…, redis://…, etcd://host:port[,host:port], zk://host:port[/chroot]',
    DEFAULT_STORE_URL,
  )
  .option('--namespace <ns>', 'namespace (key prefix) shared by the group', 'rebalancer')
  .option('--json', 'machine-readable output')
  .exitOverride();

// fleet-recover after fleet: it adds `recover` to the `fleet` command.
for (const command of [demo, status, run, resources, groups, fleet, fleetRecover, storeCommands, ping, sim, bench])
  command.register(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  // commander has printed its own message (unknown option, missing argument) or the help.
  if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? EXIT.ok : EXIT.usage);
  process.exit(reportError(err, { json: program.opts<{ json?: boolean }>().json === true }));
}
