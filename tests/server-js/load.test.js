// Bounded load test: N concurrent streaming clients on loopback for a fixed time. No request
// may fail; server RSS must not grow after they finish; latency percentiles are printed.
import assert from 'node:assert/strict';
import fs from 'node:fs';

const base = process.env.DS4_SERVER_URL;
const pid = Number(process.env.DS4_SERVER_PID);
const clients = Number(process.env.DS4_LOAD_CLIENTS || 32);
const seconds = Number(process.env.DS4_LOAD_SECONDS || 20);
const headers = { 'content-type': 'application/json', authorization: `Bearer ${process.env.DS4_API_KEY || 'dummy'}` };

function rssKb() {
  const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/);
  return Number(m[1]);
}

async function oneRequest(i, n) {
  const t0 = performance.now();
  const res = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST', headers,
    body: JSON.stringify({ model: 'deepseek-v4-flash', stream: true, max_tokens: 8, reasoning_effort: 'none',
      messages: [{ role: 'user', content: `client ${i} request ${n}: tell me something` }] }),
  });
  assert.equal(res.status, 200);
  let first = 0;
  const text = await (async () => {
    let s = '';
    for await (const chunk of res.body) {
      if (!first) first = performance.now() - t0;
      s += Buffer.from(chunk).toString();
    }
    return s;
  })();
  assert.ok(text.includes('data: [DONE]'), 'stream ended properly');
  return { total: performance.now() - t0, first };
}

async function runFor(ms) {
  const end = Date.now() + ms;
  const lat = [], ttft = [];
  let failed = 0;
  await Promise.all(Array.from({ length: clients }, async (_, i) => {
    for (let n = 0; Date.now() < end; n++) {
      try {
        const r = await oneRequest(i, n);
        lat.push(r.total);
        ttft.push(r.first);
      } catch (e) {
        failed++;
        console.error(`client ${i}: ${e.message}`);
      }
    }
  }));
  return { lat, ttft, failed };
}

const pct = (a, p) => { const s = [...a].sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.floor(p * s.length))]; };

// Warm-up round so allocator pools and resident sessions reach their steady state.
await runFor(Math.min(3, seconds / 4) * 1000);
const rss0 = rssKb();
const { lat, ttft, failed } = await runFor(seconds * 1000);
const rss1 = rssKb();
await runFor(Math.min(3, seconds / 4) * 1000);
const rss2 = rssKb();
console.log(`load: ${clients} clients x ${seconds}s: ${lat.length} requests, ${failed} failed, ` +
  `${(lat.length / seconds).toFixed(1)} req/s`);
console.log(`load: latency ms p50 ${pct(lat, 0.5).toFixed(0)} p90 ${pct(lat, 0.9).toFixed(0)} p99 ${pct(lat, 0.99).toFixed(0)}; ` +
  `first byte p50 ${pct(ttft, 0.5).toFixed(0)} p99 ${pct(ttft, 0.99).toFixed(0)}`);
console.log(`load: server RSS ${rss0} kB before, ${rss1} kB after, ${rss2} kB after another round`);
assert.equal(failed, 0);
assert.ok(lat.length >= clients);
// Growth across a second identical round would be a leak (bounded caches are full by then).
assert.ok(rss2 <= rss1 * 1.10 + 8192, `RSS grew from ${rss1} kB to ${rss2} kB`);
