/**
 * Open a store from a URL. Backends are loaded on demand so that an
 * application only needs the driver it uses (drivers are optional peer
 * dependencies).
 *
 * URL forms:
 *   memory:                          private in-memory store (tests)
 *   sqlite:PATH | sqlite:///abs/path embedded default (one host, many processes)
 *   postgres://user@host:port/db     (also postgresql://)
 *   redis://[:password@]host:port[/db]  (rediss:// for TLS)
 *   etcd://host:port[,host:port…]    (etcds:// for TLS)
 *   zk://host:port[,host:port…][/chroot]
 */
import { InvalidArgumentError } from '../errors.js';
import { OptionReader } from '../options.js';
import type { CommonStoreOptions, Store } from './contract.js';
import { readStoreOptions } from './validate.js';

/** What each backend module exports for URL-based opening. */
export interface BackendModule {
  openUrl(url: string, options?: CommonStoreOptions): Promise<Store>;
}

const LOADERS: Record<string, { module: string; driver: string; load: () => Promise<BackendModule> }> = {
  memory: { module: 'rebalancer/memory', driver: '(none)', load: () => import('../backends/memory/url.js') },
  sqlite: { module: 'rebalancer/sqlite', driver: 'better-sqlite3', load: () => import('../backends/sqlite/index.js') },
  postgres: { module: 'rebalancer/postgres', driver: 'pg', load: () => import('../backends/postgres/index.js') },
  postgresql: { module: 'rebalancer/postgres', driver: 'pg', load: () => import('../backends/postgres/index.js') },
  redis: { module: 'rebalancer/redis', driver: 'ioredis', load: () => import('../backends/redis/index.js') },
  rediss: { module: 'rebalancer/redis', driver: 'ioredis', load: () => import('../backends/redis/index.js') },
  etcd: { module: 'rebalancer/etcd', driver: 'etcd3', load: () => import('../backends/etcd/index.js') },
  etcds: { module: 'rebalancer/etcd', driver: 'etcd3', load: () => import('../backends/etcd/index.js') },
  zk: {
    module: 'rebalancer/zookeeper',
    driver: 'node-zookeeper-client',
    load: () => import('../backends/zookeeper/index.js'),
  },
  zookeeper: {
    module: 'rebalancer/zookeeper',
    driver: 'node-zookeeper-client',
    load: () => import('../backends/zookeeper/index.js'),
  },
};

/** The scheme of a store URL, validated. */
export function storeScheme(url: string): string {
  if (typeof url !== 'string' || url.length === 0) {
    throw new InvalidArgumentError(
      'store URL must be a non-empty string such as sqlite:./rebalancer.db or redis://127.0.0.1:6379',
    );
  }
  const m = /^([a-z][a-z0-9+.-]*):/i.exec(url);
  const scheme = m?.[1]?.toLowerCase();
  if (scheme === undefined || !(scheme in LOADERS)) {
    throw new InvalidArgumentError(
      `unsupported store URL ${JSON.stringify(url)}: use one of sqlite:PATH, postgres://…, redis://…, etcd://host:port, zk://host:port, memory:`,
    );
  }
  return scheme;
}

/**
 * Open the store a URL names. `options` are the ones every backend accepts
 * (CommonStoreOptions); they are checked before the backend is loaded, so a
 * misspelt or mistyped option is refused by name at once. A backend's own
 * options go to its create function (createRedisStore, …).
 */
export async function openStore(url: string, options: CommonStoreOptions = {}): Promise<Store> {
  const scheme = storeScheme(url);
  const r = new OptionReader(options, 'openStore options');
  readStoreOptions(r);
  r.done();
  const loader = LOADERS[scheme];
  if (loader === undefined) throw new InvalidArgumentError(`unsupported store URL scheme ${scheme}`);
  let mod: BackendModule;
  try {
    mod = await loader.load();
  } catch (cause) {
    throw new InvalidArgumentError(
      `the ${scheme} backend needs the driver package "${loader.driver}": run npm install ${loader.driver}`,
      { cause },
    );
  }
  return mod.openUrl(url, options);
}
