//! The Rust guest side by side: Isola (fresh and reused instances),
//! `wasmtime serve` (fresh and reused) and a native hyper server, hello in
//! interleaved rounds, then compute, JSON echo and a streamed response.

use std::fmt::Write as _;
use std::time::Duration;

use isola_bench::load::Server;
use isola_bench::rounds::{HELLO_ROUNDS, Rounds};
use isola_bench::setup::Setup;
use isola_bench::table::{Row, table};
use isola_bench::workload::{CONNECTIONS, Workload, echo_script, measure};

/// What the targets read from this section.
pub struct Rust {
    /// The table's rows, workloads in order.
    pub rows: Vec<Row>,
    /// The hello rounds.
    pub hello: Rounds,
    /// The Isola server's RSS once started (it compiled the guest).
    pub idle_rss: u64,
}

fn workloads(setup: &Setup) -> [Workload; 4] {
    [
        Workload::hello(),
        Workload {
            name: "compute (1M-step loop)",
            path: "/compute",
            script: None,
            expect: "\n",
        },
        Workload {
            name: "JSON echo, 10 KiB",
            path: "/echo",
            script: Some(echo_script(setup.work.path())),
            expect: "",
        },
        Workload {
            name: "1 MiB streamed response",
            path: "/stream",
            script: None,
            expect: "xxxx",
        },
    ]
}

pub fn run(setup: &Setup, duration: Duration, doc: &mut String) -> Rust {
    eprintln!("Rust workloads…");
    let workloads = workloads(setup);
    let isola = setup.isola("rust", &setup.rust_guest, "", &setup.rust_state());
    let idle_rss = isola.rss();
    let wasmtime_fresh = setup.wasmtime("wasmtime-fresh", false);
    let wasmtime_reuse = setup.wasmtime("wasmtime-reuse", true);
    let isola_reuse = setup.isola(
        "rust-reuse",
        &setup.rust_guest,
        "instance_reuse = 1000000",
        &setup.work.path().join("isola-rust-reuse"),
    );
    let native = setup.native();
    let mut peers: Vec<(&str, &Server)> = Vec::new();
    if let Some(server) = &wasmtime_fresh {
        peers.push(("wasmtime serve", server));
    }
    if let Some(server) = &wasmtime_reuse {
        peers.push(("wasmtime serve, reuse", server));
    }
    let mut hello_servers = vec![("isola", &isola)];
    hello_servers.extend(peers.iter().copied());
    hello_servers.push(("isola, instance_reuse", &isola_reuse));
    hello_servers.push(("native hyper", &native));
    let hello = Rounds::run(setup, &hello_servers, &workloads[0], duration);
    let mut rows = hello.median_rows(workloads[0].name);
    for workload in &workloads[1..] {
        for (name, server) in std::iter::once(("isola", &isola)).chain(peers.iter().copied()) {
            eprintln!("  {} on {name}", workload.name);
            rows.push(Row {
                workload: workload.name,
                server: name.into(),
                result: measure(setup, server, workload, CONNECTIONS, duration),
            });
        }
    }
    drop((isola, wasmtime_fresh, wasmtime_reuse, isola_reuse, native));
    rows.sort_by_key(|r| workloads.iter().position(|w| w.name == r.workload));
    writeln!(
        doc,
        "## Side by side, Rust guest, {CONNECTIONS} connections\n\n\
         Hello rows: the median of {HELLO_ROUNDS} interleaved rounds per server.\n\n{}\n\
         Rust hello, Isola's req/s ÷ each server's in the same round (the targets use the median):\n\n{}",
        table(&rows, "isola"),
        hello.ratio_table("isola")
    )
    .unwrap();
    Rust {
        rows,
        hello,
        idle_rss,
    }
}
