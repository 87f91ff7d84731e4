// Benchmark worker: an HTML page of ~50 KB rendered from data with template
// literals (bench/src/sections/js_workloads.rs): a table of 500 rows, each
// field escaped. The data is made at start-up from a fixed seed, so Isola
// and workerd render the same bytes.
const ROWS = 500;

// A small deterministic PRNG (mulberry32), not Math.random.
function mulberry32(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const CITIES = ["Lisbon", "Oslo", "Kraków", "Zürich", "São Paulo", "Tōkyō", "Nairobi", "Austin"];
const STATUS = ["active", "pending", "suspended & review", "<closed>"];
const random = mulberry32(42);
const DATA = Array.from({ length: ROWS }, (_, i) => ({
  id: i + 1,
  name: `Customer ${i + 1} "${String.fromCharCode(65 + (i % 26))}"`,
  city: CITIES[Math.floor(random() * CITIES.length)],
  status: STATUS[Math.floor(random() * STATUS.length)],
  balance: Math.round(random() * 1e6) / 100,
  orders: Math.floor(random() * 40),
}));

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escape = (value) => String(value).replace(/[&<>"']/g, (ch) => ESCAPES[ch]);

const row = (r) =>
  `<tr${r.orders > 20 ? ' class="busy"' : ""}><td>${r.id}<td>${escape(r.name)}` +
  `<td>${escape(r.city)}<td>${escape(r.status)}<td>${r.balance.toFixed(2)}<td>${r.orders}</tr>\n`;

function page(rows, title) {
  const total = rows.reduce((sum, r) => sum + r.balance, 0);
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>${escape(title)}</title>
<style>table{border-collapse:collapse}td{padding:2px 6px}.busy{font-weight:bold}</style></head>
<body>
<h1>${escape(title)}</h1>
<p>${rows.length} customers, total balance ${total.toFixed(2)}</p>
<table>
<thead><tr><th>#</th><th>Name</th><th>City</th><th>Status</th><th>Balance</th><th>Orders</th></tr></thead>
<tbody>
${rows.map(row).join("")}</tbody>
</table>
</body>
</html>
`;
}

export default {
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname !== "/render") return new Response("not found\n", { status: 404 });
    return new Response(page(DATA, "Customers & balances"), {
      headers: { "content-type": "text/html; charset=utf-8" },
    });
  },
};
