//! Process-wide memory settings for the servers.

/// Caps glibc's malloc at two arenas. Each thread that allocates under contention
/// gets an arena of its own, and freed 1 MiB chunks stay cached in each: with the
/// runtime's workers, the blocking pool and the hashing threads, a blob node kept
/// ~66 MiB resident while uploading 1 GiB; with two arenas 49-57 MiB after one
/// upload, up to 68 MiB after three in one process, at the same speed
/// (imagestore-bench, blob_rss_mib_1g). Elsewhere this does nothing.
#[allow(unsafe_code)]
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; M_ARENA_MAX is a valid one.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
