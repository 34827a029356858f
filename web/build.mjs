// Bundles the page into dist/: app.js (all dependencies inlined, nothing fetched at run
// time), index.html and style.css.
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { build } from 'esbuild';

const outdir = 'dist';
rmSync(outdir, { recursive: true, force: true });
mkdirSync(outdir, { recursive: true });

const result = await build({
  entryPoints: ['src/app.js'],
  outfile: `${outdir}/app.js`,
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: ['es2020'],
  minify: true,
  sourcemap: true,
  metafile: true,
  logLevel: 'warning',
});
for (const file of ['index.html', 'style.css']) {
  copyFileSync(`src/${file}`, `${outdir}/${file}`);
}
const bytes = result.metafile.outputs[`${outdir}/app.js`].bytes;
console.log(`web/${outdir}/app.js: ${bytes} bytes`);
