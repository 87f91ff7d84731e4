#!/bin/bash
# QuickJS components of the benchmark's workers, for the engine comparison
# in bench/RESULTS.md ("Engine options"); measurement only.
#
#   bench/engines/quickjs/build.sh OUT_DIR
#
# Writes qjs-hello.wasm (hello.js: wasi:http called directly) and
# qjs-hono.wasm / qjs-render.wasm (bench/workers' hono.js and render.js
# through glue.js and webshim.js, the Web APIs QuickJS lacks). Needs the
# JS toolchain `isola build` installs (componentize-qjs 0.4.5 and esbuild
# come with it) and bench/workers' npm packages.
#
# componentize-qjs's Wizer step links WASI preview 2 itself and stubs
# every other import with traps; a stub of wasi:http/types then names
# wasi:io resources of its own and the link fails ("mismatched resource
# types"). So the world is written as `wazi:*` (every import a stub) and
# the finished component's names are patched back to `wasi:*`, which is
# the same length, so no size field changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
toolchain=$(ls -d "${ISOLA_CACHE_DIR:-$HOME/.cache/isola}"/js-toolchain/*/node_modules | head -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/wit/deps"
for f in "$repo"/wit/deps/*.wit; do sed 's/\bwasi:/wazi:/g' "$f" > "$work/wit/deps/$(basename "$f")"; done
cp "$here/world.wit" "$work/wit/"
cp "$here/webshim.js" "$work/"
cp "$here/hello.js" "$work/hello.js"
for worker in hono render; do
  sed "s|\"WORKER\"|\"$repo/bench/workers/$worker.js\"|" "$here/glue.js" > "$work/glue-$worker.js"
  # Async functions become generators over webshim.js's Promise, which the
  # handler drains: the sync runtime never runs QuickJS's job queue.
  node -e '
    const [esbuild, entry, outfile, modules] = process.argv.slice(1);
    require(esbuild).buildSync({ entryPoints: [entry], outfile, bundle: true, format: "esm",
      platform: "neutral", target: "es2020", external: ["wazi:*"], nodePaths: [modules],
      supported: { "async-await": false, "async-generator": false, "for-await": false },
      mainFields: ["module", "main"], conditions: ["workerd", "worker", "browser"] });
  ' "$toolchain/esbuild/lib/main.js" "$work/glue-$worker.js" "$work/$worker.js" "$repo/bench/workers/node_modules"
done
for name in hello hono render; do
  "$toolchain/.bin/componentize-qjs" --wit "$work/wit" --world hello --js "$work/$name.js" \
    -o "$work/$name.wasm" --sync
  python3 -c 'import sys; open(sys.argv[2], "wb").write(open(sys.argv[1], "rb").read().replace(b"wazi:", b"wasi:"))' \
    "$work/$name.wasm" "$out/qjs-$name.wasm"
done
