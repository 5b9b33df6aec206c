//! glibc's `ld.so.cache`: reader and writer.
//!
//! nvhook reads two of these: the driver root's (to find the host's driver libraries by soname) and
//! the container image's (to merge the driver's sonames into it). The image's file is hostile input:
//! every offset is checked, nothing is trusted to be terminated or in range, and a bad file is an
//! error, never a panic.
//!
//! Format (glibc >= 2.32 writes only the "new" format; older glibc writes the old format followed by
//! the new one, and we read both):
//!
//! ```text
//! new header (48 bytes): "glibc-ld.so.cache" "1.1" | nlibs u32 | len_strings u32 | flags u8
//!                        (0 unset, 1 invalid, 2 little, 3 big endian) | pad[3] | extension_offset u32 | unused[3] u32
//! entries (24 bytes):    flags i32 | key u32 | value u32 | osversion u32 | hwcap u64
//! strings:               NUL-terminated; key/value offsets count from the new header's first byte
//! extensions:            magic 0xeaa42174 | count u32 | sections { tag, flags, offset, size } (u32 each)
//!                        tag 0 = generator string, tag 1 = glibc-hwcaps subdirectory names (u32 string offsets)
//! old header (16 bytes): "ld.so-1.7.0" pad | nlibs u32; entries (12 bytes): flags i32 | key u32 | value u32
//! ```
//!
//! ld.so finds a name by binary search over the entries, so they must be sorted the way ldconfig
//! sorts them: by [`libcmp`] descending, then by flags descending.

use std::cmp::Ordering;

use serde::Serialize;

const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
const NEW_HEADER_LEN: usize = 48;
const NEW_ENTRY_LEN: usize = 24;
const OLD_HEADER_LEN: usize = 16;
const OLD_ENTRY_LEN: usize = 12;
const EXTENSION_MAGIC: u32 = 0xeaa4_2174;
const EXT_TAG_GENERATOR: u32 = 0;
const EXT_TAG_GLIBC_HWCAPS: u32 = 1;
/// Bit 62 of `hwcap` marks an entry that lives in a glibc-hwcaps subdirectory; the low 32 bits are
/// then an index into the glibc-hwcaps extension.
const HWCAP_EXTENSION: u64 = 1 << 62;
/// Refuse caches larger than this. A real cache takes about 64 bytes per library (this host's:
/// 541 libraries, 35 KB); 8 MiB is over 100,000 libraries. Issue 16: a crafted 64 MiB cache
/// (the old limit) of 2.8 million entries drove the hook to 600-700 MiB.
pub const MAX_CACHE_SIZE: usize = 8 << 20;
/// Refuse caches with more entries than this (a distribution with every library package
/// installed has about 10,000); bounds the decoded entries whatever the file's size.
pub const MAX_ENTRIES: usize = 65_536;
/// The longest name read: a path ld.so could open is shorter (PATH_MAX).
pub const MAX_NAME_LEN: usize = 4096;
/// Every entry of a hostile cache can point at the same long string: the names read are bounded
/// by this many times the file's size (real caches decode to less than their size: this host's
/// 35 KB cache to 30 KB of names, as ldconfig stores each soname inside its path).
pub const MAX_NAMES_FACTOR: usize = 2;
/// ... plus this much, for tiny files.
pub const MAX_NAMES_SLACK: usize = 64 << 10;

/// `FLAG_ELF_LIBC6`: a glibc ELF library. Arch bits are or-ed in above it.
pub const FLAG_ELF_LIBC6: i32 = 0x0003;
pub const FLAG_X8664_LIB64: i32 = 0x0300;
pub const FLAG_S390_LIB64: i32 = 0x0400;
pub const FLAG_POWERPC_LIB64: i32 = 0x0500;
pub const FLAG_X8664_LIBX32: i32 = 0x0800;
pub const FLAG_AARCH64_LIB64: i32 = 0x0a00;

