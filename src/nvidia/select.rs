//! Which GPUs and MIG devices a request selects, matched as nvidia-container-cli matches
//! (`src/cli/common.c`): `all` (case-insensitive, ends the list), a full `GPU-<uuid>`
//! (case-insensitive, no prefix match), a PCI bus id `domain:bus:device[.fn]`, a decimal index
//! (nvidia-smi order), a full `MIG-<uuid>`, or `<gpu>:<mig>`. Each device once, in first-mention
//! order; a MIG device brings its parent GPU.

use std::path::Path;

use serde::Serialize;

use super::gpus::Gpu;
use super::mig::{self, MigDevice, MigSource};
use super::request::{Devices, VISIBLE_DEVICES};
use crate::error::Error;

/// The selected devices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Selection {
    pub gpus: Vec<Gpu>,
    pub migs: Vec<MigDevice>,
}

impl Selection {
    fn add_gpu(&mut self, g: &Gpu) {
        if !self.gpus.iter().any(|o| o.uuid == g.uuid) {
            self.gpus.push(g.clone());
        }
    }

    fn add_mig(&mut self, m: MigDevice, gpus: &[Gpu]) {
        if let Some(parent) = gpus.iter().find(|g| g.index == m.parent) {
            self.add_gpu(parent);
        }
        if !self.migs.iter().any(|o| o.uuid == m.uuid) {
            self.migs.push(m);
        }
    }
}

/// `domain:bus:device[.function]` in hex -> (domain, bus, device).
pub fn parse_bus_id(s: &str) -> Option<(u64, u64, u64)> {
    let mut it = s.split(':');
    let (d, b, rest) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    let dev = rest.split_once('.').map_or(rest, |(dev, _)| dev);
    let hex = |x: &str| {
        (!x.is_empty() && x.len() <= 8)
            .then(|| u64::from_str_radix(x, 16).ok())
            .flatten()
    };
    Some((hex(d)?, hex(b)?, hex(dev)?))
}

/// `tok` is longer than `prefix` and starts with it, ASCII case-insensitively. (Not `tok[..4]`:
/// byte 4 of a hostile token may fall inside a character, and slicing there panics; found by
/// tests/fuzz.rs with `0\u{10000}`.)
fn has_prefix(tok: &str, prefix: &str) -> bool {
    tok.len() > prefix.len()
        && tok
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

/// A GPU token: full UUID, PCI bus id or index.
fn match_gpu<'g>(tok: &str, gpus: &'g [Gpu]) -> Option<&'g Gpu> {
    if has_prefix(tok, "GPU-") {
        return gpus.iter().find(|g| g.uuid.eq_ignore_ascii_case(tok));
    }
    if let Some(bus) = parse_bus_id(tok) {
        return gpus.iter().find(|g| parse_bus_id(&g.bus_id) == Some(bus));
    }
    // strtoumax accepts a leading '+'
    let digits = tok.strip_prefix('+').unwrap_or(tok);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        let i: u64 = digits.parse().ok()?;
        return gpus.iter().find(|g| u64::from(g.index) == i);
    }
    None
}

pub fn describe_gpus(gpus: &[Gpu]) -> String {
    if gpus.is_empty() {
        return "no GPUs".into();
    }
    let list: Vec<String> = gpus
        .iter()
        .map(|g| format!("{} ({}, {}, {})", g.index, g.uuid, g.bus_id, g.model))
        .collect();
    format!("{} GPU(s): {}", gpus.len(), list.join("; "))
}

/// Every GPU, and the MIG devices of those on which the kernel shows MIG instances (NVML is
/// asked only for those).
fn all(gpus: &[Gpu], proc_root: &Path, src: &mut dyn MigSource) -> Result<Selection, Error> {
    let mut s = Selection {
        gpus: gpus.to_vec(),
        migs: Vec::new(),
    };
    for g in gpus.iter().filter(|g| mig::has_instances(proc_root, g)) {
        s.migs.extend(src.mig_devices(g)?);
    }
    Ok(s)
}

