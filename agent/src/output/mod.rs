//! Outputs: JSON Lines per interval, a plain line per interval, the live view, and the `run`
//! summary. All of them read the same [`crate::session::IntervalReport`] and process table.

pub mod json;
pub mod live;
pub mod rollup;
pub mod text;

use std::time::SystemTime;

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Seconds with a sensible number of digits for a column.
pub fn fmt_secs(s: f64) -> String {
    if s >= 100.0 {
        format!("{s:.0}s")
    } else if s >= 10.0 {
        format!("{s:.1}s")
    } else {
        format!("{s:.2}s")
    }
}
