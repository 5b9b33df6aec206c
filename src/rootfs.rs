//! Paths inside a root directory (the container's rootfs, the driver root), resolved with the
//! kernel's help.
//!
//! The rootfs belongs to the image's author: any component of any path may be a symlink to `/`,
//! to `../../..`, to `/proc/self/root`, and may be swapped while we work (CVE-2024-0132 was exactly
//! that race in NVIDIA's toolkit). So no path string is ever joined onto the rootfs path and
//! handed to a syscall. Every lookup is `openat2(rootfd, path, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`,
//! which makes the kernel treat the rootfs as `/` for `..` and absolute symlinks, refuses
//! `/proc/*/fd`-style magic links, and fails with EAGAIN rather than resolve across a concurrent
//! rename. Everything after that works on the returned descriptor (`*at` calls, `move_mount`),
//! so a swap after the lookup changes nothing: the descriptor still names the inode we checked.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Errors of in-root operations; `path` is always the container path, as the user would see it.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot open the container rootfs {path}: {source}")]
    OpenRoot { path: PathBuf, source: Errno },
    #[error("container path {path} is not a clean absolute path")]
    BadPath { path: String },
    #[error("cannot resolve {path} inside the container rootfs: {source}")]
    Resolve { path: String, source: Errno },
    #[error("cannot create {path} inside the container rootfs: {source}")]
    Create { path: String, source: Errno },
    #[error("{path} inside the container rootfs is {found}, expected {expected}")]
    WrongType {
        path: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error("cannot write {path} inside the container rootfs: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} inside the container rootfs is larger than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    #[error(
        "{path} inside the container rootfs lies on {mount_point}, a mount with shared propagation (shared:{peer_group}): a mount attached there would propagate out of the container (to the host or other containers), so nvhook refuses; mount that volume rprivate or rslave, or keep the image's directories out of it"
    )]
    SharedMount {
        path: String,
        mount_point: String,
        peer_group: String,
    },
    #[error("cannot tell the propagation of the mount under {path}: {reason}")]
    MountTable { path: String, reason: String },
}

type Result<T> = std::result::Result<T, RootfsError>;

/// How many times to retry a lookup the kernel refused with EAGAIN (a rename or mount raced it).
const EAGAIN_RETRIES: usize = 32;

/// The largest file whose original content the journal keeps (the image's linker cache is read
/// up to the same size).
const MAX_JOURNALED_FILE: u64 = 64 << 20;

/// The container's rootfs, opened once. All paths given to its methods are container paths
/// (`/usr/lib/...`), which may be absolute; `..` and `.` components are refused.
pub struct Rootfs {
    fd: OwnedFd,
    path: PathBuf,
    /// This mount namespace's mounts by id, read when first needed (and again for an id it
    /// does not hold yet, a mount made since).
    mounts: std::sync::Mutex<HashMap<u64, MountEntry>>,
    /// What this process changed in the rootfs, when asked to keep a journal
    /// ([`Rootfs::open_journaled`]), so that `nvhook poststop` can undo exactly that.
    journal: Option<RefCell<Journal>>,
    /// Directories resolved (and created) for the entries made in them, by container path
    /// without the leading `/`: a start creates ~30 mount points in a handful of directories,
    /// and each is resolved once.
    dirs: RefCell<HashMap<String, Rc<Dir>>>,
}

/// A directory of the rootfs, resolved in-root once.
struct Dir {
    fd: OwnedFd,
    /// Its path below the root's real path, for the journal (read once; None when not
    /// journaling, or when the kernel names it outside the root).
    rel: Option<String>,
    /// Its mount was checked: no shared propagation, so new files in it can be mount points.
    unshared: Cell<bool>,
}

/// One mount of a mountinfo table: where it is, and its shared peer group if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: String,
    /// `shared:N`: mounts attached under it are copied to every peer (and their slaves).
    pub shared: Option<String>,
}

/// Mount id -> entry, from mountinfo text (pure). Lines that do not parse are skipped.
pub fn parse_mount_table(text: &str) -> HashMap<u64, MountEntry> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some((pre, _)) = line.split_once(" - ") else {
            continue;
        };
        let f: Vec<&str> = pre.split(' ').collect();
        let (Some(id), Some(mp)) = (f.first().and_then(|i| i.parse().ok()), f.get(4)) else {
            continue;
        };
        let shared = f
            .iter()
            .skip(6)
            .find_map(|t| t.strip_prefix("shared:"))
            .map(str::to_owned);
        out.insert(
            id,
            MountEntry {
                mount_point: (*mp).to_owned(),
                shared,
            },
        );
    }
    out
}

/// The identity of an inode: what `stat` says, `st_dev` and `st_ino`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
}

