//! The call table in memory shared between a supervisor and one worker: a sealed `memfd` the
//! supervisor creates and hands to the worker, which both map. The worker records its calls into
//! apps there; the supervisor reads them, also after the worker died.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use crate::host::calls::CallTable;

/// A [`CallTable`] in a shared mapping, unmapped when dropped.
#[derive(Debug)]
pub struct SharedCalls {
    table: NonNull<CallTable>,
}

// SAFETY: the mapping holds only atomics, which any thread may read and write; the pointer is
// never written through except by those atomics.
unsafe impl Send for SharedCalls {}
// SAFETY: as above.
unsafe impl Sync for SharedCalls {}

const LEN: usize = size_of::<CallTable>();

impl SharedCalls {
    /// A new, zeroed table in a `memfd` sealed at its size, and the descriptor to hand to a
    /// worker.
    pub fn create() -> io::Result<(SharedCalls, OwnedFd)> {
        let fd = rustix::fs::memfd_create(
            "berth-calls",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, LEN as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let shared = Self::map(&fd)?;
        shared.init();
        Ok((shared, fd))
    }

    /// Maps the table in `file`, a descriptor from [`SharedCalls::create`].
    pub fn open(file: &File) -> io::Result<SharedCalls> {
        let seals = rustix::fs::fcntl_get_seals(file)?;
        let len = file.metadata()?.len();
        if !seals.contains(SealFlags::SHRINK) || len < LEN as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the call table is not a sealed memfd of {LEN} bytes (it has {len})"),
            ));
        }
        Self::map(file)
    }

    /// Keeps the mapping for the rest of the process.
    pub fn leak(self) -> &'static CallTable {
        let table = self.table;
        std::mem::forget(self);
        // SAFETY: the mapping is never unmapped now (forgotten above), so the reference is
        // valid for the rest of the process; see `map` for why it is a valid `CallTable`.
        unsafe { table.as_ref() }
    }

    fn map(fd: &impl AsFd) -> io::Result<SharedCalls> {
        // SAFETY: a new mapping at an address the kernel picks aliases no Rust object. The
        // file is a memfd sealed against shrinking (checked by `open`, set by `create`), so
        // no access within `LEN` can fault.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                LEN,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        let table = NonNull::new(ptr.cast::<CallTable>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(SharedCalls { table })
    }
}

impl std::ops::Deref for SharedCalls {
    type Target = CallTable;

    fn deref(&self) -> &CallTable {
        // SAFETY: the mapping is page-aligned, `LEN` bytes long and lives until `self` drops.
        // `CallTable` is `repr(C)` and made of integer atomics only, for which every bit pattern
        // (zeroes from the kernel, anything the other process wrote) is a valid value, and
        // which may be read and written concurrently by both processes.
        unsafe { self.table.as_ref() }
    }
}

impl Drop for SharedCalls {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map` with this length, and no reference into it
        // outlives `self` (`deref` borrows `self`).
        if let Err(err) = unsafe { rustix::mm::munmap(self.table.as_ptr().cast(), LEN) } {
            tracing::warn!("cannot unmap a worker's call table: {err}");
        }
    }
}
