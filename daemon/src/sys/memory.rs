//! Handing freed heap back to the system. glibc keeps freed memory in its
//! arenas; after a refused 50 MB configuration that was hundreds of MiB of
//! RSS kept for good.

/// Returns free heap pages to the system (glibc's `malloc_trim`).
pub fn give_back() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
