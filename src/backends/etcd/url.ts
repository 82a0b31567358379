/**
 * `etcd://[user:password@]host[:port][,host[:port]…]` (plain gRPC) and
 * `etcds://…` (TLS). The port defaults to 2379. Several hosts name members of
 * one cluster; the client spreads requests over them and retries on another
 * member when one is down.
 */
import { InvalidArgumentError } from '../../errors.js';

export interface ParsedEtcdUrl {
  /** gRPC targets with their scheme, as etcd3 wants them: `http://h:p` or `https://h:p`. */
  readonly hosts: readonly string[];
  readonly tls: boolean;
  readonly auth: { readonly username: string; readonly password: string } | undefined;
}

const EXAMPLE = 'etcd://127.0.0.1:2379, etcd://h1:2379,h2:2379,h3:2379 or etcds://user:password@h1:2379 for TLS';
const DEFAULT_PORT = 2379;
const HOST_RE = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(\d{1,5}))?$/;

function invalid(url: string, why: string): InvalidArgumentError {
  return new InvalidArgumentError(`invalid etcd URL ${JSON.stringify(redact(url))}: ${why}; use e.g. ${EXAMPLE}`);
}

/** Hide a password before echoing a URL back in an error. */
function redact(url: string): string {
  return url.replace(/^([a-z]+:\/\/[^:@/]*):[^@/]*@/i, '$1:***@');
}

export function parseEtcdUrl(url: string): ParsedEtcdUrl {
  if (typeof url !== 'string') throw new InvalidArgumentError(`etcd URL must be a string; use e.g. ${EXAMPLE}`);
  const m = /^(etcds?):\/\/(.*)$/i.exec(url);
  if (m === null) throw invalid(url, 'it must start with etcd:// or etcds://');
  const tls = m[1]!.toLowerCase() === 'etcds';
  let rest = m[2]!;
  if (rest.endsWith('/')) rest = rest.slice(0, -1);
  if (/[/?#]/.test(rest))
    throw invalid(url, 'it takes no path, query or fragment (set the namespace with the namespace option)');
  let auth: ParsedEtcdUrl['auth'];
  const at = rest.lastIndexOf('@');
  if (at >= 0) {
    const userinfo = rest.slice(0, at);
    rest = rest.slice(at + 1);
    const colon = userinfo.indexOf(':');
    if (colon <= 0) throw invalid(url, 'credentials must be user:password');
    try {
      auth = {
        username: decodeURIComponent(userinfo.slice(0, colon)),
        password: decodeURIComponent(userinfo.slice(colon + 1)),
      };
    } catch (cause) {
      throw new InvalidArgumentError(`invalid etcd URL: bad percent-encoding in the credentials; use e.g. ${EXAMPLE}`, {
        cause,
      });
    }
  }
  if (rest === '') throw invalid(url, 'no host given');
  const hosts = rest.split(',').map((h) => {
    const hm = HOST_RE.exec(h);
    if (hm === null) throw invalid(url, `${JSON.stringify(h)} is not host[:port]`);
    const port = hm[1] === undefined ? DEFAULT_PORT : Number(hm[1]);
    if (!(port >= 1 && port <= 65535)) throw invalid(url, `port ${hm[1]} is out of range`);
    const name = hm[1] === undefined ? h : h.slice(0, h.length - hm[1].length - 1);
    return `${tls ? 'https' : 'http'}://${name}:${port}`;
  });
  return { hosts, tls, auth };
}
