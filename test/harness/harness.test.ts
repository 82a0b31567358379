/**
 * Proves the real-server harness does what fault tests rely on: each server
 * starts, serves a real client, stops answering while paused, fails its
 * clients when killed, keeps its data across a restart on the same port, and
 * is cleaned up however its owner ends. The server scenarios run
 * concurrently: they are mostly waiting, and RabbitMQ alone takes seconds.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Etcd3 } from 'etcd3';
import { Redis } from 'ioredis';
import zookeeper from 'node-zookeeper-client';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { allocatePorts } from './ports.js';
import { AMQP_PROTOCOL_HEADER } from './probes.js';
import { descendantsOf, Instance, isProcessAlive, reapLeftovers, REGISTRY_DIR, releasePort } from './processes.js';
import { startProxy } from './proxy.js';
import {
  startEtcd,
  startEtcdCluster,
  startPostgres,
  startRabbitmq,
  startRedis,
  startZookeeper,
  stopAllServers,
  type ServerHandle,
} from './servers.js';

/** How long a request to a paused server must stay unanswered. */
const PAUSED_WINDOW_MS = 300;

const started: ServerHandle[] = [];

afterAll(stopAllServers);

/**
 * What `promise` did within `ms`: 'pending', or how it settled (so a failed
 * expectation says what came back instead). It keeps running either way.
 */
async function outcomeWithin(promise: Promise<unknown>, ms: number): Promise<string> {
  const settled = promise.then(
    (value) => `resolved: ${String(value)}`,
    (err: unknown) => `rejected: ${String(err)}`,
  );
  return Promise.race([settled, sleep(ms).then(() => 'pending')]);
}

async function expectRestartedOnSamePort(server: ServerHandle, oldPid: number | undefined): Promise<void> {
  const port = server.port;
  await server.restart();
  expect(server.running).toBe(true);
  expect(server.port).toBe(port);
  expect(server.pid).toBeDefined();
  expect(server.pid).not.toBe(oldPid);
}

/** Sends the AMQP protocol header; resolves with the first bytes of the reply. */
function amqpHello(port: number): { socket: Socket; reply: Promise<Buffer> } {
  const socket = connect({ host: '127.0.0.1', port });
  const reply = new Promise<Buffer>((resolve, reject) => {
    socket.once('error', reject);
    socket.once('connect', () => socket.write(AMQP_PROTOCOL_HEADER));
    socket.once('data', (chunk: Buffer) => resolve(chunk));
  });
  return { socket, reply };
}

/** A raw RESP client: one PING, resolves with the reply line. */
function ping(socket: Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    socket.once('data', (chunk: Buffer) => resolve(chunk.toString('latin1').trim()));
    socket.once('error', reject);
    socket.write('PING\r\n');
  });
}

function rawConnect(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port }, () => resolve(socket));
    socket.once('error', reject);
  });
}

