# workerd config for the Durable Objects benchmark (bench/src/sections/durable.rs).
#
#   node_modules/.bin/workerd serve bench/workerd/durable.capnp \
#       --socket-addr http=127.0.0.1:18787 --directory-path do-disk=/tmp/do-disk
#
# Serves ../workers/durable.js (the same file Isola runs) with its `Counter`
# class as a SQLite-backed Durable Object namespace (as Isola's
# `new_sqlite_classes`), stored on local disk in the `do-disk` directory.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .durableWorker),
    # Default path, relative to the working directory; the benchmark points
    # it at its work directory with --directory-path do-disk=<path>.
    (name = "do-disk", disk = (path = "do-disk", writable = true)),
  ],
  sockets = [
    # Default address; override with --socket-addr http=<host>:<port>.
    (name = "http", address = "127.0.0.1:8787", http = (), service = "main"),
  ],
);

const durableWorker :Workerd.Worker = (
  modules = [
    (name = "durable.js", esModule = embed "../workers/durable.js"),
  ],
  compatibilityDate = "2025-09-01",
  bindings = [
    (name = "COUNTER", durableObjectNamespace = "Counter"),
  ],
  durableObjectNamespaces = [
    (className = "Counter", uniqueKey = "isola-bench-counter", enableSql = true),
  ],
  durableObjectStorage = (localDisk = "do-disk"),
);
