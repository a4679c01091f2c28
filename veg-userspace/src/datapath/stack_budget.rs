//! The verifier's stack budget, checked on the object itself: every program together with the deepest chain of
//! functions it calls (and callbacks it hands to helpers such as bpf_loop) must fit in 512 bytes, each frame
//! rounded up as the kernel counts it. A kernel with the JIT rounds frames to 16 bytes, older kernels and the
//! interpreter to 32 (a frame of 0 counting 32), so a chain that loads here can still be refused elsewhere; the
//! program tests load on this kernel only, and this test checks the 32-byte rounding they cannot.
//!
//! A function's frame is read off its instructions the way llvm-objdump shows it: the deepest `r10 - N` it
//! loads from, stores to, or takes the address of (`rX = r10; rX += -N`).

use std::collections::{BTreeSet, HashSet};

use aya_obj::generated::{BPF_PSEUDO_CALL, BPF_PSEUDO_FUNC, bpf_insn};

/// What the verifier allows for a program and its calls together.
const MAX_BPF_STACK: u32 = 512;
/// The frame pointer.
const R10: u8 = 10;

const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU: u8 = 0x04;
const CLASS_ALU64: u8 = 0x07;
const LD_IMM64: u8 = 0x18;
const CALL: u8 = 0x85;
const ALU64_MOV_REG: u8 = 0xbf;
const ALU64_ADD_IMM: u8 = 0x07;

/// A function of one program's linked instructions: where it starts, its frame, and the functions it calls.
#[derive(Debug)]
struct Frame {
    start: usize,
    name: String,
    depth: u32,
    callees: BTreeSet<usize>,
}

/// The instruction a call or a callback reference at `pc` leads to.
fn target(pc: usize, insn: &bpf_insn) -> Option<usize> {
    let src = u32::from(insn.src_reg());
    let is_call = insn.code == CALL && src == BPF_PSEUDO_CALL;
    let is_callback = insn.code == LD_IMM64 && src == BPF_PSEUDO_FUNC;
    (is_call || is_callback).then(|| (pc as i64 + i64::from(insn.imm) + 1) as usize)
}

/// The deepest stack byte the instructions `insns` touch, in bytes below r10.
fn frame_depth(insns: &[bpf_insn]) -> u32 {
    // Registers holding r10 plus a known offset: the addresses of stack objects passed to helpers and callees.
    let mut on_stack: [Option<i64>; 11] = [None; 11];
    let mut deepest: i64 = 0;
    let mut pc = 0;
    while pc < insns.len() {
        let insn = &insns[pc];
        // Registers are 4-bit fields; the verifier refuses any past r10.
        let (dst, src, off) = (
            usize::from(insn.dst_reg()).min(10),
            usize::from(insn.src_reg()).min(10),
            i64::from(insn.off),
        );
        let base = |reg: usize| {
            if reg == usize::from(R10) {
                Some(0)
            } else {
                on_stack.get(reg).copied().flatten()
            }
        };
        match insn.code & 0x07 {
            CLASS_LDX => {
                if let Some(base) = base(src) {
                    deepest = deepest.min(base + off);
                }
                on_stack[dst] = None;
            }
            CLASS_ST | CLASS_STX => {
                if let Some(base) = base(dst) {
                    deepest = deepest.min(base + off);
                }
            }
            _ if insn.code == ALU64_MOV_REG => on_stack[dst] = base(src),
            _ if insn.code == ALU64_ADD_IMM => {
                on_stack[dst] = on_stack[dst].map(|b| b + i64::from(insn.imm));
                if let Some(b) = on_stack[dst] {
                    deepest = deepest.min(b);
                }
            }
            _ if insn.code == CALL => on_stack[..=5].fill(None),
            _ if insn.code == LD_IMM64 => {
                on_stack[dst] = None;
                pc += 1; // the second half of the 16-byte instruction
            }
            class if class == CLASS_ALU64 || class == CLASS_ALU => on_stack[dst] = None,
            _ => {}
        }
        pc += 1;
    }
    (-deepest) as u32
}

/// A program's functions, split at every call and callback target as the verifier splits them.
fn frames(insns: &[bpf_insn]) -> Vec<Frame> {
    let mut starts: BTreeSet<usize> = BTreeSet::from([0]);
    starts.extend(insns.iter().enumerate().filter_map(|(pc, i)| target(pc, i)));
    let starts: Vec<usize> = starts.into_iter().collect();
    starts
        .iter()
        .enumerate()
        .map(|(n, &start)| {
            let end = starts.get(n + 1).copied().unwrap_or(insns.len());
            let body = &insns[start..end];
            Frame {
                start,
                name: format!("function at instruction {start}"),
                depth: frame_depth(body),
                callees: body
                    .iter()
                    .enumerate()
                    .filter_map(|(pc, i)| target(start + pc, i))
                    .collect(),
            }
        })
        .collect()
}

