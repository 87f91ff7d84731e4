//! Isola's benchmark, all of it in one run: Isola beside `wasmtime serve`
//! (fresh and reused instances), workerd and a native hyper server under
//! `wrk`; scaling and memory; Durable Objects (one hot object and 1,000,
//! Rust and JS, the JS beside workerd); start-up; per-request cost through
//! the embedding API; fuel's cost; and the targets, met or not; proxying
//! to a loopback origin (Rust beside `wasmtime serve`, JS beside workerd,
//! with the origin's connection count). Every ratio compares figures from
//! this one run.
//!
//! `bench/run` installs the peers and builds everything, then runs this:
//! `isola-bench [--duration SECS] [--quick] [--out bench/RESULTS.md]`.
//! Peers it cannot find (`WASMTIME_BIN`, `WORKERD_BIN` unset or missing)
//! are left out of the tables, and their targets say so.
//!
//! `BENCH_ONLY=durable` runs the Durable Objects section alone,
//! `BENCH_ONLY=proxy` the proxying one and `BENCH_ONLY=js-workloads` the
//! realistic JS workloads (Hono, an HTML render, HMAC): it prints it and
//! puts it into the `--out` file in place of that section's last version
//! (before "Start-up" if there is none), with a note of the command and
//! date; the rest of the file stays as it was.

use std::path::PathBuf;
use std::time::Duration;

use isola_bench::setup::{Setup, repo};

mod sections;

use sections::{
    durable, embedding, header, js, js_workloads, memory, proxy, scaling, side_by_side, startup,
    targets,
};

struct Options {
    duration: Duration,
    micro_requests: usize,
    out: PathBuf,
}

fn options() -> Options {
    let mut options = Options {
        duration: Duration::from_secs(10),
        micro_requests: 10_000,
        out: repo().join("bench/RESULTS.md"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--duration" => {
                let secs = args.next().and_then(|s| s.parse().ok());
                options.duration = Duration::from_secs(secs.expect("--duration SECS"));
            }
            "--quick" => {
                options.duration = Duration::from_secs(3);
                options.micro_requests = 2_000;
            }
            "--out" => options.out = PathBuf::from(args.next().expect("--out PATH")),
            other => panic!("unknown argument {other}; see the comment atop bench/src/main.rs"),
        }
    }
    options
}

fn main() {
    let options = options();
    match std::env::var("BENCH_ONLY").ok().as_deref() {
        None | Some("") => {}
        Some("durable") => return durable_only(&options),
        Some("proxy") => return proxy_only(&options),
        Some("js-workloads") => return js_workloads_only(&options),
        Some(other) => {
            panic!("BENCH_ONLY={other}: only `durable`, `proxy` and `js-workloads` run alone")
        }
    }
    let setup = Setup::prepare(true);
    let duration = options.duration;
    let mut doc = String::new();
    header::write(&setup, duration, &mut doc);
    let rust = side_by_side::run(&setup, duration, &mut doc);
    let js = js::run(&setup, duration, &mut doc);
    js_workloads::run(&setup, duration, None, &mut doc);
    scaling::run(&setup, duration, &mut doc);
    let memory = memory::run(&setup, duration, &mut doc);
    durable::run(&setup, duration, None, &mut doc);
    proxy::run(&setup, duration, None, &mut doc);
    let startup = startup::run(&setup, &mut doc);
    let embedding = embedding::run(&setup, options.micro_requests, &mut doc);
    targets::write(&rust, &js, &memory, &startup, &embedding, &mut doc);
    print!("{doc}");
    let previous = std::fs::read_to_string(&options.out).unwrap_or_default();
    // Keep any hand-written analysis below the generated part.
    let analysis = previous
        .find("\n## Analysis")
        .map_or(String::new(), |i| previous[i..].to_owned());
    std::fs::write(&options.out, format!("{doc}{analysis}")).expect("writing RESULTS.md");
    eprintln!("wrote {}", options.out.display());
}

