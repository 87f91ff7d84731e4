//! Host bindings of the `isola:worker` imports (the `imports` world), with
//! each WIT resource mapped to its host type in `resources`.

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
    },
    with: {
        "isola:worker/kv.namespace": crate::resources::KvHandle,
        "isola:worker/sql.database": crate::resources::SqlHandle,
        "isola:worker/blob.bucket": crate::resources::BucketHandle,
        "isola:worker/blob.body": crate::resources::BodyHandle,
        "isola:worker/blob.upload": crate::resources::UploadHandle,
        "isola:worker/cache.cache": crate::resources::CacheHandle,
        "isola:worker/analytics.dataset": crate::resources::DatasetHandle,
        "isola:worker/queue.producer": crate::resources::ProducerHandle,
    },
    require_store_data_send: true,
});
