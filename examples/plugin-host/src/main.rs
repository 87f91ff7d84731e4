//! `plugin-host <filter.wasm> [text...]`: filter each text with the plugin,
//! then show the two limits at work (`spin` burns CPU, `grow 64` asks for
//! 64 MiB). Build the plugin with
//! `cargo build --release --target wasm32-wasip2 --manifest-path examples/plugin-host/guests/Cargo.toml`.

use anyhow::Context;
use isola_runtime::Limits;
use plugin_host::Filters;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let component = args
        .next()
        .context("usage: plugin-host <filter.wasm> [text...]")?;
    let mut inputs: Vec<String> = args.collect();
    if inputs.is_empty() {
        inputs.push("well heck that is darn good".into());
    }
    inputs.extend(["spin".into(), "grow 64".into()]);

    let state = std::env::temp_dir().join("isola-plugin-host");
    let limits = Limits {
        cpu_ms: 50,
        wall_ms: 1_000,
        memory_mb: 16,
        subrequests: 0,
    };
    let filters = Filters::load(component.as_ref(), &state, limits, &["heck", "darn"])?;
    for input in &inputs {
        match filters.filter(input).await {
            Ok(Ok(text)) => println!("{input:?} -> {text:?}"),
            Ok(Err(refusal)) => println!("{input:?} -> refused: {refusal}"),
            Err(error) => {
                let limit = error.limit().map_or("none", |l| l.as_str());
                println!("{input:?} -> ended: {error} (limit: {limit})");
            }
        }
    }
    Ok(())
}
