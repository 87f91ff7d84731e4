//! What the servers are loaded with: a workload (path, wrk script, the
//! body it must answer), checked once by hand and then driven by `wrk`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::load::{self, LoadResult, Server};
use crate::setup::Setup;

/// Connections in the side-by-side tables.
pub const CONNECTIONS: u32 = 32;
/// What every hello answers.
pub const HELLO: &str = "Hello from Isola!\n";

/// A workload: its name, path, wrk script, and what the body must hold.
pub struct Workload {
    pub name: &'static str,
    pub path: &'static str,
    pub script: Option<PathBuf>,
    pub expect: &'static str,
}

impl Workload {
    /// The Rust guest's hello.
    pub fn hello() -> Workload {
        Workload {
            name: "hello",
            path: "/",
            script: None,
            expect: HELLO,
        }
    }
}

/// Check `path` once by hand (status 200, body holds `expect`), then
/// load it.
pub fn measure(
    setup: &Setup,
    server: &Server,
    workload: &Workload,
    connections: u32,
    duration: Duration,
) -> LoadResult {
    measure_with_pss(setup, server, workload, connections, duration, false)
}

pub fn measure_with_pss(
    setup: &Setup,
    server: &Server,
    workload: &Workload,
    connections: u32,
    duration: Duration,
    sample_pss: bool,
) -> LoadResult {
    if workload.script.is_none() {
        let (status, text) = load::get(server.addr, workload.path).expect("probing the server");
        assert!(
            status == 200 && text.contains(workload.expect),
            "{} {} answered {status}: {text:.300}",
            server.addr,
            workload.path
        );
    }
    let mut load = setup.load(connections, duration);
    load.script = workload.script.as_deref();
    load.sample_pss = sample_pss;
    let result = load.run(server, workload.path);
    assert!(
        result.requests > 0,
        "no requests completed on {}",
        workload.path
    );
    result
}

/// A wrk script POSTing 10 KiB of JSON.
pub fn echo_script(work: &Path) -> PathBuf {
    let mut json = String::from("{\"items\":[");
    let mut i = 0;
    while json.len() < 10 * 1024 - 64 {
        if i > 0 {
            json.push(',');
        }
        write!(
            json,
            "{{\"id\":{i},\"name\":\"item-{i}\",\"tags\":[\"a\",\"b\"]}}"
        )
        .unwrap();
        i += 1;
    }
    json.push_str("]}");
    let script = work.join("echo.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"content-type\"] = \"application/json\"\nwrk.body = [==[{json}]==]\n"
        ),
    )
    .expect("writing the wrk script");
    script
}
