/**
 * `redis://` and `rediss://` URLs, turned into ioredis connection options.
 */
import { isIP } from 'node:net';
import type { RedisOptions } from 'ioredis';
import { InvalidArgumentError } from '../../errors.js';

const FORMS =
  'use redis://[[username][:password]@]host[:port][/db] (rediss:// for TLS), e.g. redis://127.0.0.1:6379/0 or rediss://app:secret@redis.example.com:6380';

/** Parse a Redis URL into ioredis options (host, port, username, password, db, tls). */
export function parseRedisUrl(url: string): RedisOptions {
  if (typeof url !== 'string' || url.length === 0)
    throw new InvalidArgumentError(`Redis URL must be a non-empty string: ${FORMS}`);
  let u: URL;
  try {
    u = new URL(url);
  } catch (cause) {
    throw new InvalidArgumentError(`invalid Redis URL ${JSON.stringify(redact(url))}: ${FORMS}`, { cause });
  }
  const scheme = u.protocol.toLowerCase();
  if (scheme !== 'redis:' && scheme !== 'rediss:') {
    throw new InvalidArgumentError(`invalid Redis URL scheme ${JSON.stringify(u.protocol)}: ${FORMS}`);
  }
  const bad = (why: string): InvalidArgumentError =>
    new InvalidArgumentError(`invalid Redis URL ${JSON.stringify(redact(url))}: ${why}; ${FORMS}`);
  const host = u.hostname.startsWith('[') && u.hostname.endsWith(']') ? u.hostname.slice(1, -1) : u.hostname;
  if (host === '') throw bad('it names no host');
  if (u.search !== '' || u.hash !== '')
    throw bad('query strings and fragments are not supported (pass options instead)');
  const options: { -readonly [K in keyof RedisOptions]: RedisOptions[K] } = { host };
  if (u.port !== '') {
    const port = Number(u.port);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw bad(`port ${u.port} is not in 1-65535`);
    options.port = port;
  } else {
    options.port = 6379;
  }
  const path = u.pathname;
  if (path !== '' && path !== '/') {
    const m = /^\/(\d{1,5})$/.exec(path);
    if (m?.[1] === undefined) throw bad(`the path ${JSON.stringify(path)} is not a database number`);
    options.db = Number(m[1]);
  }
  try {
    if (u.username !== '') options.username = decodeURIComponent(u.username);
    if (u.password !== '') options.password = decodeURIComponent(u.password);
  } catch (cause) {
    throw new InvalidArgumentError(`invalid Redis URL: the credentials are not valid percent-encoding; ${FORMS}`, {
      cause,
    });
  }
  if (scheme === 'rediss:') {
    // Verify the server's certificate against the host name (SNI too), unless it is an address.
    options.tls = isIP(host) === 0 ? { servername: host } : {};
  }
  return options;
}

/** The URL without its password, for error messages. */
export function redact(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:@/]*:)[^@/]*@/i, '$1***@');
}
