//! eBPF `BPF_PROG_TYPE_CGROUP_DEVICE` programs: just the instructions nvhook needs.
//!
//! The program's context is `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`,
//! with `access_type = (access << 16) | device type` (type 1 block, 2 char; access 1 mknod,
//! 2 read, 4 write). It returns 1 to allow, 0 to deny.
//!
//! To grant devices to a container whose runtime attached a default-deny program, nvhook puts
//! "allow these exact devices" blocks in front of the runtime's own instructions: a device we
//! grant is allowed at once, anything else falls through to the runtime's program unchanged, so
//! every decision it made still holds. The blocks never write R1 (the context pointer), which the
//! runtime's code reads first, and end every path with R0 set, as the verifier demands.

use nvhook_sys::BpfInsn;

use crate::devnode::NodeType;
use crate::plan::DeviceRule;

const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K (32-bit)
const ALU_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K (32-bit)
const ALU_MOV_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K (32-bit)
const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

pub(crate) fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

pub(crate) fn dev_type(kind: NodeType) -> i32 {
    match kind {
        NodeType::Block => 1,
        NodeType::Char => 2,
    }
}

/// Load type into R2, access into R3, major into R4, minor into R5 (R1 untouched).
fn prologue() -> Vec<BpfInsn> {
    vec![
        insn(LDX_MEM_W, R2, R1, 0, 0),
        insn(ALU_AND_K, R2, 0, 0, 0xffff),
        insn(LDX_MEM_W, R3, R1, 0, 0),
        insn(ALU_RSH_K, R3, 0, 0, 16),
        insn(LDX_MEM_W, R4, R1, 4, 0),
        insn(LDX_MEM_W, R5, R1, 8, 0),
    ]
}

/// One block: if type, major and minor match, return `verdict`; else fall through to the next
/// block (5 instructions later). Access is not checked: nvhook grants `rwm`.
fn rule_block(rule: &DeviceRule, verdict: i32) -> Vec<BpfInsn> {
    vec![
        insn(JMP_JNE_K, R2, 0, 4, dev_type(rule.kind)),
        insn(JMP_JNE_K, R4, 0, 3, rule.major as i32),
        insn(JMP_JNE_K, R5, 0, 2, rule.minor as i32),
        insn(ALU_MOV_K, R0, 0, 0, verdict),
        insn(JMP_EXIT, 0, 0, 0, 0),
    ]
}

/// A new program: allow `rules`, then run `original` (the runtime's program, as the kernel holds
/// it) for everything else.
pub fn prepend_allow(rules: &[DeviceRule], original: &[BpfInsn]) -> Vec<BpfInsn> {
    let mut p = prologue();
    for r in rules {
        p.extend(rule_block(r, 1));
    }
    p.extend_from_slice(original);
    p
}

/// A complete default-deny program allowing only `rules`, like the ones runc and crun attach.
/// nvhook itself never attaches one; tests use it to stand in for a runtime.
pub fn allow_only(rules: &[DeviceRule]) -> Vec<BpfInsn> {
    let mut p = prologue();
    for r in rules {
        p.extend(rule_block(r, 1));
    }
    p.push(insn(ALU_MOV_K, R0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

/// Does `insns` already begin with nvhook's allow blocks for every rule in `rules`? Then running
/// the hook again (runtimes may retry) leaves the program as it is.
pub fn already_allows(rules: &[DeviceRule], insns: &[BpfInsn]) -> bool {
    let pro = prologue();
    if !insns.starts_with(&pro) {
        return false;
    }
    let blocks: Vec<Vec<BpfInsn>> = insns[pro.len()..]
        .chunks(5)
        .map(<[BpfInsn]>::to_vec)
        .collect();
    rules.iter().all(|r| {
        let want = rule_block(r, 1);
        blocks
            .iter()
            .take_while(|b| b.len() == 5 && b[0].code == JMP_JNE_K && b[4].code == JMP_EXIT)
            .any(|b| *b == want)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `c major:minor`
    pub(crate) fn rule(major: u64, minor: u64) -> DeviceRule {
        DeviceRule {
            kind: NodeType::Char,
            major,
            minor,
        }
    }

    /// The program's decision, 1 allow or 0 deny, by the evaluator nvhook uses on ancestors.
    fn run(prog: &[BpfInsn], ty: u32, access: u32, major: u32, minor: u32) -> u64 {
        match crate::apply::bpfeval::evaluate(prog, ty, access, major, minor) {
            crate::apply::bpfeval::Verdict::Allow => 1,
            crate::apply::bpfeval::Verdict::Deny => 0,
            crate::apply::bpfeval::Verdict::Unknown(why) => panic!("{why}"),
        }
    }

    #[test]
    fn prepended_rules_allow_exactly_their_devices_and_keep_the_rest() {
        let runtime = allow_only(&[rule(1, 3), rule(1, 5)]);
        let prog = prepend_allow(&[rule(195, 0), rule(195, 255)], &runtime);
        assert_eq!(run(&prog, 2, 6, 195, 0), 1);
        assert_eq!(run(&prog, 2, 6, 195, 255), 1);
        assert_eq!(
            run(&prog, 2, 6, 1, 3),
            1,
            "the runtime's own allow still holds"
        );
        assert_eq!(run(&prog, 2, 6, 195, 1), 0, "a GPU we did not grant");
        assert_eq!(
            run(&prog, 1, 6, 195, 0),
            0,
            "a block device with the same numbers"
        );
        assert_eq!(run(&prog, 2, 6, 10, 229), 0, "another host device");
        assert!(already_allows(&[rule(195, 255)], &prog));
        assert!(!already_allows(&[rule(195, 1)], &prog));
        assert!(!already_allows(&[rule(195, 0)], &runtime));
    }
}
