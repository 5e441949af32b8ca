//! The daemon's allocator, which wipes what it frees (with libcrypto's
//! `OPENSSL_cleanse`, as `crypto::Secret` does).

use crate::crypto::OPENSSL_cleanse;

/// The daemon's allocator: the system's, wiping every block as it is freed
/// (or moved by a reallocation). Request heads, `Authorization` and
/// `Cookie` included, live in the HTTP layer's read buffers and header
/// maps, which it frees without wiping: this is what keeps them from
/// lingering in freed memory once a connection is done. `Secret` still
/// wipes as soon as a secret is no longer needed.
pub struct WipingAlloc;

// SAFETY: every block comes from `System` with the layout it is given back
// with; wiping writes only within a block still owned.
unsafe impl std::alloc::GlobalAlloc for WipingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        std::alloc::System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        std::alloc::System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        OPENSSL_cleanse(ptr.cast(), layout.size());
        std::alloc::System.dealloc(ptr, layout)
    }

    /// Always a new block: the C library's realloc would free (or shrink)
    /// the old one unwiped.
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let new_layout = std::alloc::Layout::from_size_align_unchecked(new_size, layout.align());
        let new = std::alloc::System.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new
    }
}
