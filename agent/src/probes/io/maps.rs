//! Taking (reading and deleting) every entry of a BPF hash map, atomically per entry, with
//! `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (aya 0.14 does not expose it). Each drain leaves the map
//! empty, so the kernel side holds at most one interval of activity.

use std::os::fd::{AsRawFd, BorrowedFd};

use aya::Pod;

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf_elem(cmd: libc::c_long, fd: BorrowedFd<'_>, key: *const u8, value: *mut u8) -> std::io::Result<()> {
    let attr =
        ElemAttr { map_fd: fd.as_raw_fd() as u32, _pad: 0, key: key as u64, value: value as u64, flags: 0 };
    // SAFETY: `attr` is a valid bpf_attr prefix for the map element commands; key and value
    // point to buffers of the map's key and value size.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, &attr as *const ElemAttr, std::mem::size_of::<ElemAttr>() as u32)
    };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// All keys currently in the map (bounded by the map's capacity).
fn keys<K: Pod>(fd: BorrowedFd<'_>) -> Vec<K> {
    let mut out = Vec::new();
    // SAFETY: K is Pod; zeroed is a valid value.
    let mut next: K = unsafe { std::mem::zeroed() };
    let mut prev: Option<K> = None;
    loop {
        let key_ptr = prev.as_ref().map_or(std::ptr::null(), |k| k as *const K as *const u8);
        if bpf_elem(BPF_MAP_GET_NEXT_KEY, fd, key_ptr, &mut next as *mut K as *mut u8).is_err() {
            break;
        }
        out.push(next);
        prev = Some(next);
        if out.len() > 1 << 22 {
            break;
        }
    }
    out
}

/// Takes every entry of a (non per-CPU) hash map.
pub fn take_all<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> Vec<(K, V)> {
    keys::<K>(fd)
        .into_iter()
        .filter_map(|k| {
            // SAFETY: V is Pod.
            let mut v: V = unsafe { std::mem::zeroed() };
            bpf_elem(
                BPF_MAP_LOOKUP_AND_DELETE_ELEM,
                fd,
                &k as *const K as *const u8,
                &mut v as *mut V as *mut u8,
            )
            .ok()
            .map(|()| (k, v))
        })
        .collect()
}

/// Takes every entry of a per-CPU hash map: one value per possible CPU.
pub fn take_all_per_cpu<K: Pod, V: Pod>(fd: BorrowedFd<'_>, ncpus: usize) -> Vec<(K, Vec<V>)> {
    let stride = std::mem::size_of::<V>().div_ceil(8) * 8;
    let mut buf = vec![0u8; stride * ncpus];
    keys::<K>(fd)
        .into_iter()
        .filter_map(|k| {
            bpf_elem(BPF_MAP_LOOKUP_AND_DELETE_ELEM, fd, &k as *const K as *const u8, buf.as_mut_ptr())
                .ok()?;
            let vals = (0..ncpus)
                // SAFETY: each stride holds one V written by the kernel.
                .map(|i| unsafe { std::ptr::read_unaligned(buf.as_ptr().add(i * stride) as *const V) })
                .collect();
            Some((k, vals))
        })
        .collect()
}
