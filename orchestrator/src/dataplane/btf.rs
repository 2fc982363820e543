//! Just enough of a BTF reader to find where a struct member sits in the running
//! kernel: the socket iterator reads `struct sock_common` fields at offsets taken
//! from /sys/kernel/btf/vmlinux, since aya-ebpf has no CO-RE field relocations.
//!
//! The format is the kernel's (Documentation/bpf/btf.rst): a header, then the type
//! section (one `btf_type` per type, ids from 1, each followed by data whose size
//! its kind fixes), then the string section.

use std::path::Path;

/// Where the running kernel describes its types.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
const TYPE_LEN: usize = 12;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_FUNC: u32 = 12;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;
const KIND_MAX: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("BTF has no function {0} (a kfunc needs Linux 6.5 or later)")]
    NoFunc(String),
    #[error("BTF struct {structure} has no member {member}")]
    NoMember { structure: String, member: String },
    #[error("BTF member {structure}.{member} is a bitfield")]
    Bitfield { structure: String, member: String },
}

/// A parsed BTF blob: the offsets of its types, for lookups by name.
pub struct Btf {
    data: Vec<u8>,
    /// Start of each type's `btf_type` in `data`; index 0 is type id 1.
    types: Vec<usize>,
    strings: std::ops::Range<usize>,
}

/// One `btf_type` header.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// Where the kind-specific data starts.
    data: usize,
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let malformed = |what: &str| BtfError::Malformed(what.to_string());
        if data.len() < HEADER_LEN || u16_at(&data, 0) != Some(MAGIC) {
            return Err(malformed("no BTF header (little-endian magic 0xeb9f)"));
        }
        let field = |at| {
            u32_at(&data, at)
                .map(|v| v as usize)
                .ok_or_else(|| malformed("header"))
        };
        let (hdr_len, type_off, type_len) = (field(4)?, field(8)?, field(12)?);
        let (str_off, str_len) = (field(16)?, field(20)?);
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if types_end > data.len() || strings.end > data.len() {
            return Err(malformed("sections past the end of the data"));
        }
        let mut types = Vec::new();
        let mut at = types_start;
        while at < types_end {
            let ty = read_type(&data, at).ok_or_else(|| malformed("truncated type"))?;
            let extra = match ty.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * ty.vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * ty.vlen,
                k if k <= KIND_MAX => 0,
                k => return Err(BtfError::Malformed(format!("unknown kind {k}"))),
            };
            types.push(at);
            at = ty.data + extra;
        }
        if at != types_end {
            return Err(malformed("type section does not end on a type"));
        }
        Ok(Self {
            data,
            types,
            strings,
        })
    }

    /// The type id of function `name` (how a kfunc call names it).
    pub fn func_id(&self, name: &str) -> Result<u32, BtfError> {
        self.find(KIND_FUNC, name)
            .ok_or_else(|| BtfError::NoFunc(name.to_string()))
    }

    fn find(&self, kind: u32, name: &str) -> Option<u32> {
        (1..=self.types.len() as u32).find(|&id| {
            self.get(id)
                .is_some_and(|t| t.kind == kind && self.name(t.name_off) == Some(name))
        })
    }

    /// Byte offset of `member` in struct `structure`, looking through anonymous
    /// struct and union members as C does.
    pub fn member_offset(&self, structure: &str, member: &str) -> Result<u32, BtfError> {
        let id = self
            .find(KIND_STRUCT, structure)
            .ok_or_else(|| BtfError::NoStruct(structure.to_string()))?;
        let bits = self
            .find_member(id, member, 0)?
            .ok_or_else(|| BtfError::NoMember {
                structure: structure.to_string(),
                member: member.to_string(),
            })?;
        if bits % 8 != 0 {
            return Err(BtfError::Bitfield {
                structure: structure.to_string(),
                member: member.to_string(),
            });
        }
        Ok(bits / 8)
    }

    /// Bit offset of `member` in the struct or union `id`, plus `base`.
    fn find_member(&self, id: u32, member: &str, base: u32) -> Result<Option<u32>, BtfError> {
        let ty = self
            .get(id)
            .ok_or_else(|| BtfError::Malformed(format!("type id {id} out of range")))?;
        for i in 0..ty.vlen {
            let at = ty.data + i * 12;
            let (Some(name_off), Some(type_id), Some(offset)) = (
                u32_at(&self.data, at),
                u32_at(&self.data, at + 4),
                u32_at(&self.data, at + 8),
            ) else {
                return Err(BtfError::Malformed("truncated member".into()));
            };
            // With kind_flag set the top 8 bits hold a bitfield size.
            let bits = base
                + if ty.kind_flag {
                    offset & 0x00ff_ffff
                } else {
                    offset
                };
            if name_off == 0 {
                let inner = self.get(type_id);
                if inner.is_some_and(|t| t.kind == KIND_STRUCT || t.kind == KIND_UNION)
                    && let Some(found) = self.find_member(type_id, member, bits)?
                {
                    return Ok(Some(found));
                }
            } else if self.name(name_off) == Some(member) {
                return Ok(Some(bits));
            }
        }
        Ok(None)
    }

    fn get(&self, id: u32) -> Option<Type> {
        let at = *self.types.get((id as usize).checked_sub(1)?)?;
        read_type(&self.data, at)
    }

    fn name(&self, offset: u32) -> Option<&str> {
        let start = self.strings.start + offset as usize;
        let strings = self.data.get(start..self.strings.end)?;
        let end = strings.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&strings[..end]).ok()
    }
}

