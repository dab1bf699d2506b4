// Builds the minified ES modules in dist/ (checked in, so embedding needs no Node).
// `node build.mjs --check` rebuilds in memory and fails if dist/ is stale.
import { build } from 'esbuild';
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const check = process.argv.includes('--check');
const outputs = [
  ['src/dap-task.js', 'dist/dap-task.min.js'],
  ['src/define.js', 'dist/dap-task.define.min.js'],
];

let stale = [];
for (const [entry, out] of outputs) {
  const r = await build({
    entryPoints: [here(entry)],
    bundle: true,
    format: 'esm',
    minify: true,
    target: ['es2022'],
    legalComments: 'none',
    write: false,
  });
  const text = r.outputFiles[0].text;
  if (check) {
    const current = await readFile(here(out), 'utf8').catch(() => '');
    if (current !== text) stale.push(out);
  } else {
    await mkdir(here('dist'), { recursive: true });
    await writeFile(here(out), text);
    console.log(`${out}  ${text.length} bytes`);
  }
}
if (stale.length) {
  console.error(`stale build output: ${stale.join(', ')} — run \`npm run build\` and commit dist/`);
  process.exit(1);
}
