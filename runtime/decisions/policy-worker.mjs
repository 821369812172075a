/**
 * Entry of the worker thread that runs one user policy module for `PolicyHost`
 * (policy.ts). Plain JavaScript on purpose: it must start before any TypeScript loader is
 * registered in this thread, and under plain node as well as under tsx.
 *
 * Protocol (structured-clone messages on parentPort):
 *   host -> worker  { type: 'decide', id, input }
 *   worker -> host  { type: 'ready' } | { type: 'load-error', message }
 *                   { type: 'result', id, result } | { type: 'threw', id, message }
 *                   { type: 'unclonable', id, message }
 * The host validates everything it receives; this side only reports what happened.
 */
import { parentPort, workerData } from 'node:worker_threads';

const MAX_TEXT = 2000; // characters of an error message sent back; keeps log lines bounded

/** "Name: message (at file:line)" of anything thrown, never throwing itself. */
function describe(err) {
  try {
    if (err instanceof Error) {
      const where = String(err.stack ?? '')
        .split('\n')
        .find((l) => /^\s+at /.test(l));
      const text = `${err.name}: ${err.message}${where ? ` (${where.trim()})` : ''}`;
      return text.slice(0, MAX_TEXT);
    }
    return `non-Error thrown: ${String(err)}`.slice(0, MAX_TEXT);
  } catch {
    return 'unprintable value thrown';
  }
}

async function load() {
  const { moduleUrl, typescript, tsxApi } = workerData;
  if (typescript) {
    if (!tsxApi) {
      throw new Error('a TypeScript policy needs the tsx package (npm install tsx), or compile the policy to .mjs');
    }
    // Both hooks: a .ts file outside a "type": "module" package is loaded as CommonJS.
    (await import(tsxApi.esm)).register();
    (await import(tsxApi.cjs)).register();
  }
  let mod;
  try {
    mod = await import(moduleUrl);
  } catch (err) {
    if (err instanceof SyntaxError && /\b(export|import)\b/.test(err.message) && moduleUrl.endsWith('.js')) {
      err.message += ' (a .js file is CommonJS unless the nearest package.json says "type": "module"; name the policy .mjs)';
    }
    throw err;
  }
  // Loaded as CommonJS (see above), `export default` arrives as module.exports.default.
  let decide = mod.default;
  if (typeof decide !== 'function' && decide && typeof decide === 'object' && typeof decide.default === 'function') decide = decide.default;
  if (typeof decide !== 'function') {
    // Say what the module does export, to point at the likely mistake.
    const cjs = decide && typeof decide === 'object' && decide.__esModule ? decide : undefined;
    const actual = cjs ? cjs.default : decide;
    const names = [...new Set([...Object.keys(mod), ...Object.keys(cjs ?? {})])].filter((k) => k !== 'default' && k !== '__esModule' && k !== 'module.exports');
    const what = actual === undefined ? 'missing' : actual === null ? 'null' : typeof actual;
    const exported = names.length ? ` (it exports: ${names.join(', ')})` : '';
    throw new TypeError(`the policy module must \`export default function decide(input)\`; its default export is ${what}${exported}`);
  }
  return decide;
}

let decide;
try {
  decide = await load();
} catch (err) {
  parentPort.postMessage({ type: 'load-error', message: describe(err) });
}

if (decide) {
  parentPort.on('message', async (msg) => {
    if (!msg || msg.type !== 'decide') return;
    const { id } = msg;
    let result;
    try {
      result = await decide(msg.input);
    } catch (err) {
      parentPort.postMessage({ type: 'threw', id, message: describe(err) });
      return;
    }
    try {
      parentPort.postMessage({ type: 'result', id, result });
    } catch (err) {
      // Functions, symbols and the like cannot cross threads: report, do not crash.
      parentPort.postMessage({ type: 'unclonable', id, message: describe(err) });
    }
  });
  parentPort.postMessage({ type: 'ready' });
}
