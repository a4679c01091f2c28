//! A gateway's pinned maps outlive its agent, and may have been made by another build or with other settings.
//! Before the programs load, each pinned map is compared with what this build declares (type, flags, key and
//! value sizes, capacity, BTF types), and one that differs is never silently reused:
//! - the flow table with another capacity or flags (a new `--max-flows`, or an older build's flags), with the
//!   entries of the builds that kept translation records' packet and byte counts in them, or without BTF types
//!   (the builds before the maps were declared with BTF), is migrated: its pin is set aside, a new table is
//!   created, and every live flow is copied into it (and its counts into the counts table, when records are on);
//!   the old table goes once the new programs are attached;
//! - the settings, policy and counters of another shape are replaced: the agent writes settings and policy
//!   anew, and counters start again from zero; so is a counts table of another size (records turned on or off,
//!   or a new `--max-flows`): the counts of live translations start again from zero;
//! - a flow table whose entries have another layout cannot be carried over: refused, with the command to run.

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::maps::MapData;
use tracing::{info, warn};
use veg_common::flow::{DIRECTION_OUTBOUND, FlowCounts, FlowEntry, FlowKey};

use super::{EBPF_OBJECT, TableSizes, batch, pins};

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

/// The shape of every pinned map this build declares, the flow and counts tables of `sizes`.
fn declared_shapes(sizes: TableSizes) -> anyhow::Result<Vec<(String, Shape)>> {
    let object = aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| anyhow!(e))?;
    Ok(object
        .maps
        .iter()
        .filter(|(name, _)| pins::PINNED_MAPS.contains(&name.as_str()))
        .map(|(name, map)| {
            let max_entries = match name.as_str() {
                pins::FLOWS => sizes.flow_entries,
                pins::FLOW_COUNTS => sizes.counts_entries,
                _ => map.max_entries(),
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
pub fn prepare(pin_dir: &Path, sizes: TableSizes) -> anyhow::Result<Option<PathBuf>> {
    let migrating = pin_dir.join(FLOWS_BEING_MIGRATED);
    for (name, wanted) in declared_shapes(sizes)? {
        let path = pin_dir.join(&name);
        if !path.exists() {
            continue;
        }
        let found = pinned_shape(&path)?;
        if found == wanted {
            continue;
        }
        let resized_counts = name == pins::FLOW_COUNTS
            && found
                == Shape {
                    max_entries: found.max_entries,
                    ..wanted
                };
        if resized_counts {
            info!(%found, %wanted, "the counts table changes size (translation records turned on or off, or a new --max-flows): the counts of live translations start again");
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            continue;
        }
        if name != pins::FLOWS {
            warn!(map = %name, %found, %wanted, "pinned map made for another build: replaced");
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            continue;
        }
        let known_layout = found.value_size == wanted.value_size
            || found.value_size as usize == size_of::<FlowEntryWithCounts>();
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
/// table in `pin_dir` lacks. Run for every flow before the new programs are attached, and once after for the flows
/// the old programs created meanwhile. Counts an older build kept in the entries go into the counts table, when it
/// has room for them (records on). Returns how many entries were copied.
pub fn carry_over(from: &Path, pin_dir: &Path, created_since: u64) -> anyhow::Result<usize> {
    let to = pin_dir.join(pins::FLOWS);
    let new = MapData::from_pin(&to).with_context(|| format!("opening {}", to.display()))?;
    let OldFlows {
        mut entries,
        mut counts,
    } = read_old(from)?;
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
    let counts_table = pin_dir.join(pins::FLOW_COUNTS);
    let counts_table = MapData::from_pin(&counts_table)
        .with_context(|| format!("opening {}", counts_table.display()))?;
    let room = counts_table
        .info()
        .context("reading the counts table")?
        .max_entries() as usize;
    let copied_keys: std::collections::HashSet<&FlowKey> = entries.iter().map(|(k, _)| k).collect();
    counts.retain(|(key, _)| copied_keys.contains(key));
    if room > 1 && !counts.is_empty() {
        batch::insert_missing(counts_table.fd().as_fd(), &counts)
            .context("copying the translations' counts into the counts table")?;
    }
    Ok(copied)
}

/// What an old flow table holds: its flows, and the counts the builds that kept them in the entries had.
struct OldFlows {
    entries: Vec<(FlowKey, FlowEntry)>,
    counts: Vec<(FlowKey, FlowCounts)>,
}

fn read_old(from: &Path) -> anyhow::Result<OldFlows> {
    let old = MapData::from_pin(from).with_context(|| format!("opening {}", from.display()))?;
    let value_size = old
        .info()
        .with_context(|| format!("reading {}", from.display()))?
        .value_size();
    if value_size as usize != size_of::<FlowEntryWithCounts>() {
        let entries = batch::read_all(old.fd().as_fd()).context("reading the old flow table")?;
        return Ok(OldFlows {
            entries,
            counts: Vec::new(),
        });
    }
    let counted = batch::read_all::<FlowKey, FlowEntryWithCounts>(old.fd().as_fd())
        .context("reading the old flow table")?;
    Ok(OldFlows {
        counts: counts_of(&counted),
        entries: counted.into_iter().map(|(k, v)| (k, v.entry)).collect(),
    })
}

/// A flow entry as the builds that kept translation records' counts in the flow table laid it out: today's
/// entry, then the packets and bytes its direction carried.
#[repr(C)]
#[derive(Clone, Copy)]
struct FlowEntryWithCounts {
    entry: FlowEntry,
    packets: u64,
    bytes: u64,
}

// SAFETY: plain data (a Pod entry and two u64s, no padding), valid for any bytes.
unsafe impl aya::Pod for FlowEntryWithCounts {}

/// Each translation's counts, from the entries of both its halves, keyed by its outbound key.
fn counts_of(entries: &[(FlowKey, FlowEntryWithCounts)]) -> Vec<(FlowKey, FlowCounts)> {
    let inbound: std::collections::HashMap<&FlowKey, &FlowEntryWithCounts> = entries
        .iter()
        .filter(|(_, e)| e.entry.direction != DIRECTION_OUTBOUND)
        .map(|(k, e)| (k, e))
        .collect();
    entries
        .iter()
        .filter(|(_, e)| e.entry.direction == DIRECTION_OUTBOUND)
        .map(|(key, out)| {
            let back = inbound.get(&key.partner(&out.entry));
            let counts = FlowCounts {
                packets_out: out.packets,
                bytes_out: out.bytes,
                packets_in: back.map_or(0, |e| e.packets),
                bytes_in: back.map_or(0, |e| e.bytes),
            };
            (*key, counts)
        })
        .collect()
}
