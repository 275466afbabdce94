//! tracefs: classic tracepoints need it mounted; many machines do not mount it at boot.

use std::{ffi::CString, path::Path};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// What [`ensure_mounted`] found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracefs {
    AlreadyMounted,
    MountedByAgent,
}

pub fn is_mounted() -> bool {
    Path::new(TRACEFS).join("events").is_dir()
}

/// Mounts tracefs at `/sys/kernel/tracing` when it is missing, as bpftrace does.
pub fn ensure_mounted() -> Result<Tracefs, String> {
    if is_mounted() {
        return Ok(Tracefs::AlreadyMounted);
    }
    let cstr = |s: &str| CString::new(s).expect("no NUL");
    let (src, target, fstype) = (cstr("nodev"), cstr(TRACEFS), cstr("tracefs"));
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(format!("tracefs is not mounted and mounting it at {TRACEFS} failed: {err}"));
    }
    Ok(Tracefs::MountedByAgent)
}
