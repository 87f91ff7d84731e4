//! Isola: a component's artifact made from another's compiled code
//! (`Engine::precompile_component_reusing_code`). See Isola's
//! `vendor/README.md`, change 5.
//!
//! The new component must differ from the base one only in the contents of
//! its core modules' data sections (the caller checks that on the bytes).
//! Its machine code is then the base's: translation and validation run as
//! in `build_component_artifacts`, no function is compiled, and the
//! artifact is the base's code-derived sections (`.text`, `.eh_frame`, the
//! address, trap, stack-map and exception tables) copied in the base's
//! order, followed by what `ObjectBuilder` writes from the new translation
//! (the modules' data in `.rodata.wasm`, names, DWARF, `.wasmtime.info`).
//!
//! One thing in the code-derived sections depends on where things are in
//! the binary rather than on the code: source positions (`FilePos`) are
//! offsets in the component binary, so a data section that changed length
//! moves every later module's functions. Those positions (in
//! `.wasmtime.addrmap` and in the function table's start positions) are
//! shifted by how far their module's code section moved. Everything else
//! is checked to agree (types, component info, function and trampoline
//! counts), and any disagreement is an error, never a wrong artifact.

use crate::Engine;
use crate::prelude::*;
use object::write::{StandardSegment, Symbol, SymbolSection};
use object::{
    Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind, SymbolFlags, SymbolKind,
    SymbolScope,
};
use serde_derive::{Deserialize, Serialize};
use std::ops::Range;
use wasmtime_environ::component::{
    CompiledComponentInfo, ComponentArtifacts, ComponentTypesBuilder, Translator,
};
use wasmtime_environ::{
    CompiledFunctionsTable, FilePos, FinishedObject, FuncKey, FunctionLoc, Inlining, ObjectKind,
    PrimaryMap, ScopeVec, StaticModuleIndex, WasmChecksum, obj,
};

/// The sections `precompile_component_reusing_code` writes itself, after the
/// copied ones (besides the ELF string and symbol tables).
const REWRITTEN_AFTER_CODE: &[&str] = &[
    obj::ELF_WASM_DATA,
    obj::ELF_NAME_DATA,
    obj::ELF_WASMTIME_DWARF,
    obj::ELF_WASMTIME_INFO,
    ".symtab",
    ".strtab",
    ".shstrtab",
];

