// The official client libraries against ds4-server: every response must parse without error and
// have the expected structure (a random demo model writes gibberish: structure, not text, is
// asserted). Tool calls are made deterministic with a forced tool_choice.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';

const base = process.env.DS4_SERVER_URL;
const apiKey = process.env.DS4_API_KEY || 'dummy';
const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0, timeout: 120000 });
const anthropic = new Anthropic({ baseURL: base, apiKey, maxRetries: 0, timeout: 120000 });
const model = 'deepseek-v4-flash';
const weather = {
  type: 'object',
  properties: { city: { type: 'string', description: 'City name' } },
  required: ['city'],
};
const results = [];
async function test(name, fn) {
  const t0 = Date.now();
  await fn();
  results.push(name);
  console.log(`ok - ${name} (${Date.now() - t0} ms)`);
}

await test('models.list', async () => {
  const list = await openai.models.list();
  assert.equal(list.data[0].id, model);
});

await test('chat.completions non-streaming', async () => {
  const r = await openai.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hi!' }], max_tokens: 8 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.ok(r.usage.prompt_tokens > 0);
});

await test('chat.completions streaming (stream helper, usage)', async () => {
  // A fixed seed: with a fresh one the demo model ends the reply early in about 3 requests of
  // 100 (an end-of-text token sampled), and the usage below must count all 8 tokens.
  const stream = openai.chat.completions.stream({
    model, messages: [{ role: 'user', content: 'Hi!' }], max_tokens: 8, seed: 1, stream_options: { include_usage: true },
  });
  let chunks = 0;
  for await (const _ of stream) chunks++;
  const final = await stream.finalChatCompletion();
  assert.ok(chunks >= 2);
  assert.equal(final.choices[0].message.role, 'assistant');
  assert.ok(final.usage && final.usage.completion_tokens === 8);
});

await test('chat.completions forced tool call, streaming and not', async () => {
  const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather', parameters: weather } }];
  const tool_choice = { type: 'function', function: { name: 'get_weather' } };
  const r = await openai.chat.completions.create({ model, messages: [{ role: 'user', content: 'Weather in Paris?' }],
    tools, tool_choice, max_tokens: 300, reasoning_effort: 'none' });
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  const call = r.choices[0].message.tool_calls[0];
  assert.equal(call.function.name, 'get_weather');
  assert.ok('city' in JSON.parse(call.function.arguments));
  const stream = openai.chat.completions.stream({ model, messages: [{ role: 'user', content: 'Weather in Paris?' }],
    tools, tool_choice, max_tokens: 300 });
  for await (const _ of stream) { /* drain */ }
  const final = await stream.finalChatCompletion();
  const sc = final.choices[0].message.tool_calls[0];
  assert.equal(sc.function.name, 'get_weather');
  assert.ok(sc.id.startsWith('call_'));
  assert.ok('city' in JSON.parse(sc.function.arguments));
});

await test('responses streaming with a forced function call', async () => {
  const stream = openai.responses.stream({
    model, input: 'Weather in Paris?', max_output_tokens: 300,
    tools: [{ type: 'function', name: 'get_weather', parameters: weather, strict: false }],
    tool_choice: { type: 'function', name: 'get_weather' },
  });
  const types = new Set();
  for await (const ev of stream) types.add(ev.type);
  const final = await stream.finalResponse();
  assert.ok(types.has('response.created') && types.has('response.completed'));
  assert.ok(types.has('response.function_call_arguments.delta'));
  const fc = final.output.find((o) => o.type === 'function_call');
  assert.equal(fc.name, 'get_weather');
  assert.ok('city' in JSON.parse(fc.arguments));
  const plain = await openai.responses.create({ model, input: 'Hello', max_output_tokens: 8 });
  assert.equal(plain.object, 'response');
  assert.ok(plain.output.length >= 1);
});

await test('forced tool calls with typed parameters: arguments are JSON of the declared types', async () => {
  const parameters = {
    type: 'object',
    properties: {
      days: { type: 'integer' }, budget: { type: 'number' }, flexible: { type: 'boolean' },
      prefs: { type: 'object' }, stops: { type: 'array' }, note: { type: ['integer', 'null'] },
    },
    required: ['days', 'budget', 'flexible', 'prefs', 'stops', 'note'],
  };
  const check = (args) => {
    assert.ok(Number.isInteger(args.days), JSON.stringify(args));
    assert.equal(typeof args.budget, 'number');
    assert.equal(typeof args.flexible, 'boolean');
    assert.ok(args.prefs !== null && typeof args.prefs === 'object' && !Array.isArray(args.prefs));
    assert.ok(Array.isArray(args.stops));
    assert.ok(args.note === null || Number.isInteger(args.note));
  };
  const tools = [{ type: 'function', function: { name: 'plan', parameters } }];
  for (let seed = 1; seed <= 6; seed++) {
    const body = { model, messages: [{ role: 'user', content: 'Plan a trip' }], tools, tool_choice: 'required',
      max_tokens: 60 + 40 * seed, reasoning_effort: 'none', seed };
    const r = await openai.chat.completions.create(body);
    check(JSON.parse(r.choices[0].message.tool_calls[0].function.arguments));
    const stream = openai.chat.completions.stream(body);
    for await (const _ of stream) { /* drain */ }
    const final = await stream.finalChatCompletion();
    check(JSON.parse(final.choices[0].message.tool_calls[0].function.arguments));
  }
});

