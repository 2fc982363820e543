//! The figures every benchmark reports: percentiles of one round's samples, the
//! median of the rounds, processes' memory, and the bytes this process has
//! allocated (for what runs in it, like the scheduler's snapshot).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};

/// The system allocator, counting the bytes in use.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The bytes this process has allocated and not freed.
pub fn allocated_bytes() -> usize {
    ALLOCATED.load(Ordering::Relaxed)
}

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
