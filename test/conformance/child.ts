/**
 * A conformance client in its own process, so tests can SIGSTOP and SIGKILL
 * it. Usage: node --import tsx child.ts <storeUrl> <namespace>
 * Protocol: one JSON command per stdin line; one JSON reply per stdout line,
 * `{ id, reply }`. Prints `{ ready: true }` once the store is open.
 */
import { createInterface } from 'node:readline';
import { openStore } from '../../src/store/open.js';
import { createCommandHandler, type ClientCommand } from './client-commands.js';

const [url, namespace] = process.argv.slice(2);
if (url === undefined || namespace === undefined) {
  process.stderr.write('usage: child.ts <storeUrl> <namespace>\n');
  process.exit(2);
}
const store = await openStore(url, { namespace });
const handle = createCommandHandler(store);
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const { id, command } = JSON.parse(line) as { id: number; command: ClientCommand };
  void handle(command).then((reply) => {
    process.stdout.write(`${JSON.stringify({ id, reply })}\n`);
    if (command.cmd === 'close') process.exit(0);
  });
});
rl.on('close', () => process.exit(0));
