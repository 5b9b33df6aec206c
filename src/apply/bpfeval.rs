//! What a cgroup device program decides, without running it in the kernel.
//!
//! nvhook never widens an ancestor cgroup's device program (that would widen it for every other
//! cgroup under that ancestor too); it only extends the program of the container's own cgroup.
//! An ancestor's program still runs for the container, so before granting, nvhook asks each one:
//! would you let the container open this node? This module answers by interpreting the program's
//! instructions as the kernel returned them ("xlated").
//!
//! It understands the instruction subset that runc, crun and systemd emit, and a little more:
//! 32-bit loads of the context (`struct bpf_cgroup_dev_ctx`) through R1, 32- and 64-bit ALU
//! `add sub or and xor lsh rsh mov` (immediate or register), 32- and 64-bit conditional jumps
//! (`jeq jne jgt jge jlt jle jset` and the signed ones), `ja` (the verifier turns branches it
//! proves always taken into `ja`), and `exit`. Anything else (helper calls, maps, stack, narrow
//! loads, a register read before it is written, a jump out of the program, more than
//! [`MAX_STEPS`] steps) makes the answer [`Verdict::Unknown`]: the caller treats that as
//! "may deny". Pure: unit-tested with programs of [`super::bpfprog`]'s builders and hand-made ones.

use nvhook_sys::BpfInsn;

use crate::plan::DeviceRule;

/// `access` bits of the context (`BPF_DEVCG_ACC_*`).
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;

/// Steps one evaluation may take. The runtimes' programs are straight-line (forward jumps only),
/// so a program takes at most as many steps as it has instructions; this allows about 9,000
/// device rules, far beyond any runtime's list.
pub const MAX_STEPS: usize = 65_536;

/// A program's decision for one access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    /// The evaluator could not follow the program: why (the instruction and its index).
    Unknown(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    /// Never written (reading it is an error the verifier would have refused).
    Uninit,
    /// The context pointer (R1 at entry).
    Ctx,
    Scalar(u64),
}

const CLASS_LDX: u8 = 0x01;
const CLASS_ALU: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const CLASS_ALU64: u8 = 0x07;
const SRC_X: u8 = 0x08;
const LDX_MEM_W: u8 = 0x61;

/// Evaluate `insns` for one access: `ty` 1 block or 2 char, `access` a mask of `ACC_*`.
pub fn evaluate(insns: &[BpfInsn], ty: u32, access: u32, major: u32, minor: u32) -> Verdict {
    let ctx = [(access << 16) | ty, major, minor];
    let mut r = [Reg::Uninit; 11];
    r[1] = Reg::Ctx;
    let mut pc = 0usize;
    for _ in 0..MAX_STEPS {
        let Some(&i) = insns.get(pc) else {
            return Verdict::Unknown(format!("execution runs off the program at {pc}"));
        };
        match step(&i, pc, &mut r, &ctx) {
            Ok(Step::Next) => pc += 1,
            Ok(Step::Goto(next)) => pc = next,
            Ok(Step::Exit(v)) => return v,
            Err(what) => {
                return Verdict::Unknown(format!(
                    "{what} at instruction {pc} (code {:#04x})",
                    i.code
                ));
            }
        }
    }
    Verdict::Unknown(format!("more than {MAX_STEPS} steps"))
}

/// Where the program goes after one instruction.
enum Step {
    Next,
    Goto(usize),
    Exit(Verdict),
}

/// Run instruction `i` at `pc` on the registers `r`; Err says what is outside the understood
/// subset.
fn step(i: &BpfInsn, pc: usize, r: &mut [Reg; 11], ctx: &[u32; 3]) -> Result<Step, &'static str> {
    let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
    if dst > 10 || src > 10 {
        return Err("a bad register");
    }
    let class = i.code & 0x07;
    match class {
        CLASS_LDX => {
            if i.code != LDX_MEM_W || r[src] != Reg::Ctx || dst == 10 {
                return Err("a load that is not a 32-bit context load");
            }
            let Some(v) = usize::try_from(i.off)
                .ok()
                .filter(|o| o % 4 == 0)
                .and_then(|o| ctx.get(o / 4))
            else {
                return Err("a context load at a bad offset");
            };
            r[dst] = Reg::Scalar(u64::from(*v));
        }
        CLASS_ALU | CLASS_ALU64 => {
            let wide = class == CLASS_ALU64;
            let op = i.code & 0xf0;
            let Some(rhs) = operand(i, r) else {
                return Err("an ALU source that is not a number");
            };
            if dst == 10 {
                return Err("a write to the frame pointer");
            }
            let lhs = match (op, r[dst]) {
                (0xb0, _) => 0,
                (_, Reg::Scalar(v)) => v,
                _ => return Err("an ALU operand that is not a number"),
            };
            let Some(v) = alu(op, lhs, rhs, wide) else {
                return Err("an ALU operation outside the understood subset");
            };
            r[dst] = Reg::Scalar(v);
        }
        CLASS_JMP | CLASS_JMP32 => return branch(i, pc, r, class, dst),
        _ => return Err("an instruction outside the understood subset"),
    }
    Ok(Step::Next)
}

