// Benchmark worker: hash and sign a request body with crypto.subtle
// (bench/src/sections/js_workloads.rs): SHA-256 of the body and its
// HMAC-SHA-256 under a key imported on each request, answered as hex.
const SECRET = new TextEncoder().encode("isola-bench-hmac-secret-0123456789");

const hex = (buffer) =>
  Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");

export default {
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === "/" && request.method === "GET") return new Response("ready\n");
    if (url.pathname !== "/sign" || request.method !== "POST") {
      return new Response("not found\n", { status: 404 });
    }
    const body = await request.arrayBuffer();
    const key = await crypto.subtle.importKey(
      "raw",
      SECRET,
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["sign"],
    );
    const [digest, signature] = await Promise.all([
      crypto.subtle.digest("SHA-256", body),
      crypto.subtle.sign("HMAC", key, body),
    ]);
    return new Response(
      JSON.stringify({ bytes: body.byteLength, sha256: hex(digest), hmac: hex(signature) }) + "\n",
      { headers: { "content-type": "application/json" } },
    );
  },
};
