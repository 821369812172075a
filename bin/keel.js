#!/usr/bin/env node
// The `keel` command: runs the TypeScript sources through tsx's loader.
import { register } from 'tsx/esm/api';

register();
const { runCli } = await import('../runtime/cli.ts');
await runCli();
