// Copies what the light client imports from node_modules into the vendor
// directory, keeping each package's layout: the entry modules below and
// every module they import, followed transitively (static imports only,
// which is all these packages use), plus each package's LICENSE. Writes
// MANIFEST: "<sha256>  <path>  <package>@<version>" for every file copied.
//
//   node collect.mjs NODE_MODULES VENDOR_DIR
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, posix } from 'node:path';

const [nodeModules, out] = process.argv.slice(2);
if (!nodeModules || !out) throw new Error('usage: node collect.mjs NODE_MODULES VENDOR_DIR');

// What the page imports (see the import map in index.html).
const entries = [
  '@noble/curves/ed25519.js',
  '@noble/hashes/sha2.js',
  '@noble/hashes/hmac.js',
  '@scure/base/index.js',
  '@scure/bip39/index.js',
  '@scure/bip39/wordlists/english.js',
];
// Loaded as a classic script: a UMD file with no imports.
const scripts = ['tweetnacl/nacl-fast.js'];

const pkgOf = (p) => (p.startsWith('@') ? p.split('/').slice(0, 2).join('/') : p.split('/')[0]);
const bareEntry = { '@scure/base': '@scure/base/index.js', '@scure/bip39': '@scure/bip39/index.js' };

function resolve(spec, from) {
  if (spec.startsWith('./') || spec.startsWith('../')) return posix.normalize(posix.join(posix.dirname(from), spec));
  if (bareEntry[spec]) return bareEntry[spec];
  if (spec.startsWith('@noble/') || spec.startsWith('@scure/')) return spec;
  throw new Error(`${from} imports ${spec}: not a vendored package`);
}

const seen = new Set();
const queue = [...entries];
while (queue.length) {
  const file = queue.shift();
  if (seen.has(file)) continue;
  seen.add(file);
  // Import statements only: doc comments show imports of other modules.
  const src = readFileSync(join(nodeModules, file), 'utf8')
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/^\s*\/\/.*$/gm, '');
  const re = /(?:^|[\s;}])(?:import|export)\s*(?:[^'"`;]*?\sfrom\s*)?['"]([^'"]+)['"]/g;
  for (const m of src.matchAll(re)) queue.push(resolve(m[1], file));
}

const files = [...seen, ...scripts];
const pkgs = new Set(files.map(pkgOf));
for (const p of pkgs) files.push(`${p}/LICENSE`);
files.sort();

const lines = [];
for (const f of files) {
  const dst = join(out, f);
  mkdirSync(dirname(dst), { recursive: true });
  copyFileSync(join(nodeModules, f), dst);
  const sum = createHash('sha256').update(readFileSync(dst)).digest('hex');
  const { version } = JSON.parse(readFileSync(join(nodeModules, pkgOf(f), 'package.json'), 'utf8'));
  lines.push(`${sum}  ${f}  ${pkgOf(f)}@${version}`);
}
writeFileSync(join(out, 'MANIFEST'), lines.join('\n') + '\n');
