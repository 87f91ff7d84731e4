//! The compile cache's tests: entries, damage, identities, code reuse.

use super::reuse::differs_only_in_data;
use super::*;

const EMPTY_COMPONENT: &[u8] = b"(component)";

/// Damage `entry` so that wasmtime's own header checks still pass.
fn flip_middle_byte(entry: &Path) {
    let mut bytes = fs::read(entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(entry, &bytes).unwrap();
}

fn engine() -> Engine {
    Engine::new(&crate::engine_config(&crate::EngineOptions::new("unused"))).unwrap()
}

#[test]
fn entry_name_is_digest_and_engine_hash() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let cache = CompileCache::open(&engine, dir.path()).unwrap();
    let name = cache.entry_path(EMPTY_COMPONENT);
    let name = name.file_name().unwrap().to_str().unwrap();
    let (digest, rest) = name.split_once('-').unwrap();
    assert_eq!(digest, sha256_hex(EMPTY_COMPONENT));
    assert_eq!(rest, format!("{}.cwasm", engine_hash(&engine)));
    assert_eq!(engine_hash(&engine), engine_hash(&self::engine()));
}

#[test]
fn compiles_once_then_loads_from_memory_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let cache = CompileCache::open(&engine, dir.path()).unwrap();
    let path = Path::new("empty.wat");
    assert_eq!(
        cache.load(&engine, path, EMPTY_COMPONENT).unwrap().outcome,
        CacheOutcome::Compiled
    );
    assert_eq!(
        cache.load(&engine, path, EMPTY_COMPONENT).unwrap().outcome,
        CacheOutcome::Memory
    );
    assert!(cache.entry_path(EMPTY_COMPONENT).exists());

    let fresh = CompileCache::open(&engine, dir.path()).unwrap();
    assert_eq!(
        fresh.load(&engine, path, EMPTY_COMPONENT).unwrap().outcome,
        CacheOutcome::Disk
    );
}

#[test]
fn damaged_entries_are_discarded_and_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let path = Path::new("empty.wat");
    CompileCache::open(&engine, dir.path())
        .unwrap()
        .load(&engine, path, EMPTY_COMPONENT)
        .unwrap();
    let entry = CompileCache::open(&engine, dir.path())
        .unwrap()
        .entry_path(EMPTY_COMPONENT);

    // A flipped byte in the middle: wasmtime's own header checks pass.
    flip_middle_byte(&entry);
    let cache = CompileCache::open(&engine, dir.path()).unwrap();
    assert_eq!(
        cache.load(&engine, path, EMPTY_COMPONENT).unwrap().outcome,
        CacheOutcome::Compiled
    );
    assert_eq!(cache.stats().discarded, 1);

    // Truncated, and then missing its checksum.
    let len = fs::metadata(&entry).unwrap().len();
    fs::File::options()
        .write(true)
        .open(&entry)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let cache = CompileCache::open(&engine, dir.path()).unwrap();
    assert_eq!(
        cache.load(&engine, path, EMPTY_COMPONENT).unwrap().outcome,
        CacheOutcome::Compiled
    );
    fs::remove_file(checksum_path(&entry)).unwrap();
    let cache = CompileCache::open(&engine, dir.path()).unwrap();
    assert_eq!(
        cache.load(&engine, path, EMPTY_COMPONENT).unwrap().outcome,
        CacheOutcome::Compiled
    );
    assert_eq!(
        CompileCache::open(&engine, dir.path())
            .unwrap()
            .load(&engine, path, EMPTY_COMPONENT)
            .unwrap()
            .outcome,
        CacheOutcome::Disk
    );
}

#[test]
fn warm_loads_find_a_settled_file_by_its_identity_and_notice_changes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let cache_dir = dir.path().join("cache");
    let open = || CompileCache {
        settle: Duration::ZERO,
        ..CompileCache::open(&engine, &cache_dir).unwrap()
    };
    let file = dir.path().join("worker.wat");
    fs::write(&file, EMPTY_COMPONENT).unwrap();
    let first = open();
    let loaded = first.load_file(&engine, file.clone()).unwrap();
    assert_eq!(loaded.outcome, CacheOutcome::Compiled);
    assert_eq!(first.stats().remembered_digests, 0);

    // Found by identity: not read, not hashed.
    let warm = open();
    let loaded = warm.load_file(&engine, file.clone()).unwrap();
    assert_eq!(
        (loaded.outcome, loaded.digest),
        (CacheOutcome::Disk, sha256_hex(EMPTY_COMPONENT))
    );
    assert_eq!(warm.stats().remembered_digests, 1);

    // A damaged entry found through the remembered digest is still
    // discarded, and the file read and compiled again.
    let entry = warm.entry_path(EMPTY_COMPONENT);
    flip_middle_byte(&entry);
    let repaired = open();
    let loaded = repaired.load_file(&engine, file.clone()).unwrap();
    assert_eq!(loaded.outcome, CacheOutcome::Compiled);
    assert_eq!(
        (
            repaired.stats().discarded,
            repaired.stats().remembered_digests
        ),
        (1, 0)
    );

    // New content: the identity no longer matches, so the file is read.
    let other: &[u8] = b"(component (core module))";
    fs::write(&file, other).unwrap();
    let changed = open();
    let loaded = changed.load_file(&engine, file.clone()).unwrap();
    assert_eq!(
        (loaded.outcome, loaded.digest),
        (CacheOutcome::Compiled, sha256_hex(other))
    );
    assert_eq!(changed.stats().remembered_digests, 0);

    // A file changed a moment ago is hashed every time until it settles.
    let cautious = || CompileCache::open(&engine, &dir.path().join("cautious")).unwrap();
    cautious().load_file(&engine, file.clone()).unwrap();
    let again = cautious();
    assert_eq!(
        again.load_file(&engine, file.clone()).unwrap().outcome,
        CacheOutcome::Disk
    );
    assert_eq!(again.stats().remembered_digests, 0);
}