/// What is wrong with a cache file.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LdCacheError {
    #[error("not an ld.so.cache (unknown magic)")]
    BadMagic,
    #[error("truncated: {0}")]
    Truncated(&'static str),
    #[error("big-endian caches are not supported")]
    BigEndian,
    #[error(
        "string offset {0} is outside the file, not NUL-terminated or longer than {MAX_NAME_LEN} bytes"
    )]
    BadString(u32),
    #[error("file is larger than {MAX_CACHE_SIZE} bytes")]
    TooLarge,
    #[error("a name contains a NUL byte")]
    NulInName,
    #[error("it has {0} entries, more than the {MAX_ENTRIES} nvhook reads")]
    TooManyEntries(usize),
    #[error(
        "its names add up to more than {MAX_NAMES_FACTOR} times its size (entries share one string)"
    )]
    NamesTooLarge,
}

impl LdCacheError {
    /// Over one of nvhook's limits (size, entries, decoded names), as opposed to a format ld.so
    /// itself would not read: such a cache may well be in use, so it must not be replaced.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            LdCacheError::TooLarge | LdCacheError::NamesTooLarge | LdCacheError::TooManyEntries(_)
        )
    }
}

/// One library in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The name ld.so looks up: the soname (`libcuda.so.1`).
    pub key: String,
    /// The path ld.so opens (`/usr/lib/x86_64-linux-gnu/libcuda.so.1`).
    pub value: String,
    /// `FLAG_ELF_LIBC6 | arch bits`; ld.so skips entries of another ABI.
    pub flags: i32,
    pub osversion: u32,
    pub hwcap: u64,
}

impl Entry {
    /// A plain (non-hwcaps) entry for a library of the given ABI flags.
    pub fn new(key: impl Into<String>, value: impl Into<String>, flags: i32) -> Self {
        Entry {
            key: key.into(),
            value: value.into(),
            flags,
            osversion: 0,
            hwcap: 0,
        }
    }

    fn is_hwcaps_extension(&self) -> bool {
        self.hwcap & HWCAP_EXTENSION != 0 && (self.hwcap >> 32) == (HWCAP_EXTENSION >> 32)
    }
}

/// A parsed cache: entries in file order plus the glibc-hwcaps subdirectory names their `hwcap`
/// indexes refer to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LdCache {
    pub entries: Vec<Entry>,
    pub hwcaps: Vec<String>,
}

