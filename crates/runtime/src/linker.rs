//! The linker every worker is instantiated against.

use wasmtime::component::{HasSelf, Linker};

use crate::generated::isola::worker::{
    analytics, blob, cache, ctx, env, kv, queue, request_info, sql, types,
};
use crate::state::HostState;

/// Everything a worker may import: all of WASI 0.2 (cargo's wasm32-wasip2
/// output imports `wasi:cli`, `wasi:filesystem` and friends even when it
/// only serves HTTP), `wasi:http`, and `isola:worker`.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    crate::http_batch::add_to_linker(&mut linker)?;
    ctx::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    env::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    request_info::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    types::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    kv::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    sql::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    blob::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    cache::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    analytics::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    queue::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    Ok(linker)
}