describe('servers', () => {
  it.concurrent('redis: serves, pauses, dies, restarts with its AOF data', async () => {
    const redis = await startRedis({ appendOnly: true });
    started.push(redis);
    expect(redis.url).toBe(`redis://127.0.0.1:${redis.port}`);
    // No reconnects and no offline queue: a dead server must fail commands at once.
    const client = new Redis(redis.port, redis.host, {
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      retryStrategy: () => null,
      lazyConnect: true,
    });
    client.on('error', () => undefined);
    await client.connect();
    await client.set('harness', 'before-crash');

    redis.pause();
    const whilePaused = client.get('harness');
    expect(await outcomeWithin(whilePaused, PAUSED_WINDOW_MS)).toBe('pending');
    redis.resume();
    await expect(whilePaused).resolves.toBe('before-crash');

    const pid = redis.pid;
    await redis.kill();
    expect(redis.running).toBe(false);
    expect(redis.pid).toBeUndefined();
    await expect(client.get('harness')).rejects.toThrow();
    client.disconnect();

    await expectRestartedOnSamePort(redis, pid);
    const after = new Redis(redis.port, redis.host, { lazyConnect: true });
    await after.connect();
    expect(await after.get('harness')).toBe('before-crash');
    after.disconnect();
  });

  it.concurrent('postgres: serves, pauses, dies, restarts with its data; a bad start shows the log', async () => {
    const server = await startPostgres();
    started.push(server);
    expect(server.url).toBe(`postgres://postgres@127.0.0.1:${server.port}/postgres`);
    const client = new pg.Client({ connectionString: server.url });
    client.on('error', () => undefined);
    await client.connect();
    await client.query('CREATE TABLE harness (v text)');
    await client.query(`INSERT INTO harness VALUES ('before-crash')`);

    // The backend serving this connection is not in the postmaster's process
    // group (it calls setsid); pause() must still reach it.
    server.pause();
    const whilePaused = client.query('SELECT v FROM harness');
    expect(await outcomeWithin(whilePaused, PAUSED_WINDOW_MS)).toBe('pending');
    server.resume();
    expect((await whilePaused).rows).toEqual([{ v: 'before-crash' }]);

    const pid = server.pid;
    await server.kill();
    await expect(client.query('SELECT 1')).rejects.toThrow();

    await expectRestartedOnSamePort(server, pid);
    const after = new pg.Client({ connectionString: server.url });
    await after.connect();
    expect((await after.query('SELECT v FROM harness')).rows).toEqual([{ v: 'before-crash' }]);
    await after.end();

    // A server that cannot start fails fast, with its own words in the error.
    writeFileSync(join(server.dataDir, 'data', 'postgresql.auto.conf'), 'this is not = valid = config\n');
    await expect(server.restart()).rejects.toThrow(
      /exited .*before it was ready[\s\S]*log tail[\s\S]*postgresql\.auto\.conf/,
    );
    expect(server.running).toBe(false);
  });

  it.concurrent('etcd: serves, pauses, dies, restarts with its data', async () => {
    const server = await startEtcd();
    started.push(server);
    expect(server.url).toBe(`etcd://127.0.0.1:${server.port}`);
    const client = new Etcd3({ hosts: `http://127.0.0.1:${server.port}` });
    await client.put('harness').value('before-crash');

    server.pause();
    const whilePaused = client.get('harness').string();
    expect(await outcomeWithin(whilePaused, PAUSED_WINDOW_MS)).toBe('pending');
    server.resume();
    await expect(whilePaused).resolves.toBe('before-crash');

    const pid = server.pid;
    await server.kill();
    await expect(client.get('harness').string()).rejects.toThrow();
    client.close();

    await expectRestartedOnSamePort(server, pid);
    const after = new Etcd3({ hosts: `http://127.0.0.1:${server.port}` });
    expect(await after.get('harness').string()).toBe('before-crash');
    after.close();
  });

  it.concurrent('zookeeper: serves, pauses, dies, restarts with its data', async () => {
    const server = await startZookeeper();
    started.push(server);
    expect(server.url).toBe(`zk://127.0.0.1:${server.port}`);
    const connectClient = async (): Promise<zookeeper.Client> => {
      const client = zookeeper.createClient(`127.0.0.1:${server.port}`, { sessionTimeout: 10_000, spinDelay: 100 });
      const connected = new Promise<void>((resolve) => client.once('connected', () => resolve()));
      client.connect();
      await connected;
      return client;
    };
    const getData = (client: zookeeper.Client): Promise<string> =>
      new Promise((resolve, reject) =>
        client.getData('/harness', (err, data) => (err ? reject(err) : resolve(data.toString()))),
      );
    const client = await connectClient();
    await new Promise<void>((resolve, reject) =>
      client.create('/harness', Buffer.from('before-crash'), (err) => (err ? reject(err) : resolve())),
    );

    server.pause();
    const whilePaused = getData(client);
    expect(await outcomeWithin(whilePaused, PAUSED_WINDOW_MS)).toBe('pending');
    server.resume();
    await expect(whilePaused).resolves.toBe('before-crash');

    // A request in flight when the server dies fails with CONNECTION_LOSS.
    // (Only once written to the socket: the client keeps unsent requests
    // queued across reconnects, so give it the window to send first.)
    server.pause();
    const inFlight = getData(client);
    expect(await outcomeWithin(inFlight, PAUSED_WINDOW_MS)).toBe('pending');
    const pid = server.pid;
    await server.kill();
    await expect(inFlight).rejects.toThrow(/CONNECTION_LOSS/);
    // Not reused after the restart: ZooKeeper 3.8 accepts connections before
    // it serves, and one made in that window can be left unanswered forever
    // (server-side NPE), which node-zookeeper-client never times out.
    client.close();

    await expectRestartedOnSamePort(server, pid);
    const after = await connectClient();
    await expect(getData(after)).resolves.toBe('before-crash');
    after.close();
  });

  it.concurrent('rabbitmq: answers the AMQP handshake, pauses, dies, restarts', async () => {
    const server = await startRabbitmq();
    started.push(server);
    expect(server.url).toBe(`amqp://guest:guest@127.0.0.1:${server.port}`);
    const first = amqpHello(server.port);
    // Frame type 1 (method) on channel 0: Connection.Start.
    expect((await first.reply).subarray(0, 3)).toEqual(Buffer.from([1, 0, 0]));
    first.socket.destroy();

    server.pause();
    // The kernel still accepts the connection; nothing answers it.
    const whilePaused = amqpHello(server.port);
    expect(await outcomeWithin(whilePaused.reply, PAUSED_WINDOW_MS)).toBe('pending');
    server.resume();
    expect((await whilePaused.reply)[0]).toBe(1);
    whilePaused.socket.destroy();

    const pid = server.pid;
    await server.kill();
    await expect(amqpHello(server.port).reply).rejects.toThrow(/ECONNREFUSED/);

    await expectRestartedOnSamePort(server, pid);
    const again = amqpHello(server.port);
    expect((await again.reply)[0]).toBe(1);
    again.socket.destroy();
  });

  it.concurrent('etcd cluster: three members, survives losing one', async () => {
    const cluster = await startEtcdCluster();
    const [a, b, c] = cluster.members as [ServerHandle, ServerHandle, ServerHandle];
    expect(cluster.url).toBe(`etcd://127.0.0.1:${a.port},127.0.0.1:${b.port},127.0.0.1:${c.port}`);
    await a.kill();
    const client = new Etcd3({ hosts: `http://127.0.0.1:${b.port}` });
    await client.put('harness').value('quorum');
    const viaC = new Etcd3({ hosts: `http://127.0.0.1:${c.port}` });
    expect(await viaC.get('harness').string()).toBe('quorum');
    client.close();
    viaC.close();
    const dirs = cluster.members.map((m) => m.dataDir);
    await cluster.stop();
    expect(cluster.members.every((m) => !m.running)).toBe(true);
    expect(dirs.filter((d) => existsSync(d))).toEqual([]);
  });

  it('stopAllServers leaves no process, dir or record behind', async () => {
    expect(started.length).toBe(5);
    const pids = started.flatMap((s) =>
      s.pid === undefined ? [] : [s.pid, ...descendantsOf(s.pid).map((d) => d.pid)],
    );
    // All but the PostgreSQL server (left broken on purpose) are running.
    expect(
      started
        .filter((s) => s.running)
        .map((s) => s.kind)
        .sort(),
    ).toEqual(['etcd', 'rabbitmq', 'redis', 'zookeeper']);
    const dirs = started.map((s) => s.dataDir);
    await stopAllServers();
    expect(pids.filter(isProcessAlive)).toEqual([]);
    expect(dirs.filter((d) => existsSync(d))).toEqual([]);
    expect(readdirSync(REGISTRY_DIR).filter((f) => f.startsWith(`${process.pid}-`))).toEqual([]);
    expect(started.every((s) => !s.running)).toBe(true);
    await expect(started[0]?.restart()).rejects.toThrow(/disposed/);
  });
});