/// `BENCH_ONLY=durable`: the Durable Objects section alone, spliced into
/// the `--out` file.
fn durable_only(options: &Options) {
    let setup = Setup::prepare(false);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = format!("BENCH_ONLY=durable isola-bench {}", args.join(" "));
    let note = durable::alone_note(&setup, command.trim_end(), options.duration);
    let mut section = String::new();
    durable::run(&setup, options.duration, Some(&note), &mut section);
    print!("{section}");
    let previous = std::fs::read_to_string(&options.out).unwrap_or_default();
    std::fs::write(
        &options.out,
        splice(&previous, "\n## Durable Objects", &section),
    )
    .expect("writing RESULTS.md");
    eprintln!(
        "wrote the Durable Objects section into {}",
        options.out.display()
    );
}

/// `BENCH_ONLY=proxy`: the proxying section alone, spliced into the
/// `--out` file.
fn proxy_only(options: &Options) {
    let setup = Setup::prepare(false);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = format!("BENCH_ONLY=proxy isola-bench {}", args.join(" "));
    let note = durable::alone_note(&setup, command.trim_end(), options.duration);
    let mut section = String::new();
    proxy::run(&setup, options.duration, Some(&note), &mut section);
    print!("{section}");
    let previous = std::fs::read_to_string(&options.out).unwrap_or_default();
    std::fs::write(&options.out, splice(&previous, "\n## Proxying", &section))
        .expect("writing RESULTS.md");
    eprintln!("wrote the proxying section into {}", options.out.display());
}

/// `BENCH_ONLY=js-workloads`: the realistic JS workloads alone, spliced
/// into the `--out` file.
fn js_workloads_only(options: &Options) {
    let setup = Setup::prepare(false);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = format!("BENCH_ONLY=js-workloads isola-bench {}", args.join(" "));
    let note = durable::alone_note(&setup, command.trim_end(), options.duration);
    let mut section = String::new();
    js_workloads::run(&setup, options.duration, Some(&note), &mut section);
    print!("{section}");
    let previous = std::fs::read_to_string(&options.out).unwrap_or_default();
    std::fs::write(
        &options.out,
        splice(&previous, "\n## JS workloads", &section),
    )
    .expect("writing RESULTS.md");
    eprintln!(
        "wrote the JS workloads section into {}",
        options.out.display()
    );
}

/// `doc` with `section` in place of its section whose heading starts with
/// `heading` (up to the next `## ` heading), or before its Start-up
/// section, Targets or Analysis, or at its end.
fn splice(doc: &str, heading: &str, section: &str) -> String {
    let next_heading = |from: usize| {
        doc[from..]
            .find("\n## ")
            .map_or(doc.len(), |i| from + i + 1)
    };
    let (start, end) = match doc.find(heading) {
        Some(i) => (i + 1, next_heading(i + 1)),
        None => {
            let at = ["\n## Start-up", "\n## Targets", "\n## Analysis"]
                .iter()
                .find_map(|heading| doc.find(heading))
                .map_or(doc.len(), |i| i + 1);
            (at, at)
        }
    };
    format!("{}{section}{}", &doc[..start], &doc[end..])
}

#[cfg(test)]
mod tests {
    use super::splice;

    #[test]
    fn a_lone_section_replaces_its_last_version_or_goes_before_start_up() {
        let doc = "# R\n\n## Memory\n\nm\n\n## Start-up\n\ns\n\n## Analysis\n\na\n";
        let first = splice(
            doc,
            "\n## Durable Objects",
            "## Durable Objects, 32 connections\n\nd1\n\n",
        );
        assert_eq!(
            first,
            "# R\n\n## Memory\n\nm\n\n## Durable Objects, 32 connections\n\nd1\n\n\
             ## Start-up\n\ns\n\n## Analysis\n\na\n"
        );
        let second = splice(
            &first,
            "\n## Durable Objects",
            "## Durable Objects, 32 connections\n\nd2\n\n",
        );
        assert_eq!(second, first.replace("d1", "d2"));
        assert_eq!(
            splice("", "\n## Durable Objects", "## Durable Objects\n"),
            "## Durable Objects\n"
        );
        // Another section goes before Start-up too, after the one there.
        let proxy = splice(&second, "\n## Proxying", "## Proxying\n\np\n\n");
        assert!(
            proxy.contains("d2\n\n## Proxying\n\np\n\n## Start-up"),
            "{proxy}"
        );
    }
}
