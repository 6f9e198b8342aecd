//! The binary's global allocator: mimalloc, called the way its C interface is meant to be called (not part of
//! the library, which has no `unsafe` code).

use std::alloc::{GlobalAlloc, Layout};

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};

/// mimalloc as the global allocator.
///
/// The `mimalloc` crate sends every allocation to `mi_malloc_aligned`, whatever its alignment. mimalloc v3 serves
/// those from its plain path only while the size's current page has a free block at hand or when the size class is
/// a power of two; every other one (a page just used up, most sizes over 1 KiB) goes through a fallback that
/// over-allocates by the alignment: ~3.5 allocations per forwarded request, ~200 instructions each, often in a
/// larger size class (bench/README.md, twelfth round). An alignment of at most 16 that is at most the size is what plain
/// `mi_malloc` gives anyway (blocks of 16 bytes and more are 16-aligned, smaller ones 8-aligned: the rule the
/// standard library's `System` applies to `malloc`), so those allocations go there. Written here because no
/// released crate does it yet (the `mimalloc` crate's change for it is an open pull request).
pub struct Mimalloc;

/// `MI_MAX_ALIGN_SIZE`: the alignment of every mimalloc block of at least this size.
const PLAIN_ALIGN: usize = 16;

fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// SAFETY: every block comes from mimalloc and goes back to it; a block from the plain calls is aligned as the layout
// asks (see `plain`), the others are asked for that alignment.
unsafe impl GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation functions take any size and a power-of-two alignment (a `Layout`'s).
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from mimalloc, which frees any of its blocks with `mi_free`.
        unsafe { mi_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from mimalloc; the new block keeps the layout's alignment (as in `alloc`).
        unsafe {
            if plain(layout.align(), new_size) {
                mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout, plain or not, gets a block aligned as asked that keeps its bytes through a realloc, and a
    /// zeroed one is zero.
    #[test]
    fn blocks_are_aligned_as_asked_and_keep_their_bytes() {
        let a = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 3, 8, 12, 16, 24, 40, 48, 100, 1000, 1500, 2416, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; every block is written within its size and freed once, with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null() && (p as usize).is_multiple_of(align), "{size} bytes aligned {align}: {p:?}");
                    p.write_bytes(0xA5, size);
                    let grown = a.realloc(p, layout, size * 3);
                    assert!((grown as usize).is_multiple_of(align), "grown {size} aligned {align}");
                    assert!((0..size).all(|i| *grown.add(i) == 0xA5), "bytes kept through realloc");
                    a.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert!(
                        (z as usize).is_multiple_of(align) && (0..size).all(|i| *z.add(i) == 0),
                        "zeroed {size}/{align}"
                    );
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