describe('cleanup when the owner process ends', () => {
  const fixture = fileURLToPath(new URL('./fixtures/owner.ts', import.meta.url));
  // The owners record their servers in a registry of their own, out of
  // sight of the reapers of other harness processes, which would otherwise
  // race these tests. A tracked scratch dir, so even an interrupted run
  // leaves nothing behind.
  let scratch: Instance;
  let privateRegistry = '';
  beforeAll(() => {
    scratch = new Instance('registry');
    privateRegistry = scratch.dir;
  });
  afterAll(() => scratch.dispose());

  /** Start the fixture; resolves once its Redis is up. */
  async function startOwner(mode: 'wait' | 'throw', pdeathsig: boolean) {
    const child = spawn(process.execPath, ['--import', 'tsx', fixture, mode], {
      env: {
        ...process.env,
        REBALANCER_TEST_NO_PDEATHSIG: pdeathsig ? '0' : '1',
        REBALANCER_TEST_REGISTRY_DIR: privateRegistry,
      },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (chunk: Buffer) => {
        out += chunk.toString();
        if (out.includes('\n')) resolve(out.split('\n')[0] ?? '');
      });
      child.once('exit', (code) => reject(new Error(`owner fixture exited (${String(code)}) early: ${stderr}`)));
    });
    const server = JSON.parse(line) as { pid: number; dataDir: string };
    expect(isProcessAlive(server.pid)).toBe(true);
    return { child, server, exited };
  }

  async function expectGone(server: { pid: number; dataDir: string }): Promise<void> {
    // The server is no child of ours; init reaps it a moment after it dies.
    for (let i = 0; i < 100 && (isProcessAlive(server.pid) || existsSync(server.dataDir)); i += 1) await sleep(20);
    expect(isProcessAlive(server.pid)).toBe(false);
    expect(existsSync(server.dataDir)).toBe(false);
  }

  it.concurrent.each(['SIGINT', 'SIGTERM'] as const)('%s to the owner kills its servers', async (signal) => {
    const { child, server, exited } = await startOwner('wait', false);
    child.kill(signal);
    await exited;
    expect(child.signalCode).toBe(signal);
    await expectGone(server);
  });

  it.concurrent('an uncaught exception in the owner kills its servers', async () => {
    const { child, server, exited } = await startOwner('throw', false);
    child.stdin.write('throw\n');
    await exited;
    expect(child.exitCode).not.toBe(0);
    await expectGone(server);
  });

  // Sequential: a reaper run by one of these would reap the other's leftovers.
  it('kill -9 of the owner: pdeathsig kills the server at once, the reaper deletes its dir', async () => {
    const { child, server, exited } = await startOwner('wait', true);
    child.kill('SIGKILL');
    await exited;
    for (let i = 0; i < 100 && isProcessAlive(server.pid); i += 1) await sleep(20);
    expect(isProcessAlive(server.pid)).toBe(false);
    expect(existsSync(server.dataDir)).toBe(true);
    expect(reapLeftovers(privateRegistry).reapedInstances).toBe(1);
    await expectGone(server);
  });

  it('kill -9 of the owner without pdeathsig: the reaper kills what is left', async () => {
    const { child, server, exited } = await startOwner('wait', false);
    child.kill('SIGKILL');
    await exited;
    await sleep(100);
    // Nothing killed it: no hook ran in the owner, and pdeathsig was off.
    expect(isProcessAlive(server.pid)).toBe(true);
    expect(reapLeftovers(privateRegistry).reapedInstances).toBe(1);
    await expectGone(server);
  });
});