fn u32_at(buf: &[u8], off: usize) -> Option<u32> {
    let b = buf.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(buf: &[u8], off: usize) -> Option<u64> {
    let lo = u32_at(buf, off)? as u64;
    let hi = u32_at(buf, off.checked_add(4)?)? as u64;
    Some(lo | (hi << 32))
}

/// The bytes of the NUL-terminated string at `base + off`, without its NUL.
fn cbytes_at(buf: &[u8], base: usize, off: u32) -> Result<&[u8], LdCacheError> {
    let start = base
        .checked_add(off as usize)
        .filter(|s| *s < buf.len())
        .ok_or(LdCacheError::BadString(off))?;
    // never scan further than a name can be long: a string without NUL named by every entry
    // would make the parse quadratic
    let len = buf[start..]
        .iter()
        .take(MAX_NAME_LEN + 1)
        .position(|b| *b == 0)
        .ok_or(LdCacheError::BadString(off))?;
    Ok(&buf[start..start + len])
}

/// A NUL-terminated string at `base + off`. Invalid UTF-8 is kept lossily: names are compared as
/// bytes by ld.so, but no real library name is non-UTF-8 and we never write such a name back
/// unless it came from the same file.
fn cstr_at(buf: &[u8], base: usize, off: u32, budget: &mut usize) -> Result<String, LdCacheError> {
    let s = String::from_utf8_lossy(cbytes_at(buf, base, off)?).into_owned();
    // found by tests/fuzz.rs: 20,000 entries naming one 5 KB string made a 0.5 MB file decode
    // to 200 MB
    *budget = budget
        .checked_sub(s.len())
        .ok_or(LdCacheError::NamesTooLarge)?;
    Ok(s)
}

/// How many bytes of names a file of `len` bytes may decode to.
fn names_budget(len: usize) -> usize {
    len.saturating_mul(MAX_NAMES_FACTOR)
        .saturating_add(MAX_NAMES_SLACK)
}

impl LdCache {
    /// Parse a cache file's bytes.
    pub fn parse(buf: &[u8]) -> Result<Self, LdCacheError> {
        Self::parse_filtered(buf, |_| true)
    }

    /// Parse, keeping only the entries whose key `keep` accepts (the others are checked, not
    /// copied: a host's cache holds thousands of entries and the driver needs a few dozen).
    pub fn parse_filtered(buf: &[u8], keep: impl Fn(&[u8]) -> bool) -> Result<Self, LdCacheError> {
        if buf.len() > MAX_CACHE_SIZE {
            return Err(LdCacheError::TooLarge);
        }
        if buf.starts_with(NEW_MAGIC) {
            return Self::parse_new(buf, 0, &keep);
        }
        if buf.starts_with(OLD_MAGIC) {
            let nlibs = u32_at(buf, 12).ok_or(LdCacheError::Truncated("old header"))? as usize;
            let entries_end = nlibs
                .checked_mul(OLD_ENTRY_LEN)
                .and_then(|n| n.checked_add(OLD_HEADER_LEN))
                .filter(|n| *n <= buf.len())
                .ok_or(LdCacheError::Truncated("old entries"))?;
            // glibc aligns the new-format header that follows the old one to 8 bytes.
            let new_at = entries_end.next_multiple_of(8);
            if buf.get(new_at..).is_some_and(|b| b.starts_with(NEW_MAGIC)) {
                return Self::parse_new(buf, new_at, &keep);
            }
            return Self::parse_old(buf, nlibs, entries_end, &keep);
        }
        Err(LdCacheError::BadMagic)
    }

    fn parse_old(
        buf: &[u8],
        nlibs: usize,
        strings: usize,
        keep: &impl Fn(&[u8]) -> bool,
    ) -> Result<Self, LdCacheError> {
        if nlibs > MAX_ENTRIES {
            return Err(LdCacheError::TooManyEntries(nlibs));
        }
        let mut entries = Vec::with_capacity(nlibs);
        let mut budget = names_budget(buf.len());
        for i in 0..nlibs {
            let at = OLD_HEADER_LEN + i * OLD_ENTRY_LEN;
            let flags = u32_at(buf, at).ok_or(LdCacheError::Truncated("old entry"))? as i32;
            let key = u32_at(buf, at + 4).ok_or(LdCacheError::Truncated("old entry"))?;
            let value = u32_at(buf, at + 8).ok_or(LdCacheError::Truncated("old entry"))?;
            if !keep(cbytes_at(buf, strings, key)?) {
                continue;
            }
            entries.push(Entry {
                key: cstr_at(buf, strings, key, &mut budget)?,
                value: cstr_at(buf, strings, value, &mut budget)?,
                flags,
                osversion: 0,
                hwcap: 0,
            });
        }
        Ok(LdCache {
            entries,
            hwcaps: Vec::new(),
        })
    }

    fn parse_new(
        buf: &[u8],
        base: usize,
        keep: &impl Fn(&[u8]) -> bool,
    ) -> Result<Self, LdCacheError> {
        let hdr = buf
            .get(base..base + NEW_HEADER_LEN)
            .ok_or(LdCacheError::Truncated("header"))?;
        let nlibs = u32_at(hdr, 20).ok_or(LdCacheError::Truncated("header"))? as usize;
        if hdr[28] == 3 {
            return Err(LdCacheError::BigEndian);
        }
        let ext_off = u32_at(hdr, 32).ok_or(LdCacheError::Truncated("header"))? as usize;
        let entries_len = nlibs
            .checked_mul(NEW_ENTRY_LEN)
            .filter(|n| base + NEW_HEADER_LEN + n <= buf.len())
            .ok_or(LdCacheError::Truncated("entries"))?;
        // after the truncation check: a count the file cannot hold is a broken file (ld.so
        // ignores it), one it holds is over nvhook's limit
        if nlibs > MAX_ENTRIES {
            return Err(LdCacheError::TooManyEntries(nlibs));
        }
        let mut entries = Vec::with_capacity(entries_len / NEW_ENTRY_LEN);
        let mut budget = names_budget(buf.len());
        for i in 0..nlibs {
            let at = base + NEW_HEADER_LEN + i * NEW_ENTRY_LEN;
            let t = LdCacheError::Truncated("entry");
            let flags = u32_at(buf, at).ok_or(t.clone())? as i32;
            let key = u32_at(buf, at + 4).ok_or(t.clone())?;
            let value = u32_at(buf, at + 8).ok_or(t.clone())?;
            let osversion = u32_at(buf, at + 12).ok_or(t.clone())?;
            let hwcap = u64_at(buf, at + 16).ok_or(t)?;
            if !keep(cbytes_at(buf, base, key)?) {
                continue;
            }
            entries.push(Entry {
                key: cstr_at(buf, base, key, &mut budget)?,
                value: cstr_at(buf, base, value, &mut budget)?,
                flags,
                osversion,
                hwcap,
            });
        }
        let hwcaps = if ext_off != 0 {
            Self::parse_hwcaps(buf, base, ext_off, &mut budget)?
        } else {
            Vec::new()
        };
        Ok(LdCache { entries, hwcaps })
    }

    /// The glibc-hwcaps names of the extension directory. Unknown sections are skipped, as ld.so does.
    fn parse_hwcaps(
        buf: &[u8],
        base: usize,
        ext_off: usize,
        budget: &mut usize,
    ) -> Result<Vec<String>, LdCacheError> {
        let at = base.saturating_add(ext_off);
        if u32_at(buf, at) != Some(EXTENSION_MAGIC) {
            // ld.so ignores a missing or bad extension block; so do we.
            return Ok(Vec::new());
        }
        let count = u32_at(buf, at + 4).ok_or(LdCacheError::Truncated("extensions"))? as usize;
        let mut names = Vec::new();
        for i in 0..count.min(64) {
            let s = at + 8 + i * 16;
            let t = LdCacheError::Truncated("extension section");
            let tag = u32_at(buf, s).ok_or(t.clone())?;
            let offset = u32_at(buf, s + 8).ok_or(t.clone())? as usize;
            let size = u32_at(buf, s + 12).ok_or(t)? as usize;
            if tag != EXT_TAG_GLIBC_HWCAPS {
                continue;
            }
            for j in 0..size / 4 {
                let off = u32_at(buf, base.saturating_add(offset).saturating_add(j * 4))
                    .ok_or(LdCacheError::Truncated("glibc-hwcaps array"))?;
                names.push(cstr_at(buf, base, off, budget)?);
            }
        }
        Ok(names)
    }

    /// The first entry for `soname` whose flags are `flags`, in the order ld.so would try them.
    pub fn lookup(&self, soname: &str, flags: i32) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.key == soname && e.flags == flags && !e.is_hwcaps_extension())
    }

    /// Add `new` entries, replacing every entry of the image that has the same name and ABI (so
    /// the host driver's library wins over a stub the image may carry), and sort as ldconfig does.
    pub fn merge(&mut self, new: &[Entry]) {
        self.entries
            .retain(|e| !new.iter().any(|n| n.key == e.key && n.flags == e.flags));
        self.entries.extend(new.iter().cloned());
        // Stable: ties keep the image's own (ldconfig-made) order, and our entries, appended last,
        // have unique (name, flags).
        self.entries.sort_by(ldconfig_order);
    }

    /// Serialize in glibc's new format (what glibc >= 2.32 writes and every glibc since 2.3 reads).
    pub fn to_bytes(&self) -> Result<Vec<u8>, LdCacheError> {
        let mut strings = StringTable::default();
        let mut raw_entries = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            raw_entries.push((e, strings.add(&e.key)?, strings.add(&e.value)?));
        }
        let hwcap_offs = self
            .hwcaps
            .iter()
            .map(|h| strings.add(h))
            .collect::<Result<Vec<_>, _>>()?;
        let generator = strings.add(concat!("nvhook ", env!("CARGO_PKG_VERSION")))?;

        let strings_at = NEW_HEADER_LEN + self.entries.len() * NEW_ENTRY_LEN;
        let strings_end = strings_at + strings.bytes.len();
        let ext_at = strings_end.next_multiple_of(4);
        let nsections: usize = if hwcap_offs.is_empty() { 1 } else { 2 };
        let ext_data_at = ext_at + 8 + nsections * 16;

        let mut out = Vec::with_capacity(ext_data_at + hwcap_offs.len() * 4);
        out.extend_from_slice(NEW_MAGIC);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&(strings.bytes.len() as u32).to_le_bytes());
        out.push(2); // little endian
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&(ext_at as u32).to_le_bytes());
        out.extend_from_slice(&[0; 12]);
        for (e, k, v) in raw_entries {
            out.extend_from_slice(&e.flags.to_le_bytes());
            out.extend_from_slice(&(k + strings_at as u32).to_le_bytes());
            out.extend_from_slice(&(v + strings_at as u32).to_le_bytes());
            out.extend_from_slice(&e.osversion.to_le_bytes());
            out.extend_from_slice(&e.hwcap.to_le_bytes());
        }
        out.extend_from_slice(&strings.bytes);
        out.resize(ext_at, 0);
        out.extend_from_slice(&EXTENSION_MAGIC.to_le_bytes());
        out.extend_from_slice(&(nsections as u32).to_le_bytes());
        // The generator section points at its string inside the string table.
        let gen_len = concat!("nvhook ", env!("CARGO_PKG_VERSION")).len() as u32;
        for v in [EXT_TAG_GENERATOR, 0, generator + strings_at as u32, gen_len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        if !hwcap_offs.is_empty() {
            for v in [
                EXT_TAG_GLIBC_HWCAPS,
                0,
                ext_data_at as u32,
                (hwcap_offs.len() * 4) as u32,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            for off in hwcap_offs {
                out.extend_from_slice(&(off + strings_at as u32).to_le_bytes());
            }
        }
        Ok(out)
    }
}