pub(crate) fn build_component_artifact_reusing_code(
    engine: &Engine,
    binary: &[u8],
    base_artifact: &[u8],
) -> Result<Vec<u8>> {
    let compiler = engine.try_compiler()?;
    let tunables = engine.tunables();
    if tunables.debug_native || tunables.debug_guest {
        bail!("reusing code is not supported with native or guest debugging");
    }
    if !matches!(tunables.inlining, Inlining::No) {
        bail!("reusing code is not supported with inlining");
    }

    // Translate the new component as `build_component_artifacts` does.
    let scope = ScopeVec::new();
    let mut validator = wasmparser::Validator::new_with_features(engine.features());
    let mut types = ComponentTypesBuilder::new(&validator);
    let translator = Translator::new(tunables, &mut validator, &mut types, &scope);
    let (component, mut module_translations) = translator
        .translate(binary)
        .context("failed to parse WebAssembly module")?;
    for (_, translation) in module_translations.iter_mut() {
        super::prepare_translation(
            engine,
            compiler,
            translation,
            types.module_types_builder_mut(),
        );
    }

    // The base artifact and what it was made from.
    let base = object::read::elf::ElfFile64::<object::Endianness>::parse(base_artifact)
        .map_err(obj::ObjectCrateErrorWrapper)
        .context("the base artifact is not an ELF file")?;
    let section_data = |name: &str| -> Result<&[u8]> {
        let section = base
            .section_by_name(name)
            .ok_or_else(|| format_err!("the base artifact has no `{name}` section"))?;
        section
            .data()
            .map_err(obj::ObjectCrateErrorWrapper)
            .with_context(|| format!("the base artifact's `{name}` section"))
    };
    let base_info: ComponentArtifacts = postcard::from_bytes(section_data(obj::ELF_WASMTIME_INFO)?)
        .context("the base artifact's component information")?;

    if base_info.static_modules.len() != module_translations.len() {
        bail!(
            "the base has {} core modules, the component {}",
            base_info.static_modules.len(),
            module_translations.len()
        );
    }
    if base_info.info.component.trampolines.len() != component.component.trampolines.len() {
        bail!("the base and the component have different trampolines");
    }

    // How far each module's code moved, and where its functions' bodies
    // were in the base binary.
    let mut moved = PrimaryMap::<StaticModuleIndex, (i64, Range<u64>)>::new();
    for ((_, translation), (_, base_module)) in module_translations
        .iter()
        .zip(base_info.static_modules.iter())
    {
        let new = &translation.module;
        let old = &base_module.module;
        if new.functions.len() != old.functions.len()
            || new.num_imported_funcs != old.num_imported_funcs
            || new.num_escaped_funcs != old.num_escaped_funcs
            || translation.function_body_inputs.len() != new.num_defined_funcs()
        {
            bail!("a core module's functions differ from the base's");
        }
        let delta = i64::try_from(translation.debuginfo.wasm_file.code_section_offset)?
            - i64::try_from(base_module.meta.code_section_offset)?;
        let bodies = translation
            .function_body_inputs
            .values()
            .map(|f| f.body.range())
            .fold(None, |acc: Option<Range<usize>>, r| match acc {
                None => Some(r),
                Some(acc) => Some(acc.start.min(r.start)..acc.end.max(r.end)),
            })
            .unwrap_or(0..0);
        let old_start = i64::try_from(bodies.start)? - delta;
        let old_end = i64::try_from(bodies.end)? - delta;
        let old_bodies = u64::try_from(old_start)?..u64::try_from(old_end)?;
        moved.push((delta, old_bodies));
    }
    // The position `pos` of the base, in module `module`'s code, in the new
    // binary.
    let shift = |module: StaticModuleIndex, pos: u32| -> Result<u32> {
        let (delta, old_bodies) = moved
            .get(module)
            .ok_or_else(|| format_err!("no module {module:?}"))?;
        let pos64 = u64::from(pos);
        if pos64 < old_bodies.start || pos64 > old_bodies.end {
            bail!("a source position of the base lies outside its module's code");
        }
        Ok(u32::try_from(i64::from(pos) + delta)?)
    };
    let any_moved = moved.values().any(|(delta, _)| *delta != 0);

    let mut object = compiler.object(ObjectKind::Component)?;
    engine.append_compiler_info(&mut object)?;
    engine.append_bti(&mut object);
    // The code-derived sections: everything between `.wasmtime.bti` and
    // `.rodata.wasm`, as they were.
    let names = base
        .sections()
        .map(|s| s.name().map_err(obj::ObjectCrateErrorWrapper))
        .collect::<Result<Vec<_>, _>>()?;
    let bti = names.iter().position(|n| *n == obj::ELF_WASM_BTI);
    let data = names.iter().position(|n| *n == obj::ELF_WASM_DATA);
    let (Some(bti), Some(data)) = (bti, data) else {
        bail!("the base artifact's sections are not laid out as expected");
    };
    if bti > data
        || names[..bti]
            .iter()
            .any(|n| !n.is_empty() && *n != obj::ELF_WASM_ENGINE)
        || names[data..]
            .iter()
            .any(|n| !REWRITTEN_AFTER_CODE.contains(n))
    {
        bail!("the base artifact's sections are not laid out as expected");
    }
    let mut text = None;
    for section in base.sections().skip(bti + 1).take(data - bti - 1) {
        let name = section.name().map_err(obj::ObjectCrateErrorWrapper)?;
        if section.relocations().next().is_some() {
            bail!("the base artifact's `{name}` section has relocations");
        }
        let (segment, kind) = match section.kind() {
            SectionKind::Text => (StandardSegment::Text, SectionKind::Text),
            SectionKind::ReadOnlyData => (StandardSegment::Data, SectionKind::ReadOnlyData),
            kind => bail!("the base artifact's `{name}` section is of kind {kind:?}"),
        };
        let mut contents = section.data().map_err(obj::ObjectCrateErrorWrapper)?;
        let patched;
        if name == obj::ELF_WASMTIME_ADDRMAP && any_moved {
            patched = shift_address_map(contents, |text_offset, pos| {
                match base_info.table.func_by_text_offset(text_offset) {
                    Some(FuncKey::DefinedWasmFunction(module, _)) => shift(module, pos),
                    _ => bail!("a source position of the base is outside a wasm function"),
                }
            })?;
            contents = &patched;
        }
        let id = object.add_section(
            object.segment_name(segment).to_vec(),
            name.as_bytes().to_vec(),
            kind,
        );
        if let object::SectionFlags::Elf { sh_flags } = section.flags()
            && sh_flags & obj::SH_WASMTIME_NOT_EXECUTED != 0
        {
            object.section_mut(id).flags = object::SectionFlags::Elf { sh_flags };
        }
        object.append_section_data(id, contents, section.align());
        if name == ".text" {
            text = Some((section.index(), id));
        }
    }
    let Some((base_text, text)) = text else {
        bail!("the base artifact has no `.text` section");
    };
    // The functions' symbols (for profilers; loading does not use them).
    for symbol in base.symbols() {
        if symbol.section_index() != Some(base_text) {
            bail!("the base artifact has a symbol outside `.text`");
        }
        object.add_symbol(Symbol {
            name: symbol
                .name_bytes()
                .map_err(obj::ObjectCrateErrorWrapper)?
                .to_vec(),
            value: symbol.address(),
            size: symbol.size(),
            kind: SymbolKind::Text,
            scope: SymbolScope::Compilation,
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        });
    }

    // The new modules' data, names and debug information.
    let mut object = wasmtime_environ::ObjectBuilder::new(object, tunables);
    let mut static_modules = PrimaryMap::new();
    for ((_, translation), (_, base_module)) in module_translations
        .into_iter()
        .zip(base_info.static_modules.iter())
    {
        let mut info = object.append(translation)?;
        info.module.needs_gc_heap |= base_module.module.needs_gc_heap;
        static_modules.push(info);
    }

    let (types, ty) = types.finish(&component.component);
    let info = CompiledComponentInfo {
        component: component.component,
    };
    if ty != base_info.ty
        || postcard::to_allocvec(&types)? != postcard::to_allocvec(&base_info.types)?
        || postcard::to_allocvec(&info)? != postcard::to_allocvec(&base_info.info)?
    {
        bail!("the component's types or structure differ from the base's");
    }
    let table = if any_moved {
        shift_start_positions(base_info.table, |key, pos| match key {
            FuncKey::DefinedWasmFunction(module, _) => shift(module, pos),
            _ => bail!("a source position of the base is outside a wasm function"),
        })?
    } else {
        base_info.table
    };
    let artifacts = ComponentArtifacts {
        info,
        table,
        ty,
        types,
        static_modules,
        checksum: WasmChecksum::from_binary(binary, tunables.recording),
    };
    object.serialize_info(&artifacts);
    let artifact = <Vec<u8> as FinishedObject>::finish_object(object, &())?;

    // Made by this engine, with these settings?
    let ours = object::read::elf::ElfFile64::<object::Endianness>::parse(&artifact[..])
        .map_err(obj::ObjectCrateErrorWrapper)?;
    for name in [obj::ELF_WASM_ENGINE, obj::ELF_WASM_BTI] {
        let data = ours
            .section_by_name(name)
            .and_then(|s| s.data().ok())
            .ok_or_else(|| format_err!("no `{name}` section written"))?;
        if data != section_data(name)? {
            bail!("the base artifact was made by a different engine or configuration");
        }
    }
    Ok(artifact)
}

