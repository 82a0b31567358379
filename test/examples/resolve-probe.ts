/**
 * Prints where each name given as an argument resolves, one `name url` line each, when run the way
 * test/examples/examples.test.ts runs the examples (tsx, from a temp dir, TSX_TSCONFIG_PATH set).
 */
for (const name of process.argv.slice(2)) console.log(`${name} ${import.meta.resolve(name)}`);
