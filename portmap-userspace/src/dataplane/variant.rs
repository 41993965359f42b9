//! Program variants, for upgrade tests: the same object whose code differs
//! from the build's, so that a test can swap in a program that is really
//! another program (another instruction stream, another tag), as an upgrade
//! does, not the same bytecode with other data.
//!
//! The variant's code has the `PROGRAM_VARIANT` test hard-wired: each load
//! of that global (`rX = *(u32 *)(rX + 0)` right after the `ld_imm64` that
//! takes its address) becomes `rX = 1`. The variant therefore counts
//! `variant_translated` on every translated request, whatever the global
//! holds, and its maps are the build's own.

use anyhow::{Context as _, Result, anyhow, ensure};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionKind};

/// The global whose loads the variant replaces.
const VARIANT_GLOBAL: &str = "PROGRAM_VARIANT";

/// BPF opcodes.
const LD_IMM64: u8 = 0x18;
const LDX_W: u8 = 0x61;
const MOV64_IMM: u8 = 0xb7;

/// `object` with the loads of `PROGRAM_VARIANT` in its code replaced by the
/// constant 1. Fails if the code has no such load (the eBPF side changed how
/// it reads the global), rather than loading an unchanged program.
pub fn code_variant(object: &[u8]) -> Result<Vec<u8>> {
    let file = object::File::parse(object).context("parsing the eBPF object")?;
    let global = file
        .symbols()
        .find(|s| s.name() == Ok(VARIANT_GLOBAL))
        .with_context(|| format!("the eBPF object has no {VARIANT_GLOBAL}"))?
        .index();
    let mut out = object.to_vec();
    let mut patched = 0;
    for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
        let Some((start, _)) = section.file_range() else {
            continue;
        };
        let data = section.data().context("reading a code section")?;
        for (at, reloc) in section.relocations() {
            if reloc.target() != RelocationTarget::Symbol(global) {
                continue;
            }
            let at = usize::try_from(at)?;
            // ld_imm64 takes two instruction slots; the load follows.
            let (Some(ld), Some(load)) = (data.get(at..at + 8), data.get(at + 16..at + 24)) else {
                continue;
            };
            let dst = ld[1] & 0x0f;
            let loads_it = ld[0] == LD_IMM64
                && load[0] == LDX_W
                && load[1] == dst | (dst << 4)
                && load[2..8] == [0; 6];
            if !loads_it {
                continue;
            }
            let file_at = usize::try_from(start)? + at + 16;
            let slot = out
                .get_mut(file_at..file_at + 8)
                .ok_or_else(|| anyhow!("a code section lies outside the object"))?;
            slot.copy_from_slice(&[MOV64_IMM, dst, 0, 0, 1, 0, 0, 0]);
            patched += 1;
        }
    }
    ensure!(
        patched > 0,
        "no load of {VARIANT_GLOBAL} found in the eBPF code: the upgrade-test variant cannot be built"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variant_changes_code_and_nothing_else() {
        let original = crate::dataplane::ebpf_object();
        let variant = code_variant(original).expect("a variant");
        assert_eq!(variant.len(), original.len());
        let changed: Vec<usize> = (0..original.len())
            .filter(|&i| original[i] != variant[i])
            .collect();
        assert!(!changed.is_empty(), "the variant is the build itself");
        // Only code sections changed.
        let file = object::File::parse(original).expect("parses");
        for i in changed {
            let section = file
                .sections()
                .find(|s| {
                    s.file_range()
                        .is_some_and(|(start, len)| (start..start + len).contains(&(i as u64)))
                })
                .expect("a changed byte lies in a section");
            assert_eq!(section.kind(), SectionKind::Text, "{:?}", section.name());
        }
    }
}
