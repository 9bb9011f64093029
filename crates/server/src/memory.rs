//! Process-wide memory settings for the servers and the CLI.

/// Largest allocation malloc serves from its arenas rather than a mapping of
/// its own (glibc's ceiling for it on 64-bit).
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory an arena keeps at its top rather than giving back to the kernel.
const TRIM_THRESHOLD: i32 = 64 << 20;

/// Tunes glibc's malloc for processes that move bulk data through buffers of
/// about a MiB. Elsewhere this does nothing.
///
/// Two arenas: each thread that allocates under contention gets an arena of its
/// own, and freed 1 MiB chunks stay cached in each: with the runtime's workers,
/// the blocking pool and the hashing threads, a blob node kept ~66 MiB resident
/// while uploading 1 GiB; with two arenas 49-57 MiB after one upload, up to 68
/// MiB after three in one process, at the same speed (imagestore-bench,
/// blob_rss_mib_1g).
///
/// Fixed thresholds: by default glibc maps large buffers afresh and gives freed
/// ones back at an arena's top, so every received MiB is faulted in and zeroed
/// again. `imagestore export` of 1 GiB took ~170 000 page faults and 0.70-0.77
/// s of system time that way, 6 000-9 000 and 0.37-0.58 s with buffers kept; a
/// blob node's first 1 GiB upload 20 000 against 3 000.
#[allow(unsafe_code)]
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters, all three valid ones.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
