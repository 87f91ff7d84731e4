//! The JS worker side by side: Isola (fresh instances and
//! `instance_reuse`) and workerd, hello in interleaved rounds, then a KV
//! read.

use std::fmt::Write as _;
use std::time::Duration;

use isola_bench::load::Server;
use isola_bench::rounds::{HELLO_ROUNDS, Rounds};
use isola_bench::setup::{JS_KV, Setup};
use isola_bench::table::{Row, table};
use isola_bench::workload::{CONNECTIONS, HELLO, Workload, measure};

/// What the targets read from this section.
pub struct Js {
    /// The JS hello rounds.
    pub hello: Rounds,
    /// The fresh-instance Isola server's RSS once started (it compiled the
    /// worker).
    pub idle_rss: u64,
}

pub fn run(setup: &Setup, duration: Duration, doc: &mut String) -> Js {
    eprintln!("JS workloads…");
    let js_workloads = [
        Workload {
            name: "JS hello",
            path: "/",
            script: None,
            expect: HELLO,
        },
        Workload {
            name: "JS KV read (1 KiB)",
            path: "/kv",
            script: None,
            expect: "xxxx",
        },
    ];
    let js_state = setup.work.path().join("isola-js");
    let mut js_rows = Vec::new();
    let mut js_servers = vec![(
        "isola".to_string(),
        setup.isola("js", &setup.js_guest, JS_KV, &js_state),
    )];
    let idle_rss = js_servers[0].1.rss();
    js_servers.push((
        "isola, instance_reuse".to_string(),
        setup.isola(
            "js-reuse",
            &setup.js_reuse_guest,
            &format!("{JS_KV}\ninstance_reuse = 1000000"),
            &setup.work.path().join("isola-js-reuse"),
        ),
    ));
    if let Some(s) = setup.workerd() {
        js_servers.push(("workerd".into(), s));
    }
    let hello = {
        let servers: Vec<(&str, &Server)> = js_servers
            .iter()
            .map(|(name, server)| (name.as_str(), server))
            .collect();
        Rounds::run(setup, &servers, &js_workloads[0], duration)
    };
    js_rows.extend(hello.median_rows(js_workloads[0].name));
    for workload in &js_workloads[1..] {
        for (name, server) in &js_servers {
            eprintln!("  {} on {name}", workload.name);
            js_rows.push(Row {
                workload: workload.name,
                server: name.clone(),
                result: measure(setup, server, workload, CONNECTIONS, duration),
            });
        }
    }
    drop(js_servers);
    writeln!(
        doc,
        "## Side by side, JS worker, {CONNECTIONS} connections\n\n\
         JS hello rows: the median of {HELLO_ROUNDS} interleaved rounds per server.\n\n{}\n\
         JS hello, each Isola server's req/s ÷ the others' in the same round:\n\n{}\n{}",
        table(&js_rows, "isola"),
        hello.ratio_table("isola"),
        hello.ratio_table("isola, instance_reuse")
    )
    .unwrap();
    Js { hello, idle_rss }
}
