//! A GPU load for `scripts/gpu-check.sh` and the check's evaluator.
//!
//! * [`driver`]: `libcuda.so.1` and `libnvidia-ml.so.1` loaded at run time (no CUDA toolkit
//!   at build or run time).
//! * [`PTX`]: the embedded FMA loop the load JIT-compiles with `cuModuleLoadData`.
//! * [`output`]: the load's machine-readable lines, written and parsed.
//! * [`check`]: the pass/fail arithmetic over the check's evidence folder.

pub mod check;
pub mod driver;
pub mod output;

/// The kernel: `fma_loop(float *out, u32 iterations)`, 16 FMAs per iteration in 4 chains.
pub const PTX: &str = include_str!("fma_loop.ptx");

/// The kernel's entry name in [`PTX`].
pub const ENTRY: &str = "fma_loop";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every register the PTX uses is declared (`.reg .f32 %f<7>` declares %f0..%f6), the
    /// entry is there and braces balance: the mistakes a JIT would reject, caught here
    /// where no driver can JIT it.
    #[test]
    fn ptx_uses_only_declared_registers() {
        assert!(PTX.starts_with(".version ") && PTX.contains(".target sm_"));
        assert!(PTX.contains(&format!(".visible .entry {ENTRY}(")));
        assert_eq!(PTX.matches('{').count(), PTX.matches('}').count());
        let mut declared = std::collections::BTreeMap::new();
        for line in PTX.lines().map(str::trim).filter(|l| l.starts_with(".reg")) {
            let decl = line.split_whitespace().last().unwrap().trim_end_matches(';');
            let (name, n) = decl.trim_start_matches('%').split_once('<').unwrap();
            declared.insert(name.to_owned(), n.trim_end_matches('>').parse::<u32>().unwrap());
        }
        let body = PTX.split_once('{').unwrap().1;
        let mut uses = 0;
        for (i, _) in body.match_indices('%') {
            let rest = &body[i + 1..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
            let num: String = rest[name.len()..].chars().take_while(|c| c.is_ascii_digit()).collect();
            if num.is_empty() || !declared.contains_key(&name) {
                continue; // %tid.x, %ctaid.x, declarations
            }
            uses += 1;
            let n: u32 = num.parse().unwrap();
            assert!(n < declared[&name], "%{name}{n} used but only %{name}<{}> declared", declared[&name]);
        }
        assert!(uses > 40, "{uses}");
    }
}
