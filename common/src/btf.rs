//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`), for struct field offsets.
//!
//! Rust eBPF programs have no CO-RE relocations, so the kernel struct fields the programs read
//! are located here at start-up and passed in as globals. Only what that needs is parsed: type
//! records, their names, and struct/union members. A field may be a dotted path through
//! embedded structs (`f_path.dentry`); anonymous struct/union members are searched too.

use std::{
    borrow::ToOwned,
    collections::HashMap,
    format,
    path::Path,
    string::{String, ToString},
    vec,
    vec::Vec,
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("the kernel's BTF has no struct or union {0}")]
    NoStruct(String),
    #[error("the kernel's BTF has no function {0}")]
    NoFunc(String),
    #[error("the kernel's BTF has no enumerator {0}")]
    NoEnumerator(String),
    #[error("struct {strukt} has no field {field} in the kernel's BTF")]
    NoField { strukt: String, field: String },
    #[error("{strukt}.{field} is a bitfield; only byte-aligned fields can be read")]
    Bitfield { strukt: String, field: String },
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
const KIND_FUNC: u32 = 12;

#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset in bits from the start of the enclosing struct.
    bit_offset: u32,
    bitfield: bool,
}

#[derive(Clone, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    /// For modifiers and typedefs: the referenced type.
    type_ref: u32,
    members: Vec<Member>,
    /// For enums: (name offset, value) of each enumerator.
    enumerators: Vec<(u32, i64)>,
}

/// Parsed kernel BTF: enough to answer "where is field F of struct S".
pub struct KernelBtf {
    strings: Vec<u8>,
    /// Index 0 is the void type.
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {at}")))
}

impl KernelBtf {
    /// Reads `/sys/kernel/btf/vmlinux` (or the same file under another sysfs root).
    pub fn from_sysfs(sysfs_root: &Path) -> Result<Self, BtfError> {
        let path = sysfs_root.join("kernel/btf/vmlinux");
        let data = std::fs::read(&path)
            .map_err(|source| BtfError::Read { path: path.display().to_string(), source })?;
        Self::parse(&data)
    }

    /// Parses raw little-endian BTF.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic (expected little-endian 0xeb9f)".into()));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_start = hdr_len + type_off;
        let strings_start = hdr_len + str_off;
        let type_data = data
            .get(types_start..types_start + type_len)
            .ok_or_else(|| BtfError::Malformed("type section out of bounds".into()))?;
        let strings = data
            .get(strings_start..strings_start + str_len)
            .ok_or_else(|| BtfError::Malformed("string section out of bounds".into()))?
            .to_vec();