await test('responses: reasoning summary, custom tool, namespace tool', async () => {
  const stream = openai.responses.stream({ model, input: 'Think first.', max_output_tokens: 24, seed: 7,
    reasoning: { effort: 'high', summary: 'auto' } });
  const types = new Set();
  let summary = '';
  let rs = null;
  for await (const ev of stream) {
    types.add(ev.type);
    if (ev.type === 'response.reasoning_summary_text.delta') summary += ev.delta;
    // The stream helper does not fold summary deltas into its snapshot (and an incomplete
    // response keeps that snapshot): the finished item comes with output_item.done.
    if (ev.type === 'response.output_item.done' && ev.item.type === 'reasoning') rs = ev.item;
  }
  await stream.finalResponse();
  assert.ok(types.has('response.reasoning_summary_part.added') && types.has('response.reasoning_summary_text.done'));
  assert.ok(!types.has('response.reasoning_text.delta'));
  assert.ok(summary.length > 0);
  assert.equal(rs.summary[0].type, 'summary_text');
  assert.equal(rs.summary[0].text, summary);
  const plain = await openai.responses.create({ model, input: 'Think first.', max_output_tokens: 24, seed: 7,
    reasoning: { effort: 'high', summary: 'detailed' } });
  assert.equal(plain.reasoning.summary, 'detailed');
  assert.equal(plain.output[0].type, 'reasoning');
  assert.equal(plain.output[0].summary[0].type, 'summary_text');
  const tools = [
    { type: 'custom', name: 'apply_patch', description: 'Apply a patch' },
    { type: 'namespace', name: 'weather', description: 'Weather', tools: [{ type: 'function', name: 'get', parameters: weather }] },
  ];
  const cstream = openai.responses.stream({ model, input: 'Patch it', max_output_tokens: 120, reasoning: { effort: 'none' },
    tools, tool_choice: { type: 'custom', name: 'apply_patch' } });
  let input = '';
  for await (const ev of cstream) if (ev.type === 'response.custom_tool_call_input.delta') input += ev.delta;
  const cfinal = await cstream.finalResponse();
  const cc = cfinal.output.find((o) => o.type === 'custom_tool_call');
  assert.equal(cc.name, 'apply_patch');
  assert.equal(typeof cc.input, 'string');
  assert.equal(cc.input, input);
  const ns = await openai.responses.create({ model, input: 'Weather?', max_output_tokens: 120, reasoning: { effort: 'none' },
    tools, tool_choice: { type: 'function', name: 'get', namespace: 'weather' } });
  const fc = ns.output.find((o) => o.type === 'function_call');
  assert.equal(fc.name, 'get');
  assert.equal(fc.namespace, 'weather');
  assert.equal(typeof JSON.parse(fc.arguments).city, 'string');
  const replay = await openai.responses.create({ model, max_output_tokens: 2, tools, input: [
    { role: 'user', content: 'Patch it' },
    { type: 'custom_tool_call', call_id: cc.call_id, name: 'apply_patch', input: cc.input },
    { type: 'custom_tool_call_output', call_id: cc.call_id, output: 'applied' },
  ] });
  assert.equal(replay.object, 'response');
});

await test('anthropic messages streaming with thinking and tool_use', async () => {
  // A fixed seed (a server extension): with a random one the demo model sometimes closes its
  // thinking at once, and there is no thinking block to check.
  const stream = anthropic.messages.stream({
    model, max_tokens: 400, messages: [{ role: 'user', content: 'Weather in Paris?' }], seed: 7,
    thinking: { type: 'enabled', budget_tokens: 16 },
    tools: [{ name: 'get_weather', description: 'Weather', input_schema: weather }],
    tool_choice: { type: 'tool', name: 'get_weather' },
  });
  const final = await stream.finalMessage();
  assert.equal(final.content[0].type, 'thinking');
  const tu = final.content.find((b) => b.type === 'tool_use');
  assert.equal(tu.name, 'get_weather');
  assert.ok(tu.id.startsWith('toolu_'));
  assert.equal(typeof tu.input.city, 'string');
  assert.equal(final.stop_reason, 'tool_use');
  const plain = await anthropic.messages.create({ model, max_tokens: 8, messages: [{ role: 'user', content: 'Hi' }] });
  assert.equal(plain.type, 'message');
  assert.equal(plain.content[0].type, 'text');
  const count = await anthropic.messages.countTokens({ model, messages: [{ role: 'user', content: 'Hi' }] });
  assert.ok(count.input_tokens > 0);
});

console.log(`clients: ${results.length} tests passed`);
