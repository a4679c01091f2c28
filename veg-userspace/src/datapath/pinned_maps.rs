//! A gateway's pinned maps outlive its agent, and may have been made by another build or with other settings.
//! Before the programs load, each pinned map is compared with what this build declares (type, flags, key and
//! value sizes, capacity, BTF types), and one that differs is never silently reused:
//! - the flow table with another capacity or flags (a new `--max-flows`, or an older build's flags), with the
//!   entries of the builds before translation records (without packet and byte counts), or without BTF types (the
//!   builds before the maps were declared with BTF), is migrated: its pin is set aside, a new table is created,
//!   and every live flow is copied into it; the old table goes once the new programs are attached;
//! - the settings, policy and counters of another shape are replaced: the agent writes settings and policy
//!   anew, and counters start again from zero;
//! - a flow table whose entries have another layout cannot be carried over: refused, with the command to run.

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::maps::MapData;
use tracing::{info, warn};
use veg_common::flow::{FlowEntry, FlowKey};

use super::{EBPF_OBJECT, batch, pins};

/// Where a flow table being migrated waits until the new programs are attached (bpffs refuses '.').
const FLOWS_BEING_MIGRATED: &str = "FLOWS_MIGRATING";

/// What makes two maps interchangeable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    map_type: u32,
    flags: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    /// Whether the kernel knows the key's and value's types (what `bpftool map dump` prints fields by).
    btf: bool,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, flags {:#x}, key {} bytes, value {} bytes, {} entries, {}",
            self.map_type,
            self.flags,
            self.key_size,
            self.value_size,
            self.max_entries,
            if self.btf { "with BTF" } else { "without BTF" }
        )
    }
}

/// The shape of every pinned map this build declares, the flow table sized for `max_flow_entries`.
fn declared_shapes(max_flow_entries: u32) -> anyhow::Result<Vec<(String, Shape)>> {
    let object = aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| anyhow!(e))?;
    Ok(object
        .maps
        .iter()
        .filter(|(name, _)| pins::PINNED_MAPS.contains(&name.as_str()))
        .map(|(name, map)| {
            let max_entries = if name == pins::FLOWS {
                max_flow_entries
            } else {
                map.max_entries()
            };
            let shape = Shape {
                map_type: map.map_type(),
                flags: map.map_flags(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries,
                btf: true,
            };
            (name.clone(), shape)
        })
        .collect())
}

fn pinned_shape(path: &Path) -> anyhow::Result<Shape> {
    let map = MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
    let info = map
        .info()
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Shape {
        map_type: info.map_type().map_err(|e| anyhow!(e))? as u32,
        flags: info.map_flags(),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        btf: has_btf(&map).with_context(|| format!("reading the BTF of {}", path.display()))?,
    })
}

/// Whether `map` was created with BTF key and value types. aya's MapInfo does not say, so this asks the kernel
/// directly (BPF_OBJ_GET_INFO_BY_FD).
fn has_btf(map: &MapData) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;

    use aya_obj::generated::{bpf_cmd, bpf_map_info};

    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_map_info is plain data; all zeroes is a valid value.
    let mut info: bpf_map_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: map.fd().as_fd().as_raw_fd() as u32,
        info_len: size_of::<bpf_map_info>() as u32,
        info: &mut info as *mut bpf_map_info as u64,
    };
    // SAFETY: the attribute names a valid fd and a buffer of the size given; the kernel writes at most that much.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &mut attr as *mut InfoAttr,
            size_of::<InfoAttr>() as libc::c_uint,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.btf_key_type_id != 0 && info.btf_value_type_id != 0)
}

