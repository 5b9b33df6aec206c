//! Processes: descriptors inherited from whoever started us made close-on-exec, and closures
//! run in a forked child.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::cvt;

// ---------------------------------------------------------------------------------------------
// Descriptors inherited from whoever started us
// ---------------------------------------------------------------------------------------------

const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// Mark every descriptor from `first` up close-on-exec (`close_range(first, ~0,
/// CLOSE_RANGE_CLOEXEC)`, Linux 5.11), so that nothing the caller left open without that flag is
/// passed on to a program nvhook starts. Nothing is closed: the numbers stay taken, so no later
/// open can land on a number some code still holds. On an older kernel the descriptors are
/// marked one by one from `/proc/self/fd`.
pub fn cloexec_from(first: RawFd) -> io::Result<()> {
    let first = first.max(0) as libc::c_uint;
    // SAFETY: no pointers; the flag only changes descriptor flags of this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let mut fds = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd")? {
        let name = e?.file_name();
        match name.to_str().and_then(|n| n.parse::<RawFd>().ok()) {
            Some(fd) if fd >= first as RawFd => fds.push(fd),
            _ => {}
        }
    }
    for fd in fds {
        // SAFETY: F_SETFD takes an int argument and touches no memory; a number that is no
        // longer open (the read_dir's own descriptor) fails with EBADF, which is ignored.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Running a closure in a forked child
// ---------------------------------------------------------------------------------------------

/// Run `f` in a forked child process and return the bytes it produced; the child exits right
/// after. Used for NVML: its initialization starts threads, and `setns(CLONE_NEWNS)` refuses a
/// multi-threaded process, so NVML must never run in the hook process itself; the child also
/// isolates the hook from a library that can hang on a sick GPU (`timeout`, then SIGKILL), and
/// dies with the hook when the hook is killed (`PR_SET_PDEATHSIG`).
///
/// Refuses (EBUSY) unless the calling process has exactly one thread: forking a multi-threaded
/// process leaves the child with locks other threads held.
pub fn in_child(f: impl FnOnce() -> Vec<u8>, timeout: std::time::Duration) -> io::Result<Vec<u8>> {
    fork_child(|_request| f())?.wait(timeout)
}

/// A forked child of the hook ([`fork_child`]) that is still running or not yet reaped. Dropping
/// it unanswered kills and reaps it.
pub struct Child {
    pid: libc::pid_t,
    /// The write end of the child's request pipe (None once sent).
    request: Option<OwnedFd>,
    /// The read end of the child's answer pipe.
    answer: Option<OwnedFd>,
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid 2-int array for pipe2 to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long)?;
    // SAFETY: pipe2 succeeded, so both are new descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Fork a child that runs `f` and exits: `f` gets the read end of a request pipe (what the
/// parent passes to [`Child::send`]; end of file once the parent has sent, or has given up), and
/// what it returns is the answer [`Child::wait`] reads. The child runs beside the parent, so
/// slow work (a D-Bus round trip) overlaps the parent's own; it dies with the parent
/// (`PR_SET_PDEATHSIG`), its descriptors are the parent's close-on-exec ones, and it never
/// returns into the caller's code.
///
/// Refuses (EBUSY) unless the calling process has exactly one thread: forking a multi-threaded
/// process leaves the child with locks other threads held. The child itself may start threads:
/// the parent stays single-threaded, so its `setns(CLONE_NEWNS)` still works.
pub fn fork_child(f: impl FnOnce(std::fs::File) -> Vec<u8>) -> io::Result<Child> {
    fork_child_with(Lifetime::WithParent, f, |_| {})
}

/// How long a [`fork_child_with`] child may live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// It dies with the parent (`PR_SET_PDEATHSIG`), and [`Child::wait`]'s deadline bounds it.
    WithParent,
    /// It may outlive the parent ([`Child::detach`]), for at most this long (`alarm(2)`: SIGALRM
    /// ends it); its standard input, output and error are /dev/null from the start, so it never
    /// holds the runtime's hook pipes (runc reads the hook's output until every writer is gone).
    Own(std::time::Duration),
}

/// [`fork_child`] with a [`Lifetime`]; `unheard` gets the answer when nobody reads it any more
/// (the parent detached or died), so the child can log it.
pub fn fork_child_with(
    lifetime: Lifetime,
    f: impl FnOnce(std::fs::File) -> Vec<u8>,
    unheard: fn(&[u8]),
) -> io::Result<Child> {
    let threads = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_owned()));
    if threads.as_deref() != Some("1") {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            "fork_child: the process is multi-threaded",
        ));
    }
    let (ans_rd, ans_wr) = pipe_cloexec()?;
    let (req_rd, req_wr) = pipe_cloexec()?;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the process is single-threaded (checked above), so the child is a complete copy
    // whose only thread is this one: no lock can be held by a thread that does not exist there.
    // The child never returns into the caller's code: it runs `f`, writes, and `_exit`s (no
    // atexit handlers, no destructors of the parent's objects run twice).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        prepare_child(lifetime, parent);
        drop(ans_rd);
        // without this the child would hold its own request pipe open and never see its end
        drop(req_wr);
        let input = std::fs::File::from(req_rd);
        let out =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(input))).unwrap_or_default();
        let mut w = std::fs::File::from(ans_wr);
        let ok = std::io::Write::write_all(&mut w, &out).is_ok();
        if !ok {
            unheard(&out);
        }
        // SAFETY: terminating the child without returning into the parent's stack.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    drop(ans_wr);
    drop(req_rd);
    Ok(Child {
        pid,
        request: Some(req_wr),
        answer: Some(ans_rd),
    })
}

