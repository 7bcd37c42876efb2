//! Live heap accounting: a global allocator wrapper that counts the bytes
//! the program holds, so that resident memory can be told apart from what
//! the allocator keeps after a free.
//!
//! A node's resident set grows and shrinks with its allocator's retention
//! (pages freed but not yet returned, pages returned and taken again) as
//! much as with what it holds. The sustained benchmark's RSS alone could not
//! say which of the two a growth was (benches/README.md); this count can.
//! The `synapse` binary installs it around mimalloc and reports it as
//! `synapse_heap_allocated_bytes`; an embedding service may do the same:
//!
//! ```no_run
//! use synapse::heap::CountingAllocator;
//! #[global_allocator]
//! static ALLOCATOR: CountingAllocator<std::alloc::System> =
//!     CountingAllocator::new(std::alloc::System);
//!
//! fn main() {
//!     synapse::register_heap_probe(|| ALLOCATOR.allocated_bytes());
//!     // ... start the node
//! }
//! ```
//!
//! Must never: allocate (it runs inside the allocator), or make one
//! thread's allocation wait for another's.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

/// Counter shards. Each thread adds to one shard, so on a node's few busy
/// threads an allocation updates a cache line no other core is writing; a
/// shared single counter would bounce between the cores on every malloc.
/// 16 covers a node's runtime, persist, reclaim and blocking-pool threads
/// on the small machines it targets; more threads share shards, which
/// stays correct (the adds are atomic), only slower.
const SHARDS: usize = 16;

/// One shard on a cache line of its own: 128 bytes, because x86-64 parts
/// prefetch lines in adjacent pairs (crossbeam's `CachePadded` uses the
/// same figure).
#[repr(align(128))]
struct Shard(AtomicI64);

/// Wraps an allocator and counts the bytes allocated through it and not yet
/// freed (the sizes callers asked for, not the allocator's rounding or its
/// own metadata).
pub struct CountingAllocator<A> {
    inner: A,
    shards: [Shard; SHARDS],
}

impl<A> CountingAllocator<A> {
    pub const fn new(inner: A) -> Self {
        CountingAllocator {
            inner,
            shards: [const { Shard(AtomicI64::new(0)) }; SHARDS],
        }
    }

    /// Bytes allocated and not yet freed. Shards are read one after the
    /// other while other threads allocate, so the sum is a snapshot good to
    /// within what moved during the read, never torn within a shard.
    pub fn allocated_bytes(&self) -> u64 {
        let sum: i64 = self
            .shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum();
        // A free on one shard can be read before its allocation on
        // another; the true value is never negative.
        sum.max(0) as u64
    }

    fn add(&self, bytes: usize) {
        self.shards[shard_index()]
            .0
            .fetch_add(bytes as i64, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.shards[shard_index()]
            .0
            .fetch_sub(bytes as i64, Ordering::Relaxed);
    }
}

/// This thread's shard, assigned round-robin on its first allocation.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        // A const initialiser and no destructor: on targets with native
        // thread-locals (Linux, macOS, Windows: the ones Synapse builds
        // for) reading it never allocates, and it still works while the
        // thread is being torn down. On a target that emulates
        // thread-locals the first read would allocate, re-entering the
        // allocator: the wrapper is not for those targets.
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD
        .try_with(|s| {
            let mut i = s.get();
            if i == usize::MAX {
                i = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
                s.set(i);
            }
            i
        })
        .unwrap_or(0)
}

// SAFETY: every call is passed to `inner` unchanged, with the caller's
// layout and pointer, and its result returned unchanged; the wrapper only
// adds atomic counter updates, which neither allocate nor panic.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let p = unsafe { self.inner.alloc(layout) };
        if !p.is_null() {
            self.add(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { self.inner.alloc_zeroed(layout) };
        if !p.is_null() {
            self.add(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence from `inner`) with
        // this layout: the caller's contract.
        unsafe { self.inner.dealloc(ptr, layout) };
        self.sub(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
        // On failure the old block stays allocated, at its old size.
        if !p.is_null() {
            if new_size >= layout.size() {
                self.add(new_size - layout.size());
            } else {
                self.sub(layout.size() - new_size);
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    #[test]
    fn counts_what_is_held_through_alloc_realloc_and_free() {
        let a = CountingAllocator::new(System);
        let small = Layout::from_size_align(100, 8).unwrap();
        let big = Layout::from_size_align(4096, 64).unwrap();
        // SAFETY: each block is freed once, with the layout it now has.
        unsafe {
            let p = a.alloc(small);
            let q = a.alloc_zeroed(big);
            assert!(!p.is_null() && !q.is_null());
            assert_eq!(a.allocated_bytes(), 4196);
            let p = a.realloc(p, small, 1000);
            assert!(!p.is_null());
            assert_eq!(a.allocated_bytes(), 5096);
            let p = a.realloc(p, Layout::from_size_align(1000, 8).unwrap(), 10);
            assert!(!p.is_null());
            assert_eq!(a.allocated_bytes(), 4106);
            a.dealloc(q, big);
            assert_eq!(a.allocated_bytes(), 10);
            a.dealloc(p, Layout::from_size_align(10, 8).unwrap());
        }
        assert_eq!(a.allocated_bytes(), 0);
    }

    #[test]
    fn a_block_freed_on_another_thread_is_still_subtracted() {
        let a: &'static CountingAllocator<System> =
            Box::leak(Box::new(CountingAllocator::new(System)));
        let layout = Layout::from_size_align(256, 8).unwrap();
        let blocks: Vec<usize> = std::thread::scope(|s| {
            (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..50)
                            // SAFETY: freed below, with this layout.
                            .map(|_| unsafe { a.alloc(layout) } as usize)
                            .collect::<Vec<_>>()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(a.allocated_bytes(), 200 * 256);
        for p in blocks {
            // SAFETY: each came from `a.alloc(layout)` above, freed once.
            unsafe { a.dealloc(p as *mut u8, layout) };
        }
        assert_eq!(a.allocated_bytes(), 0);
    }

    #[test]
    fn a_failed_allocation_counts_nothing() {
        struct Refuses;
        // SAFETY: never hands out memory, so there is nothing to misuse.
        unsafe impl GlobalAlloc for Refuses {
            unsafe fn alloc(&self, _: Layout) -> *mut u8 {
                std::ptr::null_mut()
            }
            unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
            unsafe fn realloc(&self, _: *mut u8, _: Layout, _: usize) -> *mut u8 {
                std::ptr::null_mut()
            }
        }
        let a = CountingAllocator::new(Refuses);
        let layout = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: `Refuses` returns null for every call, never a block.
        unsafe {
            assert!(a.alloc(layout).is_null());
            assert!(a.alloc_zeroed(layout).is_null());
        }
        assert_eq!(a.allocated_bytes(), 0);
    }
}