/// Check the pins in `pin_dir` against this build before loading. Pins that differ are set aside (the flow table,
/// to be migrated by `carry_over`) or removed (the rest); a flow table that cannot be migrated is refused. Returns
/// the flow table to carry over, if any.
pub fn prepare(pin_dir: &Path, max_flow_entries: u32) -> anyhow::Result<Option<PathBuf>> {
    let migrating = pin_dir.join(FLOWS_BEING_MIGRATED);
    for (name, wanted) in declared_shapes(max_flow_entries)? {
        let path = pin_dir.join(&name);
        if !path.exists() {
            continue;
        }
        let found = pinned_shape(&path)?;
        if found == wanted {
            continue;
        }
        if name != pins::FLOWS {
            warn!(map = %name, %found, %wanted, "pinned map made for another build: replaced");
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            continue;
        }
        let known_layout = found.value_size == wanted.value_size
            || found.value_size as usize == size_of::<FlowEntryBeforeCounts>();
        if found.key_size != wanted.key_size || !known_layout {
            bail!(
                "the pinned flow table {} was made by another build of veg ({found}; this build needs {wanted}), \
                 so its translations cannot be carried over. Stop any agent of this gateway and run \
                 `veg gateway --name {} --cleanup` (connections through this instance break), then start it again",
                path.display(),
                gateway_name(pin_dir),
            );
        }
        if migrating.exists() {
            bail!(
                "{} is still waiting to be migrated from an earlier start while {} differs again: start once with \
                 the earlier --max-flows, or run `veg gateway --name {} --cleanup`",
                migrating.display(),
                path.display(),
                gateway_name(pin_dir),
            );
        }
        info!(%found, %wanted, "the flow table changes size, flags or layout: migrating its live flows");
        std::fs::rename(&path, &migrating)
            .with_context(|| format!("setting {} aside", path.display()))?;
    }
    Ok(migrating.exists().then_some(migrating))
}

fn gateway_name(pin_dir: &Path) -> String {
    pin_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Copy the flows of the old table `from` created at `created_since` (CLOCK_MONOTONIC ns) or later that the new
/// table `to` lacks. Run for every flow before the new programs are attached, and once after for the flows the
/// old programs created meanwhile. Returns how many were copied.
pub fn carry_over(from: &Path, to: &Path, created_since: u64) -> anyhow::Result<usize> {
    let old = MapData::from_pin(from).with_context(|| format!("opening {}", from.display()))?;
    let new = MapData::from_pin(to).with_context(|| format!("opening {}", to.display()))?;
    let old_value_size = old
        .info()
        .with_context(|| format!("reading {}", from.display()))?
        .value_size();
    let mut entries: Vec<(FlowKey, FlowEntry)> =
        if old_value_size as usize == size_of::<FlowEntry>() {
            batch::read_all(old.fd().as_fd())
        } else {
            batch::read_all::<FlowKey, FlowEntryBeforeCounts>(old.fd().as_fd())
                .map(|entries| entries.into_iter().map(|(k, v)| (k, v.upgrade())).collect())
        }
        .context("reading the old flow table")?;
    entries.retain(|(_, entry)| entry.created_ns >= created_since);
    let copied = batch::insert_missing(new.fd().as_fd(), &entries)
        .context("copying flows into the new flow table")?;
    let capacity = new
        .info()
        .with_context(|| format!("reading {}", to.display()))?
        .max_entries() as usize;
    if entries.len() > capacity {
        warn!(
            entries = entries.len(),
            capacity,
            "the new flow table is smaller than the live flows: those that did not fit were dropped"
        );
    }
    Ok(copied)
}

/// A flow entry as the builds before translation records laid it out: FlowEntry's fields up to `packets`, in the
/// same order, without the packet and byte counts appended since. Migrated with counts of zero.
#[repr(C)]
#[derive(Clone, Copy)]
struct FlowEntryBeforeCounts([u8; std::mem::offset_of!(FlowEntry, packets)]);

// SAFETY: plain bytes, valid for any value.
unsafe impl aya::Pod for FlowEntryBeforeCounts {}

impl FlowEntryBeforeCounts {
    fn upgrade(&self) -> FlowEntry {
        let mut entry = FlowEntry::default();
        // SAFETY: FlowEntry is plain data, and its first bytes are exactly the older layout's fields.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.0.as_ptr(),
                &mut entry as *mut FlowEntry as *mut u8,
                self.0.len(),
            )
        };
        entry
    }
}