/// The address map section `section` (see wasmtime-environ's
/// `AddressMapSection` for its format) with each position `pos` of an entry
/// at `text_offset` replaced by `shift(text_offset, pos)`; the same entries
/// in the same blocks.
fn shift_address_map(
    section: &[u8],
    mut shift: impl FnMut(u32, u32) -> Result<u32>,
) -> Result<Vec<u8>> {
    use wasmtime_environ::bytes::{read_sleb, read_uleb, write_sleb, write_uleb};
    const BLOCK_SIZE: usize = 128;
    let malformed = || format_err!("malformed address map");
    let word = |at: usize| -> Result<u32> {
        let bytes = section.get(at..at + 4).ok_or_else(malformed)?;
        Ok(u32::from_le_bytes(bytes.try_into().unwrap()))
    };
    let entries = usize::try_from(word(0)?)?;
    let blocks = usize::try_from(word(4)?)?;
    if blocks != entries.div_ceil(BLOCK_SIZE) {
        return Err(malformed());
    }
    let bodies_at = 8 + blocks * 8;
    let bodies = section.get(bodies_at..).ok_or_else(malformed)?;

    let mut index = Vec::with_capacity(blocks * 8);
    let mut new_bodies = Vec::with_capacity(bodies.len());
    for block in 0..blocks {
        let first_offset = word(8 + block * 8)?;
        let block_pos = usize::try_from(word(8 + block * 8 + 4)?)?;
        index.extend_from_slice(&first_offset.to_le_bytes());
        index.extend_from_slice(&u32::try_from(new_bodies.len())?.to_le_bytes());
        let mut body = bodies.get(block_pos..).ok_or_else(malformed)?;
        let count = BLOCK_SIZE.min(entries - block * BLOCK_SIZE);
        let mut offset = first_offset;
        let (mut prev_old, mut prev_new) = (None::<u32>, None::<u32>);
        for _ in 0..count {
            let token = read_uleb(&mut body).ok_or_else(malformed)?;
            offset = offset
                .checked_add(u32::try_from(token >> 1)?)
                .ok_or_else(malformed)?;
            write_uleb(&mut new_bodies, token);
            if token & 1 != 0 {
                continue;
            }
            let old = match prev_old {
                None => u32::try_from(read_uleb(&mut body).ok_or_else(malformed)?)?,
                Some(prev) => {
                    let delta = i32::try_from(read_sleb(&mut body).ok_or_else(malformed)?)?;
                    prev.checked_add_signed(delta).ok_or_else(malformed)?
                }
            };
            let new = shift(offset, old)?;
            match prev_new {
                None => write_uleb(&mut new_bodies, u64::from(new)),
                Some(prev) => write_sleb(&mut new_bodies, i64::from(new) - i64::from(prev)),
            }
            prev_old = Some(old);
            prev_new = Some(new);
        }
    }
    let mut out = Vec::with_capacity(8 + index.len() + new_bodies.len());
    out.extend_from_slice(&section[..8]);
    out.extend_from_slice(&index);
    out.extend_from_slice(&new_bodies);
    Ok(out)
}

