//! The caching device allocator.
//!
//! `cuMemAlloc`/`cuMemFree` are slow (a free synchronises the device) and a training step
//! allocates the same sizes every iteration, so freed blocks are kept, PyTorch-style, in free
//! lists keyed by a *bucket* size ([`bucket`]): requests up to 1 MiB are rounded up to a
//! multiple of 512 bytes, larger ones to a multiple of 2 MiB. A request takes the smallest
//! cached block of its own bucket or, for large requests, of a bucket at most 25% larger
//! ([`FreeLists::take`]); only when none fits is the driver asked. If the driver is out of
//! memory, every cached block is released (after synchronising the stream) and the allocation
//! retried once; a second failure is [`Error::OutOfMemory`].
//!
//! Safety of reuse without events: every kernel and copy of a device runs on its one stream,
//! and a block returns to the free lists only when its [`Buffer`] is dropped, which happens
//! after the work using it was *enqueued*; whatever uses the block next is enqueued later on
//! the same stream, so it runs after that work finished.
//!
//! [`FreeLists`] is the bookkeeping alone, generic over the block handle, so its logic is
//! tested without a GPU.

use super::device::Device;
use super::{check, Error};
use cust::sys as cu;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Requests up to this size are rounded to [`SMALL_ROUND`] bytes, larger ones to
/// [`LARGE_ROUND`].
pub const SMALL_LIMIT: usize = 1 << 20;
pub const SMALL_ROUND: usize = 512;
pub const LARGE_ROUND: usize = 2 << 20;

/// The bucket (size actually allocated) of a request of `bytes`; 0 for 0.
pub fn bucket(bytes: usize) -> usize {
    if bytes == 0 {
        0
    } else if bytes <= SMALL_LIMIT {
        bytes.div_ceil(SMALL_ROUND) * SMALL_ROUND
    } else {
        bytes.div_ceil(LARGE_ROUND) * LARGE_ROUND
    }
}

/// The largest cached bucket a request of bucket `b` may take: its own for small requests, up
/// to 25% more (whole large rounds) for large ones, so a big block is not wasted on a much
/// smaller request.
pub fn largest_fit(b: usize) -> usize {
    if b <= SMALL_LIMIT {
        b
    } else {
        b + (b / 4) / LARGE_ROUND * LARGE_ROUND
    }
}

/// Free blocks by bucket size, with the total they hold.
#[derive(Debug)]
pub struct FreeLists<P> {
    lists: BTreeMap<usize, Vec<P>>,
    cached: usize,
}

impl<P> Default for FreeLists<P> {
    fn default() -> Self {
        FreeLists {
            lists: BTreeMap::new(),
            cached: 0,
        }
    }
}

impl<P> FreeLists<P> {
    /// A cached block for a request of bucket `b` (see [`largest_fit`]): the most recently
    /// freed one of the smallest bucket that fits, with its bucket size.
    pub fn take(&mut self, b: usize) -> Option<(P, usize)> {
        let (&size, _) = self
            .lists
            .range(b..=largest_fit(b))
            .find(|(_, v)| !v.is_empty())?;
        let list = self.lists.get_mut(&size).expect("found above");
        let p = list.pop().expect("non-empty");
        if list.is_empty() {
            self.lists.remove(&size);
        }
        self.cached -= size;
        Some((p, size))
    }

    /// Caches a freed block of bucket `size`.
    pub fn put(&mut self, p: P, size: usize) {
        self.lists.entry(size).or_default().push(p);
        self.cached += size;
    }

    /// Removes and returns every cached block with its size.
    pub fn drain(&mut self) -> Vec<(P, usize)> {
        self.cached = 0;
        std::mem::take(&mut self.lists)
            .into_iter()
            .flat_map(|(size, v)| v.into_iter().map(move |p| (p, size)))
            .collect()
    }

    /// Bytes held in cached blocks.
    pub fn cached_bytes(&self) -> usize {
        self.cached
    }

    /// Number of cached blocks.
    pub fn len(&self) -> usize {
        self.lists.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }
}

/// Counters of a device's allocator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Allocations served from the free lists.
    pub reused: u64,
    /// Allocations that went to the driver.
    pub fresh: u64,
    /// Times the cache was emptied to retry an allocation that ran out of memory.
    pub oom_retries: u64,
    /// Bytes in blocks handed out and not yet dropped.
    pub live_bytes: usize,
    /// Bytes in cached free blocks.
    pub cached_bytes: usize,
}

/// The allocator state of one device (inside a mutex of [`Device`]).
#[derive(Debug, Default)]
pub(crate) struct Pool {
    pub(crate) free: FreeLists<cu::CUdeviceptr>,
    pub(crate) stats: AllocStats,
}

/// A block of device memory from the caching allocator; dropping it returns the block to the
/// allocator (no driver call). A zero-byte buffer holds no block (its address is 0).
pub struct Buffer {
    dev: Arc<Device>,
    ptr: cu::CUdeviceptr,
    bytes: usize,
    size: usize,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Buffer(cuda:{} {:#x}, {} bytes)",
            self.dev.ordinal(),
            self.ptr,
            self.bytes
        )
    }
}

