//! Process entry without Rust's runtime start-up: the `entry!` macro, [`start`] and [`finish`].

// ---------------------------------------------------------------------------------------------
// Process entry without Rust's runtime start-up
// ---------------------------------------------------------------------------------------------

/// Define the C `main` of a `#![no_main]` binary that calls `$main() -> u8` (the exit status).
///
/// Why: Rust's start-up (`lang_start`) installs a stack-overflow handler, and to find the main
/// thread's stack it calls `pthread_getattr_np`, which reads and parses `/proc/self/maps`; with
/// the alternate signal stack that is about 0.2 ms per exec on the GPU host's VM, a tenth of what
/// a hook for all GPUs costs in all. nvhook runs once per container start, so it starts through
/// this instead and keeps the two parts of that set-up that matter to it ([`start`]): standard
/// descriptors 0-2 that exist, and SIGPIPE ignored. A stack overflow is still caught by the
/// kernel's guard gap (SIGSEGV); only Rust's message about it is lost. On glibc, `std::env::args`
/// works without `lang_start` (std reads argv from glibc's `.init_array` call).
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        // SAFETY: `main` is the one C entry point of this binary (it is `#![no_main]`, so nothing
        // else defines the symbol); it takes the C signature crt1.o calls it with and ignores
        // the arguments, which std reads itself.
        #[unsafe(no_mangle)]
        pub extern "C" fn main(
            _argc: ::std::ffi::c_int,
            _argv: *const *const ::std::ffi::c_char,
        ) -> ::std::ffi::c_int {
            $crate::start();
            let code: u8 = $main();
            $crate::finish();
            ::std::ffi::c_int::from(code)
        }
    };
}

/// What nvhook keeps of Rust's start-up: descriptors 0, 1 and 2 are made to exist (opened on
/// /dev/null if the caller closed them, so no file nvhook opens later can become its stdout or
/// stderr), and SIGPIPE is ignored (a closed pipe is an EPIPE error, not a silent death).
pub fn start() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: three valid pollfd structs owned by this frame; a timeout of 0 never blocks.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) };
    if r >= 0 {
        for p in fds.iter().filter(|p| p.revents & libc::POLLNVAL != 0) {
            // SAFETY: a NUL-terminated literal path; the descriptor is deliberately not wrapped:
            // it is the process's standard descriptor `p.fd` for its whole life.
            let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
            if fd != p.fd {
                // /dev/null cannot be opened in its place: stop, as Rust's runtime does
                // SAFETY: terminating the process; nothing has run yet.
                unsafe { libc::abort() };
            }
        }
    }
    // SAFETY: setting a signal's disposition to SIG_IGN touches no memory of ours.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Flush standard output before the process exits (Rust's runtime does this after `main`).
pub fn finish() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
