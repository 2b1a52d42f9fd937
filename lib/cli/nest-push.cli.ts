#!/usr/bin/env node
/** The `nest-push` executable (package.json "bin"); the logic lives in ./nest-push.ts. */
import { main } from './nest-push.js';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`nest-push: unexpected error: ${(e as Error)?.stack ?? String(e)}\n`);
    process.exitCode = 1;
  },
);
