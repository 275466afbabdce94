//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): byte offsets of struct
//! members, following dotted paths (`f_path.dentry`) and anonymous struct/union members.
//!
//! Written for the I/O programs before `probes::btf` landed; it reads only what offsets need.
//! Replace with `probes::btf::KernelBtf` once that exists (same `member_offset` contract).

use std::collections::HashMap;
use std::path::Path;

use thiserror::Error;

const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// Errors reading BTF or finding a member in it.
#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading BTF from {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("kernel BTF has no struct or union named `{0}`")]
    NoStruct(String),
    #[error("kernel BTF: `{strukt}` has no member `{member}` (looking up `{path}`)")]
    NoMember { strukt: String, member: String, path: String },
}

#[derive(Clone, Debug)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Clone, Debug)]
struct Type {
    kind: u32,
    name: String,
    /// Referenced type for typedefs and modifiers.
    ref_type: u32,
    /// Number of elements, for arrays.
    nelems: u32,
    members: Vec<Member>,
}

/// The parsed struct/union layouts of a BTF blob.
pub struct Btf {
    types: Vec<Type>,
    by_name: HashMap<String, u32>,
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_sys() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    /// Reads a BTF file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path)
            .map_err(|source| BtfError::Read { path: path.display().to_string(), source })?;
        Self::parse(&data)
    }

    /// Parses a raw BTF blob (little endian).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u32_at = |off: usize| -> Result<u32, BtfError> {
            data.get(off..off + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {off}")))
        };
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic (expected 0xeB9F, little endian)".into()));
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| BtfError::Malformed("string section out of bounds".into()))?;
        let name = |off: u32| -> String {
            let s = strings.get(off as usize..).unwrap_or(&[]);
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        };
        let mut types = vec![Type { kind: 0, name: String::new(), ref_type: 0, nelems: 0, members: vec![] }];
        let mut by_name = HashMap::new();
        let mut off = hdr_len + type_off;
        let end = off + type_len;
        if end > data.len() {
            return Err(BtfError::Malformed("type section out of bounds".into()));
        }
        while off < end {
            let name_off = u32_at(off)?;
            let info = u32_at(off + 4)?;
            let size_or_type = u32_at(off + 8)?;
            off += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let mut nelems = 0;
            let extra = match kind {
                1 | 14 | 17 => 4,
                KIND_ARRAY => {
                    nelems = u32_at(off + 8)?;
                    12
                }
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = off + i * 12;
                        let raw = u32_at(m + 8)?;
                        members.push(Member {
                            name: name(u32_at(m)?),
                            type_id: u32_at(m + 4)?,
                            bit_offset: if kind_flag { raw & 0xff_ffff } else { raw },
                        });
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,
                15 | 19 => vlen * 12,
                2 | 7 | 8..=12 | 16 | 18 => 0,
                k => return Err(BtfError::Malformed(format!("unknown BTF kind {k}"))),
            };
            off += extra;
            let id = types.len() as u32;
            let n = name(name_off);
            if matches!(kind, KIND_STRUCT | KIND_UNION) && !n.is_empty() {
                // Keep the first complete definition.
                by_name.entry(n.clone()).or_insert(id);
            }
            types.push(Type { kind, name: n, ref_type: size_or_type, nelems, members });
        }
        Ok(Self { types, by_name })
    }

    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.ref_type
                }
                _ => break,
            }
        }
        id
    }

    /// Finds `member` in struct/union `id`, looking into anonymous members; bit offset.
    fn find(&self, id: u32, member: &str) -> Option<(u32, u32)> {
        let t = self.types.get(id as usize)?;
        for m in &t.members {
            if m.name == member {
                return Some((m.bit_offset, m.type_id));
            }
            if m.name.is_empty() {
                let inner = self.resolve(m.type_id);
                if let Some((bits, ty)) = self.find(inner, member) {
                    return Some((m.bit_offset + bits, ty));
                }
            }
        }
        None
    }

    /// Number of elements of the array member `path` of struct or union `strukt`.
    pub fn member_array_len(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let (_, ty) = self.member(strukt, path)?;
        match self.types.get(ty as usize) {
            Some(t) if t.kind == KIND_ARRAY => Ok(t.nelems),
            _ => Err(BtfError::Malformed(format!("{strukt}.{path} is not an array"))),
        }
    }

    /// Byte offset of `path` (e.g. `"f_path.dentry"`) inside struct or union `strukt`.
    pub fn member_offset(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        Ok(self.member(strukt, path)?.0)
    }

    /// Byte offset and (resolved) type id of `path` inside `strukt`.
    fn member(&self, strukt: &str, path: &str) -> Result<(u32, u32), BtfError> {
        let mut id = *self.by_name.get(strukt).ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        let mut bits = 0;
        for part in path.split('.') {
            let (b, ty) = self.find(id, part).ok_or_else(|| BtfError::NoMember {
                strukt: self.types[id as usize].name.clone(),
                member: part.into(),
                path: format!("{strukt}.{path}"),
            })?;
            bits += b;
            id = self.resolve(ty);
        }
        if bits % 8 != 0 {
            return Err(BtfError::Malformed(format!("{strukt}.{path} is a bit field")));
        }
        Ok((bits / 8, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: `struct inner { int a; int b; }`,
    /// `struct outer { long x; union { int u; struct inner in; }; const struct inner *p; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0a\0b\0inner\0outer\0x\0u\0in\0p\0long\0arr\0witharr\0";
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() as u32 + 1
        };
        let mut t = Vec::new();
        let push =
            |t: &mut Vec<u8>, vals: &[u32]| vals.iter().for_each(|v| t.extend_from_slice(&v.to_le_bytes()));
        // 1: int
        push(&mut t, &[s("int"), 1 << 24, 4, 32]);
        // 2: struct inner { a @0, b @32 }
        push(&mut t, &[s("inner"), (KIND_STRUCT << 24) | 2, 8, s("a"), 1, 0, s("b"), 1, 32]);
        // 3: anonymous union { u @0, in @0 }
        push(&mut t, &[0, (KIND_UNION << 24) | 2, 8, s("u"), 1, 0, s("in"), 2, 0]);
        // 4: long
        push(&mut t, &[s("long"), 1 << 24, 8, 64]);
        // 5: const inner, 6: ptr to 5
        push(&mut t, &[0, KIND_CONST << 24, 2]);
        push(&mut t, &[0, 2 << 24, 5]);
        // 7: struct outer { x @0, <anon> @64, p @128 }
        push(&mut t, &[s("outer"), (KIND_STRUCT << 24) | 3, 24, s("x"), 4, 0, 0, 3, 64, s("p"), 6, 128]);
        // 8: int[5] (elem 1, index type 1), 9: struct witharr { long x @0; int arr[5] @64 }
        push(&mut t, &[0, KIND_ARRAY << 24, 0, 1, 1, 5]);
        push(&mut t, &[s("witharr"), (KIND_STRUCT << 24) | 2, 28, s("x"), 4, 0, s("arr"), 8, 64]);
        let mut out = Vec::new();
        push(&mut out, &[0x0001_eb9f, 24, 0, t.len() as u32, t.len() as u32, strings.len() as u32]);
        out.extend_from_slice(&t);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn offsets_through_anonymous_members_and_paths() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "u").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "in.b").unwrap(), 12);
        assert_eq!(btf.member_offset("outer", "p").unwrap(), 16);
        assert_eq!(btf.member_offset("inner", "b").unwrap(), 4);
    }

    #[test]
    fn array_member_lengths() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("witharr", "arr").unwrap(), 8);
        assert_eq!(btf.member_array_len("witharr", "arr").unwrap(), 5);
        let e = btf.member_array_len("witharr", "x").unwrap_err().to_string();
        assert!(e.contains("witharr.x is not an array"), "{e}");
    }

    #[test]
    fn missing_names_are_specific_errors() {
        let btf = Btf::parse(&blob()).unwrap();
        let e = btf.member_offset("outer", "nope").unwrap_err().to_string();
        assert!(e.contains("`outer` has no member `nope`"), "{e}");
        assert!(matches!(btf.member_offset("task_struct", "pid"), Err(BtfError::NoStruct(_))));
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
    }

    #[test]
    fn running_kernel_btf_when_present() {
        // Only meaningful where the kernel exports BTF; the unit tests above cover the logic.
        if let Ok(btf) = Btf::from_sys() {
            assert!(btf.member_offset("task_struct", "files").is_ok());
            assert!(btf.member_offset("file", "f_path.dentry").is_ok());
            assert!(btf.member_array_len("files_struct", "fd_array").unwrap() >= 32);
        }
    }
}
