//! The figures every benchmark reports: percentiles of one round's samples, the
//! median of the rounds, and processes' memory.

use anyhow::{Context, Result};

/// The value at quantile `p` (0..=1) of `sorted` (nearest rank); NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    percentile(&values, 0.5)
}

/// A process's resident memory (VmRSS), in MiB.
pub fn rss_mib(pid: u32) -> Result<f64> {
    kib_field(&format!("/proc/{pid}/status"), "VmRSS:").map(|kib| kib / 1024.0)
}

/// A process's proportional set size (its resident pages, each page it shares
/// with n processes counted 1/n), in MiB: what many copies of one program cost
/// together is the sum of their PSS, where RSS would count shared pages each time.
pub fn pss_mib(pid: u32) -> Result<f64> {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:").map(|kib| kib / 1024.0)
}

fn kib_field(path: &str, field: &str) -> Result<f64> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{path} has no {field}"))
}
