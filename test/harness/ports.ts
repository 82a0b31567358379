/**
 * Free ports for test servers, safe against concurrent harness processes
 * (vitest runs test files in parallel worker processes).
 *
 * Binding port 0 would hand out a port from the kernel's ephemeral range,
 * which the kernel also gives to outgoing connections, and two processes can
 * be handed the same port between "bind 0, release" and the server's own
 * bind. Instead: a random port from a range below the ephemeral range, claimed
 * through an O_EXCL reservation file shared by all harness processes, then
 * checked to be bindable. A clash with a process outside the harness is still
 * possible; the server starters retry on "address in use".
 */
import { randomInt } from 'node:crypto';
import { createServer } from 'node:net';
import { releasePort, tryReservePort } from './processes.js';

// Linux's default ephemeral range is 32768-60999.
const RANGE_START = 20000;
const RANGE_END = 32000;
const MAX_TRIES = 500;

function canBind(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen({ host: '127.0.0.1', port, exclusive: true }, () => {
      server.close(() => resolve(true));
    });
  });
}

/**
 * Reserve `count` distinct free ports. The caller owns the reservations and
 * must release them (Instance.adoptPort does that on dispose).
 */
export async function allocatePorts(count: number): Promise<number[]> {
  const ports: number[] = [];
  for (let tries = 0; ports.length < count; tries += 1) {
    if (tries >= MAX_TRIES) {
      for (const port of ports) releasePort(port);
      throw new Error(`no free port found in ${RANGE_START}-${RANGE_END} after ${MAX_TRIES} tries`);
    }
    const port = randomInt(RANGE_START, RANGE_END);
    if (!tryReservePort(port)) continue;
    if (await canBind(port)) ports.push(port);
    else releasePort(port);
  }
  return ports;
}