impl Identity {
    pub fn of(st: &nix::sys::stat::FileStat) -> Identity {
        Identity {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// What was at a path before nvhook put its own entry there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Before {
    /// nothing: the entry was created
    Absent,
    /// a symlink (replaced by a file, or by a symlink with another target)
    Symlink { target: String, id: Identity },
    /// a regular file, replaced by a rename
    File {
        mode: u32,
        uid: u32,
        gid: u32,
        content: Vec<u8>,
        id: Identity,
    },
    /// something that cannot be put back (a FIFO, a device node, a file too large to keep)
    Unrestorable { id: Identity },
}

/// One change nvhook made in the rootfs: at `path` (the path with every symlink resolved, as
/// the kernel resolved it, relative to the rootfs, so it can be found again without following
/// any symlink) it put `kind`, whose inode is `id`, where `before` was.
///
/// `at` (CLOCK_BOOTTIME, ns) orders replacements across containers: it is read after `before`
/// was looked at and before the change was made, so when one container replaced what another
/// put there, the later one's `at` is the larger. Inode numbers alone cannot tell: the image's
/// file that the first replacement freed may come back as the second one's inode. 0 where
/// nothing was there (a creation needs the path free, so it cannot be mistaken that way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub kind: Kind,
    pub id: Identity,
    pub before: Before,
    pub at: u64,
}

/// The changes made, in order, and the real path of the root they are relative to.
#[derive(Debug, Default)]
struct Journal {
    root_real: PathBuf,
    changes: Vec<Change>,
    /// when [`Rootfs::before`] last looked (taken by the change journaled next)
    observed_at: u64,
}

/// Now, on CLOCK_BOOTTIME, in nanoseconds (0 if the clock cannot be read).
fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The path, in the current mount namespace, of what `fd` refers to.
pub fn fd_path(fd: &OwnedFd) -> std::result::Result<PathBuf, Errno> {
    nix::fcntl::readlink(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd)).as_str())
        .map(PathBuf::from)
}

/// What a path inside the rootfs is, without following a final symlink.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

impl Kind {
    fn of(mode: u32) -> Kind {
        match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Dir => "a directory",
            Kind::File => "a regular file",
            Kind::Symlink => "a symlink",
            Kind::Other => "a device, FIFO or socket",
        }
    }
}

/// Split a container path into its normal components, refusing `..` (and NUL bytes, which
/// `Path` cannot carry anyway).
fn components(path: &str) -> Result<Vec<&str>> {
    let mut out = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => out.push(s.to_str().ok_or_else(|| RootfsError::BadPath {
                path: path.to_owned(),
            })?),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(RootfsError::BadPath {
                    path: path.to_owned(),
                });
            }
        }
    }
    Ok(out)
}