/// In a just-forked child, before it runs its closure: what its [`Lifetime`] asks for.
fn prepare_child(lifetime: Lifetime, parent: libc::pid_t) {
    match lifetime {
        Lifetime::WithParent => {
            // The child dies with the hook: a hook killed while the child hangs (a runtime's
            // timeout, an OOM kill) must not leave a process on the host holding the driver
            // or a bus open, and holding the runtime's hook pipes, which runc waits on for
            // ever.
            // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
            // SAFETY: getppid has no preconditions.
            if unsafe { libc::getppid() } != parent {
                // the hook died before the prctl took effect: nobody will read the answer
                // SAFETY: terminating the child without returning into the parent's stack.
                unsafe { libc::_exit(1) };
            }
        }
        Lifetime::Own(limit) => {
            // Off the parent's critical path by design: on a busy machine the parent (the
            // container's start) gets the CPU first.
            // SAFETY: setpriority on this process (who 0) takes plain integers.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
            let secs = limit.as_secs().clamp(1, u64::from(u32::MAX)) as libc::c_uint;
            // SAFETY: alarm takes a number of seconds; SIGALRM's default action ends the
            // child when the limit passes, whatever it is blocked in.
            unsafe { libc::alarm(secs) };
            // SAFETY: opening /dev/null with a static NUL-terminated path.
            let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
            if null >= 0 {
                for fd in 0..3 {
                    // SAFETY: dup2 onto the standard descriptors of this (child) process.
                    unsafe { libc::dup2(null, fd) };
                }
                if null > 2 {
                    // SAFETY: closing the descriptor this branch just opened.
                    unsafe { libc::close(null) };
                }
            }
        }
    }
}

impl Child {
    /// Pass `bytes` to the child's request pipe and close it. A request larger than a pipe's
    /// buffer (64 KiB) blocks until the child reads it: keep requests small.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(fd) = self.request.take() else {
            return Err(io::Error::other("fork_child: request already sent"));
        };
        let mut w = std::fs::File::from(fd);
        // the child may have died: EPIPE (SIGPIPE is ignored in Rust programs)
        std::io::Write::write_all(&mut w, bytes)
    }

    /// The child's answer, waiting at most `timeout` for it (then SIGKILL), and its exit: an
    /// error unless it exited with status 0.
    pub fn wait(mut self, timeout: std::time::Duration) -> io::Result<Vec<u8>> {
        use std::io::Read;
        // a request never sent reads as end of file in the child
        self.request = None;
        let Some(rd) = self.answer.take() else {
            return Err(io::Error::other("fork_child: answer already read"));
        };
        let deadline = std::time::Instant::now() + timeout;
        let mut out = Vec::new();
        let mut file = std::fs::File::from(rd);
        let mut buf = [0u8; 8192];
        let mut timed_out = false;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut pfd = libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe {
                libc::poll(
                    &mut pfd,
                    1,
                    left.as_millis().min(i32::MAX as u128) as libc::c_int,
                )
            };
            if n == 0 {
                timed_out = true;
                break;
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => out.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if timed_out {
            self.kill();
        }
        let status = self.reap();
        if timed_out {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("child did not answer within {timeout:?}"),
            ));
        }
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            return Err(io::Error::other(format!(
                "child failed (wait status {status:#x})"
            )));
        }
        Ok(out)
    }

    /// The answer if the child has already given it (without waiting), else None.
    pub fn answer_now(&mut self) -> Option<io::Result<Vec<u8>>> {
        let fd = self.answer.as_ref()?;
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call; no wait (timeout 0).
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n <= 0 {
            return None;
        }
        // readable: the answer (written in one piece before the child exits) or end of file
        let taken = Child {
            pid: std::mem::take(&mut self.pid),
            request: self.request.take(),
            answer: self.answer.take(),
        };
        Some(taken.wait(std::time::Duration::from_secs(1)))
    }

    /// Let the child go on alone ([`Lifetime::Own`] children only make sense here): it is
    /// neither killed nor waited for; its answer goes to its `unheard` function.
    pub fn detach(mut self) {
        self.request = None;
        self.answer = None;
        self.pid = 0;
    }

    fn kill(&self) {
        // never kill(0, ..): that would be the whole process group
        if self.pid > 0 {
            // SAFETY: `pid` is our own child, not yet reaped (reap sets it to 0).
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }

    fn reap(&mut self) -> libc::c_int {
        let mut status = 0;
        if self.pid > 0 {
            // SAFETY: reaping our own child; `status` is a valid out-pointer.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
            self.pid = 0;
        }
        status
    }
}

impl Drop for Child {
    /// An unanswered child (the hook gave up on it, or failed before asking) is killed and
    /// reaped: no process of the hook outlives it.
    fn drop(&mut self) {
        if self.pid > 0 {
            self.kill();
            self.reap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test harness runs tests on threads: in_child must refuse to fork it. (The forking path
    /// itself runs in the nvhook binary, single-threaded: see the MIG and NVIDIA_REQUIRE
    /// end-to-end tests, whose NVML queries go through it.)
    #[test]
    fn refuses_a_multi_threaded_process() {
        let e = in_child(|| b"x".to_vec(), std::time::Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy);
    }
}
