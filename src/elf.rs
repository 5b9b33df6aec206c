//! Just enough ELF to learn a shared library's soname and ABI.
//!
//! Used where the driver root has no `ld.so.cache` and libraries are found by scanning directories:
//! the file name (`libnvidia-glcore.so.550.54.15`) does not tell the soname (`libnvidia-glcore.so.550.54.15`
//! there, but `libcuda.so.1` for `libcuda.so.550.54.15`), so we read `DT_SONAME`, as ldconfig does.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::ldcache::{
    FLAG_AARCH64_LIB64, FLAG_ELF_LIBC6, FLAG_POWERPC_LIB64, FLAG_S390_LIB64, FLAG_X8664_LIB64,
    FLAG_X8664_LIBX32,
};

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_STRTAB: u64 = 5;
const DT_SONAME: u64 = 14;
const EM_386: u16 = 3;
const EM_PPC64: u16 = 21;
const EM_S390: u16 = 22;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// What a library's headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    pub soname: Option<String>,
    /// ld.so.cache flags for this ABI (`FLAG_ELF_LIBC6 | arch bits`).
    pub cache_flags: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("unsupported ELF: {0}")]
    Unsupported(&'static str),
    #[error("malformed ELF: {0}")]
    Malformed(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Where the ELF bytes come from: an open file (positioned reads, nothing read that is not
/// asked for) or a buffer (what the fuzz harnesses feed).
trait Source {
    /// Read up to `buf.len()` bytes at `off`; the count read.
    fn pread(&self, buf: &mut [u8], off: u64) -> std::io::Result<usize>;
    /// Read exactly `len` bytes at `off`, or fail.
    fn pread_exact(&self, off: u64, len: usize) -> std::io::Result<Vec<u8>>;
}

impl Source for File {
    fn pread(&self, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
        self.read_at(buf, off)
    }
    fn pread_exact(&self, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        self.read_exact_at(&mut b, off)?;
        Ok(b)
    }
}

impl Source for [u8] {
    fn pread(&self, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
        let rest = usize::try_from(off)
            .ok()
            .and_then(|o| self.get(o..))
            .unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
    fn pread_exact(&self, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
        usize::try_from(off)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(len)?))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
    }
}

struct Reader<'a, S: Source + ?Sized> {
    file: &'a S,
    wide: bool,
}

impl<S: Source + ?Sized> Reader<'_, S> {
    fn bytes(&self, off: u64, len: usize) -> Result<Vec<u8>, ElfError> {
        self.file
            .pread_exact(off, len)
            .map_err(|_| ElfError::Malformed("read past end of file"))
    }
    fn word(&self, b: &[u8], off: usize) -> u64 {
        if self.wide {
            u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or([0; 8]))
        } else {
            u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or([0; 4])) as u64
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Read the soname and ABI of the ELF shared object at `path`.
pub fn read(path: &Path) -> Result<ElfInfo, ElfError> {
    read_file(&File::open(path)?)
}

/// Read the soname and ABI of an open ELF file (which may come from a container image: every
/// offset is bounds-checked through positioned reads, and sizes are capped).
pub fn read_file(file: &File) -> Result<ElfInfo, ElfError> {
    read_from(file)
}

/// [`read_file`] of an ELF image in memory (the fuzz harnesses' entry point).
pub fn read_bytes(bytes: &[u8]) -> Result<ElfInfo, ElfError> {
    read_from(bytes)
}

fn read_from<S: Source + ?Sized>(file: &S) -> Result<ElfInfo, ElfError> {
    let (ident, wide, cache_flags) = read_header(file)?;
    let r = Reader { file, wide };
    let (loads, dynamic) = read_segments(&r, &ident)?;
    let Some((dyn_off, dyn_size)) = dynamic else {
        return Ok(ElfInfo {
            soname: None,
            cache_flags,
        });
    };
    let soname = read_soname(&r, &loads, dyn_off, dyn_size)?;
    Ok(ElfInfo {
        soname,
        cache_flags,
    })
}

/// The ELF header's first 64 bytes, whether the file is ELFCLASS64, and the ld.so.cache flags of
/// its ABI; an error for anything but a little-endian ELF of a known machine.
fn read_header<S: Source + ?Sized>(file: &S) -> Result<([u8; 64], bool, i32), ElfError> {
    let ident = {
        let mut b = [0u8; 64];
        let n = file.pread(&mut b, 0)?;
        if n < 52 || &b[..4] != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        b
    };
    let wide = match ident[4] {
        1 => false,
        2 => true,
        _ => return Err(ElfError::Malformed("bad class")),
    };
    if ident[5] != 1 {
        return Err(ElfError::Unsupported("big-endian"));
    }
    let machine = u16_at(&ident, 18);
    let cache_flags = FLAG_ELF_LIBC6
        | match (machine, wide) {
            (EM_X86_64, true) => FLAG_X8664_LIB64,
            (EM_X86_64, false) => FLAG_X8664_LIBX32,
            (EM_AARCH64, true) => FLAG_AARCH64_LIB64,
            (EM_PPC64, true) => FLAG_POWERPC_LIB64,
            (EM_S390, true) => FLAG_S390_LIB64,
            (EM_386, false) => 0,
            _ => return Err(ElfError::Unsupported("machine")),
        };
    Ok((ident, wide, cache_flags))
}

/// (vaddr, offset, filesz) of each PT_LOAD, and (offset, filesz) of the PT_DYNAMIC segment.
type Segments = (Vec<(u64, u64, u64)>, Option<(u64, u64)>);

/// The program headers' PT_LOAD and PT_DYNAMIC segments.
fn read_segments<S: Source + ?Sized>(
    r: &Reader<'_, S>,
    ident: &[u8; 64],
) -> Result<Segments, ElfError> {
    let wide = r.wide;
    let (phoff, phentsize, phnum) = if wide {
        (r.word(ident, 32), u16_at(ident, 54), u16_at(ident, 56))
    } else {
        (r.word(ident, 28), u16_at(ident, 42), u16_at(ident, 44))
    };
    let min_ph = if wide { 56 } else { 32 };
    // phentsize is 56 (32 for ELFCLASS32): a larger one, times 512 headers, was up to 32 MiB read
    if (phentsize as usize) < min_ph || phentsize > 256 || phnum > 512 {
        return Err(ElfError::Malformed("program headers"));
    }
    let ph = r.bytes(phoff, phentsize as usize * phnum as usize)?;
    let mut loads = Vec::new();
    let mut dynamic = None;
    for i in 0..phnum as usize {
        let p = &ph[i * phentsize as usize..];
        let ty = u32_at(p, 0);
        let (off, vaddr, filesz) = if wide {
            (r.word(p, 8), r.word(p, 16), r.word(p, 32))
        } else {
            (r.word(p, 4), r.word(p, 8), r.word(p, 16))
        };
        match ty {
            PT_LOAD => loads.push((vaddr, off, filesz)),
            PT_DYNAMIC => dynamic = Some((off, filesz)),
            _ => {}
        }
    }
    Ok((loads, dynamic))
}

/// `DT_SONAME` of the dynamic section at `dyn_off`, read from the string table that `loads`
/// maps; `None` when the section names no soname (or no string table).
fn read_soname<S: Source + ?Sized>(
    r: &Reader<'_, S>,
    loads: &[(u64, u64, u64)],
    dyn_off: u64,
    dyn_size: u64,
) -> Result<Option<String>, ElfError> {
    let dyn_size = dyn_size.min(64 * 1024) as usize;
    let d = r.bytes(dyn_off, dyn_size)?;
    let ent = if r.wide { 16 } else { 8 };
    let half = ent / 2;
    let (mut strtab, mut soname) = (None, None);
    for e in d.chunks_exact(ent) {
        let tag = r.word(e, 0);
        let val = r.word(e, half);
        match tag {
            DT_NULL => break,
            DT_STRTAB => strtab = Some(val),
            DT_SONAME => soname = Some(val),
            _ => {}
        }
    }
    let (Some(strtab), Some(idx)) = (strtab, soname) else {
        return Ok(None);
    };
    // DT_STRTAB is an address: map it to a file offset through the PT_LOAD that holds it.
    let file_off = loads
        .iter()
        .find(|(va, _, sz)| strtab >= *va && strtab < va.saturating_add(*sz))
        .and_then(|(va, off, _)| (strtab - va).checked_add(*off))
        .ok_or(ElfError::Malformed("DT_STRTAB outside loaded segments"))?;
    let raw = r
        .bytes(file_off.saturating_add(idx), 256)
        .or_else(|_| r.bytes(file_off.saturating_add(idx), 1))?;
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    Ok(Some(String::from_utf8_lossy(&raw[..end]).into_owned()))
}

/// The CUDA version a libcuda declares in its `.note.cuda.fwd_compatibility` ELF note (a JSON
/// description, `{"CUDA Version": "13.0", ...}`, owner "NVIDIA Corporation"), read without loading
/// the library. NVIDIA's toolkit reads the same note of forward-compat libcuda copies.
pub fn cuda_version_note(file: &File) -> Option<String> {
    note_from(file)
}

/// [`cuda_version_note`] of an ELF image in memory (the fuzz harnesses' entry point).
pub fn cuda_version_note_bytes(bytes: &[u8]) -> Option<String> {
    note_from(bytes)
}

fn note_from<S: Source + ?Sized>(file: &S) -> Option<String> {
    const SHT_NOTE: u32 = 7;
    let mut h = [0u8; 64];
    if file.pread(&mut h, 0).ok()? < 52 || &h[..4] != b"\x7fELF" || h[5] != 1 {
        return None;
    }
    let wide = h[4] == 2;
    let r = Reader { file, wide };
    let (shoff, shentsize, shnum, shstrndx) = if wide {
        (
            r.word(&h, 40),
            u16_at(&h, 58) as usize,
            u16_at(&h, 60) as usize,
            u16_at(&h, 62) as usize,
        )
    } else {
        (
            r.word(&h, 32),
            u16_at(&h, 46) as usize,
            u16_at(&h, 48) as usize,
            u16_at(&h, 50) as usize,
        )
    };
    // shentsize is 64 (40): a larger one, times 4096 sections, was up to 256 MiB read
    if shnum == 0
        || shnum > 4096
        || shentsize < if wide { 64 } else { 40 }
        || shentsize > 256
        || shstrndx >= shnum
    {
        return None;
    }
    let sh = r.bytes(shoff, shentsize * shnum).ok()?;
    // (name offset, type, file offset, size) of a section header
    let section = |i: usize| {
        let s = &sh[i * shentsize..];
        if wide {
            (u32_at(s, 0), u32_at(s, 4), r.word(s, 24), r.word(s, 32))
        } else {
            (u32_at(s, 0), u32_at(s, 4), r.word(s, 16), r.word(s, 20))
        }
    };
    let (_, _, str_off, str_size) = section(shstrndx);
    let names = r.bytes(str_off, str_size.min(1 << 20) as usize).ok()?;
    let want = b".note.cuda.fwd_compatibility\0";
    let (_, _, off, size) = (0..shnum).map(section).find(|(name, ty, _, _)| {
        *ty == SHT_NOTE
            && names
                .get(*name as usize..)
                .is_some_and(|n| n.starts_with(want))
    })?;
    let data = r.bytes(off, size.min(64 * 1024) as usize).ok()?;
    if data.len() < 12 {
        return None;
    }
    let (namesz, descsz) = (u32_at(&data, 0) as usize, u32_at(&data, 4) as usize);
    let name_end = 12usize.checked_add(namesz)?;
    let owner = data.get(12..name_end)?;
    if owner.strip_suffix(b"\0").unwrap_or(owner) != b"NVIDIA Corporation" {
        return None;
    }
    let desc_at = 12 + namesz.next_multiple_of(4);
    let desc = data.get(desc_at..desc_at.checked_add(descsz)?)?;
    let desc = desc.split(|b| *b == 0).next()?;
    let v: serde_json::Value = serde_json::from_slice(desc).ok()?;
    // The key's case varies between drivers ("CUDA Version", "CUDA version"); the toolkit reads it
    // with Go's case-insensitive JSON matching.
    let cuda = v
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("cuda version"))
        .map(|(_, v)| v)?;
    cuda.as_str()
        .map(str::to_owned)
        .or_else(|| Some(cuda.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libc_soname() {
        // any glibc host has its libc; find it through the system cache like ld.so would
        let cache =
            crate::ldcache::LdCache::parse(&std::fs::read("/etc/ld.so.cache").unwrap()).unwrap();
        let e = cache
            .lookup("libc.so.6", crate::ldcache::native_flags())
            .unwrap();
        let info = read(Path::new(&e.value)).unwrap();
        assert_eq!(info.soname.as_deref(), Some("libc.so.6"));
        assert_eq!(info.cache_flags, crate::ldcache::native_flags());
    }

    #[test]
    fn cuda_version_note_of_a_library_that_has_one() {
        // build one: a shared object with the note as NVIDIA's libcuda carries it
        let d = std::env::temp_dir().join(format!("nvhook-note-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        // as the 580 driver writes it (lower-case "version")
        let desc = br#"{"format":1,"CUDA version":"12.4","driver":[550,54],"device":[]}"#;
        let mut note = Vec::new();
        let name = b"NVIDIA Corporation\0";
        note.extend_from_slice(&(name.len() as u32).to_le_bytes());
        note.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        note.extend_from_slice(&1u32.to_le_bytes());
        note.extend_from_slice(name);
        note.resize(12 + name.len().next_multiple_of(4), 0);
        note.extend_from_slice(desc);
        std::fs::write(d.join("note.bin"), &note).unwrap();
        std::fs::write(d.join("x.c"), "int f(void){return 1;}").unwrap();
        let ok = |c: &mut std::process::Command| c.status().unwrap().success();
        assert!(ok(std::process::Command::new("gcc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(d.join("x.so"))
            .arg(d.join("x.c"))));
        assert!(ok(std::process::Command::new("objcopy")
            .arg(format!(
                "--add-section=.note.cuda.fwd_compatibility={}",
                d.join("note.bin").display()
            ))
            .arg(d.join("x.so"))));
        let v = cuda_version_note(&File::open(d.join("x.so")).unwrap());
        let none = cuda_version_note(&File::open(d.join("x.c")).unwrap());
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(v.as_deref(), Some("12.4"));
        assert_eq!(none, None);
    }

    /// A PT_LOAD offset near 2^64 overflowed the DT_STRTAB address -> offset sum (a panic in
    /// debug builds); read while writing the fuzz harness.
    #[test]
    fn huge_segment_offset_is_malformed_not_a_panic() {
        let cache =
            crate::ldcache::LdCache::parse(&std::fs::read("/etc/ld.so.cache").unwrap()).unwrap();
        let e = cache
            .lookup("libc.so.6", crate::ldcache::native_flags())
            .unwrap();
        let mut b = std::fs::read(&e.value).unwrap();
        let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
        let (phentsize, phnum) = (u16_at(&b, 54) as usize, u16_at(&b, 56) as usize);
        for i in 0..phnum {
            let p = phoff + i * phentsize;
            if u32_at(&b, p) == PT_LOAD {
                b[p + 8..p + 16].copy_from_slice(&(u64::MAX - 16).to_le_bytes());
            }
        }
        assert!(read_bytes(&b).is_err());
    }

    #[test]
    fn rejects_non_elf() {
        let dir = std::env::temp_dir().join(format!("nvhook-elf-{}", std::process::id()));
        std::fs::write(&dir, b"#!/bin/sh\necho hi\n").unwrap();
        assert!(matches!(read(&dir), Err(ElfError::NotElf)));
        std::fs::remove_file(&dir).unwrap();
    }
}
