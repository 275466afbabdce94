//! Kfunc calls in the eBPF object.
//!
//! The I/O programs need `bpf_rdonly_cast` (a kfunc the verifier inlines into a register move)
//! to load through a pointer the verifier would otherwise type as a plain number: the elements
//! of a process's fd table. Neither the Rust eBPF toolchain nor aya 0.14 emits or relocates
//! kfunc calls, so the programs call a helper number that does not exist
//! ([`RDONLY_CAST_MARKER`]) and [`patch`] rewrites every such instruction of the object's code
//! sections into a kfunc call (`src_reg` = `BPF_PSEUDO_KFUNC_CALL`, `imm` = the kfunc's id in
//! the running kernel's BTF) before aya loads it.

use anyhow::{Context, Result, bail};
use carbon_agent_common::kfunc::RDONLY_CAST_MARKER;

use super::btf::KernelBtf;

const BPF_JMP_CALL: u8 = 0x85;
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
const SHF_EXECINSTR: u64 = 0x4;

/// An object's bytes, 8-byte aligned (the ELF parser wants aligned data).
pub struct Object {
    words: Vec<u64>,
    len: usize,
}

impl Object {
    fn new(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: `words` holds at least `bytes.len()` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr().cast::<u8>(), bytes.len())
        };
        Self { words, len: bytes.len() }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of `words` were initialised from the object.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(b.get(at..at + 2).context("truncated ELF")?.try_into()?))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(b.get(at..at + 8).context("truncated ELF")?.try_into()?))
}

/// Code sections of a little-endian ELF64 object: (file offset, size).
fn code_sections(elf: &[u8]) -> Result<Vec<(usize, usize)>> {
    if elf.get(0..4) != Some(b"\x7fELF".as_slice()) || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        bail!("not a little-endian ELF64 object");
    }
    let (shoff, shentsize, shnum) =
        (u64_at(elf, 0x28)? as usize, u16_at(elf, 0x3a)? as usize, u16_at(elf, 0x3c)?);
    let mut out = Vec::new();
    for i in 0..shnum as usize {
        let sh = shoff + i * shentsize;
        let (flags, offset, size) = (u64_at(elf, sh + 8)?, u64_at(elf, sh + 24)?, u64_at(elf, sh + 32)?);
        if flags & SHF_EXECINSTR != 0 && size > 0 {
            let (offset, size) = (offset as usize, size as usize);
            if offset.checked_add(size).is_none_or(|end| end > elf.len()) {
                bail!("ELF section {i} lies outside the file");
            }
            out.push((offset, size));
        }
    }
    Ok(out)
}

/// Rewrites every `call RDONLY_CAST_MARKER` in the code sections of `object` into a call of
/// the kfunc whose BTF id is `kfunc_id`; returns the patched object and how many calls.
pub fn patch(object: &[u8], kfunc_id: u32) -> Result<(Object, usize)> {
    let mut out = Object::new(object);
    let sections = code_sections(object)?;
    let marker = RDONLY_CAST_MARKER.to_le_bytes();
    let mut patched = 0;
    let bytes = out.bytes_mut();
    for (offset, size) in sections {
        for insn in bytes[offset..offset + size].chunks_exact_mut(8) {
            // code, dst/src registers (both 0 for a helper call), 16-bit offset, 32-bit imm.
            if insn[0] == BPF_JMP_CALL && insn[1] == 0 && insn[2..4] == [0, 0] && insn[4..8] == marker {
                insn[1] = BPF_PSEUDO_KFUNC_CALL << 4;
                insn[4..8].copy_from_slice(&kfunc_id.to_le_bytes());
                patched += 1;
            }
        }
    }
    Ok((out, patched))
}

/// The agent's eBPF object ready for this kernel: the markers rewritten into calls of
/// `bpf_rdonly_cast`. Without kernel BTF or that kfunc (Linux < 6.2) the object is returned
/// unchanged with the reason: the programs that use it (the I/O ones) then fail to load and
/// the agent runs without I/O, saying why.
pub fn agent_object(btf: Option<&KernelBtf>) -> (Object, Option<String>) {
    let object = super::EBPF_OBJECT;
    let Some(btf) = btf else {
        return (Object::new(object), Some("no kernel BTF: the I/O programs need bpf_rdonly_cast".into()));
    };
    let id = match btf.func_id("bpf_rdonly_cast") {
        Ok(id) => id,
        Err(e) => return (Object::new(object), Some(format!("{e} (the I/O programs need Linux ≥ 6.2)"))),
    };
    match patch(object, id) {
        Ok((patched, _)) => (patched, None),
        Err(e) => (Object::new(object), Some(format!("cannot patch the eBPF object: {e:#}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_every_marker_of_the_agent_object_and_nothing_else() {
        let object = super::super::EBPF_OBJECT;
        let (patched, n) = patch(object, 0x1234_5678).unwrap();
        assert!(n >= 2, "the I/O programs cast at least twice, found {n} markers");
        let (again, m) = patch(patched.bytes(), 1).unwrap();
        assert_eq!(m, 0, "no marker is left");
        let diff = object.iter().zip(again.bytes()).filter(|(a, b)| a != b).count();
        // Per call: the register byte and up to 4 bytes of the immediate.
        assert!(diff <= n * 5 && diff >= n * 2, "{diff} bytes changed for {n} calls");
        assert_eq!(patched.bytes().len(), object.len());
        assert_eq!(patched.bytes().as_ptr() as usize % 8, 0);
    }

    #[test]
    fn rejects_what_is_not_elf64() {
        assert!(patch(b"\x7fELF\x01\x01", 1).is_err());
        assert!(patch(b"garbage", 1).is_err());
        // A header whose section table lies past the end.
        let mut h = vec![0u8; 64];
        h[0..6].copy_from_slice(b"\x7fELF\x02\x01");
        h[0x28..0x30].copy_from_slice(&1000u64.to_le_bytes());
        h[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        h[0x3c..0x3e].copy_from_slice(&1u16.to_le_bytes());
        assert!(patch(&h, 1).is_err());
    }
}
