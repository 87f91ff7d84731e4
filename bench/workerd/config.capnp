# workerd config for the Isola-vs-workerd benchmark.
#
#   node_modules/.bin/workerd serve bench/workerd/config.capnp \
#       --socket-addr http=127.0.0.1:18787
#
# Serves ../workers/worker.js (the same file Isola runs) with a `KV` binding
# backed by an in-memory KV service (kv-store.js).
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .mainWorker),
    (name = "kv", worker = .kvWorker),
  ],
  sockets = [
    # Default address; override with --socket-addr http=<host>:<port>.
    (name = "http", address = "127.0.0.1:8787", http = (), service = "main"),
  ],
);

const mainWorker :Workerd.Worker = (
  modules = [
    (name = "worker.js", esModule = embed "../workers/worker.js"),
  ],
  compatibilityDate = "2025-09-01",
  bindings = [
    (name = "KV", kvNamespace = "kv"),
  ],
);

const kvWorker :Workerd.Worker = (
  modules = [
    (name = "kv-store.js", esModule = embed "kv-store.js"),
  ],
  compatibilityDate = "2025-09-01",
);
