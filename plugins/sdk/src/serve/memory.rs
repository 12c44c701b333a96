//! Giving memory back to the system after a burst of connections closed: glibc's
//! allocator keeps freed memory in its per-thread arenas, so a process that once held many
//! connections would otherwise stay at its peak size.
#![allow(unsafe_code)]

/// Returns the allocator's free memory to the system (glibc), or does nothing.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only releases free pages; it takes the allocator's own locks.
        unsafe {
            malloc_trim(0);
        }
    }
}