/// Deduplicating NUL-terminated string table. The index borrows the names (no second copy of
/// every name while the file is built).
#[derive(Default)]
struct StringTable<'a> {
    bytes: Vec<u8>,
    index: std::collections::HashMap<&'a str, u32>,
}

impl<'a> StringTable<'a> {
    fn add(&mut self, s: &'a str) -> Result<u32, LdCacheError> {
        if s.as_bytes().contains(&0) {
            return Err(LdCacheError::NulInName);
        }
        if let Some(off) = self.index.get(s) {
            return Ok(*off);
        }
        let off = self.bytes.len() as u32;
        self.bytes.extend_from_slice(s.as_bytes());
        self.bytes.push(0);
        self.index.insert(s, off);
        Ok(off)
    }
}

/// ldconfig's entry order: names by [`libcmp`] descending, then flags descending, then glibc-hwcaps
/// entries before plain ones (ld.so stops at the first plain entry of a name).
pub fn ldconfig_order(a: &Entry, b: &Entry) -> Ordering {
    libcmp(b.key.as_bytes(), a.key.as_bytes())
        .then(b.flags.cmp(&a.flags))
        .then(b.is_hwcaps_extension().cmp(&a.is_hwcaps_extension()))
}

/// The name order ld.so's binary search relies on: byte-wise, except that runs of digits compare
/// as numbers and a digit sorts after any non-digit. Bytes compare as the platform's C `char`
/// (signed on x86), because that is how the ld.so reading the file compares them.
pub fn libcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    loop {
        let (ca, cb) = (a.get(i).copied(), b.get(j).copied());
        match (ca, cb) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let (dx, dy) = (x.is_ascii_digit(), y.is_ascii_digit());
                match (dx, dy) {
                    (true, true) => {
                        let (na, ni) = number(a, i);
                        let (nb, nj) = number(b, j);
                        if na != nb {
                            return na.cmp(&nb);
                        }
                        i = ni;
                        j = nj;
                    }
                    (true, false) => return Ordering::Greater,
                    (false, true) => return Ordering::Less,
                    (false, false) => {
                        if x != y {
                            return (x as std::ffi::c_char).cmp(&(y as std::ffi::c_char));
                        }
                        i += 1;
                        j += 1;
                    }
                }
            }
        }
    }
}

