// Build: compile src/ to dist/ with tsc, then copy the Redis Lua scripts next
// to the modules that load them (tsc does not copy non-TS files).
import { execFileSync } from 'node:child_process';
import { cpSync, readdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
rmSync(join(root, 'dist'), { recursive: true, force: true });
execFileSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit' });

function* files(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) yield* files(p);
    else yield p;
  }
}
let copied = 0;
for (const f of files(join(root, 'src'))) {
  if (!f.endsWith('.lua')) continue;
  cpSync(f, join(root, 'dist', relative(join(root, 'src'), f)));
  copied++;
}
console.log(`built dist/ (${copied} Lua scripts copied)`);
