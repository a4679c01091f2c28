//! Batch lookup and delete on hash maps (BPF_MAP_LOOKUP_BATCH / BPF_MAP_DELETE_BATCH), which aya does not wrap:
//! reading a million-entry flow table one key at a time takes two syscalls per entry. And inserting only what a
//! map lacks (BPF_NOEXIST), for migrating a flow table.

use std::{
    io,
    mem::{MaybeUninit, size_of},
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::Pod;

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_NOEXIST: u64 = 1;
/// Entries fetched per syscall.
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: attr is a valid bpf_attr prefix of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Every (key, value) of a hash map, read in chunks. Entries changing meanwhile may be seen or not, as with any
/// walk of a live map.
pub fn read_all<K: Pod, V: Pod>(map: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut keys: Vec<MaybeUninit<K>> = (0..CHUNK).map(|_| MaybeUninit::uninit()).collect();
    let mut values: Vec<MaybeUninit<V>> = (0..CHUNK).map(|_| MaybeUninit::uninit()).collect();
    // Hash maps use a 32-bit bucket cursor.
    let mut cursor_in = 0u32;
    let mut cursor_out = 0u32;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &mut cursor_in as *mut u32 as u64
            },
            out_batch: &mut cursor_out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let done = match result {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        for i in 0..attr.count as usize {
            // SAFETY: the kernel filled the first `count` slots.
            out.push(unsafe { (keys[i].assume_init(), values[i].assume_init()) });
        }
        if done {
            return Ok(out);
        }
        cursor_in = cursor_out;
        first = false;
    }
}

/// Delete these keys. Keys already gone (evicted or expired meanwhile) are skipped. Returns how many were deleted.
pub fn delete<K: Pod>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<usize> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len().min(CHUNK) as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => {}
            // The batch stops at the first missing key; attr.count says how many went before it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let done = attr.count as usize;
        deleted += done;
        // Skip the key that stopped the batch (it is gone already).
        let skip = if done < rest.len().min(CHUNK) {
            done + 1
        } else {
            done
        };
        rest = &rest[skip..];
    }
    Ok(deleted)
}

/// The `elem` member of `union bpf_attr` (BPF_MAP_UPDATE_ELEM).
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Insert these entries where their keys are not present yet: an entry the map holds already is newer than the
/// copy and stays. Stops when the map is full. One syscall per entry: the batch update refuses BPF_NOEXIST.
/// Returns how many were inserted.
pub fn insert_missing<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    entries: &[(K, V)],
) -> io::Result<usize> {
    let mut inserted = 0;
    for (key, value) in entries {
        let mut attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: key as *const K as u64,
            value: value as *const V as u64,
            flags: BPF_NOEXIST,
        };
        // SAFETY: attr is a valid bpf_attr prefix; key and value point at live values of the map's sizes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_ELEM,
                &mut attr as *mut ElemAttr,
                size_of::<ElemAttr>(),
            )
        };
        if rc == 0 {
            inserted += 1;
            continue;
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EEXIST) => {}
            Some(libc::E2BIG) => break,
            _ => return Err(error),
        }
    }
    Ok(inserted)
}
