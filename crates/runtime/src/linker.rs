//! The linker every worker is instantiated against.

use wasmtime::component::Linker;

use crate::host;
use crate::state::HostState;

/// Everything a worker may import: all of WASI 0.2 (cargo's wasm32-wasip2
/// output imports `wasi:cli`, `wasi:filesystem` and friends even when it
/// only serves HTTP), `wasi:http`, and every `isola:worker` capability.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    crate::meter::add_uncharged_io(&mut linker)?;
    crate::http_batch::add_to_linker(&mut linker)?;
    host::ctx::add_to_linker(&mut linker)?;
    host::env::add_to_linker(&mut linker)?;
    host::kv::add_to_linker(&mut linker)?;
    host::sql::add_to_linker(&mut linker)?;
    host::blob::add_to_linker(&mut linker)?;
    host::cache::add_to_linker(&mut linker)?;
    host::analytics::add_to_linker(&mut linker)?;
    host::queue::add_to_linker(&mut linker)?;
    host::durable::add_to_linker(&mut linker)?;
    Ok(linker)
}
