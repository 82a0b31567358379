// The registry this project's machines reach is a filtered mirror: it serves
// only the platform builds of native packages that run here (linux x64/arm64).
// npm then writes a lockfile without the other platforms' optional packages,
// and `npm ci` (npm >= 11) refuses that lockfile as "out of sync". This script
// adds lockfile entries for those optional packages with their os/cpu/libc
// constraints, so `npm ci` accepts the lockfile and skips them as it would on
// any machine they do not fit. Run it after `npm install` changes the lockfile.
import { readFileSync, writeFileSync } from 'node:fs';

const lockPath = new URL('../package-lock.json', import.meta.url);
const lock = JSON.parse(readFileSync(lockPath, 'utf8'));
const packages = lock.packages;

// Platform from a package name such as @rollup/rollup-linux-arm64-musl.
function platform(name) {
  const tail = name.split('/').pop();
  const m =
    /-(android|darwin|freebsd|linux|openbsd|openharmony|win32|sunos|aix|netbsd)-([a-z0-9]+)(?:-([a-z0-9]+))?$/.exec(
      tail,
    );
  if (!m) return undefined;
  const [, os, cpu, abi] = m;
  const out = { os: [os], cpu: [cpu] };
  if (os === 'linux' && abi !== undefined) out.libc = [abi.startsWith('musl') ? 'musl' : 'glibc'];
  return out;
}

let added = 0;
for (const [path, meta] of Object.entries(packages)) {
  const optional = meta.optionalDependencies ?? {};
  for (const [dep, range] of Object.entries(optional)) {
    const depPath = `node_modules/${dep}`;
    const nested = `${path}/node_modules/${dep}`;
    if (packages[depPath] !== undefined || packages[nested] !== undefined) continue;
    const p = platform(dep);
    if (p === undefined) continue;
    const version = String(range).replace(/^[\^~=]/, '');
    packages[depPath] = { version, ...p, dev: meta.dev === true ? true : undefined, optional: true };
    added++;
  }
}
const sorted = Object.fromEntries(
  Object.entries(packages).sort(([a], [b]) => (a === '' ? -1 : b === '' ? 1 : a < b ? -1 : a > b ? 1 : 0)),
);
lock.packages = sorted;
writeFileSync(lockPath, `${JSON.stringify(lock, null, 2)}\n`);
console.log(`complete-lockfile: added ${added} platform-specific optional package entries`);
