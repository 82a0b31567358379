#!/usr/bin/env node
// Launcher: the CLI is compiled to dist/ by `npm run build` (run by `npm ci` via prepare).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const main = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(main))) {
  process.stderr.write('rebalancer: dist/ is missing; run `npm run build` (or `npm ci`) first\n');
  process.exit(70);
}
await import(main.href);