#[test]
fn refuses_what_is_not_webassembly() {
    let path = Path::new("x.wasm");
    assert!(matches!(
        check_is_wasm(path, b"#!/bin/sh\necho hi\n"),
        Err(EngineError::NotWasm { .. })
    ));
    assert!(check_is_wasm(path, EMPTY_COMPONENT).is_ok());
    // Core modules are adapted when compiled.
    assert!(check_is_wasm(path, b"\0asm\x01\0\0\0").is_ok());
}

/// A component of two core modules, each with a memory, a data segment
/// and functions (one called through a table), differing between
/// calls only in `data_a` (whose length moves module `b`'s code) and
/// `data_b`; `extra` adds a function to `b`.
fn two_module_component(data_a: &str, data_b: &str, extra: bool) -> Vec<u8> {
    let extra = if extra {
        "(func (export \"extra\"))"
    } else {
        ""
    };
    wat::parse_str(format!(
        r#"(component
          (core module $a
            (memory (export "memory") 1)
            (type $t (func (result i32)))
            (table 2 funcref)
            (elem (i32.const 0) $one $two)
            (data (i32.const 16) "{data_a}")
            (func $one (result i32) i32.const 16 i32.load)
            (func $two (result i32) i32.const 20 i32.load)
            (func (export "get") (result i32)
              (call_indirect (type $t) (i32.const 0))
              (call_indirect (type $t) (i32.const 1))
              i32.add)
            (func (export "boom") unreachable))
          (core module $b
            (memory 1)
            (data (i32.const 0) "{data_b}")
            (func (export "get") (result i32) i32.const 0 i32.load)
            (func (export "boom") (call $deeper))
            (func $deeper unreachable)
            {extra})
          (core instance $ia (instantiate $a))
          (core instance $ib (instantiate $b))
          (func (export "a") (result u32) (canon lift (core func $ia "get")))
          (func (export "b") (result u32) (canon lift (core func $ib "get")))
          (func (export "boom-b") (canon lift (core func $ib "boom"))))"#
    ))
    .unwrap()
}

fn le(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[..4].try_into().unwrap())
}

/// The ELF sections of an artifact, by name, in order.
fn sections(artifact: &[u8]) -> Vec<(String, Vec<u8>)> {
    use object::{Object as _, ObjectSection as _};
    let elf = object::read::elf::ElfFile64::<object::Endianness>::parse(artifact).unwrap();
    elf.sections()
        .map(|s| (s.name().unwrap().to_owned(), s.data().unwrap().to_vec()))
        .collect()
}

fn call(engine: &Engine, artifact: &[u8], export: &str) -> Result<u32, String> {
    // SAFETY: made by this engine's precompile functions in this test.
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize(engine, artifact) }.unwrap();
    let linker = wasmtime::component::Linker::<()>::new(engine);
    let mut store = wasmtime::Store::new(engine, ());
    store.set_fuel(u64::MAX).unwrap();
    store.set_epoch_deadline(u64::MAX / 2);
    let instance = linker.instantiate(&mut store, &component).unwrap();
    if export == "boom-b" {
        let f = instance
            .get_typed_func::<(), ()>(&mut store, export)
            .unwrap();
        let trap = f.call(&mut store, ()).unwrap_err();
        let frames = trap.downcast_ref::<wasmtime::WasmBacktrace>().unwrap();
        return Err(format!("{frames}"));
    }
    let f = instance
        .get_typed_func::<(), (u32,)>(&mut store, export)
        .unwrap();
    Ok(f.call(&mut store, ()).unwrap().0)
}

