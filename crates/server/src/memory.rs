//! Process-wide memory settings for the servers.

/// Caps glibc's malloc at two arenas. Each thread that allocates under contention
/// gets an arena of its own, and freed 1 MiB chunks stay cached in each: with the
/// runtime's workers, the blocking pool and the hashing threads, a blob node kept
/// ~66 MiB resident while uploading, 49 MiB with two arenas, at the same speed
/// (imagestore-bench, blob_rss_mib_1g). Elsewhere this does nothing.
#[allow(unsafe_code)]
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; M_ARENA_MAX is a valid one.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
