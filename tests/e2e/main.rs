//! End-to-end tests: the real `isola` binary, real guest components, real
//! HTTP on 127.0.0.1.

mod support;

mod bindings;
mod cli;
mod cluster;
mod concurrency;
mod dev;
mod docs;
mod docs_reference;
mod durable;
mod durable_cluster;
mod durable_rust;
mod examples;
mod js;
mod js_build;
mod js_errors;
mod js_proxy;
mod js_reuse;
mod js_sandbox;
mod js_warm_up;
mod lifecycle;
mod limits;
mod operability;
mod overload;
mod profiling;
mod serving;
mod triggers;
mod wasmtime_patch;