#[test]
fn an_artifact_made_from_anothers_code_is_the_one_compiled() {
    let engine = engine();
    let old = two_module_component("abcdefgh", "wxyz", false);
    // Longer data in `a`: `b`'s code moves; other data in `b`.
    let new = two_module_component("ABCDEFGHijklmnopqrstuvwxyz0123456789", "WXYZ", false);
    assert!(differs_only_in_data(&old, &new));
    let base = engine.precompile_component(&old).unwrap();
    let fresh = engine.precompile_component(&new).unwrap();
    let reused = engine
        .precompile_component_reusing_code(&new, &base)
        .unwrap();
    let (fresh_sections, reused_sections) = (sections(&fresh), sections(&reused));
    let names = |s: &[(String, Vec<u8>)]| s.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&fresh_sections), names(&reused_sections));
    for ((name, fresh), (_, reused)) in fresh_sections.iter().zip(&reused_sections) {
        assert!(fresh == reused, "section {name} differs");
    }
    assert!(
        fresh == reused,
        "the artifacts differ outside their sections"
    );

    assert_eq!(call(&engine, &reused, "a"), Ok(le(b"ABCD") + le(b"EFGH")));
    assert_eq!(call(&engine, &reused, "b"), Ok(le(b"WXYZ")));
    assert_eq!(call(&engine, &base, "a"), Ok(le(b"abcd") + le(b"efgh")));
    // The trap's frames as a fresh compile gives them.
    let trap = call(&engine, &reused, "boom-b").unwrap_err();
    assert!(trap.contains("b!deeper"), "{trap}");
    assert_eq!(trap, call(&engine, &fresh, "boom-b").unwrap_err());

    // Nothing moved: the same, too.
    let same_length = two_module_component("ABCDEFGH", "WXYZ", false);
    let reused = engine
        .precompile_component_reusing_code(&same_length, &base)
        .unwrap();
    assert!(reused == engine.precompile_component(&same_length).unwrap());
}

#[test]
fn code_is_reused_only_when_data_alone_differs() {
    let engine = engine();
    let old = two_module_component("abcdefgh", "wxyz", false);
    let base = engine.precompile_component(&old).unwrap();
    // Another function: refused by the check and by wasmtime.
    let extra = two_module_component("abcdefgh", "wxyz", true);
    assert!(!differs_only_in_data(&old, &extra));
    assert!(
        engine
            .precompile_component_reusing_code(&extra, &base)
            .is_err()
    );
    // Other code, same shape: refused by the check.
    let mut changed = old.clone();
    let at = changed
        .windows(3)
        .position(|w| w == [0x41, 0x10, 0x28]) // i32.const 16; i32.load
        .unwrap();
    changed[at + 1] = 0x11;
    assert!(!differs_only_in_data(&old, &changed));
    // Identical binaries, text, core modules and garbage are not it.
    assert!(!differs_only_in_data(&old, &old));
    assert!(!differs_only_in_data(EMPTY_COMPONENT, EMPTY_COMPONENT));
    assert!(!differs_only_in_data(&old, b"\0asm\x01\0\0\0"));
    assert!(!differs_only_in_data(&old, &old[..old.len() / 2]));
    // Not an artifact.
    assert!(
        engine
            .precompile_component_reusing_code(&old, b"nope")
            .is_err()
    );
}

#[test]
fn the_cache_reuses_a_paths_last_code_when_data_alone_changed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let mut cache = CompileCache::open(&engine, dir.path()).unwrap();
    cache.reuse_code(true);
    let path = Path::new("worker.wasm");
    let old = two_module_component("abcdefgh", "wxyz", false);
    let new = two_module_component("ABCDEFGHIJ", "WXYZ", false);
    let extra = two_module_component("abcdefgh", "wxyz", true);
    assert_eq!(
        cache.load(&engine, path, &old).unwrap().outcome,
        CacheOutcome::Compiled
    );
    assert_eq!(cache.stats().reused_code, 0);
    assert_eq!(
        cache.load(&engine, path, &new).unwrap().outcome,
        CacheOutcome::Compiled
    );
    assert_eq!(cache.stats().reused_code, 1);
    assert!(
        fs::read(cache.entry_path(&new)).unwrap() == engine.precompile_component(&new).unwrap()
    );
    // Code changed: compiled.
    cache.load(&engine, path, &extra).unwrap();
    assert_eq!((cache.stats().compiled, cache.stats().reused_code), (3, 1));
    // Another path's last component is not this one's.
    let other = two_module_component("0123", "wxyz", false);
    cache
        .load(&engine, Path::new("other.wasm"), &other)
        .unwrap();
    assert_eq!(cache.stats().reused_code, 1);
    // A damaged last entry: compiled.
    flip_middle_byte(&cache.entry_path(&other));
    let again = two_module_component("01234", "wxyz", false);
    cache
        .load(&engine, Path::new("other.wasm"), &again)
        .unwrap();
    assert_eq!(cache.stats().reused_code, 1);

    // Without the option nothing is reused.
    let plain = CompileCache::open(&engine, &dir.path().join("plain")).unwrap();
    plain.load(&engine, path, &old).unwrap();
    plain.load(&engine, path, &new).unwrap();
    assert_eq!(plain.stats().reused_code, 0);
}
