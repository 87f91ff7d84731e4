//! Paths of guest components built for the tests, one constant each:
//! `COUNTER`, `SLOW`, `CHATTY`, `COMMAND` from `guests/`, and `EXAMPLE_HELLO`,
//! `EXAMPLE_ROUTER`, `EXAMPLE_RAW_WASI_HTTP` from `guest-examples/`, and
//! `SPIN_HELLO_WASIP1`, a WASI preview 1 core module as `spin build` makes.

include!(concat!(env!("OUT_DIR"), "/components.rs"));
