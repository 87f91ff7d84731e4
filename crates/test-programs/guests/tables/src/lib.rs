//! Calls through function tables, for the test of Isola's wasmtime change
//! that remembers function addresses across instances (vendor/README.md,
//! `tests/e2e/wasmtime_patch.rs`). Each of the 96 `OPS` is its own function
//! in the module's table, reached only by `call_indirect`; so are the trait
//! objects' methods and the boxed closures. A fresh instance initialises each
//! table entry the first time a call reaches it, so which entries a request
//! touches, and in what order, depends on its seed.
//!
//! `/?seed=N&steps=M`: copies the table of function pointers, shuffles the
//! copy and keeps swapping and overwriting its entries while it runs M
//! indirect calls chosen by the running value, then answers with the value,
//! a hash of the order the functions ran in, and the trait objects' and
//! closures' results. The same URL always gives the same answer.

use isola_sdk::{Ctx, Env, Request, Response, Result};

type Op = fn(u64) -> u64;

/// One distinct function per `N`.
#[inline(never)]
fn op<const N: u64>(x: u64) -> u64 {
    let mixed = (x ^ N.wrapping_mul(0x9E37_79B9_7F4A_7C15)).rotate_left((N % 61) as u32 + 1);
    mixed.wrapping_mul(2 * N + 1).wrapping_add(N)
}

macro_rules! ops {
    ($($n:literal)*) => { [$(op::<$n> as Op),*] };
}

static OPS: [Op; 96] = ops!(
    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23
    24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47
    48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71
    72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95
);

trait Shape {
    fn area(&self) -> u64;
    fn name(&self) -> &'static str;
}

struct Square(u64);
struct Rect(u64, u64);
struct Tri(u64, u64);
struct Ring(u64, u64);

impl Shape for Square {
    fn area(&self) -> u64 {
        self.0 * self.0
    }
    fn name(&self) -> &'static str {
        "square"
    }
}

impl Shape for Rect {
    fn area(&self) -> u64 {
        self.0 * self.1
    }
    fn name(&self) -> &'static str {
        "rect"
    }
}

impl Shape for Tri {
    fn area(&self) -> u64 {
        self.0 * self.1 / 2
    }
    fn name(&self) -> &'static str {
        "tri"
    }
}

impl Shape for Ring {
    fn area(&self) -> u64 {
        3 * (self.0 * self.0 - self.1 * self.1)
    }
    fn name(&self) -> &'static str {
        "ring"
    }
}

/// A small deterministic generator (64-bit LCG), so a seed names a run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 17
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn run(seed: u64, steps: u64) -> String {
    let mut rng = Lcg(seed ^ 0x5EED);
    let mut table: Vec<Op> = OPS.to_vec();
    for i in (1..table.len()).rev() {
        let j = rng.below(i + 1);
        table.swap(i, j);
    }
    let mut x = seed;
    let mut order = 0xCBF2_9CE4_8422_2325u64;
    for step in 0..steps {
        let slot = (x % table.len() as u64) as usize;
        x = std::hint::black_box(table[slot])(x ^ step);
        order = (order ^ slot as u64).wrapping_mul(0x0100_0000_01B3);
        match step % 7 {
            0 => {
                let (a, b) = (rng.below(table.len()), rng.below(table.len()));
                table.swap(a, b);
            }
            3 => table[rng.below(96)] = OPS[rng.below(OPS.len())],
            _ => {}
        }
    }

    let mut shapes: Vec<Box<dyn Shape>> = Vec::new();
    for _ in 0..8 {
        let (a, b) = (rng.next() % 50 + 10, rng.next() % 9 + 1);
        shapes.push(match rng.below(4) {
            0 => Box::new(Square(a)),
            1 => Box::new(Rect(a, b)),
            2 => Box::new(Tri(a, b)),
            _ => Box::new(Ring(a, b)),
        });
    }
    let areas: u64 = shapes.iter().map(|s| s.area()).sum();
    let names: Vec<&str> = shapes.iter().map(|s| s.name()).collect();

    let closures: Vec<Box<dyn Fn(u64) -> u64>> = (0..6u64)
        .map(|k| {
            let f = OPS[rng.below(OPS.len())];
            let by = rng.next() | 1;
            Box::new(move |v: u64| f(v.wrapping_mul(by)).wrapping_add(k)) as Box<dyn Fn(u64) -> u64>
        })
        .collect();
    let folded = closures.iter().fold(x, |v, f| f(v));

    format!(
        "seed={seed} x={x:016x} order={order:016x} areas={areas} shapes={} closures={folded:016x}\n",
        names.join(",")
    )
}

#[isola_sdk::fetch]
async fn fetch(req: Request, _env: Env, _ctx: Ctx) -> Result<Response> {
    let number = |name: &str, default: u64| {
        req.query_param(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    Ok(Response::text(run(number("seed", 0), number("steps", 500))))
}
