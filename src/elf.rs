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

struct Reader<'a> {
    file: &'a File,
    wide: bool,
}

impl Reader<'_> {
    fn bytes(&self, off: u64, len: usize) -> Result<Vec<u8>, ElfError> {
        let mut b = vec![0u8; len];
        self.file
            .read_exact_at(&mut b, off)
            .map_err(|_| ElfError::Malformed("read past end of file"))?;
        Ok(b)
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
    let ident = {
        let mut b = [0u8; 64];
        let n = file.read_at(&mut b, 0)?;
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
    let r = Reader { file, wide };
    let (phoff, phentsize, phnum) = if wide {
        (r.word(&ident, 32), u16_at(&ident, 54), u16_at(&ident, 56))
    } else {
        (r.word(&ident, 28), u16_at(&ident, 42), u16_at(&ident, 44))
    };
    let min_ph = if wide { 56 } else { 32 };
    if (phentsize as usize) < min_ph || phnum > 512 {
        return Err(ElfError::Malformed("program headers"));
    }
    let ph = r.bytes(phoff, phentsize as usize * phnum as usize)?;
    // (vaddr, offset, filesz) of each PT_LOAD, and the PT_DYNAMIC segment
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
    let Some((dyn_off, dyn_size)) = dynamic else {
        return Ok(ElfInfo {
            soname: None,
            cache_flags,
        });
    };
    let dyn_size = dyn_size.min(64 * 1024) as usize;
    let d = r.bytes(dyn_off, dyn_size)?;
    let ent = if wide { 16 } else { 8 };
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
    let soname = match (strtab, soname) {
        (Some(strtab), Some(idx)) => {
            // DT_STRTAB is an address: map it to a file offset through the PT_LOAD that holds it.
            let file_off = loads
                .iter()
                .find(|(va, _, sz)| strtab >= *va && strtab < va.saturating_add(*sz))
                .map(|(va, off, _)| strtab - va + off)
                .ok_or(ElfError::Malformed("DT_STRTAB outside loaded segments"))?;
            let raw = r
                .bytes(file_off.saturating_add(idx), 256)
                .or_else(|_| r.bytes(file_off.saturating_add(idx), 1))?;
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            Some(String::from_utf8_lossy(&raw[..end]).into_owned())
        }
        _ => None,
    };
    Ok(ElfInfo {
        soname,
        cache_flags,
    })
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
    fn rejects_non_elf() {
        let dir = std::env::temp_dir().join(format!("nvhook-elf-{}", std::process::id()));
        std::fs::write(&dir, b"#!/bin/sh\necho hi\n").unwrap();
        assert!(matches!(read(&dir), Err(ElfError::NotElf)));
        std::fs::remove_file(&dir).unwrap();
    }
}
