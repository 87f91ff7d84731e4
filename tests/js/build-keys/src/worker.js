// Wrangler's build keys, from tests/e2e/js_build.rs's isola.toml:
// `alias` maps the bare name "some-module" to ./src/shim-for-module.js,
// `define` sets DEBUG and process.env.MODE at build time, and `rules` load
// .html/.tmpl files as strings and .bin files as ArrayBuffers.
import greet from "some-module";
import page from "./page.html";
import banner from "./banner.tmpl";
import logo from "./logo.bin";

export default {
  async fetch(request) {
    const { pathname } = new URL(request.url);
    switch (pathname) {
      case "/alias":
        return new Response(greet("isola"));
      case "/define":
        // Replaced by their values: nothing named DEBUG or process exists.
        return Response.json({ debug: DEBUG, mode: process.env.MODE });
      case "/page":
        return new Response(`${typeof page}:${page}${banner}`, {
          headers: { "content-type": "text/html; charset=utf-8" },
        });
      case "/logo":
        return new Response(logo, {
          headers: { "x-kind": Object.prototype.toString.call(logo) },
        });
      default:
        return new Response("not found", { status: 404 });
    }
  },
};
