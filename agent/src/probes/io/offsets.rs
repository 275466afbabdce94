//! The kernel struct and tracepoint-record offsets the I/O programs need, from BTF.

use carbon_agent_common::io::IoOffsets;

use crate::probes::btf::{BtfError, KernelBtf as Btf};

/// Reads every offset of [`IoOffsets`] from `btf` and marks them ready. Fails with the name of
/// the first struct or member the kernel does not have.
pub fn io_offsets(btf: &Btf) -> Result<IoOffsets, BtfError> {
    let m = |s: &str, f: &str| btf.member_offset(s, f);
    let o = IoOffsets {
        regs_di: m("pt_regs", "di")?,
        regs_si: m("pt_regs", "si")?,
        regs_dx: m("pt_regs", "dx")?,
        regs_r10: m("pt_regs", "r10")?,
        regs_orig_ax: m("pt_regs", "orig_ax")?,
        regs_ax: m("pt_regs", "ax")?,
        task_pid: m("task_struct", "pid")?,
        task_tgid: m("task_struct", "tgid")?,
        task_files: m("task_struct", "files")?,
        task_fs: m("task_struct", "fs")?,
        files_fdt: m("files_struct", "fdt")?,
        fdt_max_fds: m("fdtable", "max_fds")?,
        fdt_fd: m("fdtable", "fd")?,
        file_inode: m("file", "f_inode")?,
        file_pos: m("file", "f_pos")?,
        file_dentry: m("file", "f_path.dentry")?,
        inode_ino: m("inode", "i_ino")?,
        inode_mode: m("inode", "i_mode")?,
        inode_sb: m("inode", "i_sb")?,
        sb_dev: m("super_block", "s_dev")?,
        fs_pwd_dentry: m("fs_struct", "pwd.dentry")?,
        dentry_parent: m("dentry", "d_parent")?,
        dentry_name: m("dentry", "d_name.name")?,
        dentry_sb: m("dentry", "d_sb")?,
        tp_blk_dev: m("trace_event_raw_block_rq_completion", "dev")?,
        tp_blk_nr_sector: m("trace_event_raw_block_rq_completion", "nr_sector")?,
        tp_blk_rwbs: m("trace_event_raw_block_rq_completion", "rwbs")?,
        inode_generation: m("inode", "i_generation")?,
        inode_size: m("inode", "i_size")?,
        inode_dentry: m("inode", "i_dentry")?,
        dentry_alias: m("dentry", "d_u.d_alias")?,
        dentry_inode: m("dentry", "d_inode")?,
        mapping_host: m("address_space", "host")?,
        folio_flags: m("folio", "flags")?,
        folio_flags_1: m("folio", "_flags_1")?,
        folio_mapping: m("folio", "mapping")?,
        folio_index: m("folio", "index")?,
        pg_head: u32::try_from(btf.enumerator("PG_head")?)
            .map_err(|_| BtfError::Malformed("PG_head is negative".into()))?,
        page_cache_files: 0,
        exit_times_only: 0,
        btf_file: btf.struct_id("file")?,
        btf_callback_head: btf.struct_id("callback_head")?,
        flush_tgid: 0,
        ready: 1,
    };
    check_record_offsets(&o)?;
    Ok(o)
}

/// Bytes of a classic tracepoint record the programs read at once (`RECORD` in
/// `agent-ebpf/src/io.rs`).
pub const RECORD_BYTES: u32 = 64;

/// Every tracepoint record field the programs read (offset, size, name) must lie within the
/// first [`RECORD_BYTES`] of the record.
fn check_record_offsets(o: &IoOffsets) -> Result<(), BtfError> {
    let fields = [
        (o.tp_blk_dev, 4, "block_rq_completion.dev"),
        (o.tp_blk_nr_sector, 4, "block_rq_completion.nr_sector"),
        (o.tp_blk_rwbs, 2, "block_rq_completion.rwbs"),
    ];
    match fields.iter().find(|(off, size, _)| off + size > RECORD_BYTES) {
        Some((off, _, name)) => Err(BtfError::Malformed(format!(
            "tracepoint record field {name} at offset {off} lies beyond the {RECORD_BYTES} bytes \
             the I/O programs read"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_offsets_beyond_the_read_prefix_are_refused() {
        let mut o = IoOffsets { tp_blk_dev: 16, tp_blk_rwbs: 62, ..IoOffsets::default() };
        assert!(check_record_offsets(&o).is_ok());
        o.tp_blk_rwbs = 63;
        let e = check_record_offsets(&o).unwrap_err().to_string();
        assert!(e.contains("block_rq_completion.rwbs at offset 63"), "{e}");
    }

    /// The record offsets from BTF must match what tracefs prints for the same tracepoints
    /// (where both are available: this is a check of the BTF reader against the kernel).
    #[test]
    fn tracepoint_offsets_agree_with_tracefs_formats() {
        let (Ok(btf), Ok(fmt)) = (
            Btf::from_sysfs(std::path::Path::new("/sys")),
            std::fs::read_to_string("/sys/kernel/tracing/events/block/block_rq_complete/format"),
        ) else {
            return;
        };
        let o = io_offsets(&btf).unwrap();
        assert!(fmt.contains(&format!("dev_t dev;\toffset:{};", o.tp_blk_dev)), "{fmt}");
        assert!(fmt.contains(&format!("unsigned int nr_sector;\toffset:{};", o.tp_blk_nr_sector)), "{fmt}");
    }
}