fn read_type(data: &[u8], at: usize) -> Option<Type> {
    let name_off = u32_at(data, at)?;
    let info = u32_at(data, at + 4)?;
    u32_at(data, at + 8)?;
    Some(Type {
        name_off,
        kind: (info >> 24) & 0x1f,
        vlen: (info & 0xffff) as usize,
        kind_flag: info >> 31 == 1,
        data: at + TYPE_LEN,
    })
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    let bytes = data.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF blobs the way the kernel lays them out.
    #[derive(Default)]
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            at
        }

        fn header(&mut self, name: &str, kind: u32, vlen: u32, kind_flag: bool, size: u32) {
            let name = self.string(name);
            let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
            for word in [name, info, size] {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
        }

        /// An int of `bytes` bytes.
        fn int(&mut self, name: &str, bytes: u32) {
            self.header(name, KIND_INT, 0, false, bytes);
            self.types.extend_from_slice(&(bytes * 8).to_le_bytes());
        }

        /// A struct or union with (name, type id, bit offset) members.
        fn record(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32)]) {
            self.header(name, kind, members.len() as u32, false, size);
            for (member, ty, bits) in members {
                let member = self.string(member);
                for word in [member, *ty, *bits] {
                    self.types.extend_from_slice(&word.to_le_bytes());
                }
            }
        }

        fn build(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for word in [
                HEADER_LEN as u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// The start of the kernel's struct sock_common: anonymous unions of anonymous
    /// structs, as in include/net/sock.h.
    fn sock_common() -> Vec<u8> {
        let mut b = Builder::new();
        b.int("unsigned int", 4); // 1
        b.int("short unsigned int", 2); // 2
        b.int("long long unsigned int", 8); // 3
        b.record(
            KIND_STRUCT,
            "",
            8,
            &[("skc_daddr", 1, 0), ("skc_rcv_saddr", 1, 32)],
        ); // 4
        b.record(KIND_UNION, "", 8, &[("skc_addrpair", 3, 0), ("", 4, 0)]); // 5
        b.record(
            KIND_STRUCT,
            "",
            4,
            &[("skc_dport", 2, 0), ("skc_num", 2, 16)],
        ); // 6
        b.record(KIND_UNION, "", 4, &[("skc_portpair", 1, 0), ("", 6, 0)]); // 7
        b.record(KIND_STRUCT, "in6_addr", 16, &[]); // 8
        b.record(
            KIND_STRUCT,
            "sock_common",
            136,
            &[
                ("", 5, 0),
                ("skc_hash", 1, 64),
                ("", 7, 96),
                ("skc_family", 2, 128),
                ("skc_v6_daddr", 8, 448),
            ],
        ); // 9
        b.header("bpf_sock_destroy", KIND_FUNC, 0, false, 0); // 10
        b.build()
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_structs() {
        let btf = Btf::parse(sock_common()).unwrap();
        let offset = |m| btf.member_offset("sock_common", m).unwrap();
        assert_eq!(offset("skc_daddr"), 0);
        assert_eq!(offset("skc_rcv_saddr"), 4);
        assert_eq!(offset("skc_dport"), 12);
        assert_eq!(offset("skc_num"), 14);
        assert_eq!(offset("skc_family"), 16);
        assert_eq!(offset("skc_v6_daddr"), 56);
    }

    #[test]
    fn functions_are_found_by_name() {
        let btf = Btf::parse(sock_common()).unwrap();
        assert_eq!(btf.func_id("bpf_sock_destroy").unwrap(), 10);
        let err = btf.func_id("sock_common").unwrap_err();
        assert!(err.to_string().contains("no function sock_common"), "{err}");
    }

    #[test]
    fn missing_names_are_errors() {
        let btf = Btf::parse(sock_common()).unwrap();
        let err = btf.member_offset("sock", "skc_family").unwrap_err();
        assert_eq!(err.to_string(), "BTF has no struct sock");
        let err = btf.member_offset("sock_common", "sk_err").unwrap_err();
        assert_eq!(
            err.to_string(),
            "BTF struct sock_common has no member sk_err"
        );
        // A struct's own name is not one of its anonymous members'.
        assert!(btf.member_offset("in6_addr", "skc_family").is_err());
    }

    #[test]
    fn bitfields_and_bad_input_are_rejected() {
        let mut b = Builder::new();
        b.int("unsigned int", 4);
        b.header("flags", KIND_STRUCT, 1, true, 4);
        let name = b.string("bit");
        for word in [name, 1, (1 << 24) | 3] {
            b.types.extend_from_slice(&word.to_le_bytes());
        }
        let btf = Btf::parse(b.build()).unwrap();
        assert!(matches!(
            btf.member_offset("flags", "bit"),
            Err(BtfError::Bitfield { .. })
        ));

        assert!(Btf::parse(vec![0; 8]).is_err());
        let mut truncated = sock_common();
        truncated.truncate(HEADER_LEN + 30);
        assert!(Btf::parse(truncated).is_err());
    }

    #[test]
    fn the_running_kernels_sock_common_is_found() {
        // Where the kernel has BTF (the test machines do), its own layout parses.
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        // These two have been fixed at the start of sock_common for many years.
        assert_eq!(btf.member_offset("sock_common", "skc_daddr").unwrap(), 0);
        assert_eq!(btf.member_offset("sock_common", "skc_dport").unwrap(), 12);
        assert!(btf.member_offset("sock_common", "skc_v6_daddr").unwrap() > 16);
        assert!(
            btf.func_id("bpf_sock_destroy").is_ok(),
            "Linux 6.5 or later"
        );
    }
}
