// SPDX-License-Identifier: MIT
// The npm peer of `healthcare store`, for bench/run: stores DICOM files with the npm package
// dicomweb-client (storeInstances, as its README shows it), one file per request and up to
// CONCURRENCY requests in flight. dicomweb-client talks through XMLHttpRequest, which Node does
// not have: the xhr2 package provides it, as a Node user of the library would do. Files are read
// whole, because storeInstances takes ArrayBuffers; no copy is made here that the library does
// not ask for. Prints one JSON line: {"stored": N, "failed": N, "bytes": N, "errors": [...]}.
//
//   NODE_PATH=bench/out/node_modules node bench/npm_store.js BASE_URL CONCURRENCY LIST_FILE
'use strict';

const fs = require('fs');
global.XMLHttpRequest = require('xhr2');
const { api } = require('dicomweb-client');

async function main() {
  const [base, conc, listFile] = process.argv.slice(2);
  if (!base || !conc || !listFile) {
    process.stderr.write('usage: npm_store.js BASE_URL CONCURRENCY LIST_FILE\n');
    process.exit(2);
  }
  const files = fs.readFileSync(listFile, 'utf8').split('\n').filter(Boolean);
  const client = new api.DICOMwebClient({ url: base, singlepart: false });
  const result = { stored: 0, failed: 0, bytes: 0, errors: [] };
  let next = 0;

  async function worker() {
    while (next < files.length) {
      const path = files[next++];
      const buf = fs.readFileSync(path);
      // A Buffer this large owns its whole ArrayBuffer: hand that over without a copy.
      const ab = buf.byteOffset === 0 && buf.byteLength === buf.buffer.byteLength
        ? buf.buffer : buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
      try {
        const answer = await client.storeInstances({ datasets: [ab] });
        const doc = typeof answer === 'string' && answer ? JSON.parse(answer) : {};
        const items = (doc['00081199'] && doc['00081199'].Value) || [];
        if (items.length === 1) {
          result.stored++;
          result.bytes += buf.byteLength;
        } else {
          result.failed++;
          if (result.errors.length < 5) result.errors.push(`${path}: ${items.length} items in answer`);
        }
      } catch (e) {
        result.failed++;
        if (result.errors.length < 5) result.errors.push(`${path}: ${e.status || ''} ${e.message}`);
      }
    }
  }

  const n = Math.max(1, parseInt(conc, 10) || 1);
  await Promise.all(Array.from({ length: n }, worker));
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(result.failed > 0 ? 1 : 0);
}

main().catch((e) => {
  process.stderr.write(`npm_store.js: ${e.stack || e}\n`);
  process.exit(2);
});
