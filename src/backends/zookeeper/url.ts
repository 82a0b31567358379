import { InvalidArgumentError } from '../../errors.js';

export interface ParsedZookeeperUrl {
  /** `host:port[,host:port…]` for the driver (no chroot: we prefix paths ourselves). */
  readonly connectString: string;
  /** `/a/b` or undefined. */
  readonly chroot: string | undefined;
  /** Digest credentials from the URL's user info. */
  readonly digest: string | undefined;
}

const URL_FORM = 'zk://[user:password@]host:port[,host:port…][/chroot] (or zookeeper://…)';

function invalid(url: string, why: string): InvalidArgumentError {
  return new InvalidArgumentError(`invalid ZooKeeper URL ${JSON.stringify(url)}: ${why}; use ${URL_FORM}`);
}

/** Characters ZooKeeper's PathUtils refuses in a path. */
function isForbiddenZnodeChar(code: number): boolean {
  return code <= 0x1f || (code >= 0x7f && code <= 0x9f) || (code >= 0xd800 && code <= 0xf8ff) || code >= 0xfff0;
}

/** Validate a znode path such as a chroot or root path: `/seg[/seg…]`. */
export function validateZnodePath(path: string, what: string): string {
  if (typeof path !== 'string' || !path.startsWith('/')) {
    throw new InvalidArgumentError(
      `${what} must be an absolute znode path such as /rebalancer, got ${JSON.stringify(path)}`,
    );
  }
  const trimmed = path.replace(/\/+$/, '');
  if (trimmed === '') return '';
  for (const seg of trimmed.slice(1).split('/')) {
    if (seg === '' || seg === '.' || seg === '..' || [...seg].some((ch) => isForbiddenZnodeChar(ch.charCodeAt(0)))) {
      throw new InvalidArgumentError(
        `${what} ${JSON.stringify(path)} is not a valid znode path: segments must be non-empty, not . or .., without control characters`,
      );
    }
  }
  if (trimmed === '/zookeeper' || trimmed.startsWith('/zookeeper/')) {
    throw new InvalidArgumentError(`${what} ${JSON.stringify(path)} is inside ZooKeeper's reserved /zookeeper tree`);
  }
  return trimmed;
}

export function parseZookeeperUrl(url: string): ParsedZookeeperUrl {
  if (typeof url !== 'string') throw invalid(String(url), 'not a string');
  const m = /^(?:zk|zookeeper):\/\/(?:([^@/?#]*)@)?([^/?#]*)(\/[^?#]*)?$/i.exec(url);
  if (m === null) throw invalid(url, 'unrecognised form (query strings and fragments are not supported)');
  const [, userInfo, hostList = '', rawChroot] = m;
  if (hostList === '') throw invalid(url, 'no host');
  const hosts: string[] = [];
  for (const item of hostList.split(',')) {
    const hm = /^([A-Za-z0-9.-]+)(?::([0-9]{1,5}))?$/.exec(item);
    if (hm === null)
      throw invalid(url, `bad host ${JSON.stringify(item)} (IPv6 literals are not supported by the driver)`);
    const port = hm[2] === undefined ? 2181 : Number(hm[2]);
    if (!(port >= 1 && port <= 65535)) throw invalid(url, `bad port in ${JSON.stringify(item)}`);
    hosts.push(`${hm[1] ?? ''}:${port}`);
  }
  let chroot: string | undefined;
  if (rawChroot !== undefined && rawChroot !== '/') {
    let decoded: string;
    try {
      decoded = decodeURIComponent(rawChroot);
    } catch (cause) {
      throw new InvalidArgumentError(
        `invalid ZooKeeper URL ${JSON.stringify(url)}: bad percent-encoding in the chroot`,
        { cause },
      );
    }
    const c = validateZnodePath(decoded, 'chroot');
    chroot = c === '' ? undefined : c;
  }
  let digest: string | undefined;
  if (userInfo !== undefined && userInfo !== '') {
    const i = userInfo.indexOf(':');
    if (i <= 0) throw invalid(url, 'user info must be user:password');
    try {
      digest = `${decodeURIComponent(userInfo.slice(0, i))}:${decodeURIComponent(userInfo.slice(i + 1))}`;
    } catch (cause) {
      throw new InvalidArgumentError(`invalid ZooKeeper URL: bad percent-encoding in the user info`, { cause });
    }
  }
  return { connectString: hosts.join(','), chroot, digest };
}

/** The URL without credentials, for messages. */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z]+:\/\/)[^@/]*@/i, '$1***@');
}