impl Device {
    /// A buffer of at least `bytes` bytes (contents undefined), from the cache if a freed block
    /// fits, else from the driver; on out of memory the cache is released and the allocation
    /// retried once.
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<Buffer, Error> {
        let size = bucket(bytes);
        let buffer = |ptr, size| Buffer {
            dev: self.clone(),
            ptr,
            bytes,
            size,
        };
        if size == 0 {
            return Ok(buffer(0, 0));
        }
        {
            let mut pool = self.pool();
            if let Some((ptr, got)) = pool.free.take(size) {
                pool.stats.reused += 1;
                pool.stats.live_bytes += got;
                pool.stats.cached_bytes = pool.free.cached_bytes();
                return Ok(buffer(ptr, got));
            }
        }
        self.bind()?;
        let ptr = match self.driver_alloc(size) {
            Ok(p) => p,
            Err(e) if e.is_out_of_memory() => {
                log::debug!(
                    "cuda:{}: out of memory for {size} bytes; releasing the cache and retrying",
                    self.ordinal()
                );
                self.pool().stats.oom_retries += 1;
                self.empty_cache()?;
                self.driver_alloc(size).map_err(|e| {
                    if e.is_out_of_memory() {
                        Error::OutOfMemory { bytes }
                    } else {
                        e
                    }
                })?
            }
            Err(e) => return Err(e),
        };
        let mut pool = self.pool();
        pool.stats.fresh += 1;
        pool.stats.live_bytes += size;
        Ok(buffer(ptr, size))
    }

    /// `cuMemAlloc` of `size` bytes (the context must be current).
    fn driver_alloc(&self, size: usize) -> Result<cu::CUdeviceptr, Error> {
        let mut ptr: cu::CUdeviceptr = 0;
        // SAFETY: `ptr` is a live local the driver writes the new address to; `size` is
        // non-zero; the caller made this device's context current on this thread.
        check("cuMemAlloc", unsafe { cu::cuMemAlloc_v2(&mut ptr, size) })?;
        Ok(ptr)
    }

