//! Decoding lifecycle events from the ring buffer.

use carbon_agent_common::{LifecycleEvent, LifecycleKind};

/// A lifecycle event, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Fork { tgid: u32, parent_tgid: u32, comm: String, uid: u32, cgroup_id: u64, ts_ns: u64 },
    Exec { tgid: u32, comm: String, filename: String, uid: u32 },
    Exit { tgid: u32, code: i32, ts_ns: u64 },
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Decodes one ring-buffer record; `None` for a record of the wrong size or kind.
pub fn decode(bytes: &[u8]) -> Option<Lifecycle> {
    if bytes.len() < size_of::<LifecycleEvent>() {
        return None;
    }
    // SAFETY: size checked; LifecycleEvent is plain old data, read unaligned.
    let ev: LifecycleEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    Some(match LifecycleKind::from_u32(ev.kind)? {
        LifecycleKind::Fork => Lifecycle::Fork {
            tgid: ev.tgid,
            parent_tgid: ev.parent_tgid,
            comm: cstr(&ev.comm),
            uid: ev.uid,
            cgroup_id: ev.cgroup_id,
            ts_ns: ev.ts_ns,
        },
        LifecycleKind::Exec => {
            Lifecycle::Exec { tgid: ev.tgid, comm: cstr(&ev.comm), filename: cstr(&ev.filename), uid: ev.uid }
        }
        LifecycleKind::Exit => Lifecycle::Exit { tgid: ev.tgid, code: ev.code, ts_ns: ev.ts_ns },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use carbon_agent_common::{COMM_LEN, FILENAME_LEN};

    fn raw(ev: &LifecycleEvent) -> Vec<u8> {
        // SAFETY: reading the bytes of a POD struct.
        unsafe {
            std::slice::from_raw_parts(
                (ev as *const LifecycleEvent).cast::<u8>(),
                size_of::<LifecycleEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_exec() {
        let mut ev = LifecycleEvent {
            kind: LifecycleKind::Exec as u32,
            tgid: 7,
            parent_tgid: 0,
            uid: 1000,
            gid: 1000,
            code: 7,
            cgroup_id: 1,
            ts_ns: 5,
            comm: [0; COMM_LEN],
            filename: [0; FILENAME_LEN],
        };
        ev.comm[..4].copy_from_slice(b"sort");
        ev.filename[..13].copy_from_slice(b"/usr/bin/sort");
        assert_eq!(
            decode(&raw(&ev)),
            Some(Lifecycle::Exec {
                tgid: 7,
                comm: "sort".into(),
                filename: "/usr/bin/sort".into(),
                uid: 1000
            })
        );
        ev.kind = 99;
        assert_eq!(decode(&raw(&ev)), None);
        assert_eq!(decode(&[0u8; 8]), None);
    }
}
