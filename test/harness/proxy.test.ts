/**
 * The proxy's one-way blackholes (the Raft process tests cut one direction of a link with them): an in-process
 * server that records what it receives and answers every chunk, so each direction can be watched alone.
 */
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { startProxy, type TcpProxy } from './proxy.js';
import { eventually, sleep } from './wait.js';

let cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

/** A server that records the bytes it receives and answers each chunk with `ack:<chunk>`. */
async function recordingServer(): Promise<{ port: number; received: () => string }> {
  let received = '';
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('data', (chunk: Buffer) => {
      received += chunk.toString();
      s.write(`ack:${chunk.toString()}`);
    });
  });
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve));
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  return { port: (server.address() as AddressInfo).port, received: () => received };
}

async function client(proxy: TcpProxy): Promise<{ socket: Socket; answers: () => string }> {
  let answers = '';
  const socket = connect({ host: proxy.host, port: proxy.port });
  socket.on('error', () => undefined);
  socket.setNoDelay(true);
  socket.on('data', (chunk: Buffer) => (answers += chunk.toString()));
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  cleanups.push(() => void socket.destroy());
  return { socket, answers: () => answers };
}

describe('proxy one-way blackholes', () => {
  it('blackhole-to-client: the server gets the bytes, the client hears nothing back', async () => {
    const server = await recordingServer();
    const proxy = await startProxy({ host: '127.0.0.1', port: server.port });
    cleanups.push(() => proxy.close());
    const c = await client(proxy);
    c.socket.write('a');
    await eventually(() => c.answers() === 'ack:a', { what: 'the first answer', timeoutMs: 2000 });
    proxy.setMode('blackhole-to-client');
    c.socket.write('b');
    await eventually(() => server.received() === 'ab', { what: 'b at the server', timeoutMs: 2000 });
    await sleep(100);
    expect(c.answers()).toBe('ack:a');
    proxy.setMode('pass');
    c.socket.write('c');
    // The answer to b was dropped for good; c's passes.
    await eventually(() => c.answers() === 'ack:aack:c', { what: 'the answer to c', timeoutMs: 2000 });
  });

  it('blackhole-to-server: the server gets nothing, and answers still reach the client', async () => {
    const server = await recordingServer();
    const proxy = await startProxy({ host: '127.0.0.1', port: server.port });
    cleanups.push(() => proxy.close());
    proxy.setMode('blackhole-to-server');
    // Accepted during the one-way blackhole: connected upstream at once (the other direction works).
    const c = await client(proxy);
    c.socket.write('a');
    await sleep(100);
    expect(server.received()).toBe('');
    proxy.setMode('pass');
    c.socket.write('b');
    await eventually(() => server.received() === 'b', { what: 'b at the server', timeoutMs: 2000 });
    await eventually(() => c.answers() === 'ack:b', { what: 'the answer to b', timeoutMs: 2000 });
    // The requests' direction cut again on an open connection: c is dropped.
    proxy.setMode('blackhole-to-server');
    c.socket.write('c');
    await sleep(100);
    expect(server.received()).toBe('b');
    expect(c.answers()).toBe('ack:b');
  });
});
