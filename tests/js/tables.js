// A deterministic workout of the JS engine for the test of Isola's wasmtime
// change that remembers function addresses across instances
// (tests/e2e/wasmtime_patch.rs, vendor/README.md). StarlingMonkey calls
// most of SpiderMonkey through function tables, and which of them a request
// reaches depends on what it does: so `/?seed=N` picks, from its seed, a
// mix of JSON, regular expressions, sorting with a comparator, Maps and
// Sets, typed arrays, string building, classes and closures kept in an
// array that is shuffled and rewritten as it runs. The same URL always
// gives the same answer.

let served = 0; // module state: a fresh instance per request keeps it at 1

function lcg(seed) {
  let state = BigInt(seed) ^ 0x5eedn;
  return () => {
    state = (state * 6364136223846793005n + 1442695040888963407n) & 0xffffffffffffffffn;
    return Number(state >> 33n);
  };
}

class Shape {
  constructor(a, b) {
    this.a = a;
    this.b = b;
  }
  area() {
    return 0;
  }
}
class Square extends Shape {
  area() {
    return this.a * this.a;
  }
}
class Rect extends Shape {
  area() {
    return this.a * this.b;
  }
}
class Tri extends Shape {
  area() {
    return Math.floor((this.a * this.b) / 2);
  }
}

const steps = [
  (x, r) => JSON.stringify({ x, list: [x, r() % 97, "s" + x], nested: { ok: x % 2 === 0 } }).length,
  (x) => JSON.parse(`{"v":${x},"w":[1,2,${x % 13}]}`).w.reduce((a, b) => a + b, 0),
  (x) => ("k" + x + "-" + (x * 7)).replace(/(\d)(\d)/g, "$2$1").match(/\d/g).length,
  (x, r) => {
    const list = Array.from({ length: 20 + (x % 30) }, () => r() % 1000);
    list.sort((a, b) => a - b);
    return list[list.length >> 1];
  },
  (x) => {
    const map = new Map();
    for (let i = 0; i < 40; i++) map.set("k" + ((x + i * 13) % 17), i);
    const set = new Set(map.values());
    return map.size * 100 + set.size;
  },
  (x) => {
    const bytes = new Uint8Array(64);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (x * (i + 1)) & 0xff;
    return new DataView(bytes.buffer).getUint32(x % 60, true);
  },
  (x) => [..."isola-" + x].reverse().join("").padStart(16, "*").charCodeAt(x % 16),
  (x, r) => {
    const kinds = [Square, Rect, Tri];
    let sum = 0;
    for (let i = 0; i < 6; i++) sum += new kinds[r() % 3](x % 50, r() % 9 + 1).area();
    return sum;
  },
  (x) => Math.round(Math.sin(x) * 1e6) ^ Math.round(Math.sqrt(x + 1) * 1e3),
  (x) => encodeURIComponent("q=" + x + "&é").length + btoa(String(x)).length,
  (x) => Object.entries({ a: x, b: x * 2, c: [x] }).flat(2).filter((v) => typeof v === "number").length,
  (x) => {
    let text = "";
    for (let i = 0; i < 10; i++) text += String.fromCharCode(97 + ((x + i) % 26));
    return text.localeCompare("mmmmm") + text.toUpperCase().indexOf("A") + 2;
  },
];

function run(seed, count) {
  const r = lcg(seed);
  const table = steps.slice();
  let x = seed % 100000;
  let order = 0;
  for (let i = 0; i < count; i++) {
    const slot = (x + r()) % table.length;
    x = (Math.abs(table[slot](x, r)) + i) % 1000003;
    order = (order * 31 + slot) % 1000000007;
    if (i % 5 === 0) {
      const a = r() % table.length;
      const b = r() % table.length;
      [table[a], table[b]] = [table[b], table[a]];
    }
    if (i % 9 === 4) table[r() % table.length] = steps[r() % steps.length];
  }
  return `seed=${seed} x=${x} order=${order}`;
}

export default {
  async fetch(request) {
    served += 1;
    const url = new URL(request.url);
    const seed = Number(url.searchParams.get("seed") ?? "0");
    const count = Number(url.searchParams.get("steps") ?? "60");
    return new Response(`${run(seed, count)} served=${served}\n`);
  },
};