/// A jump-class instruction: exit, an unconditional jump or a comparison.
fn branch(
    i: &BpfInsn,
    pc: usize,
    r: &[Reg; 11],
    class: u8,
    dst: usize,
) -> Result<Step, &'static str> {
    let op = i.code & 0xf0;
    let to = || {
        jump(pc, i.off)
            .map(Step::Goto)
            .ok_or("a jump out of the program")
    };
    match (op, class) {
        (0x90, CLASS_JMP) => {
            return match r[0] {
                Reg::Scalar(0) => Ok(Step::Exit(Verdict::Deny)),
                Reg::Scalar(1) => Ok(Step::Exit(Verdict::Allow)),
                _ => Err("an exit with R0 neither 0 nor 1"),
            };
        }
        (0x00, CLASS_JMP) => return to(),
        _ => {}
    }
    let Reg::Scalar(a) = r[dst] else {
        return Err("a comparison of something that is not a number");
    };
    let Some(b) = operand(i, r) else {
        return Err("a comparison with something that is not a number");
    };
    let (a, b) = if class == CLASS_JMP32 {
        (a & 0xffff_ffff, b & 0xffff_ffff)
    } else {
        (a, b)
    };
    let Some(taken) = compare(op, a, b, class == CLASS_JMP32) else {
        return Err("a jump outside the understood subset");
    };
    if taken { to() } else { Ok(Step::Next) }
}

/// The source operand of an ALU or jump instruction: the source register (a number), or the
/// immediate, sign-extended as the 64-bit forms do (the 32-bit ones use its low half).
fn operand(i: &BpfInsn, r: &[Reg; 11]) -> Option<u64> {
    if i.code & SRC_X != 0 {
        match r[(i.regs >> 4) as usize] {
            Reg::Scalar(v) => Some(v),
            _ => None,
        }
    } else {
        Some(i.imm as i64 as u64)
    }
}

/// The next pc after a taken jump at `pc` by `off` (relative to the next instruction).
fn jump(pc: usize, off: i16) -> Option<usize> {
    let next = i64::try_from(pc).ok()? + 1 + i64::from(off);
    usize::try_from(next).ok()
}

fn alu(op: u8, a: u64, b: u64, wide: bool) -> Option<u64> {
    let bits = if wide { 64 } else { 32 };
    let v = match op {
        0x00 => a.wrapping_add(b),
        0x10 => a.wrapping_sub(b),
        0x40 => a | b,
        0x50 => a & b,
        0xa0 => a ^ b,
        0xb0 => b,
        0x60 | 0x70 => {
            if b >= bits {
                return None;
            }
            let a = if wide { a } else { a & 0xffff_ffff };
            if op == 0x60 { a << b } else { a >> b }
        }
        _ => return None,
    };
    Some(if wide { v } else { v & 0xffff_ffff })
}

fn compare(op: u8, a: u64, b: u64, narrow: bool) -> Option<bool> {
    let signed = |v: u64| {
        if narrow {
            i64::from(v as u32 as i32)
        } else {
            v as i64
        }
    };
    Some(match op {
        0x10 => a == b,
        0x20 => a > b,
        0x30 => a >= b,
        0x40 => a & b != 0,
        0x50 => a != b,
        0x60 => signed(a) > signed(b),
        0x70 => signed(a) >= signed(b),
        0xa0 => a < b,
        0xb0 => a <= b,
        0xc0 => signed(a) < signed(b),
        0xd0 => signed(a) <= signed(b),
        _ => return None,
    })
}

