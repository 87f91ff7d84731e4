//! Host bindings of the `isola:worker` imports (the `imports` world), with
//! each WIT resource mapped to its host type in `host::handles`; and of the
//! optional handlers' worlds, which the runtime calls.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "isola:worker/imports",
    // Binding calls reach backends (SQLite, files, later the network):
    // async, so a slow one never blocks the executor thread. A bad
    // handle traps; backend failures are the guest's `error`.
    imports: {
        "isola:worker/ctx.abort": trappable,
        "isola:worker/kv": async | trappable,
        "isola:worker/sql": async | trappable,
        "isola:worker/blob": async | trappable,
        "isola:worker/cache": async | trappable,
        "isola:worker/analytics": async | trappable,
        "isola:worker/queue": async | trappable,
        "isola:worker/durable-object-storage": async | trappable,
    },
    with: {
        "isola:worker/kv.namespace": crate::host::handles::KvHandle,
        "isola:worker/sql.database": crate::host::handles::SqlHandle,
        "isola:worker/blob.bucket": crate::host::handles::BucketHandle,
        "isola:worker/blob.body": crate::host::handles::BodyHandle,
        "isola:worker/blob.upload": crate::host::handles::UploadHandle,
        "isola:worker/cache.cache": crate::host::handles::CacheHandle,
        "isola:worker/cache.body": crate::host::handles::CacheBodyHandle,
        "isola:worker/cache.upload": crate::host::handles::CacheUploadHandle,
        "isola:worker/analytics.dataset": crate::host::handles::DatasetHandle,
        "isola:worker/queue.producer": crate::host::handles::ProducerHandle,
    },
    require_store_data_send: true,
});

/// The `scheduled` handler's world (cron triggers).
pub(crate) mod scheduled_world {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "isola:worker/scheduled-handler",
        exports: { default: async },
    });
}

/// The `queue` handler's world (queue consumers).
pub(crate) mod queue_world {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "isola:worker/queue-handler",
        exports: { default: async },
    });
}
