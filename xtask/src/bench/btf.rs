//! Struct member offsets from the kernel's BTF, for `--handlers-only`: the programs read kernel
//! struct fields at offsets that the agent sets as globals before loading. xtask cannot use the
//! agent's reader (it must build before `cargo xtask setup`), and aya 0.14 does not expose BTF
//! members, so this is a minimal reader of the same format (`Documentation/bpf/btf.rst`).

use anyhow::{Context, Result, bail};

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
/// Kinds that only refer to another type: typedef, volatile, const, restrict, type tag.
const MODIFIER_KINDS: [u32; 5] = [8, 9, 10, 11, 18];

struct Type {
    name_off: u32,
    kind: u32,
    /// The referenced type, for modifiers.
    type_ref: u32,
    /// For structs and unions: (name_off, type id, bit offset, bitfield).
    members: Vec<(u32, u32, u32, bool)>,
}

/// Parsed kernel BTF, enough to answer "at which byte is member M of struct S".
pub struct MemberOffsets {
    strings: Vec<u8>,
    /// Index 0 is `void`.
    types: Vec<Type>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32> {
    let bytes = data.get(at..at + 4).with_context(|| format!("BTF truncated at byte {at}"))?;
    Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
}

impl MemberOffsets {
    /// Reads `/sys/kernel/btf/vmlinux`.
    pub fn from_sys_fs() -> Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        Self::parse(&std::fs::read(path).with_context(|| format!("reading {path}"))?)
            .with_context(|| format!("parsing {path}"))
    }

    /// Parses raw little-endian BTF.
    pub fn parse(data: &[u8]) -> Result<Self> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            bail!("not little-endian BTF (no 0xeb9f magic)");
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .context("BTF string section out of bounds")?
            .to_vec();
        let type_data =
            data.get(hdr_len + type_off..hdr_len + type_off + type_len).context("BTF types out of bounds")?;
        let mut types = vec![Type { name_off: 0, kind: 0, type_ref: 0, members: Vec::new() }];
        let mut at = 0;
        while at < type_data.len() {
            let name_off = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let type_ref = u32_at(type_data, at + 8)?;
            let (vlen, kind, kind_flag) = (info & 0xffff, (info >> 24) & 0x1f, info >> 31 == 1);
            at += 12;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4,              // int, var, decl tag
                3 => 12,                       // array
                6 => 8 * vlen as usize,        // enum
                13 => 8 * vlen as usize,       // func proto
                15 | 19 => 12 * vlen as usize, // datasec, enum64
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen as usize {
                        let m = at + 12 * i;
                        let offset = u32_at(type_data, m + 8)?;
                        let (bit_offset, bitfield) =
                            if kind_flag { (offset & 0xff_ffff, offset >> 24 != 0) } else { (offset, false) };
                        members.push((
                            u32_at(type_data, m)?,
                            u32_at(type_data, m + 4)?,
                            bit_offset,
                            bitfield,
                        ));
                    }
                    12 * vlen as usize
                }
                2 | 7..=12 | 16 | 18 => 0,
                other => bail!("unknown BTF kind {other} at type {}", types.len()),
            };
            at += extra;
            types.push(Type { name_off, kind, type_ref, members });
        }
        Ok(MemberOffsets { strings, types })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// The struct or union behind `id`, through typedefs and qualifiers.
    fn composite(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_STRUCT | KIND_UNION => return Some(t),
                k if MODIFIER_KINDS.contains(&k) => id = t.type_ref,
                _ => return None,
            }
        }
        None
    }

    /// Bit offset of `field` in `t`, searching anonymous struct/union members too.
    fn find(&self, t: &Type, field: &str, depth: u32) -> Result<Option<u32>> {
        for &(name_off, type_id, bit_offset, bitfield) in &t.members {
            if name_off == 0 && depth < 8 {
                if let Some(inner) = self.composite(type_id)
                    && let Some(off) = self.find(inner, field, depth + 1)?
                {
                    return Ok(Some(bit_offset + off));
                }
            } else if self.name(name_off) == field.as_bytes() {
                if bitfield || bit_offset % 8 != 0 {
                    bail!("{field} is a bitfield");
                }
                return Ok(Some(bit_offset));
            }
        }
        Ok(None)
    }

    /// Byte offset of `field` in `struct strukt`.
    pub fn member_offset(&self, strukt: &str, field: &str) -> Result<u32> {
        let t = self
            .types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == strukt.as_bytes())
            .with_context(|| format!("the kernel's BTF has no struct {strukt}"))?;
        let bits = self
            .find(t, field, 0)
            .with_context(|| format!("struct {strukt}"))?
            .with_context(|| format!("struct {strukt} has no member {field} in the kernel's BTF"))?;
        Ok(bits / 8)
    }

    /// The sum of the offsets along `path` (`[("task_struct", "se"), ("sched_entity", "x")]`).
    pub fn path_offset(&self, path: &[(&str, &str)]) -> Result<u32> {
        path.iter().try_fold(0, |sum, (strukt, field)| Ok(sum + self.member_offset(strukt, field)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BTF with `int`, `struct inner { int a; int b; }` and
    /// `struct outer { int x; struct inner in; union { int u; }; }` (the union anonymous).
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0outer\0x\0in\0u\0".to_vec();
        let s = |name: &str| {
            let needle = [name.as_bytes(), b"\0"].concat();
            strings.windows(needle.len()).position(|w| w == needle).unwrap() as u32
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend_from_slice(&w.to_le_bytes()));
        push(&[s("int"), 1 << 24, 4, 32]); // 1: int
        push(&[s("inner"), (4 << 24) | 2, 8, s("a"), 1, 0, s("b"), 1, 32]); // 2: struct inner
        push(&[0, (5 << 24) | 1, 4, s("u"), 1, 0]); // 3: anonymous union
        push(&[s("outer"), (4 << 24) | 3, 16, s("x"), 1, 0, s("in"), 2, 32, 0, 3, 96]); // 4: struct outer
        let mut data = Vec::new();
        for w in [0xeb9f_u32 | (1 << 16), 24, 0, types.len() as u32, types.len() as u32, strings.len() as u32]
        {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn member_offsets_in_bytes_through_anonymous_members_and_paths() {
        let btf = MemberOffsets::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("inner", "b").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "in").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "u").unwrap(), 12);
        assert_eq!(btf.path_offset(&[("outer", "in"), ("inner", "b")]).unwrap(), 8);
    }

    #[test]
    fn missing_struct_member_and_bad_magic_are_errors() {
        let btf = MemberOffsets::parse(&sample()).unwrap();
        assert!(btf.member_offset("nope", "a").unwrap_err().to_string().contains("no struct nope"));
        assert!(format!("{:#}", btf.member_offset("inner", "c").unwrap_err()).contains("no member c"));
        assert!(MemberOffsets::parse(&[0; 24]).is_err());
    }
}
