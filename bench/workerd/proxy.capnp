# workerd config for the proxy benchmark.
#
#   ORIGIN=http://127.0.0.1:9000 node_modules/.bin/workerd serve \
#       bench/workerd/proxy.capnp --socket-addr http=127.0.0.1:18787
#
# Serves ../workers/proxy.js (the same file Isola runs) with ORIGIN from the
# environment. workerd's default `internet` service reaches public addresses
# only, so the worker's global fetch goes through a network service allowed
# to reach the loopback origin; caches.default goes to an in-memory cache
# service (cache-store.js): without one workerd's Cache API does nothing.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .proxyWorker),
    (name = "loopback", network = (allow = ["local"])),
    (name = "cache", worker = .cacheWorker),
  ],
  sockets = [
    # Default address; override with --socket-addr http=<host>:<port>.
    (name = "http", address = "127.0.0.1:8787", http = (), service = "main"),
  ],
);

const proxyWorker :Workerd.Worker = (
  modules = [
    (name = "proxy.js", esModule = embed "../workers/proxy.js"),
  ],
  compatibilityDate = "2025-09-01",
  bindings = [
    (name = "ORIGIN", fromEnvironment = "ORIGIN"),
  ],
  globalOutbound = "loopback",
  cacheApiOutbound = "cache",
);

const cacheWorker :Workerd.Worker = (
  modules = [
    (name = "cache-store.js", esModule = embed "cache-store.js"),
  ],
  compatibilityDate = "2025-09-01",
);
