//! A `wasi:cli` command: a valid component, but not a worker, as it has no
//! `wasi:http/incoming-handler` export.

fn main() {
    println!("I am a command, not a worker");
}