    /// Releases every cached free block to the driver, once the stream has finished the work
    /// that may still use them. Blocks held by live [`Buffer`]s are not affected.
    pub fn empty_cache(&self) -> Result<(), Error> {
        // Take the blocks first, then synchronise: every block taken was returned before the
        // take, so the work using it was enqueued before the synchronisation, which waits for it.
        let blocks = {
            let mut pool = self.pool();
            let b = pool.free.drain();
            pool.stats.cached_bytes = 0;
            b
        };
        if blocks.is_empty() {
            return Ok(());
        }
        // If this fails the context is unusable (an earlier kernel faulted, say): the blocks
        // are then lost with it rather than freed while work might still use them.
        self.synchronize()?;
        let mut first_err = None;
        for (ptr, _) in blocks {
            // SAFETY: `ptr` came from cuMemAlloc in this device's context (made current by
            // `synchronize`), is in no live Buffer (it was in the free lists, from which we
            // removed it, so nothing else can take it), and the stream was synchronised after
            // its last user was enqueued, so no work still uses it. It is freed exactly once.
            let r = check("cuMemFree", unsafe { cu::cuMemFree_v2(ptr) });
            if let (Err(e), None) = (r, &first_err) {
                first_err = Some(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The allocator's counters.
    pub fn alloc_stats(&self) -> AllocStats {
        let pool = self.pool();
        AllocStats {
            cached_bytes: pool.free.cached_bytes(),
            ..pool.stats
        }
    }
}

impl Buffer {
    /// The device address (0 for an empty buffer).
    pub fn ptr(&self) -> cu::CUdeviceptr {
        self.ptr
    }

    /// The size asked for (the block may be larger).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The device the buffer lives on.
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// Copies `src` to the start of the buffer and waits for the copy.
    pub fn upload(&self, src: &[u8]) -> Result<(), Error> {
        // SAFETY: `src` is borrowed until this function returns, and it returns only after
        // the stream was synchronised, so the copy is done with `src` by then.
        unsafe { self.upload_async(src)? };
        self.dev.synchronize()
    }

    /// Enqueues a copy of `src` to the start of the buffer on the device's stream.
    ///
    /// # Safety
    ///
    /// `src` must stay alive and unchanged until the device's stream has been synchronised
    /// (the driver may read it after this returns when the memory is page-locked).
    pub unsafe fn upload_async(&self, src: &[u8]) -> Result<(), Error> {
        if src.len() > self.bytes {
            return Err(Error::Invalid(format!(
                "upload of {} bytes into a buffer of {}",
                src.len(),
                self.bytes
            )));
        }
        if src.is_empty() {
            return Ok(());
        }
        self.dev.bind()?;
        // SAFETY: the destination is this buffer's block, allocated in this device's context
        // (current) with at least `self.bytes >= src.len()` bytes and owned by this Buffer;
        // the source is `src.len()` readable bytes which the caller keeps alive until the
        // stream is synchronised; the stream belongs to the same context.
        check("cuMemcpyHtoDAsync", unsafe {
            cu::cuMemcpyHtoDAsync_v2(
                self.ptr,
                src.as_ptr().cast(),
                src.len(),
                self.dev.stream_raw(),
            )
        })
    }

    /// Copies the first `dst.len()` bytes of the buffer into `dst`, after the work enqueued
    /// before on the device's stream.
    pub fn download(&self, dst: &mut [u8]) -> Result<(), Error> {
        if dst.len() > self.bytes {
            return Err(Error::Invalid(format!(
                "download of {} bytes from a buffer of {}",
                dst.len(),
                self.bytes
            )));
        }
        if dst.is_empty() {
            return Ok(());
        }
        self.dev.bind()?;
        // SAFETY: the source is this buffer's live block of at least `dst.len()` bytes in the
        // current context; `dst` is `dst.len()` writable bytes, borrowed mutably (so nothing
        // else touches them) until we return, and we return only after synchronising the
        // stream, when the copy is complete (if the synchronisation fails, the context is
        // broken and no further work of it runs); any byte pattern is a valid `u8`.
        let r = check("cuMemcpyDtoHAsync", unsafe {
            cu::cuMemcpyDtoHAsync_v2(
                dst.as_mut_ptr().cast(),
                self.ptr,
                dst.len(),
                self.dev.stream_raw(),
            )
        });
        let s = self.dev.synchronize();
        r.and(s)
    }

    /// Enqueues setting every byte of the buffer to zero.
    pub fn zero_async(&self) -> Result<(), Error> {
        if self.bytes == 0 {
            return Ok(());
        }
        self.dev.bind()?;
        // SAFETY: writes `self.bytes` bytes of this buffer's live block (at least that large)
        // in the current context, on the device's stream; no host memory is involved.
        check("cuMemsetD8Async", unsafe {
            cu::cuMemsetD8Async(self.ptr, 0, self.bytes, self.dev.stream_raw())
        })
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if self.size == 0 {
            return;
        }
        let mut pool = self.dev.pool();
        pool.stats.live_bytes = pool.stats.live_bytes.saturating_sub(self.size);
        pool.free.put(self.ptr, self.size);
        pool.stats.cached_bytes = pool.free.cached_bytes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_small_requests_to_512_bytes_and_large_ones_to_2_mib() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 512);
        assert_eq!(bucket(512), 512);
        assert_eq!(bucket(513), 1024);
        assert_eq!(bucket(SMALL_LIMIT), SMALL_LIMIT);
        assert_eq!(bucket(SMALL_LIMIT + 1), LARGE_ROUND);
        assert_eq!(bucket(LARGE_ROUND + 1), 2 * LARGE_ROUND);
        for b in [1usize, 100, 4096, 1 << 20, (1 << 20) + 3, 77 << 20] {
            let k = bucket(b);
            assert!(k >= b && bucket(k) == k, "{b} -> {k}");
        }
    }

    #[test]
    fn small_requests_take_only_their_own_bucket() {
        let mut f = FreeLists::default();
        f.put(1u64, 1024);
        assert_eq!(f.take(512), None);
        assert_eq!(f.take(1024), Some((1, 1024)));
        assert!(f.is_empty());
        assert_eq!(f.cached_bytes(), 0);
    }

    #[test]
    fn large_requests_take_the_smallest_block_up_to_a_quarter_larger() {
        let mb = LARGE_ROUND;
        let mut f = FreeLists::default();
        f.put(10u64, 10 * mb);
        f.put(12, 12 * mb);
        f.put(30, 30 * mb);
        assert_eq!(f.cached_bytes(), 52 * mb);
        // 8 blocks of 2 MiB may take up to 10.
        assert_eq!(largest_fit(8 * mb), 10 * mb);
        assert_eq!(f.take(8 * mb), Some((10, 10 * mb)));
        assert_eq!(f.take(8 * mb), None);
        assert_eq!(f.take(12 * mb), Some((12, 12 * mb)));
        assert_eq!(f.take(20 * mb), None, "30 MiB is more than 25% above 20");
        assert_eq!(f.take(24 * mb), Some((30, 30 * mb)));
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn the_last_freed_block_of_a_bucket_is_reused_first_and_drain_empties_all() {
        let mut f = FreeLists::default();
        f.put(1u64, 512);
        f.put(2, 512);
        f.put(3, 2048);
        assert_eq!(f.take(512), Some((2, 512)));
        f.put(2, 512);
        let mut all = f.drain();
        all.sort();
        assert_eq!(all, vec![(1, 512), (2, 512), (3, 2048)]);
        assert!(f.is_empty() && f.cached_bytes() == 0);
    }
}
