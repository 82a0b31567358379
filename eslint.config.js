// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'coverage/', 'spec/**/*.js', '.tmp/', '.scratch/'] },
  js.configs.recommended,
  ...tseslint.configs.strict,
  {
    languageOptions: {
      globals: {
        process: 'readonly',
        console: 'readonly',
        URL: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
        setInterval: 'readonly',
        clearInterval: 'readonly',
        performance: 'readonly',
        queueMicrotask: 'readonly',
        AbortSignal: 'readonly',
        AbortController: 'readonly',
        TextEncoder: 'readonly',
        TextDecoder: 'readonly',
        Buffer: 'readonly',
        NodeJS: 'readonly',
      },
    },
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-non-null-assertion': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-constant-condition': ['error', { checkLoops: false }],
    },
  },
  // Imports flow one way: nothing below a line of docs/ARCHITECTURE.md imports anything above it. Each block lists
  // what a folder may NOT import (the folders above it); the table in ARCHITECTURE.md says the same in prose.
  ...layer(['src/errors.ts'], ['**/*.js'], 'errors.ts imports nothing: every layer uses it'),
  ...layer(['src/options.ts'], [...above('options'), '**/store/**'], 'options.ts imports only errors.ts'),
  ...layer(
    ['src/raft/*.ts'],
    [...above('options'), 'node:*', '**/wal/**', '**/transport/**', '**/node/**'],
    'the Raft core is pure: it imports only errors.ts and options.ts',
  ),
  // The public entry rebalancer/raft re-exports the node: it is the one file of src/raft/ above the core.
  ...layer(['src/raft/api.ts'], above('options'), 'the rebalancer/raft entry'),
  ...layer(['src/raft/transport/**'], [...above('options'), '**/wal/**', '**/node/**'], 'the Raft transport'),
  ...layer(['src/raft/node/**'], above('options'), 'the Raft node: core, log, transport, errors, options, events'),
  ...layer(['src/raft/wal/**'], above('options'), 'the Raft log: the core, errors.ts, options.ts and node:'),
  ...layer(['src/placement/**'], [...above('placement'), '**/store/**', '**/protocol/**'], 'placement is pure'),
  ...layer(['src/store/**'], [...above('store'), '**/placement/**', '**/protocol/**'], 'the store contract'),
  ...layer(['src/backends/**'], [...above('backends'), '**/placement/**', '**/protocol/**'], 'a backend'),
  ...layer(['src/protocol/**'], above('protocol'), 'the protocol cores and their IO'),
  ...layer(['src/runtime/**'], above('runtime'), 'the runtimes'),
  ...layer(['src/groups/**', 'src/slots/**'], above('runtime'), 'a public entry point'),
  ...layer(['src/integrations/**', 'src/sidecar/**', 'src/demo/**'], above('integrations'), 'built on the runtimes'),
  ...layer(['src/sim/**'], ['**/cli/**', '**/demo/**', '**/sidecar/**'], 'the simulator'),
);

/**
 * The folders above `level` (import targets that would point upwards), as import patterns. Levels, lowest first:
 * errors/options, placement, store, backends, protocol, runtime (+ public entries), integrations/sidecar/demo,
 * sim, cli.
 */
function above(level) {
  const order = ['options', 'placement', 'store', 'backends', 'protocol', 'runtime', 'integrations', 'sim', 'cli'];
  const folders = {
    options: [],
    placement: ['**/placement/**'],
    store: ['**/store/**'],
    backends: ['**/backends/**'],
    protocol: ['**/protocol/**'],
    runtime: ['**/runtime/**', '**/groups/index.js', '**/slots/index.js'],
    integrations: ['**/integrations/**', '**/sidecar/**', '**/demo/**'],
    sim: ['**/sim/**'],
    cli: ['**/cli/**'],
  };
  return order.slice(order.indexOf(level) + 1).flatMap((l) => folders[l]);
}

/** A config block: files in `files` may not import `patterns`. */
function layer(files, patterns, what) {
  return [
    {
      files,
      rules: {
        'no-restricted-imports': [
          'error',
          {
            patterns: [
              { group: [...new Set(patterns)], message: `${what}: imports flow downwards only (docs/ARCHITECTURE.md)` },
            ],
          },
        ],
      },
    },
  ];
}
