//! Gives the allocator's free pages back to the operating system.
//!
//! glibc's allocator keeps the pages of freed memory mapped: it returns
//! memory on its own only from the top of a heap, so after a burst of
//! connections the process stays at its peak size although most of that
//! memory is free. `malloc_trim(0)` walks every arena and returns each
//! whole free page (`madvise(MADV_DONTNEED)`); it is what Envoy's
//! `shrink_heap` overload action does with tcmalloc.
//!
//! This is a crate of its own so that scopegate itself keeps
//! `unsafe_code = "forbid"`: the FFI call below is the only unsafe code the
//! project has.

/// Asks the allocator to return its free pages to the OS; true when it gave
/// some back. It locks each arena in turn while it walks it, so call it
/// after load, not during it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_pages() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and has no precondition; glibc
    // serializes it with every other allocator call (it is MT-Safe).
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Elsewhere (musl, macOS) there is no such call, and those allocators
/// return memory on their own: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_pages() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn rss_kb() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// 64 MiB in 8 KiB blocks with every 16th kept: freeing the rest leaves
    /// holes below live blocks, which glibc does not return by itself.
    #[test]
    fn free_pages_below_live_blocks_go_back() {
        let mut blocks: Vec<Vec<u8>> = (0..8192).map(|i| vec![i as u8; 8192]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(16).map(std::mem::take).collect();
        drop(blocks);
        let before = rss_kb();
        assert!(release_free_pages(), "nothing was released");
        let after = rss_kb();
        assert!(
            before.saturating_sub(after) > 32 * 1024,
            "RSS {before} kB -> {after} kB: less than 32 MiB came back"
        );
        assert_eq!(kept.len(), 512);
        assert!(kept.iter().enumerate().all(|(i, b)| b[0] == (i * 16) as u8));
    }
}