/// The devices `devices` selects on this host.
pub fn select(
    devices: &Devices,
    gpus: &[Gpu],
    proc_root: &Path,
    src: &mut dyn MigSource,
) -> Result<Selection, Error> {
    let toks = match devices {
        Devices::None => return Ok(Selection::default()),
        Devices::All => return all(gpus, proc_root, src),
        Devices::List(t) => t,
    };
    let unknown = |t: &str| Error::UnknownDevice {
        var: VISIBLE_DEVICES.into(),
        id: crate::text::clip(t),
        available: describe_gpus(gpus),
    };
    let mut out = Selection::default();
    for t in toks {
        if t.eq_ignore_ascii_case("all") {
            return all(gpus, proc_root, src);
        }
        if let Some(g) = match_gpu(t, gpus) {
            out.add_gpu(g);
        } else if has_prefix(t, "MIG-") {
            let mut found = None;
            for g in gpus.iter().filter(|g| mig::has_instances(proc_root, g)) {
                found = src
                    .mig_devices(g)?
                    .into_iter()
                    .find(|m| m.uuid.eq_ignore_ascii_case(t));
                if found.is_some() {
                    break;
                }
            }
            out.add_mig(found.ok_or_else(|| unknown(t))?, gpus);
        } else if let Some((gi, mi)) = mig::parse_index_form(t) {
            let g = gpus
                .iter()
                .find(|g| g.index == gi)
                .ok_or_else(|| unknown(t))?;
            let m = src
                .mig_devices(g)?
                .into_iter()
                .find(|m| m.index == mi)
                .ok_or_else(|| unknown(t))?;
            out.add_mig(m, gpus);
        } else {
            return Err(unknown(t));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvidia::mig::fake::Fake;

    fn gpu(index: u32, uuid: &str, bus: &str, minor: u32) -> Gpu {
        Gpu {
            index,
            uuid: uuid.into(),
            minor,
            bus_id: bus.into(),
            model: "Fake".into(),
            proc_dir: Default::default(),
        }
    }

    fn mig(parent: u32, index: u32, uuid: &str) -> MigDevice {
        MigDevice {
            parent,
            index,
            uuid: uuid.into(),
            gi: index + 1,
            ci: 0,
        }
    }

    fn l(t: &[&str]) -> Devices {
        Devices::List(t.iter().map(|s| s.to_string()).collect())
    }

    /// A proc root where GPU minor 0 (index 1 below) has MIG instances.
    fn proc_with_mig() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("nvhook-select-{}", std::process::id()));
        std::fs::create_dir_all(d.join("driver/nvidia/capabilities/gpu0/mig/gi1")).unwrap();
        d
    }

    /// Device selection, each row citing nvidia-container-cli (src/cli/common.c select_devices).
    #[test]
    // Long by design: one table of GPU/MIG selection cases, one row each.
    fn selection_table() {
        let gpus = [
            gpu(0, "GPU-aaaa-1111", "0000:3b:00.0", 1),
            gpu(1, "GPU-bbbb-2222", "0000:86:00.0", 0),
        ];
        let proc = proc_with_mig();
        let migs = vec![mig(1, 0, "MIG-cccc-3333"), mig(1, 1, "MIG-dddd-4444")];
        type Row<'a> = (Devices, &'a [&'a str], &'a [&'a str], &'a str);
        let rows: &[Row] = &[
            (
                Devices::All,
                &["GPU-aaaa-1111", "GPU-bbbb-2222"],
                &["MIG-cccc-3333", "MIG-dddd-4444"],
                "all: every GPU in index order, then every MIG device",
            ),
            (Devices::None, &[], &[], "none: no device"),
            (l(&["1"]), &["GPU-bbbb-2222"], &[], "decimal NVML index"),
            (
                l(&["1", "0"]),
                &["GPU-bbbb-2222", "GPU-aaaa-1111"],
                &[],
                "order of first mention",
            ),
            (
                l(&["0", "GPU-AAAA-1111"]),
                &["GPU-aaaa-1111"],
                &[],
                "duplicates by identity; UUID case-insensitive",
            ),
            (l(&["0000:86:00.0"]), &["GPU-bbbb-2222"], &[], "PCI bus id"),
            (
                l(&["ALL"]),
                &["GPU-aaaa-1111", "GPU-bbbb-2222"],
                &["MIG-cccc-3333", "MIG-dddd-4444"],
                "the cli matches all case-insensitively",
            ),
            (
                l(&["+0"]),
                &["GPU-aaaa-1111"],
                &[],
                "strtoumax accepts a sign",
            ),
            (
                l(&["MIG-DDDD-4444"]),
                &["GPU-bbbb-2222"],
                &["MIG-dddd-4444"],
                "MIG UUID brings its parent GPU",
            ),
            (
                l(&["1:0", "0"]),
                &["GPU-bbbb-2222", "GPU-aaaa-1111"],
                &["MIG-cccc-3333"],
                "<gpu>:<mig> index form",
            ),
        ];
        for (dev, want_gpus, want_migs, why) in rows {
            let mut src = Fake {
                devices: migs.clone(),
                calls: 0,
            };
            let s = select(dev, &gpus, &proc, &mut src).unwrap();
            let g: Vec<_> = s.gpus.iter().map(|g| g.uuid.as_str()).collect();
            let m: Vec<_> = s.migs.iter().map(|m| m.uuid.as_str()).collect();
            assert_eq!(
                (g.as_slice(), m.as_slice()),
                (*want_gpus, *want_migs),
                "{why}"
            );
        }
        for bad in [
            "2",
            "GPU-aaaa",
            "GPU-cccc-3333",
            "0000:99:00.0",
            "x",
            "86:00.0",
            "1:5",
            "5:0",
            "MIG-eeee",
        ] {
            let mut src = Fake {
                devices: migs.clone(),
                calls: 0,
            };
            let e = select(&l(&[bad]), &gpus, &proc, &mut src)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(bad) && e.contains("GPU-aaaa-1111") && e.contains("GPU-bbbb-2222"),
                "{e}"
            );
        }
        let mut src = Fake {
            devices: vec![],
            calls: 0,
        };
        let e = select(&l(&["0"]), &[], &proc, &mut src)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no GPUs"), "{e}");
        std::fs::remove_dir_all(&proc).unwrap();
    }

    #[test]
    fn nvml_is_not_asked_without_mig_instances() {
        let gpus = [gpu(0, "GPU-aaaa-1111", "0000:3b:00.0", 1)];
        let mut src = Fake {
            devices: vec![],
            calls: 0,
        };
        let s = select(&Devices::All, &gpus, Path::new("/nonexistent"), &mut src).unwrap();
        assert_eq!((s.gpus.len(), s.migs.len(), src.calls), (1, 0, 0));
        select(
            &l(&["0", "GPU-aaaa-1111", "0000:3b:00.0"]),
            &gpus,
            Path::new("/nonexistent"),
            &mut src,
        )
        .unwrap();
        assert_eq!(src.calls, 0);
    }

    /// Found by tests/fuzz.rs: a token whose 4th byte is inside a character panicked.
    #[test]
    fn tokens_split_inside_a_character_are_unknown_not_a_panic() {
        let gpus = [gpu(0, "GPU-aaaa-1111", "0000:3b:00.0", 1)];
        for t in ["0\u{10000}", "GP\u{e9}-x", "MI\u{10000}"] {
            let e = select(
                &l(&[t]),
                &gpus,
                Path::new("/nonexistent"),
                &mut Fake {
                    devices: Vec::new(),
                    calls: 0,
                },
            );
            assert!(
                matches!(e, Err(Error::UnknownDevice { .. })),
                "{t:?}: {e:?}"
            );
        }
    }
}