fn number(s: &[u8], mut i: usize) -> (u128, usize) {
    let mut v: u128 = 0;
    while let Some(d) = s.get(i).filter(|d| d.is_ascii_digit()) {
        v = v.saturating_mul(10).saturating_add((d - b'0') as u128);
        i += 1;
    }
    (v, i)
}

/// The ABI flags of this build's own architecture: what ld.so in a container of the same
/// architecture accepts for 64-bit libraries.
pub fn native_flags() -> i32 {
    match std::env::consts::ARCH {
        "x86_64" => FLAG_ELF_LIBC6 | FLAG_X8664_LIB64,
        "aarch64" => FLAG_ELF_LIBC6 | FLAG_AARCH64_LIB64,
        "powerpc64" => FLAG_ELF_LIBC6 | FLAG_POWERPC_LIB64,
        "s390x" => FLAG_ELF_LIBC6 | FLAG_S390_LIB64,
        _ => FLAG_ELF_LIBC6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libcmp_orders_digits_numerically_and_after_letters() {
        assert_eq!(libcmp(b"libc.so.10", b"libc.so.9"), Ordering::Greater);
        assert_eq!(libcmp(b"libc.so.6", b"libc.so.6"), Ordering::Equal);
        assert_eq!(libcmp(b"lib1", b"liba"), Ordering::Greater);
        assert_eq!(libcmp(b"libfoo.so", b"libfoo.so.1"), Ordering::Less);
        assert_eq!(libcmp(b"libx.so.007", b"libx.so.7"), Ordering::Equal);
        assert_eq!(libcmp(b"", b""), Ordering::Equal);
    }

    fn sample() -> LdCache {
        let f = native_flags();
        let mut c = LdCache::default();
        c.merge(&[
            Entry::new("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6", f),
            Entry::new("libm.so.6", "/lib/x86_64-linux-gnu/libm.so.6", f),
            Entry::new("libm.so.6", "/lib32/libm.so.6", FLAG_ELF_LIBC6),
        ]);
        c.hwcaps = vec!["x86-64-v3".into()];
        c.entries.push(Entry {
            hwcap: HWCAP_EXTENSION,
            ..Entry::new("libz.so.1", "/usr/lib/glibc-hwcaps/x86-64-v3/libz.so.1", f)
        });
        c
    }

    #[test]
    fn roundtrip() {
        let c = sample();
        let bytes = c.to_bytes().unwrap();
        assert_eq!(LdCache::parse(&bytes).unwrap(), c);
    }

    #[test]
    fn merge_sorts_descending_and_replaces_same_name_and_abi() {
        let f = native_flags();
        let mut c = sample();
        c.merge(&[
            Entry::new("libm.so.6", "/x/libm.so.6", f),
            Entry::new("libcuda.so.1", "/x/libcuda.so.1", f),
        ]);
        let keys: Vec<_> = c.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "libz.so.1",
                "libm.so.6",
                "libm.so.6",
                "libcuda.so.1",
                "libc.so.6"
            ]
        );
        // the 64-bit libm is ours now, the 32-bit one is kept
        assert_eq!(c.lookup("libm.so.6", f).unwrap().value, "/x/libm.so.6");
        assert_eq!(
            c.lookup("libm.so.6", FLAG_ELF_LIBC6).unwrap().value,
            "/lib32/libm.so.6"
        );
        // flags descending among equal names
        assert!(c.entries[1].flags > c.entries[2].flags);
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert_eq!(LdCache::parse(b""), Err(LdCacheError::BadMagic));
        assert_eq!(
            LdCache::parse(b"glibc-ld.so.cache1.1"),
            Err(LdCacheError::Truncated("header"))
        );
        let mut bytes = sample().to_bytes().unwrap();
        // point the first key far outside the file
        bytes[NEW_HEADER_LEN + 4..NEW_HEADER_LEN + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            LdCache::parse(&bytes),
            Err(LdCacheError::BadString(u32::MAX))
        );
        // huge nlibs
        let mut bytes = sample().to_bytes().unwrap();
        bytes[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            LdCache::parse(&bytes),
            Err(LdCacheError::Truncated("entries"))
        );
        // every truncation of a valid file is an error or a shorter valid parse, never a panic
        let bytes = sample().to_bytes().unwrap();
        for n in 0..bytes.len() {
            let _ = LdCache::parse(&bytes[..n]);
        }
    }

    /// Issue 16: a valid cache of millions of tiny entries decoded to 600-700 MiB; the entry
    /// count is refused from the header, before anything is allocated for it, and every limit
    /// error tells the caller not to replace the image's cache.
    #[test]
    fn entry_count_and_size_are_bounded() {
        let header = |n: u32| {
            let mut b = NEW_MAGIC.to_vec();
            b.extend_from_slice(&n.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.push(2);
            b.resize(NEW_HEADER_LEN, 0);
            b
        };
        let mut b = header((MAX_ENTRIES + 1) as u32);
        b.resize(NEW_HEADER_LEN + (MAX_ENTRIES + 1) * NEW_ENTRY_LEN, 0);
        let e = LdCache::parse(&b).unwrap_err();
        assert_eq!(e, LdCacheError::TooManyEntries(MAX_ENTRIES + 1));
        assert!(e.is_limit());
        // the old format's count too (a file that holds them; one that does not is truncated)
        let mut old = OLD_MAGIC.to_vec();
        old.resize(12, 0);
        old.extend_from_slice(&((MAX_ENTRIES + 1) as u32).to_le_bytes());
        let mut short = old.clone();
        old.resize(OLD_HEADER_LEN + (MAX_ENTRIES + 1) * OLD_ENTRY_LEN, 0);
        assert!(matches!(
            LdCache::parse(&old),
            Err(LdCacheError::TooManyEntries(_))
        ));
        short.resize(100, 0);
        assert!(matches!(
            LdCache::parse(&short),
            Err(LdCacheError::Truncated(_))
        ));
        assert!(LdCacheError::TooLarge.is_limit() && LdCacheError::NamesTooLarge.is_limit());
        assert!(!LdCacheError::BadMagic.is_limit() && !LdCacheError::Truncated("x").is_limit());
        let big = vec![0u8; MAX_CACHE_SIZE + 1];
        assert_eq!(LdCache::parse(&big), Err(LdCacheError::TooLarge));
    }

    /// Found by tests/fuzz.rs: every entry naming one long string (a small file that decodes to
    /// gigabytes) is refused after a bounded amount of work.
    #[test]
    fn entries_sharing_one_long_string_are_bounded() {
        let (n, len) = (40_000usize, 4000usize);
        let strings_at = (NEW_HEADER_LEN + n * NEW_ENTRY_LEN) as u32;
        let mut b = NEW_MAGIC.to_vec();
        b.extend_from_slice(&(n as u32).to_le_bytes());
        b.extend_from_slice(&(len as u32 + 1).to_le_bytes());
        b.push(2);
        b.resize(NEW_HEADER_LEN, 0);
        for _ in 0..n {
            for v in [native_flags() as u32, strings_at, strings_at, 0, 0, 0] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        b.resize(strings_at as usize + len, b'l');
        b.push(0);
        // 1 MB of file, 320 MB of names
        assert_eq!(LdCache::parse(&b), Err(LdCacheError::NamesTooLarge));
        // a name past PATH_MAX is refused without scanning on
        let long = LdCache {
            entries: vec![Entry::new(
                "x".repeat(MAX_NAME_LEN + 1),
                "/x",
                native_flags(),
            )],
            hwcaps: Vec::new(),
        };
        assert!(matches!(
            LdCache::parse(&long.to_bytes().unwrap()),
            Err(LdCacheError::BadString(_))
        ));
    }

    #[test]
    fn reads_and_rewrites_the_systems_own_cache() {
        // glibc's own writer is the reference; every glibc host running these tests has one.
        let bytes =
            std::fs::read("/etc/ld.so.cache").expect("this glibc host has /etc/ld.so.cache");
        let c = LdCache::parse(&bytes).unwrap();
        assert!(c.entries.iter().any(|e| e.key == "libc.so.6"));
        // re-serializing and parsing again keeps every entry
        let again = LdCache::parse(&c.to_bytes().unwrap()).unwrap();
        assert_eq!(again, c);
        // and the file is sorted the way our merge sorts
        let mut sorted = c.entries.clone();
        sorted.sort_by(ldconfig_order);
        assert_eq!(sorted, c.entries);
    }
}