/// A frame as the kernel counts it at `rounding` bytes (32 also counts an empty frame as 32).
fn rounded(depth: u32, rounding: u32) -> u32 {
    depth.max(u32::from(rounding == 32)).div_ceil(rounding) * rounding
}

/// The deepest chain from the frame starting at `start`: its total and the frames on it.
fn deepest_chain(
    frames: &[Frame],
    start: usize,
    rounding: u32,
    seen: &mut HashSet<usize>,
) -> (u32, Vec<usize>) {
    let frame = frames
        .iter()
        .find(|f| f.start == start)
        .expect("a frame starts at every call target");
    assert!(
        seen.insert(start),
        "{} calls itself, which the verifier refuses",
        frame.name
    );
    let (below, mut chain) = frame
        .callees
        .iter()
        .map(|&callee| deepest_chain(frames, callee, rounding, seen))
        .max_by_key(|(total, _)| *total)
        .unwrap_or_default();
    seen.remove(&start);
    chain.insert(0, start);
    (rounded(frame.depth, rounding) + below, chain)
}

/// Each program's deepest chain at `rounding`: (program, total bytes, the chain spelled out).
fn chains(object: &[u8], rounding: u32) -> Vec<(String, u32, String)> {
    let mut object = aya_obj::Object::parse(object).expect("the embedded object parses");
    let text_sections = object
        .functions
        .keys()
        .map(|(section, _)| *section)
        .collect();
    let originals = object.functions.clone();
    object
        .relocate_calls(&text_sections)
        .expect("the object's calls link");
    let mut found = Vec::new();
    for (name, program) in &object.programs {
        let linked = &object.functions[&program.function_key()].instructions;
        // The linker appends each callee's instructions: name a frame by the function whose instructions it starts with.
        let mut frames = frames(linked);
        frames[0].name = name.clone();
        for frame in &mut frames[1..] {
            let found = originals.values().find(|function| {
                let body = &function.instructions;
                linked.len() - frame.start >= body.len()
                    && linked[frame.start..frame.start + body.len()]
                        .iter()
                        .zip(body)
                        .all(|(a, b)| {
                            a.code == b.code && a.off == b.off && a.dst_reg() == b.dst_reg()
                        })
            });
            if let Some(function) = found {
                frame.name = format!("{:#}", rustc_demangle::demangle(&function.name));
            }
        }
        let (total, chain) = deepest_chain(&frames, 0, rounding, &mut HashSet::new());
        let spelled = chain
            .iter()
            .map(|start| {
                let frame = frames.iter().find(|f| f.start == *start).unwrap();
                format!(
                    "{} {} ({})",
                    frame.name,
                    frame.depth,
                    rounded(frame.depth, rounding)
                )
            })
            .collect::<Vec<_>>()
            .join(" -> ");
        found.push((name.clone(), total, spelled));
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::EBPF_OBJECT;

    #[test]
    fn every_program_fits_the_stack_of_kernels_that_round_frames_to_32_bytes() {
        for rounding in [16, 32] {
            let chains = chains(EBPF_OBJECT, rounding);
            assert!(!chains.is_empty(), "the object has programs");
            for (program, total, chain) in &chains {
                println!("{rounding}-byte frames: {program}: {total} bytes: {chain}");
                assert!(
                    *total <= MAX_BPF_STACK,
                    "{program}'s deepest call chain needs {total} bytes of stack at {rounding}-byte frames, over \
                     the verifier's {MAX_BPF_STACK}: {chain}. Take the bytes from one of these frames (keys and \
                     entries in the per-CPU scratch rather than on the stack; see docs/datapath.md, \"Verifier \
                     budget\")"
                );
            }
        }
    }

    #[test]
    fn a_frame_is_the_deepest_r10_offset_used() {
        let insn = |code, dst, src, off, imm| {
            // SAFETY: bpf_insn is plain data, valid when all zeroes.
            let mut insn: bpf_insn = unsafe { std::mem::zeroed() };
            (insn.code, insn.off, insn.imm) = (code, off, imm);
            insn.set_dst_reg(dst);
            insn.set_src_reg(src);
            insn
        };
        let insns = [
            insn(ALU64_MOV_REG, 1, R10, 0, 0), // r1 = r10
            insn(ALU64_ADD_IMM, 1, 0, 0, -40), // r1 += -40
            insn(0x7b, R10, 2, -8, 0),         // *(u64 *)(r10 - 8) = r2
            insn(0x61, 0, R10, -16, 0),        // r0 = *(u32 *)(r10 - 16)
        ];
        assert_eq!(frame_depth(&insns), 40);
        assert_eq!(frame_depth(&insns[2..]), 16);
        assert_eq!(rounded(0, 32), 32);
        assert_eq!(rounded(0, 16), 0);
        assert_eq!(rounded(344, 32), 352);
        assert_eq!(rounded(72, 16), 80);
    }
}