/// What `insns` decides for the container's use of `rule`'s node: [`Verdict::Allow`] only if it
/// allows reading, writing, and both at once (what `open(2)` asks); the first other answer
/// otherwise. mknod is not asked: nvhook creates the nodes itself, from outside the container.
pub fn decide(insns: &[BpfInsn], rule: &DeviceRule) -> Verdict {
    let ty = super::bpfprog::dev_type(rule.kind) as u32;
    let (Ok(major), Ok(minor)) = (u32::try_from(rule.major), u32::try_from(rule.minor)) else {
        return Verdict::Unknown(format!("device numbers of {rule} beyond 32 bits"));
    };
    for access in [ACC_READ, ACC_WRITE, ACC_READ | ACC_WRITE] {
        match evaluate(insns, ty, access, major, minor) {
            Verdict::Allow => {}
            other => return other,
        }
    }
    Verdict::Allow
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::bpfprog::tests::rule;
    use crate::apply::bpfprog::{allow_only, insn, prepend_allow};
    use crate::devnode::NodeType;

    /// The prologue runc, crun and systemd share: type R2, access R3, major R4, minor R5.
    fn prologue() -> Vec<BpfInsn> {
        vec![
            insn(0x61, 2, 1, 0, 0),
            insn(0x54, 2, 0, 0, 0xffff),
            insn(0x61, 3, 1, 0, 0),
            insn(0x74, 3, 0, 0, 16),
            insn(0x61, 4, 1, 4, 0),
            insn(0x61, 5, 1, 8, 0),
        ]
    }

    /// runc's (libcontainer/cgroups/devices) and crun's rule shape: type, access through R1
    /// (`mov32 r1, r3; and32 r1, acc; jne r1, r3`), major, minor; `major == None` is a wildcard.
    fn runc_rule(ty: i32, acc: i32, major: Option<i32>, allow: bool) -> Vec<BpfInsn> {
        let mut body = vec![insn(0xbc, 1, 3, 0, 0), insn(0x54, 1, 0, 0, acc)];
        let mut checks = vec![];
        if let Some(m) = major {
            checks.push((4u8, m));
        }
        let n = 6 + checks.len(); // jne type, mov, and, jne access, majors, mov, exit
        let mut v = vec![insn(0x55, 2, 0, (n - 1) as i16, ty)];
        v.append(&mut body);
        v.push(insn(0x5d, 1, 3, (n - 4) as i16, 0));
        for (k, (reg, m)) in checks.iter().enumerate() {
            v.push(insn(0x55, *reg, 0, (n - 5 - k) as i16, *m));
        }
        v.push(insn(0xb7, 0, 0, 0, i32::from(allow)));
        v.push(insn(0x95, 0, 0, 0, 0));
        v
    }

    fn deny_all_end() -> Vec<BpfInsn> {
        vec![insn(0xb7, 0, 0, 0, 0), insn(0x95, 0, 0, 0, 0)]
    }

    #[test]
    fn nvhooks_own_programs() {
        let p = allow_only(&[rule(1, 3), rule(195, 0)]);
        assert_eq!(decide(&p, &rule(1, 3)), Verdict::Allow);
        assert_eq!(decide(&p, &rule(195, 0)), Verdict::Allow);
        assert_eq!(decide(&p, &rule(195, 1)), Verdict::Deny);
        let block = DeviceRule {
            kind: NodeType::Block,
            major: 195,
            minor: 0,
        };
        assert_eq!(decide(&p, &block), Verdict::Deny);
        let ext = prepend_allow(&[rule(10, 229)], &p);
        assert_eq!(decide(&ext, &rule(10, 229)), Verdict::Allow);
        assert_eq!(decide(&ext, &rule(1, 3)), Verdict::Allow);
        assert_eq!(decide(&ext, &rule(1, 5)), Verdict::Deny);
    }

    #[test]
    fn runtime_shaped_programs_with_access_and_wildcards() {
        // "c 195:* rw" allowed, "c *:* m" allowed, everything else denied
        let mut p = prologue();
        p.extend(runc_rule(2, (ACC_READ | ACC_WRITE) as i32, Some(195), true));
        p.extend(runc_rule(2, ACC_MKNOD as i32, None, true));
        p.extend(deny_all_end());
        assert_eq!(evaluate(&p, 2, ACC_READ, 195, 7), Verdict::Allow);
        assert_eq!(
            evaluate(&p, 2, ACC_READ | ACC_WRITE, 195, 7),
            Verdict::Allow
        );
        assert_eq!(evaluate(&p, 2, ACC_MKNOD, 10, 229), Verdict::Allow);
        assert_eq!(evaluate(&p, 2, ACC_READ, 10, 229), Verdict::Deny);
        assert_eq!(evaluate(&p, 2, ACC_READ | ACC_MKNOD, 195, 0), Verdict::Deny);
        assert_eq!(decide(&p, &rule(195, 3)), Verdict::Allow);
        assert_eq!(decide(&p, &rule(10, 229)), Verdict::Deny);

        // a parent that denies "c 195:*" first and allows the rest (a deny rule, then allow all)
        let mut p = prologue();
        p.extend(runc_rule(2, 7, Some(195), false));
        p.extend(vec![insn(0xb7, 0, 0, 0, 1), insn(0x95, 0, 0, 0, 0)]);
        assert_eq!(decide(&p, &rule(195, 0)), Verdict::Deny);
        assert_eq!(decide(&p, &rule(10, 229)), Verdict::Allow);

        // read-only for 195: open for reading is fine, writing not, so the grant is refused
        let mut p = prologue();
        p.extend(runc_rule(2, ACC_READ as i32, Some(195), true));
        p.extend(deny_all_end());
        assert_eq!(evaluate(&p, 2, ACC_READ, 195, 0), Verdict::Allow);
        assert_eq!(decide(&p, &rule(195, 0)), Verdict::Deny);
    }

    #[test]
    fn systemd_shaped_program_with_ja_and_jmp32() {
        // systemd jumps to a shared "allow" tail with `ja`; written here with jmp32 compares
        let mut p = prologue();
        p.extend(vec![
            insn(0x56, 2, 0, 3, 2),   // jne32 type, char
            insn(0x56, 4, 0, 2, 195), // jne32 major
            insn(0x56, 5, 0, 1, 0),   // jne32 minor 0
            insn(0x05, 0, 0, 2, 0),   // ja allow
            insn(0xb7, 0, 0, 0, 0),   // deny
            insn(0x95, 0, 0, 0, 0),
            insn(0xb7, 0, 0, 0, 1), // allow
            insn(0x95, 0, 0, 0, 0),
        ]);
        assert_eq!(decide(&p, &rule(195, 0)), Verdict::Allow);
        assert_eq!(decide(&p, &rule(195, 1)), Verdict::Deny);
    }

    #[test]
    fn anything_not_understood_is_unknown() {
        let unknown = |p: &[BpfInsn]| matches!(decide(p, &rule(195, 0)), Verdict::Unknown(_));
        // a helper call
        let mut p = prologue();
        p.extend(vec![insn(0x85, 0, 0, 0, 1), insn(0x95, 0, 0, 0, 0)]);
        assert!(unknown(&p));
        // a map load (ld_imm64)
        let mut p = prologue();
        p.extend(vec![insn(0x18, 1, 1, 0, 0), insn(0, 0, 0, 0, 0)]);
        p.extend(deny_all_end());
        assert!(unknown(&p));
        // exit with R0 unset, or 2
        assert!(unknown(&[insn(0x95, 0, 0, 0, 0)]));
        assert!(unknown(&[insn(0xb7, 0, 0, 0, 2), insn(0x95, 0, 0, 0, 0)]));
        // falls off the end; jumps out
        assert!(unknown(&prologue()));
        assert!(unknown(&[insn(0x05, 0, 0, -5, 0)]));
        assert!(unknown(&[insn(0x05, 0, 0, 100, 0)]));
        // an endless loop
        assert!(unknown(&[insn(0x05, 0, 0, -1, 0)]));
        // a load through a register that is not the context; a narrow load; a bad offset
        assert!(unknown(&[insn(0x61, 2, 3, 0, 0)]));
        assert!(unknown(&[insn(0x71, 2, 1, 0, 0)]));
        assert!(unknown(&[insn(0x61, 2, 1, 12, 0)]));
        assert!(unknown(&[insn(0x61, 2, 1, -4, 0)]));
        // a multiply, a shift by 32 in 32-bit ALU
        assert!(unknown(&[
            insn(0xb7, 0, 0, 0, 1),
            insn(0x27, 0, 0, 0, 1),
            insn(0x95, 0, 0, 0, 0)
        ]));
        assert!(unknown(&[
            insn(0xb7, 0, 0, 0, 1),
            insn(0x74, 0, 0, 0, 32),
            insn(0x95, 0, 0, 0, 0)
        ]));
        // the empty program (what a hardened kernel may return)
        assert!(unknown(&[]));
        // device numbers beyond 32 bits
        assert!(matches!(
            decide(&allow_only(&[]), &rule(1 << 33, 0)),
            Verdict::Unknown(_)
        ));
    }

    #[test]
    fn alu_and_signed_compares() {
        // r0 = (minor ^ 1) + 0; signed compare -1 < 0 in 32 and 64 bits
        let p = [
            insn(0x61, 5, 1, 8, 0),
            insn(0xb4, 0, 0, 0, -1), // w0 = 0xffffffff
            insn(0xc6, 0, 0, 2, 0),  // jslt32 w0, 0 -> taken (signed -1)
            insn(0xb7, 0, 0, 0, 0),
            insn(0x95, 0, 0, 0, 0),
            insn(0xa7, 5, 0, 0, 1), // r5 ^= 1
            insn(0xbf, 0, 5, 0, 0), // r0 = r5
            insn(0x95, 0, 0, 0, 0),
        ];
        assert_eq!(evaluate(&p, 2, ACC_READ, 1, 0), Verdict::Allow);
        assert_eq!(evaluate(&p, 2, ACC_READ, 1, 1), Verdict::Deny);
        // 64-bit: w0 = 0xffffffff is positive as a 64-bit value
        let mut q = p;
        q[2] = insn(0xc5, 0, 0, 2, 0); // jslt r0, 0 -> not taken
        assert_eq!(evaluate(&q, 2, ACC_READ, 1, 0), Verdict::Deny);
    }
}
