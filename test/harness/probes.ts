/**
 * One-shot readiness probes speaking just enough of each wire protocol to
 * tell "serving requests" from "port open but still starting". Each resolves
 * true/false and never rejects; each attempt is bounded by `timeoutMs`.
 */
import { request } from 'node:http';
import { connect } from 'node:net';

const HOST = '127.0.0.1';

interface ExchangeOptions {
  readonly port: number;
  /** Bytes to send once connected (nothing: only the connect is tested). */
  readonly send?: Buffer | string;
  /** Enough received to decide? Also decided when the server closes. */
  readonly complete: (received: Buffer) => boolean;
  readonly timeoutMs: number;
}

/** Connect, send, collect the reply; undefined on any error or timeout. */
function exchange(opts: ExchangeOptions): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    let received = Buffer.alloc(0);
    let settled = false;
    const socket = connect({ host: HOST, port: opts.port });
    const finish = (result: Buffer | undefined): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => finish(undefined), opts.timeoutMs);
    socket.on('error', () => finish(undefined));
    socket.on('connect', () => {
      if (opts.send === undefined) finish(received);
      else socket.write(opts.send);
    });
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (opts.complete(received)) finish(received);
    });
    socket.on('end', () => finish(received));
  });
}

export async function tcpAccepts(port: number, timeoutMs: number): Promise<boolean> {
  return (await exchange({ port, complete: () => true, timeoutMs })) !== undefined;
}

/** PING answers +PONG only once the dataset (AOF) is loaded; before, -LOADING. */
export async function redisReady(port: number, timeoutMs: number): Promise<boolean> {
  const reply = await exchange({
    port,
    send: 'PING\r\n',
    complete: (buf) => buf.includes('\r\n'),
    timeoutMs,
  });
  return reply?.toString('latin1').startsWith('+PONG') ?? false;
}

/**
 * A StartupMessage for user and database `postgres`: with trust auth the
 * server answers 'R' (AuthenticationOk) when it accepts sessions, and 'E'
 * ("the database system is starting up") while recovering.
 */
export async function postgresReady(port: number, timeoutMs: number): Promise<boolean> {
  const params = Buffer.from('user\0postgres\0database\0postgres\0\0', 'latin1');
  const startup = Buffer.alloc(8 + params.length);
  startup.writeInt32BE(startup.length, 0);
  startup.writeInt32BE(196608, 4); // protocol 3.0
  params.copy(startup, 8);
  // Wait for ReadyForQuery so the probe's session is fully set up before we
  // drop it; an 'E' is complete on its own.
  const reply = await exchange({
    port,
    send: startup,
    complete: (buf) => buf[0] !== 0x52 || buf.includes(Buffer.from('Z\0\0\0\x05', 'latin1')),
    timeoutMs,
  });
  return reply?.[0] === 0x52;
}

/** etcd's /health is "true" only with a leader (quorum) and no alarms. */
export function etcdHealthy(port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ host: HOST, port, path: '/health', timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve(res.statusCode === 200 && /"health"\s*:\s*"true"/.test(body)));
      res.on('error', () => resolve(false));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
}

/** `ruok` answers before the server serves; `srvr` shows Mode: only once it does. */
export async function zookeeperReady(port: number, timeoutMs: number): Promise<boolean> {
  const reply = await exchange({ port, send: 'srvr', complete: () => false, timeoutMs });
  return reply?.toString('latin1').includes('Mode:') ?? false;
}

export const AMQP_PROTOCOL_HEADER = Buffer.from('AMQP\x00\x00\x09\x01', 'latin1');

/** The broker answers the protocol header with a method frame (type 1): Connection.Start. */
export async function amqpReady(port: number, timeoutMs: number): Promise<boolean> {
  const reply = await exchange({
    port,
    send: AMQP_PROTOCOL_HEADER,
    complete: (buf) => buf.length >= 7,
    timeoutMs,
  });
  return reply !== undefined && reply.length >= 7 && reply[0] === 1;
}
