//! A plugin for the `filter` world: masks the words the host says are
//! banned. Two inputs misbehave on purpose, so the host can show its
//! limits: `spin` loops forever, `grow <MiB>` allocates that much memory.

wit_bindgen::generate!({ path: "../../wit", world: "filter" });

struct Filter;

impl Guest for Filter {
    fn filter(input: String) -> Result<String, String> {
        if input == "spin" {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if let Some(mib) = input.strip_prefix("grow ") {
            let mib: usize = mib
                .trim()
                .parse()
                .map_err(|_| format!("not a size: {mib}"))?;
            let block = vec![1u8; mib << 20];
            return Ok(format!(
                "allocated {} bytes",
                std::hint::black_box(block).len()
            ));
        }
        if input.is_empty() {
            return Err("nothing to filter".into());
        }
        let masked: Vec<String> = input
            .split(' ')
            .map(|word| {
                if is_banned(word) {
                    "*".repeat(word.chars().count())
                } else {
                    word.to_owned()
                }
            })
            .collect();
        Ok(masked.join(" "))
    }
}

export!(Filter);