        let mut types =
            vec![Type { name_off: 0, kind: 0, type_ref: 0, members: Vec::new(), enumerators: Vec::new() }];
        let mut at = 0;
        while at < type_data.len() {
            let name_off = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let mut enumerators = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4, // INT, VAR, DECL_TAG
                3 => 12,          // ARRAY
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let raw = u32_at(type_data, m + 8)?;
                        members.push(Member {
                            name_off: u32_at(type_data, m)?,
                            type_id: u32_at(type_data, m + 4)?,
                            bit_offset: if kind_flag { raw & 0xff_ffff } else { raw },
                            bitfield: kind_flag && raw >> 24 != 0,
                        });
                    }
                    vlen * 12
                }
                6 => {
                    for i in 0..vlen {
                        let m = at + i * 8;
                        let val = u32_at(type_data, m + 4)? as i32 as i64;
                        enumerators.push((u32_at(type_data, m)?, val));
                    }
                    vlen * 8
                }
                19 => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let val = (u64::from(u32_at(type_data, m + 8)?) << 32)
                            | u64::from(u32_at(type_data, m + 4)?);
                        enumerators.push((u32_at(type_data, m)?, val as i64));
                    }
                    vlen * 12
                }
                13 => vlen * 8,  // FUNC_PROTO
                15 => vlen * 12, // DATASEC
                2 | 7..=12 | 16 | 18 => 0,
                other => return Err(BtfError::Malformed(format!("unknown BTF kind {other}"))),
            };
            at += extra;
            types.push(Type { name_off, kind, type_ref: size_or_type, members, enumerators });
        }
        if at != type_data.len() {
            return Err(BtfError::Malformed("type section ends inside a record".into()));
        }
        let mut btf = KernelBtf { strings, types, structs_by_name: HashMap::new() };
        for (id, ty) in btf.types.iter().enumerate() {
            if matches!(ty.kind, KIND_STRUCT | KIND_UNION) && ty.name_off != 0 {
                let name = btf.name(ty.name_off).to_owned();
                // The first definition wins; vmlinux has one per name.
                btf.structs_by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.type_ref
                }
                _ => break,
            }
        }
        id
    }

    /// Bit offset of `field` inside the struct/union `id`, searching anonymous members.
    fn find_member(&self, id: u32, field: &str) -> Option<Member> {
        let ty = self.types.get(id as usize)?;
        for m in &ty.members {
            if m.name_off != 0 {
                if self.name(m.name_off) == field {
                    return Some(*m);
                }
                continue;
            }
            let inner = self.resolve(m.type_id);
            if matches!(self.types.get(inner as usize).map(|t| t.kind), Some(KIND_STRUCT | KIND_UNION))
                && let Some(found) = self.find_member(inner, field)
            {
                return Some(Member { bit_offset: m.bit_offset + found.bit_offset, ..found });
            }
        }
        None
    }

    /// Type id of the struct (or union) `name`.
    pub fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.structs_by_name.get(name).copied().ok_or_else(|| BtfError::NoStruct(name.into()))
    }

    /// Type id of the function `name` (a `BTF_KIND_FUNC`: kernel functions and kfuncs).
    pub fn func_id(&self, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .position(|t| t.kind == KIND_FUNC && t.name_off != 0 && self.name(t.name_off) == name)
            .map(|id| id as u32)
            .ok_or_else(|| BtfError::NoFunc(name.into()))
    }

    /// Value of the enumerator `name` (of any enum), e.g. `PG_head` of `enum pageflags`.
    pub fn enumerator(&self, name: &str) -> Result<i64, BtfError> {
        self.types
            .iter()
            .flat_map(|t| t.enumerators.iter())
            .find(|(off, _)| self.name(*off) == name)
            .map(|&(_, v)| v)
            .ok_or_else(|| BtfError::NoEnumerator(name.into()))
    }

    /// Byte offset of `field` in struct (or union) `strukt`; `field` may be a dotted path
    /// through embedded structs, e.g. `f_path.dentry`.
    pub fn member_offset(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let mut id = *self.structs_by_name.get(strukt).ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        let mut bits = 0;
        for part in field.split('.') {
            let m = self
                .find_member(id, part)
                .ok_or_else(|| BtfError::NoField { strukt: strukt.into(), field: field.into() })?;
            if m.bitfield {
                return Err(BtfError::Bitfield { strukt: strukt.into(), field: field.into() });
            }
            bits += m.bit_offset;
            id = self.resolve(m.type_id);
        }
        if bits % 8 != 0 {
            return Err(BtfError::Bitfield { strukt: strukt.into(), field: field.into() });
        }
        Ok(bits / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF bytes: `struct outer { int a; union { int b; long c; }; int d; }`, int = 4 bytes.
    fn sample() -> Vec<u8> {
        let mut strings = b"\0int\0outer\0a\0b\0c\0d\0".to_vec();
        let off = |s: &str| -> u32 {
            let needle = format!("\0{s}\0");
            strings.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() as u32 + 1
        };
        let (int, outer, a, b, c, d) = (off("int"), off("outer"), off("a"), off("b"), off("c"), off("d"));
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend_from_slice(&w.to_le_bytes()));
        // 1: int
        push(&[int, 1 << 24, 4, 32]);
        // 2: anonymous union { int b @0; int c @0 }
        push(&[0, (KIND_UNION << 24) | 2, 8, b, 1, 0, c, 1, 0]);
        // 3: typedef of 1 (unused name) to exercise resolve
        push(&[0, KIND_TYPEDEF << 24, 1]);
        // 4: struct outer { a @0, <anon union> @64 bits, d @128 bits }
        push(&[outer, (KIND_STRUCT << 24) | 3, 24, a, 3, 0, 0, 2, 64, d, 1, 128]);
        strings.push(0);
        let mut data = Vec::new();
        for w in [0xeb9f_u32 | (1 << 16), 24, 0, types.len() as u32, types.len() as u32, strings.len() as u32]
        {
            data.extend_from_slice(&w.to_le_bytes());
        }
        // The first word packs magic (u16), version (u8), flags (u8).
        data[0..4].copy_from_slice(&[0x9f, 0xeb, 1, 0]);
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = KernelBtf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "d").unwrap(), 16);
    }

    #[test]
    fn dotted_paths_and_unions_by_name() {
        let btf = KernelBtf::parse(&sample()).unwrap();
        // `a` is an int: nothing inside it.
        assert!(btf.member_offset("outer", "a.b").is_err());
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if path.exists() {
            let k = KernelBtf::from_sysfs(Path::new("/sys")).unwrap();
            let direct =
                k.member_offset("file", "f_path").unwrap() + k.member_offset("path", "dentry").unwrap();
            assert_eq!(k.member_offset("file", "f_path.dentry").unwrap(), direct);
        }
    }

    #[test]
    fn missing_things_are_named() {
        let btf = KernelBtf::parse(&sample()).unwrap();
        assert_eq!(
            btf.member_offset("outer", "zz").unwrap_err().to_string(),
            "struct outer has no field zz in the kernel's BTF"
        );
        assert!(matches!(btf.member_offset("nope", "a"), Err(BtfError::NoStruct(_))));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(KernelBtf::parse(b"hello world, not btf at all"), Err(BtfError::Malformed(_))));
        let mut truncated = sample();
        truncated.truncate(40);
        assert!(KernelBtf::parse(&truncated).is_err());
    }

    #[test]
    fn reads_this_kernels_task_struct_when_present() {
        // The real file exists on the project's machines (and CI); elsewhere nothing to check.
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            return;
        }
        let btf = KernelBtf::from_sysfs(Path::new("/sys")).unwrap();
        let pid = btf.member_offset("task_struct", "pid").unwrap();
        let tgid = btf.member_offset("task_struct", "tgid").unwrap();
        assert_eq!(tgid, pid + 4, "pid and tgid are adjacent pid_t fields");
        btf.member_offset("linux_binprm", "filename").unwrap();
        // Bit numbers of page flags are enumerators; PG_locked is bit 0 in every kernel.
        assert_eq!(btf.enumerator("PG_locked").unwrap(), 0);
        assert!(btf.enumerator("PG_head").unwrap() > 0);
        assert!(matches!(btf.enumerator("PG_no_such_flag"), Err(BtfError::NoEnumerator(_))));
    }
}
