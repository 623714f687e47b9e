//! Fallible growth for every buffer whose size a user controls (the arena, gradient slots, ids,
//! parameters, optimizer moments, the key/value cache). Rust's `Vec` aborts the process when an
//! allocation fails, and Linux usually grants a too-large request anyway and kills the process
//! later, when the pages are touched. So a buffer grows only through `grow`, which first checks
//! the request against the memory this process may still take (`MemAvailable`, or a cgroup's
//! limit if lower) and then uses `try_reserve`; an impossible request is an `Error::OutOfMemory`.

use crate::error::{Error, Result};

/// Requests below this are not checked against the available memory (reading it costs a few
/// microseconds; the arena's first step grows hundreds of times, mostly by small amounts).
const CHECK_FROM_BYTES: usize = 1 << 20;

/// Bytes this process may still allocate and touch, if the system says (Linux); None elsewhere.
pub fn available_bytes() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: usize = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    let mut available = kib.saturating_mul(1024);
    // A container's limit (cgroup v2) can be far below what the machine has free.
    let read = |name: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{name}")).ok()?.trim().parse::<usize>().ok();
    if let (Some(max), Some(current)) = (read("memory.max"), read("memory.current")) {
        available = available.min(max.saturating_sub(current));
    }
    Some(available)
}

/// Human-readable bytes: "1.5 GiB", "320.0 MiB".
pub fn format_bytes(bytes: usize) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// Refuse to take `bytes` more if the system says they are not available.
pub fn check_available(bytes: usize, what: &str) -> Result<()> {
    if bytes < CHECK_FROM_BYTES {
        return Ok(());
    }
    match available_bytes() {
        Some(available) if bytes > available => Err(Error::OutOfMemory { what: what.to_string(), bytes, available: Some(available), hint: String::new() }),
        _ => Ok(()),
    }
}

/// Make room for `len` elements in `buf` (its length stays): checked and fallible.
pub fn reserve<T>(buf: &mut Vec<T>, len: usize, what: &str) -> Result<()> {
    let Some(extra) = len.checked_sub(buf.len()).filter(|&n| n > 0 && len > buf.capacity()) else {
        return Ok(());
    };
    let too_large = || Error::OutOfMemory {
        what: what.to_string(),
        bytes: extra.saturating_mul(size_of::<T>()),
        available: available_bytes(),
        hint: String::new(),
    };
    let bytes = extra.checked_mul(size_of::<T>()).filter(|&b| b <= isize::MAX as usize).ok_or_else(too_large)?;
    check_available(bytes, what)?;
    buf.try_reserve(extra).map_err(|_| too_large())
}

/// Grow `buf` to `len` elements (new ones are `fill`); never shrinks. Checked and fallible.
pub fn grow<T: Clone>(buf: &mut Vec<T>, len: usize, fill: T, what: &str) -> Result<()> {
    reserve(buf, len, what)?;
    if buf.len() < len {
        buf.resize(len, fill);
    }
    Ok(())
}

/// A new vector of `len` copies of `fill`, checked and fallible like `grow`.
pub fn filled<T: Clone>(len: usize, fill: T, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    grow(&mut v, len, fill, what)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impossible_request_is_an_error_not_an_abort() {
        let mut v: Vec<f32> = Vec::new();
        let e = grow(&mut v, usize::MAX / 2, 0.0, "test buffer").unwrap_err();
        assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
        assert!(v.is_empty());
        // More than the machine has, but a size the allocator might grant lazily.
        let too_much = available_bytes().unwrap_or(1 << 40) + (1 << 30);
        let e = filled::<u8>(too_much, 0, "test buffer").unwrap_err();
        assert!(e.to_string().contains("test buffer"), "{e}");
    }

    #[test]
    fn grow_keeps_contents_and_never_shrinks() {
        let mut v = vec![1u32, 2];
        grow(&mut v, 4, 9, "x").unwrap();
        assert_eq!(v, [1, 2, 9, 9]);
        grow(&mut v, 1, 0, "x").unwrap();
        assert_eq!(v.len(), 4);
    }

    #[test]
    fn bytes_read_well() {
        assert_eq!(format_bytes(512), "512 bytes");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
    }
}