fn in_root(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Create the regular file `name` in `dir`, which must not exist (`O_EXCL`: never through a
/// symlink, never an existing file), with permissions `mode`, open for writing.
pub fn create_exclusive(
    dir: BorrowedFd<'_>,
    name: &str,
    mode: u32,
) -> std::result::Result<OwnedFd, Errno> {
    openat(
        dir,
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )
}

/// An empty mount-point file `name` in `dir` ([`create_exclusive`], 0644).
fn create_new_file(dir: BorrowedFd<'_>, name: &str) -> std::result::Result<OwnedFd, Errno> {
    create_exclusive(dir, name, 0o644)
}

impl Rootfs {
    /// Open the rootfs directory. `path` comes from the runtime (the bundle's `root.path`), not from
    /// the image, so it is opened normally.
    pub fn open(path: &Path) -> Result<Rootfs> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|source| RootfsError::OpenRoot {
            path: path.to_owned(),
            source,
        })?;
        Ok(Rootfs {
            fd,
            path: path.to_owned(),
            mounts: std::sync::Mutex::new(HashMap::new()),
            journal: None,
            dirs: RefCell::new(HashMap::new()),
        })
    }

    /// Refuse when `fd` lies on a mount with shared propagation: a mount attached there would
    /// be copied to the mount's peers, outside the container (issue 16: a user volume mounted
    /// `rshared`, with an image directory symlinked into it, sent nvhook's mounts to the host).
    /// `path` is the container path, for the message. Reads this thread's mount namespace.
    pub fn refuse_shared_mount(&self, fd: BorrowedFd<'_>, path: &str) -> Result<()> {
        let table_err = |reason: String| RootfsError::MountTable {
            path: path.to_owned(),
            reason,
        };
        let id = nvhook_sys::mount_id(fd).map_err(|e| table_err(format!("statx: {e}")))?;
        let mut mounts = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Vacant(slot) = mounts.entry(id) {
            // statmount (Linux 6.8) looks up this one mount; mountinfo, where the kernel lacks
            // it, prints them all under the namespace lock that every mount on the host takes
            if let Ok(f) = nvhook_sys::mount_facts(fd) {
                slot.insert(MountEntry {
                    mount_point: f.mount_point,
                    shared: f.shared_peer_group.map(|g| g.to_string()),
                });
            } else {
                const MOUNTINFO: &str = "/proc/thread-self/mountinfo";
                let text =
                    crate::bounded::read_to_string(Path::new(MOUNTINFO), crate::bounded::MOUNTINFO)
                        .map_err(|e| table_err(format!("{MOUNTINFO}: {e}")))?;
                *mounts = parse_mount_table(&text);
            }
        }
        let Some(m) = mounts.get(&id) else {
            return Err(table_err(format!(
                "mount {id} is not in this namespace's mountinfo"
            )));
        };
        match &m.shared {
            Some(peer_group) => Err(RootfsError::SharedMount {
                path: path.to_owned(),
                mount_point: m.mount_point.clone(),
                peer_group: peer_group.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Before a mount point is created: the deepest existing directory on the way to `path`
    /// must not lie on a shared mount, so that nothing is created in such a mount either.
    pub fn refuse_shared_ancestor(&self, path: &str) -> Result<()> {
        let comps = components(path)?;
        for n in (0..=comps.len()).rev() {
            if let Ok(fd) = self.openat2_in_root(&comps[..n].join("/"), OFlag::O_PATH) {
                return self.refuse_shared_mount(fd.as_fd(), path);
            }
        }
        Ok(())
    }

    /// [`Rootfs::open`], keeping a journal of every entry created or replaced in it
    /// ([`Rootfs::take_journal`]).
    pub fn open_journaled(path: &Path) -> Result<Rootfs> {
        let mut r = Rootfs::open(path)?;
        let root_real = fd_path(&r.fd).map_err(|source| RootfsError::OpenRoot {
            path: path.to_owned(),
            source,
        })?;
        r.journal = Some(RefCell::new(Journal {
            root_real,
            changes: Vec::new(),
            observed_at: 0,
        }));
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root directory's identity.
    pub fn identity(&self) -> Result<Identity> {
        fstat(&self.fd)
            .map(|st| Identity::of(&st))
            .map_err(|source| RootfsError::OpenRoot {
                path: self.path.clone(),
                source,
            })
    }

    /// The changes journaled so far (empty without a journal); the journal starts afresh.
    pub fn take_journal(&self) -> Vec<Change> {
        self.journal
            .as_ref()
            .map(|j| std::mem::take(&mut j.borrow_mut().changes))
            .unwrap_or_default()
    }

    /// Journal that `name` in the directory `dir` now holds `kind` (inode `st`), where `before`
    /// was. The path is the directory's own, as the kernel names it, less the root's: no symlink
    /// in it. A path outside the root (a racing rename moved the directory) is not journaled.
    fn journal(&self, dir: BorrowedFd<'_>, name: &str, kind: Kind, id: Identity, before: Before) {
        if self.journal.is_some() {
            let rel = self.rel_of(dir);
            self.journal_rel(rel.as_deref(), name, kind, id, before);
        }
    }

    /// [`Rootfs::journal`] for an entry of a directory resolved once ([`Dir`]).
    fn journal_in(&self, dir: &Dir, name: &str, kind: Kind, id: Identity, before: Before) {
        self.journal_rel(dir.rel.as_deref(), name, kind, id, before);
    }

    /// The path of directory `dir` below the root's real path, as the kernel names it now
    /// (None when not journaling or when it is outside the root).
    fn rel_of(&self, dir: BorrowedFd<'_>) -> Option<String> {
        let j = self.journal.as_ref()?.borrow();
        let dir_path = nix::fcntl::readlink(format!("/proc/self/fd/{}", dir.as_raw_fd()).as_str());
        dir_path.ok().and_then(|p| {
            let p = PathBuf::from(p);
            p.strip_prefix(&j.root_real)
                .ok()
                .and_then(|r| r.to_str().map(str::to_owned))
        })
    }

    fn journal_rel(&self, rel: Option<&str>, name: &str, kind: Kind, id: Identity, before: Before) {
        let Some(j) = &self.journal else { return };
        let mut j = j.borrow_mut();
        let observed = std::mem::take(&mut j.observed_at);
        let at = if matches!(before, Before::Absent) {
            0
        } else {
            observed
        };
        match rel {
            Some(rel) => {
                let path = if rel.is_empty() {
                    format!("/{name}")
                } else {
                    format!("/{rel}/{name}")
                };
                j.changes.push(Change {
                    path,
                    kind,
                    id,
                    before,
                    at,
                });
            }
            None => log::warn!(
                "{name}: its directory is no longer inside the rootfs {}; not recorded, poststop will not remove it",
                j.root_real.display()
            ),
        }
    }

    /// What is at `name` in `dir` now, as a [`Before`] (for the journal), or None if nothing.
    /// The time of the look is kept for the change journaled next (see [`Change::at`]).
    fn before(&self, dir: BorrowedFd<'_>, name: &str) -> Before {
        let st = match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(_) => return Before::Absent,
        };
        if let Some(j) = &self.journal {
            j.borrow_mut().observed_at = boot_ns();
        }
        let id = Identity::of(&st);
        match Kind::of(st.st_mode) {
            Kind::Symlink => match nix::fcntl::readlinkat(dir, name) {
                Ok(t) => Before::Symlink {
                    target: t.to_string_lossy().into_owned(),
                    id,
                },
                Err(_) => Before::Unrestorable { id },
            },
            Kind::File if (st.st_size as u64) <= MAX_JOURNALED_FILE => {
                let content = openat(
                    dir,
                    name,
                    OFlag::O_RDONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_NONBLOCK
                        | OFlag::O_NOCTTY
                        | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .ok()
                .and_then(|fd| {
                    let again = fstat(&fd).ok()?;
                    if Identity::of(&again) != id {
                        return None;
                    }
                    let mut buf = Vec::new();
                    std::fs::File::from(fd)
                        .take(MAX_JOURNALED_FILE + 1)
                        .read_to_end(&mut buf)
                        .ok()?;
                    Some(buf)
                });
                match content {
                    Some(content) => Before::File {
                        mode: st.st_mode & 0o7777,
                        uid: st.st_uid,
                        gid: st.st_gid,
                        content,
                        id,
                    },
                    None => Before::Unrestorable { id },
                }
            }
            _ => Before::Unrestorable { id },
        }
    }

    fn journaling(&self) -> bool {
        self.journal.is_some()
    }

    /// `openat2` in the root, retrying when the kernel reports a concurrent rename (EAGAIN).
    fn openat2_in_root(&self, rel: &str, flags: OFlag) -> std::result::Result<OwnedFd, Errno> {
        let rel = if rel.is_empty() { "." } else { rel };
        for _ in 0..EAGAIN_RETRIES {
            match openat2(self.fd.as_fd(), rel, in_root(flags)) {
                Err(Errno::EAGAIN) => continue,
                r => return r,
            }
        }
        Err(Errno::EAGAIN)
    }

    /// Resolve an existing path (following symlinks, inside the root) to an `O_PATH` descriptor.
    pub fn resolve(&self, path: &str) -> Result<OwnedFd> {
        let rel = components(path)?.join("/");
        self.openat2_in_root(&rel, OFlag::O_PATH)
            .map_err(|source| RootfsError::Resolve {
                path: path.to_owned(),
                source,
            })
    }

    /// The absolute path, in the current mount namespace, of what `path` resolves to inside the
    /// root (all symlinks followed in-root). Used for the driver root, whose files are then
    /// bind-mounted by that path.
    pub fn real_path(&self, path: &str) -> Result<PathBuf> {
        let fd = self.resolve(path)?;
        nix::fcntl::readlink(
            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)).as_str(),
        )
        .map(PathBuf::from)
        .map_err(|source| RootfsError::Resolve {
            path: path.to_owned(),
            source,
        })
    }

    /// The entries of a directory inside the root (following in-root symlinks to it), with the
    /// kind of each entry itself (not followed). At most `limit` entries are returned.
    pub fn list_dir(&self, path: &str, limit: usize) -> Result<Vec<(String, Kind)>> {
        let rel = components(path)?.join("/");
        let fd = self
            .openat2_in_root(&rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(|source| RootfsError::Resolve {
                path: path.to_owned(),
                source,
            })?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(|source| RootfsError::Resolve {
            path: path.to_owned(),
            source,
        })?;
        let mut out = Vec::new();
        for e in dir.iter().take(limit.saturating_add(2)) {
            let Ok(e) = e else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let kind = match e.file_type() {
                Some(nix::dir::Type::Directory) => Kind::Dir,
                Some(nix::dir::Type::File) => Kind::File,
                Some(nix::dir::Type::Symlink) => Kind::Symlink,
                _ => Kind::Other,
            };
            out.push((name, kind));
            if out.len() >= limit {
                break;
            }
        }
        out.sort();
        Ok(out)
    }

    /// Open a regular file inside the root for reading (a FIFO or device is refused without
    /// being opened).
    pub fn open_file(&self, path: &str) -> Result<std::fs::File> {
        match self.open_regular(path)? {
            Some((f, _)) => Ok(f),
            None => Err(RootfsError::Resolve {
                path: path.to_owned(),
                source: Errno::ENOENT,
            }),
        }
    }

    /// Resolve `path` to an `O_PATH` descriptor, check that it is a regular file, and only then
    /// open it for reading, through that descriptor (`/proc/thread-self/fd/N`), never by name
    /// again. Opening is not harmless for what an image can plant: a FIFO releases a writer
    /// waiting on it, a device node runs its driver's open (a watchdog arms, a tape rewinds), and
    /// nvhook runs on the host with every capability and outside the container's device cgroup.
    /// `None` if nothing is there. Returns the file and its size.
    fn open_regular(&self, path: &str) -> Result<Option<(std::fs::File, u64)>> {
        let rel = components(path)?.join("/");
        let rerr = |source| RootfsError::Resolve {
            path: path.to_owned(),
            source,
        };
        let fd = match self.openat2_in_root(&rel, OFlag::O_PATH) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(source) => return Err(rerr(source)),
        };
        let st = fstat(&fd).map_err(rerr)?;
        let kind = Kind::of(st.st_mode);
        if kind != Kind::File {
            return Err(RootfsError::WrongType {
                path: path.to_owned(),
                found: kind.name(),
                expected: "a regular file",
            });
        }
        let reopened = nix::fcntl::open(
            format!("/proc/thread-self/fd/{}", fd.as_raw_fd()).as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map_err(rerr)?;
        let again = fstat(&reopened).map_err(rerr)?;
        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
            // /proc is not the procfs we expect: refuse rather than read something else
            return Err(rerr(Errno::EXDEV));
        }
        Ok(Some((std::fs::File::from(reopened), st.st_size as u64)))
    }

    /// The kind of what `path` resolves to (following in-root symlinks), or None if nothing is there.
    pub fn kind(&self, path: &str) -> Result<Option<Kind>> {
        match self.resolve(path) {
            Ok(fd) => {
                let st = fstat(&fd).map_err(|source| RootfsError::Resolve {
                    path: path.to_owned(),
                    source,
                })?;
                Ok(Some(Kind::of(st.st_mode)))
            }
            Err(RootfsError::Resolve {
                source: Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `mkdir -p` inside the root: returns an `O_PATH` descriptor of the directory. Existing
    /// components may be in-root symlinks; a component that exists but is not a directory, or a
    /// dangling symlink, is an error naming it.
    // Long by design: one walk down the path; each component's lookup, creation and
    // type error stay together so that no step can use a descriptor checked by another.
    pub fn mkdir_all(&self, path: &str) -> Result<OwnedFd> {
        let comps = components(path)?;
        // Fast path: it usually exists.
        match self.openat2_in_root(&comps.join("/"), OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(source) => {
                return Err(RootfsError::Resolve {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let mut cur = self
            .openat2_in_root("", OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map_err(|source| RootfsError::Resolve {
                path: "/".into(),
                source,
            })?;
        for (i, name) in comps.iter().enumerate() {
            let so_far = comps[..=i].join("/");
            let shown = format!("/{so_far}");
            match self.openat2_in_root(&so_far, OFlag::O_PATH | OFlag::O_DIRECTORY) {
                Ok(fd) => {
                    cur = fd;
                    continue;
                }
                Err(Errno::ENOENT) => {}
                Err(source) => {
                    return Err(RootfsError::Resolve {
                        path: shown,
                        source,
                    });
                }
            }
            // `cur` is a directory inside the root; create the next component there. EEXIST means a
            // racing creation or a dangling symlink: the no-follow open below tells which.
            let created = match mkdirat(cur.as_fd(), *name, Mode::from_bits_truncate(0o755)) {
                Ok(()) => true,
                Err(Errno::EEXIST) => false,
                Err(source) => {
                    return Err(RootfsError::Create {
                        path: shown,
                        source,
                    });
                }
            };
            let next = openat(
                cur.as_fd(),
                *name,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            );
            cur = match next {
                Ok(fd) => {
                    if created
                        && self.journaling()
                        && let Ok(st) = fstat(&fd)
                    {
                        self.journal(
                            cur.as_fd(),
                            name,
                            Kind::Dir,
                            Identity::of(&st),
                            Before::Absent,
                        );
                    }
                    fd
                }
                Err(Errno::ENOTDIR | Errno::ELOOP) => {
                    let found =
                        fstatat(cur.as_fd(), *name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                            .map(|st| Kind::of(st.st_mode))
                            .unwrap_or(Kind::Other);
                    return Err(RootfsError::WrongType {
                        path: shown,
                        found: if found == Kind::Symlink {
                            "a dangling symlink"
                        } else {
                            found.name()
                        },
                        expected: "a directory",
                    });
                }
                Err(source) => {
                    return Err(RootfsError::Resolve {
                        path: shown,
                        source,
                    });
                }
            };
        }
        Ok(cur)
    }

    /// The parent directory of `path` (created if missing) and the final name. Each directory is
    /// resolved once per [`Rootfs`].
    fn parent_of<'p>(&self, path: &'p str) -> Result<(Rc<Dir>, &'p str)> {
        let comps = components(path)?;
        let Some((name, dirs)) = comps.split_last() else {
            return Err(RootfsError::BadPath {
                path: path.to_owned(),
            });
        };
        // `name` borrows from `path`, so it can be returned alongside the directory.
        Ok((self.dir(&dirs.join("/"))?, name))
    }

    /// The directory `rel` (container path without the leading `/`), created if missing,
    /// resolved in-root the first time and remembered.
    fn dir(&self, rel: &str) -> Result<Rc<Dir>> {
        if let Some(d) = self.dirs.borrow().get(rel) {
            return Ok(d.clone());
        }
        let fd = self.mkdir_all(&format!("/{rel}"))?;
        let rel_real = self.rel_of(fd.as_fd());
        let d = Rc::new(Dir {
            fd,
            rel: rel_real,
            unshared: Cell::new(false),
        });
        self.dirs.borrow_mut().insert(rel.to_owned(), d.clone());
        Ok(d)
    }

    /// A mount point for a file or device node at `path` ([`Rootfs::mount_point_file`]) whose
    /// mount has no shared propagation (else [`RootfsError::SharedMount`]): a mount attached
    /// there would be copied to the mount's peers, outside the container. Checked before
    /// anything is created (the deepest existing directory on the way) and again on the
    /// descriptor returned. The usual case, a name that does not exist yet in a directory
    /// already checked, costs one `openat` (an empty file created with `O_EXCL`, which cannot be
    /// a mount point yet, so it lies on its directory's mount).
    pub fn file_mount_point(&self, path: &str) -> Result<OwnedFd> {
        let comps = components(path)?;
        if let Some((name, dirs)) = comps.split_last() {
            let known = self.dirs.borrow().get(&dirs.join("/")).cloned();
            if let Some(dir) = known.filter(|d| d.unshared.get()) {
                match create_new_file(dir.fd.as_fd(), name) {
                    Ok(fd) => {
                        if self.journaling()
                            && let Ok(st) = fstat(&fd)
                        {
                            let id = Identity::of(&st);
                            self.journal_in(&dir, name, Kind::File, id, Before::Absent);
                        }
                        return Ok(fd);
                    }
                    // there already: the general path below (an in-root symlink is followed)
                    Err(Errno::EEXIST) => {}
                    Err(source) => {
                        return Err(RootfsError::Create {
                            path: path.to_owned(),
                            source,
                        });
                    }
                }
            }
        }
        self.refuse_shared_ancestor(path)?;
        let point = self.mount_point_file(path)?;
        self.refuse_shared_mount(point.as_fd(), path)?;
        // the parent now exists: once its own mount is checked, the next names in it take the
        // short way above
        if let Ok((dir, _)) = self.parent_of(path)
            && !dir.unshared.get()
            && self.refuse_shared_mount(dir.fd.as_fd(), path).is_ok()
        {
            dir.unshared.set(true);
        }
        Ok(point)
    }

    /// Make sure a non-directory exists at `path` to bind-mount a file or device node on, and
    /// return an `O_PATH` descriptor of it. An existing in-root symlink is followed (the mount
    /// lands on its target, inside the root); a dangling one is replaced by an empty file.
    pub fn mount_point_file(&self, path: &str) -> Result<OwnedFd> {
        self.mount_point(path, false)
    }

    /// Make sure a directory exists at `path` to mount on; returns an `O_PATH` descriptor of it.
    pub fn mount_point_dir(&self, path: &str) -> Result<OwnedFd> {
        self.mount_point(path, true)
    }

    fn mount_point(&self, path: &str, dir: bool) -> Result<OwnedFd> {
        let expected = if dir { "a directory" } else { "a file" };
        let fd = if dir {
            self.mkdir_all(path)?
        } else {
            match self.resolve(path) {
                Ok(fd) => fd,
                Err(RootfsError::Resolve {
                    source: Errno::ENOENT,
                    ..
                }) => self.create_empty_file(path)?,
                Err(e) => return Err(e),
            }
        };
        let st = fstat(&fd).map_err(|source| RootfsError::Resolve {
            path: path.to_owned(),
            source,
        })?;
        let found = Kind::of(st.st_mode);
        if (found == Kind::Dir) != dir {
            return Err(RootfsError::WrongType {
                path: path.to_owned(),
                found: found.name(),
                expected,
            });
        }
        Ok(fd)
    }

    fn create_empty_file(&self, path: &str) -> Result<OwnedFd> {
        let (d, name) = self.parent_of(path)?;
        let dir = &d.fd;
        let create = |dir: BorrowedFd<'_>| create_new_file(dir, name);
        let journal_new = |fd: &OwnedFd, before: Before| {
            if let Ok(st) = fstat(fd) {
                self.journal_in(&d, name, Kind::File, Identity::of(&st), before);
            }
        };
        match create(dir.as_fd()) {
            Ok(fd) => journal_new(&fd, Before::Absent),
            Err(Errno::EEXIST) => {
                // Something appeared since the lookup: a dangling symlink (resolve gave ENOENT) or a
                // racing creation. Replace a symlink; accept anything else and re-check below.
                let st = fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|source| RootfsError::Create {
                        path: path.to_owned(),
                        source,
                    })?;
                if Kind::of(st.st_mode) == Kind::Symlink {
                    let before = if self.journaling() {
                        self.before(dir.as_fd(), name)
                    } else {
                        Before::Absent
                    };
                    unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir).map_err(|source| {
                        RootfsError::Create {
                            path: path.to_owned(),
                            source,
                        }
                    })?;
                    let fd = create(dir.as_fd()).map_err(|source| RootfsError::Create {
                        path: path.to_owned(),
                        source,
                    })?;
                    journal_new(&fd, before);
                }
            }
            Err(source) => {
                return Err(RootfsError::Create {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        // Never follow: if a symlink was swapped in after our creation, this open fails (ELOOP
        // with O_NOFOLLOW on a non-O_PATH open is not used; O_PATH|O_NOFOLLOW opens the link,
        // which the type check of the caller then refuses).
        openat(
            dir.as_fd(),
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|source| RootfsError::Create {
            path: path.to_owned(),
            source,
        })
    }

    /// Create (or correct) the symlink `path -> target`. An existing symlink is replaced; an
    /// existing file or directory is left alone and reported as `Ok(false)`, as ldconfig does
    /// when a soname is a real file.
    pub fn symlink(&self, path: &str, target: &str) -> Result<bool> {
        let (d, name) = self.parent_of(path)?;
        let dir = &d.fd;
        let err = |source| RootfsError::Create {
            path: path.to_owned(),
            source,
        };
        let journal_link = |before: Before| {
            if let Ok(st) = fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                && Kind::of(st.st_mode) == Kind::Symlink
            {
                self.journal_in(&d, name, Kind::Symlink, Identity::of(&st), before);
            }
        };
        match nix::unistd::symlinkat(target, dir.as_fd(), name) {
            Ok(()) => {
                journal_link(Before::Absent);
                return Ok(true);
            }
            Err(Errno::EEXIST) => {}
            Err(source) => return Err(err(source)),
        }
        let st =
            fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).map_err(err)?;
        if Kind::of(st.st_mode) != Kind::Symlink {
            return Ok(false);
        }
        if nix::fcntl::readlinkat(dir.as_fd(), name).is_ok_and(|t| t == *target) {
            return Ok(true);
        }
        let before = if self.journaling() {
            self.before(dir.as_fd(), name)
        } else {
            Before::Absent
        };
        // Replace atomically: make the new link under a temporary name, then rename over.
        let tmp = format!(".{name}.nvhook-{}", std::process::id());
        let _ = unlinkat(dir.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        nix::unistd::symlinkat(target, dir.as_fd(), tmp.as_str()).map_err(err)?;
        nix::fcntl::renameat(dir.as_fd(), tmp.as_str(), dir.as_fd(), name).map_err(|e| {
            let _ = unlinkat(dir.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            err(e)
        })?;
        journal_link(before);
        Ok(true)
    }

    /// Read a regular file inside the root, at most `limit` bytes; `Ok(None)` if it doesn't exist.
    /// A FIFO or device at `path` is refused without being opened.
    pub fn read_file(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let Some((file, size)) = self.open_regular(path)? else {
            return Ok(None);
        };
        if size > limit {
            return Err(RootfsError::TooLarge {
                path: path.to_owned(),
                limit,
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        file.take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|source| RootfsError::Write {
                path: path.to_owned(),
                source,
            })?;
        if buf.len() as u64 > limit {
            return Err(RootfsError::TooLarge {
                path: path.to_owned(),
                limit,
            });
        }
        Ok(Some(buf))
    }

    /// Replace the file at `path` with `data`, atomically (temporary file + rename in the same
    /// directory). The rename replaces a symlink at `path` rather than writing through it.
    pub fn write_file_atomic(&self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let (d, name) = self.parent_of(path)?;
        let dir = &d.fd;
        let tmp = format!(".{name}.nvhook-{}", std::process::id());
        let werr = |source: std::io::Error| RootfsError::Write {
            path: path.to_owned(),
            source,
        };
        let _ = unlinkat(dir.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        let fd = create_exclusive(dir.as_fd(), tmp.as_str(), mode).map_err(|e| werr(e.into()))?;
        let mut f = std::fs::File::from(fd);
        let before = if self.journaling() {
            Some(self.before(dir.as_fd(), name))
        } else {
            None
        };
        let written = f
            .write_all(data)
            .and_then(|()| {
                nix::sys::stat::fchmod(&f, Mode::from_bits_truncate(mode)).map_err(Into::into)
            })
            .and_then(|()| {
                nix::fcntl::renameat(dir.as_fd(), tmp.as_str(), dir.as_fd(), name)
                    .map_err(Into::into)
            });
        if let Err(e) = written {
            let _ = unlinkat(dir.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(werr(e));
        }
        if let (Some(before), Ok(st)) = (before, fstat(&f)) {
            self.journal_in(&d, name, Kind::File, Identity::of(&st), before);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn tmp(name: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("nvhook-rootfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("root")).unwrap();
        Tmp(p)
    }

    #[test]
    fn absolute_and_dotdot_symlinks_stay_inside() {
        let t = tmp("escape");
        let root = t.0.join("root");
        std::fs::create_dir_all(t.0.join("outside")).unwrap();
        std::fs::create_dir_all(root.join("outside")).unwrap();
        symlink("/", root.join("abs")).unwrap();
        symlink("../../../../outside", root.join("rel")).unwrap();
        let r = Rootfs::open(&root).unwrap();
        // `/` is the rootfs and `../../..` stops at it: creating under them stays inside
        r.mkdir_all("/abs/x/y").unwrap();
        r.mkdir_all("/rel/z").unwrap();
        assert!(root.join("x/y").is_dir());
        assert!(root.join("outside/z").is_dir());
        assert!(!t.0.join("outside/z").exists());
        r.write_file_atomic("/abs/etc/f", b"hi", 0o644).unwrap();
        assert_eq!(std::fs::read(root.join("etc/f")).unwrap(), b"hi");
    }

    #[test]
    fn dotdot_in_a_container_path_is_refused() {
        let t = tmp("dotdot");
        let r = Rootfs::open(&t.0.join("root")).unwrap();
        assert!(matches!(
            r.mkdir_all("/a/../../b"),
            Err(RootfsError::BadPath { .. })
        ));
    }

    #[test]
    fn magic_links_are_refused() {
        let t = tmp("magic");
        let root = t.0.join("root");
        symlink("/proc/self/root", root.join("pr")).unwrap();
        let r = Rootfs::open(&root).unwrap();
        // in-root, /proc/self/root names the image's own /proc (absent here): a dangling link,
        // refused; nothing is created on the host
        let name = format!("nvhook-magic-{}", std::process::id());
        assert!(r.mkdir_all(&format!("/pr/tmp/{name}")).is_err());
        assert!(!Path::new("/tmp").join(&name).exists());
        // and a real magic link (the host's /proc/self/root) is refused by RESOLVE_NO_MAGICLINKS
        let fd = r.resolve("/").unwrap();
        let magic = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        std::fs::create_dir_all(root.join("p")).unwrap();
        symlink(&magic, root.join("p/m")).unwrap();
        // absolute symlink targets are re-rooted, so this names <root>/proc/self/fd/N: absent
        assert!(r.resolve("/p/m").is_err());
    }

    #[test]
    fn file_where_dir_expected_and_reverse() {
        let t = tmp("types");
        let root = t.0.join("root");
        std::fs::write(root.join("usr"), b"").unwrap();
        std::fs::create_dir_all(root.join("d/libcuda.so.1")).unwrap();
        let r = Rootfs::open(&root).unwrap();
        assert!(matches!(
            r.mkdir_all("/usr/lib"),
            Err(RootfsError::Resolve {
                source: Errno::ENOTDIR,
                ..
            })
        ));
        assert!(matches!(
            r.mount_point_file("/d/libcuda.so.1"),
            Err(RootfsError::WrongType { .. })
        ));
    }

    #[test]
    fn dangling_symlink_mount_point_is_replaced() {
        let t = tmp("dangling");
        let root = t.0.join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        symlink("/nowhere/at/all", root.join("usr/bin/nvidia-smi")).unwrap();
        let r = Rootfs::open(&root).unwrap();
        r.mount_point_file("/usr/bin/nvidia-smi").unwrap();
        assert!(
            root.join("usr/bin/nvidia-smi")
                .symlink_metadata()
                .unwrap()
                .is_file()
        );
        assert!(!Path::new("/nowhere").exists());
    }

    #[test]
    fn symlink_replaces_links_but_not_files() {
        let t = tmp("links");
        let root = t.0.join("root");
        std::fs::create_dir_all(root.join("lib")).unwrap();
        symlink("old", root.join("lib/libcuda.so.1")).unwrap();
        std::fs::write(root.join("lib/libnvidia-ml.so.1"), b"image's own").unwrap();
        let r = Rootfs::open(&root).unwrap();
        assert!(r.symlink("/lib/libcuda.so.1", "libcuda.so.1.2.3").unwrap());
        assert_eq!(
            std::fs::read_link(root.join("lib/libcuda.so.1")).unwrap(),
            Path::new("libcuda.so.1.2.3")
        );
        assert!(!r.symlink("/lib/libnvidia-ml.so.1", "x").unwrap());
        assert_eq!(
            std::fs::read(root.join("lib/libnvidia-ml.so.1")).unwrap(),
            b"image's own"
        );
    }

    #[test]
    fn mount_table_tells_shared_mounts() {
        let t = parse_mount_table(
            "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
             40 22 8:1 /vol /vol rw shared:7 master:1 - ext4 /dev/sda1 rw\n\
             41 22 0:5 / /dev rw master:3 - tmpfs tmpfs rw\n\
             42 22 0:6 / /proc rw - proc proc rw\n\
             garbage\n\
             x 22 0:6 / /y rw - proc proc rw\n",
        );
        assert_eq!(t.len(), 4);
        assert_eq!(t[&22].shared.as_deref(), Some("1"));
        assert_eq!(t[&40].shared.as_deref(), Some("7"));
        assert_eq!(t[&40].mount_point, "/vol");
        assert_eq!(t[&41].shared, None, "a slave receives, it does not send");
        assert_eq!(t[&42].shared, None);
    }

    #[test]
    fn read_file_refuses_fifos_and_large_files() {
        let t = tmp("fifo");
        let root = t.0.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        nix::unistd::mkfifo(
            &root.join("etc/ld.so.cache"),
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        std::fs::write(root.join("etc/big"), vec![0u8; 100]).unwrap();
        let r = Rootfs::open(&root).unwrap();
        assert!(matches!(
            r.read_file("/etc/ld.so.cache", 1 << 20),
            Err(RootfsError::WrongType { .. })
        ));
        assert!(matches!(
            r.read_file("/etc/big", 10),
            Err(RootfsError::TooLarge { .. })
        ));
        assert_eq!(r.read_file("/etc/none", 10).unwrap(), None);
    }

    #[test]
    fn write_replaces_symlink_instead_of_following_it() {
        let t = tmp("wsym");
        let root = t.0.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(t.0.join("victim"), b"host").unwrap();
        symlink(t.0.join("victim"), root.join("etc/ld.so.cache")).unwrap();
        let r = Rootfs::open(&root).unwrap();
        r.write_file_atomic("/etc/ld.so.cache", b"new", 0o644)
            .unwrap();
        assert_eq!(std::fs::read(t.0.join("victim")).unwrap(), b"host");
        assert_eq!(std::fs::read(root.join("etc/ld.so.cache")).unwrap(), b"new");
    }
}
