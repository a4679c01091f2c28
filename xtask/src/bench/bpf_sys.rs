//! The few bpf(2) commands the bench needs beyond the agent's (which goes through aya): loading a two-instruction
//! program, linking it to an interface, and reading a loaded program's JIT image addresses and line info. The
//! structures are the kernel's UAPI (linux/bpf.h), written as byte offsets into zeroed buffers: the kernel takes
//! a shorter struct than its own, with everything past it zero, and a longer one as long as the excess is zero.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::Context as _;

pub const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
pub const BPF_LINK_CREATE: libc::c_long = 28;

/// union bpf_attr's size in the UAPI.
pub const ATTR_SIZE: usize = 144;

pub type Attr = [u8; ATTR_SIZE];

/// The bpf(2) system call with `attr`; what it returns (a new descriptor, or 0).
fn call(command: libc::c_long, attr: &Attr) -> std::io::Result<i64> {
    // SAFETY: attr is a whole, initialised union bpf_attr; the pointers in it outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_ptr(), ATTR_SIZE) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// A bpf(2) command that returns a new file descriptor.
pub fn call_for_fd(command: libc::c_long, attr: &Attr) -> std::io::Result<OwnedFd> {
    let fd = call(command, attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

pub fn put_u32(buffer: &mut [u8], offset: usize, value: u32) {
    buffer[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
}

pub fn put_u64(buffer: &mut [u8], offset: usize, value: u64) {
    buffer[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
}

fn u32_at(buffer: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes(buffer[offset..offset + 4].try_into().expect("4 bytes"))
}

/// BPF_OBJ_GET_INFO_BY_FD into `info`.
fn object_info(fd: &OwnedFd, info: &mut [u8]) -> std::io::Result<()> {
    let mut attr = [0u8; ATTR_SIZE];
    put_u32(&mut attr, 0, fd.as_raw_fd() as u32); // info.bpf_fd
    put_u32(&mut attr, 4, info.len() as u32); // info.info_len
    put_u64(&mut attr, 8, info.as_mut_ptr() as u64); // info.info
    call(BPF_OBJ_GET_INFO_BY_FD, &attr).map(drop)
}

/// struct bpf_prog_info's size and the offsets of the fields read here.
const PROG_INFO_SIZE: usize = 232;
const INFO_NAME: usize = 64;
const INFO_NR_JITED_KSYMS: usize = 104;
const INFO_NR_JITED_FUNC_LENS: usize = 108;
const INFO_JITED_KSYMS: usize = 112;
const INFO_JITED_FUNC_LENS: usize = 120;
const INFO_BTF_ID: usize = 128;
const INFO_NR_LINE_INFO: usize = 148;
const INFO_LINE_INFO: usize = 152;
const INFO_JITED_LINE_INFO: usize = 160;
const INFO_NR_JITED_LINE_INFO: usize = 168;
const INFO_LINE_INFO_REC_SIZE: usize = 172;
const INFO_JITED_LINE_INFO_REC_SIZE: usize = 176;
/// struct bpf_line_info: insn_off, file_name_off, line_off, line_col (line << 10 | column).
const LINE_INFO_SIZE: usize = 16;

/// The ids of the loaded programs whose name starts with `prefix` (the kernel keeps 15 characters of a name).
pub fn programs_named(prefix: &str) -> anyhow::Result<Vec<u32>> {
    let prefix = &prefix.as_bytes()[..prefix.len().min(15)];
    let mut found = Vec::new();
    let mut id = 0;
    loop {
        let mut attr = [0u8; ATTR_SIZE];
        put_u32(&mut attr, 0, id); // start_id
        if call(BPF_PROG_GET_NEXT_ID, &attr).is_err() {
            return Ok(found); // ENOENT: no more
        }
        id = u32_at(&attr, 4); // next_id
        let Ok(fd) = program_fd(id) else {
            continue; // unloaded meanwhile
        };
        let mut info = [0u8; PROG_INFO_SIZE];
        object_info(&fd, &mut info).context("reading a program's info")?;
        if info[INFO_NAME..INFO_NAME + 16].starts_with(prefix) {
            found.push(id);
        }
    }
}

fn program_fd(id: u32) -> std::io::Result<OwnedFd> {
    let mut attr = [0u8; ATTR_SIZE];
    put_u32(&mut attr, 0, id); // prog_id
    call_for_fd(BPF_PROG_GET_FD_BY_ID, &attr)
}

/// A source line of a loaded program, as its BTF line info names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceLine {
    /// "file.rs:LINE", and for a line of core or aya code inlined into veg's, "(near file.rs:LINE)": the veg line
    /// just before it in the image, most often its caller.
    pub place: String,
    /// The line's text, trimmed.
    pub text: String,
}

/// Where a loaded program's JIT image lies, and which source line each part of it comes from.
pub struct JitLines {
    /// (start, length) of each function's image (the program and its subprograms).
    functions: Vec<(u64, u64)>,
    /// (address, line), by address: from each address on, until the next, the code is that line's.
    lines: Vec<(u64, SourceLine)>,
}

impl JitLines {
    pub fn of_program(id: u32) -> anyhow::Result<JitLines> {
        let fd = program_fd(id).with_context(|| format!("opening program {id}"))?;
        let mut info = [0u8; PROG_INFO_SIZE];
        object_info(&fd, &mut info)?;
        let functions = u32_at(&info, INFO_NR_JITED_KSYMS) as usize;
        let line_infos = u32_at(&info, INFO_NR_LINE_INFO) as usize;
        let jited_lines = u32_at(&info, INFO_NR_JITED_LINE_INFO) as usize;
        let btf_id = u32_at(&info, INFO_BTF_ID);
        anyhow::ensure!(
            line_infos > 0 && jited_lines == line_infos,
            "program {id} has no line info for its JIT image (is it JIT-compiled, with BTF?)"
        );
        let (mut starts, mut lengths) = (vec![0u64; functions], vec![0u32; functions]);
        let mut line_info = vec![0u8; line_infos * LINE_INFO_SIZE];
        let mut jited_line_info = vec![0u64; jited_lines];
        let mut info = [0u8; PROG_INFO_SIZE];
        put_u32(&mut info, INFO_NR_JITED_KSYMS, functions as u32);
        put_u64(&mut info, INFO_JITED_KSYMS, starts.as_mut_ptr() as u64);
        put_u32(&mut info, INFO_NR_JITED_FUNC_LENS, functions as u32);
        put_u64(&mut info, INFO_JITED_FUNC_LENS, lengths.as_mut_ptr() as u64);
        put_u32(&mut info, INFO_NR_LINE_INFO, line_infos as u32);
        put_u32(&mut info, INFO_LINE_INFO_REC_SIZE, LINE_INFO_SIZE as u32);
        put_u64(&mut info, INFO_LINE_INFO, line_info.as_mut_ptr() as u64);
        put_u32(&mut info, INFO_NR_JITED_LINE_INFO, jited_lines as u32);
        put_u32(&mut info, INFO_JITED_LINE_INFO_REC_SIZE, 8);
        put_u64(
            &mut info,
            INFO_JITED_LINE_INFO,
            jited_line_info.as_mut_ptr() as u64,
        );
        object_info(&fd, &mut info)?;
        let strings = btf_strings(btf_id)?;
        let string = |offset: u32| -> String {
            let rest = strings.get(offset as usize..).unwrap_or_default();
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        };
        let mut records: Vec<(u64, String, bool, String)> = jited_line_info
            .iter()
            .enumerate()
            .map(|(i, address)| {
                let record = &line_info[i * LINE_INFO_SIZE..(i + 1) * LINE_INFO_SIZE];
                let path = string(u32_at(record, 4));
                let ours = path.contains("/veg-ebpf/") || path.contains("/veg-common/");
                let file = path.rsplit('/').next().unwrap_or(&path);
                let place = format!("{file}:{}", u32_at(record, 12) >> 10);
                let text = string(u32_at(record, 8)).trim().to_owned();
                (*address, place, ours, text)
            })
            .collect();
        // Stable: of records at one address, the last is the code's.
        records.sort_by_key(|(address, ..)| *address);
        let mut nearest_ours = String::new();
        let lines = records
            .into_iter()
            .map(|(address, place, ours, text)| {
                let place = if ours {
                    nearest_ours.clone_from(&place);
                    place
                } else {
                    format!("{place} (near {nearest_ours})")
                };
                (address, SourceLine { place, text })
            })
            .collect();
        Ok(JitLines {
            functions: starts
                .into_iter()
                .zip(lengths)
                .map(|(start, length)| (start, u64::from(length)))
                .collect(),
            lines,
        })
    }

    /// The source line whose code is at `address`, if the address is in this program's image.
    pub fn line_at(&self, address: u64) -> Option<&SourceLine> {
        self.functions
            .iter()
            .any(|(start, length)| (*start..start + length).contains(&address))
            .then_some(())?;
        let after = self.lines.partition_point(|(start, _)| *start <= address);
        after.checked_sub(1).map(|i| &self.lines[i].1)
    }
}

/// The string section of a loaded BTF object.
fn btf_strings(id: u32) -> anyhow::Result<Vec<u8>> {
    let mut attr = [0u8; ATTR_SIZE];
    put_u32(&mut attr, 0, id); // btf_id
    let fd = call_for_fd(BPF_BTF_GET_FD_BY_ID, &attr).context("opening the program's BTF")?;
    // struct bpf_btf_info: btf (pointer), btf_size, id, ...
    let mut info = [0u8; 32];
    object_info(&fd, &mut info)?;
    let size = u32_at(&info, 8) as usize;
    let mut btf = vec![0u8; size];
    let mut info = [0u8; 32];
    put_u64(&mut info, 0, btf.as_mut_ptr() as u64);
    put_u32(&mut info, 8, size as u32);
    object_info(&fd, &mut info)?;
    // struct btf_header: magic (u16), version, flags, hdr_len, type_off, type_len, str_off, str_len (u32s).
    anyhow::ensure!(size >= 24 && btf[..2] == [0x9f, 0xeb], "not BTF");
    let header = u32_at(&btf, 4) as usize;
    let (offset, length) = (u32_at(&btf, 16) as usize, u32_at(&btf, 20) as usize);
    btf.get(header + offset..header + offset + length)
        .map(<[u8]>::to_vec)
        .context("BTF string section out of bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_an_error_not_a_crash() {
        assert!(JitLines::of_program(u32::MAX).is_err());
    }
}