/// `CompiledFunctionsTable`'s fields, in order, as postcard encodes them
/// (its fields are private). `shift_start_positions` checks that a table
/// goes through it unchanged before it changes anything.
#[derive(Serialize, Deserialize)]
struct TableParts {
    namespaces: Vec<u32>,
    func_loc_starts: Vec<u32>,
    sparse_starts: Vec<u32>,
    src_loc_starts: Vec<u32>,
    sparse_indices: Vec<u32>,
    func_locs: Vec<FunctionLoc>,
    src_locs: Vec<FilePos>,
}

/// `table` with each function's start position `pos` replaced by
/// `shift(key, pos)`.
fn shift_start_positions(
    table: CompiledFunctionsTable,
    mut shift: impl FnMut(FuncKey, u32) -> Result<u32>,
) -> Result<CompiledFunctionsTable> {
    let bytes = postcard::to_allocvec(&table)?;
    let mut parts: TableParts = postcard::from_bytes(&bytes)?;
    if postcard::to_allocvec(&parts)? != bytes
        || parts.src_loc_starts.len() != parts.namespaces.len()
    {
        bail!("the function table's layout is not the one expected");
    }
    for (ns, namespace) in parts.namespaces.iter().enumerate() {
        let start = usize::try_from(parts.src_loc_starts[ns])?;
        let end = match parts.src_loc_starts.get(ns + 1) {
            Some(end) => usize::try_from(*end)?,
            None => parts.src_locs.len(),
        };
        let locs = parts
            .src_locs
            .get_mut(start..end)
            .ok_or_else(|| format_err!("the function table is malformed"))?;
        for (i, loc) in locs.iter_mut().enumerate() {
            let Some(pos) = loc.file_offset() else {
                continue;
            };
            let key = FuncKey::from_raw_parts(*namespace, u32::try_from(i)?);
            *loc = FilePos::new(shift(key, pos)?);
        }
    }
    Ok(postcard::from_bytes(&postcard::to_allocvec(&parts)?)?)
}
