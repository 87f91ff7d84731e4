//! The example, run as a user would and as a library: the plugin's answer,
//! its own refusal, and the two limits as typed errors, with the host and
//! the plugin fine afterwards.

use isola_runtime::Limits;
use isola_runtime::plugin::CallError;
use plugin_host::Filters;

const LIMITS: Limits = Limits {
    cpu_ms: 50,
    wall_ms: 5_000,
    memory_mb: 16,
    subrequests: 0,
};

#[tokio::test]
async fn the_plugin_answers_and_each_limit_ends_only_its_own_call() {
    let state = tempfile::tempdir().unwrap();
    let component = isola_test_programs::PLUGIN_FILTER.as_ref();
    let filters = Filters::load(component, state.path(), LIMITS, &["heck", "darn"]).unwrap();

    let masked = filters.filter("well Heck that is darn good").await;
    assert_eq!(
        masked.unwrap(),
        Ok("well **** that is **** good".to_owned())
    );
    assert_eq!(
        filters.filter("").await.unwrap(),
        Err("nothing to filter".to_owned())
    );

    match filters.filter("spin").await {
        Err(CallError::CpuLimit { cpu_ms: 50 }) => {}
        other => panic!("expected the CPU limit, got {other:?}"),
    }
    match filters.filter("grow 64").await {
        Err(CallError::MemoryLimit { memory_mb: 16 }) => {}
        other => panic!("expected the memory limit, got {other:?}"),
    }
    // Within the limit, the same request works.
    assert_eq!(
        filters.filter("grow 4").await.unwrap(),
        Ok(format!("allocated {} bytes", 4 << 20))
    );
    // A failed call leaves nothing behind: the next one gets a fresh instance.
    assert_eq!(filters.filter("darn").await.unwrap(), Ok("****".to_owned()));
}

#[test]
fn the_example_program_prints_the_answer_and_both_limits() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_plugin-host"))
        .arg(isola_test_programs::PLUGIN_FILTER)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "\"well heck that is darn good\" -> \"well **** that is **** good\"",
            "\"spin\" -> ended: the plugin used up its CPU time (50 ms) (limit: cpu-limit)",
            "\"grow 64\" -> ended: the plugin asked for more memory than its limit (16 MiB) (limit: memory-limit)",
        ],
        "{stdout}"
    );
}