describe('ports', () => {
  it('never hands out a port twice while it is reserved', async () => {
    const batches = await Promise.all([allocatePorts(40), allocatePorts(40), allocatePorts(40)]);
    const all = batches.flat();
    expect(new Set(all).size).toBe(all.length);
    for (const port of all) releasePort(port);
  });
});

describe('proxy', () => {
  it('passes, delays, blackholes and resets connections', async () => {
    const redis = await startRedis();
    const proxy = await startProxy({ host: redis.host, port: redis.port });
    try {
      const socket = await rawConnect(proxy.port);
      socket.on('error', () => undefined);
      expect(await ping(socket)).toBe('+PONG');
      expect(proxy.connectionCount).toBe(1);

      proxy.setDelayMs(100);
      const startedAt = Date.now();
      expect(await ping(socket)).toBe('+PONG');
      // One delay each way.
      expect(Date.now() - startedAt).toBeGreaterThanOrEqual(190);
      proxy.setDelayMs(0);

      // A real client too: the proxy is transparent to it.
      const client = new Redis(proxy.port, proxy.host, { lazyConnect: true, maxRetriesPerRequest: 0 });
      client.on('error', () => undefined);
      await client.connect();
      await client.set('via-proxy', 'yes');

      proxy.setMode('blackhole');
      expect(await outcomeWithin(ping(socket), PAUSED_WINDOW_MS)).toBe('pending');
      expect(await outcomeWithin(client.get('via-proxy'), PAUSED_WINDOW_MS)).toBe('pending');
      // New connections are accepted, and blackholed too.
      const late = await rawConnect(proxy.port);
      late.on('error', () => undefined);
      expect(await outcomeWithin(ping(late), PAUSED_WINDOW_MS)).toBe('pending');
      expect(proxy.connectionCount).toBe(3);

      const closed = new Promise<boolean>((resolve) => socket.once('close', (hadError) => resolve(hadError)));
      proxy.resetAll();
      expect(await closed).toBe(true);
      expect(proxy.connectionCount).toBe(0);
      client.disconnect();

      proxy.setMode('pass');
      const fresh = await rawConnect(proxy.port);
      expect(await ping(fresh)).toBe('+PONG');
      fresh.destroy();
      late.destroy();
    } finally {
      await proxy.close();
      await stopAllServers();
    }
  });
});
