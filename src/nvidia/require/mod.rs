//! `NVIDIA_REQUIRE_*`: constraints an image puts on the host, checked before the container starts.
//!
//! Semantics of NVIDIA's toolkit (`cuda_image.go` GetRequirements, libnvidia-container's
//! `src/cli/dsl.c`): every `NVIDIA_REQUIRE_*` variable (but `NVIDIA_REQUIRE_JETPACK*`) is one
//! expression and each must hold; within one, terms separated by spaces are alternatives (OR) and
//! factors separated by commas all must hold (AND). A factor is `<name><op><value>` with name
//! `cuda`, `driver`, `arch` or `brand` (case-insensitive) and op one of `=` `!=` `<` `<=` `>` `>=`
//! (`brand` only `=`/`!=`). Versions compare numerically component by component, trailing `.0`s
//! ignored. A legacy image (`CUDA_VERSION` without `NVIDIA_REQUIRE_CUDA`) gets
//! `cuda>=<major>.<minor>`. `NVIDIA_DISABLE_REQUIRE=true` (or the host's `disable-require`) turns
//! all of it off.
//!
//! Facts are fetched lazily through [`Facts`], in evaluation order, so a satisfied first term never
//! asks for a brand (which needs NVML).

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::error::Error;

const PREFIX: &str = "NVIDIA_REQUIRE_";
const MAX_REQUIREMENTS: usize = 32;

/// One requirement expression, from one variable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Requirement {
    pub var: String,
    pub expr: String,
}

/// What the host is, fetched on demand.
pub trait Facts {
    /// CUDA driver API version, "major.minor" (`13.0`).
    fn cuda_version(&mut self) -> Option<String>;
    /// Kernel driver version (`580.159.04`).
    fn driver_version(&mut self) -> Option<String>;
    /// Compute capability of GPU `index` (`9.0`).
    fn arch(&mut self, gpu: u32) -> Option<String>;
    /// Brand of GPU `index` as NVML names it (`Tesla`, `NvidiaRTX`, ...).
    fn brand(&mut self, gpu: u32) -> Option<String>;
}

/// Go's strconv.ParseBool truth values (what NVIDIA_DISABLE_REQUIRE accepts).
fn parse_bool(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

/// `CUDA_VERSION` -> `major.minor` (semver-like: `12.4.1`, `12.4`, `12`). Components are digit
/// strings of any length, compared by [`cmp_versions`] like every `NVIDIA_REQUIRE_*` version
/// (the toolkit parses 10-digit components too and then fails the requirement).
fn cuda_major_minor(v: &str) -> Option<String> {
    let v = v.trim().trim_start_matches('v');
    let core = v.split(['-', '+']).next()?;
    let mut parts = core.split('.');
    fn num(p: Option<&str>) -> Option<Option<&str>> {
        match p {
            None => Some(None),
            Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Some(Some(s)),
            Some(_) => None,
        }
    }
    let major = num(parts.next())??;
    let minor = num(parts.next())?.unwrap_or("0");
    num(parts.next())?;
    if parts.next().is_some() {
        return None;
    }
    Some(format!("{major}.{minor}"))
}

/// The requirements of a container environment.
pub fn collect(
    env: &HashMap<&str, &str>,
    legacy: bool,
    disable: bool,
) -> Result<Vec<Requirement>, Error> {
    if disable
        || env
            .get("NVIDIA_DISABLE_REQUIRE")
            .is_some_and(|v| parse_bool(v))
    {
        return Ok(Vec::new());
    }
    let mut reqs: Vec<Requirement> = env
        .iter()
        .filter(|(k, _)| k.starts_with(PREFIX) && !k.starts_with("NVIDIA_REQUIRE_JETPACK"))
        .map(|(k, v)| Requirement {
            var: (*k).to_owned(),
            expr: (*v).to_owned(),
        })
        .collect();
    reqs.sort_by(|a, b| a.var.cmp(&b.var));
    if legacy {
        let v = env.get("CUDA_VERSION").copied().unwrap_or_default();
        let mm = cuda_major_minor(v).ok_or_else(|| Error::BadRequest {
            var: "CUDA_VERSION".into(),
            reason: format!("{} is not a version like 12.4.1", crate::text::quote(v)),
        })?;
        reqs.push(Requirement {
            var: "CUDA_VERSION".into(),
            expr: format!("cuda>={mm}"),
        });
    }
    if reqs.len() > MAX_REQUIREMENTS {
        return Err(Error::BadRequest {
            var: PREFIX.to_owned() + "*",
            reason: format!(
                "{} requirements; at most {MAX_REQUIREMENTS} are accepted",
                reqs.len()
            ),
        });
    }
    Ok(reqs)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Cuda,
    Driver,
    Arch,
    Brand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Factor<'a> {
    name: Name,
    op: Op,
    value: &'a str,
}

fn parse_factor<'a>(var: &str, f: &'a str) -> Result<Factor<'a>, Error> {
    let bad = |why: &str| Error::BadRequest {
        var: crate::text::clip(var),
        reason: format!(
            "invalid expression {:?}: {why}",
            f.chars().take(80).collect::<String>()
        ),
    };
    let is_op = |c: char| matches!(c, '<' | '>' | '=' | '!');
    let start = f.find(is_op).ok_or_else(|| bad("no operator"))?;
    let (name, rest) = f.split_at(start);
    let end = rest.find(|c: char| !is_op(c)).unwrap_or(rest.len());
    let (op, value) = rest.split_at(end);
    let name = match name.to_ascii_lowercase().as_str() {
        "cuda" => Name::Cuda,
        "driver" => Name::Driver,
        "arch" => Name::Arch,
        "brand" => Name::Brand,
        _ => return Err(bad("the name must be cuda, driver, arch or brand")),
    };
    let op = match op {
        "=" => Op::Eq,
        "!=" => Op::Ne,
        "<" => Op::Lt,
        "<=" => Op::Le,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        _ => return Err(bad("the operator must be one of = != < <= > >=")),
    };
    if value.is_empty() {
        return Err(bad("no value"));
    }
    if name == Name::Brand && !matches!(op, Op::Eq | Op::Ne) {
        return Err(bad("brand takes only = or !="));
    }
    if name != Name::Brand && !value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad("a version has only digits and dots"));
    }
    Ok(Factor { name, op, value })
}

/// An expression: terms (OR) of factors (AND). Parsed in full first, so a syntax error anywhere
/// is reported even when an earlier term would hold.
fn parse<'a>(r: &'a Requirement) -> Result<Vec<Vec<Factor<'a>>>, Error> {
    r.expr
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.split(',')
                .filter(|f| !f.is_empty())
                .map(|f| parse_factor(&r.var, f))
                .collect()
        })
        .collect()
}

/// Numeric comparison of dotted versions, trailing `.0` components ignored; components compare
/// as digit strings (no overflow for any length).
pub fn cmp_versions(a: &str, b: &str) -> Ordering {
    fn comps(v: &str) -> Vec<&str> {
        let mut c: Vec<&str> = v.split('.').map(|p| p.trim_start_matches('0')).collect();
        while c.last().is_some_and(|p| p.is_empty()) {
            c.pop();
        }
        c
    }
    let (a, b) = (comps(a), comps(b));
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(""),
            b.get(i).copied().unwrap_or(""),
        );
        let o = x.len().cmp(&y.len()).then_with(|| x.cmp(y));
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

fn holds(op: Op, o: Ordering) -> bool {
    match op {
        Op::Eq => o == Ordering::Equal,
        Op::Ne => o != Ordering::Equal,
        Op::Lt => o == Ordering::Less,
        Op::Le => o != Ordering::Greater,
        Op::Gt => o == Ordering::Greater,
        Op::Ge => o != Ordering::Less,
    }
}

/// Does `f` hold for `gpu` (None: no device selected)? Unknown facts count as satisfied, as in
/// libnvidia-container; the host value used is recorded for the error message.
fn check_factor(
    f: &Factor<'_>,
    gpu: Option<u32>,
    facts: &mut dyn Facts,
    seen: &mut Vec<String>,
) -> bool {
    let (label, host) = match (f.name, gpu) {
        (Name::Cuda, _) => ("CUDA driver version", facts.cuda_version()),
        (Name::Driver, _) => ("driver version", facts.driver_version()),
        (Name::Arch, Some(g)) => ("GPU compute capability", facts.arch(g)),
        (Name::Brand, Some(g)) => ("GPU brand", facts.brand(g)),
        (Name::Arch | Name::Brand, None) => return true,
    };
    let Some(host) = host else { return true };
    let note = format!("{label} {host}");
    if !seen.contains(&note) {
        seen.push(note);
    }
    let o = if f.name == Name::Brand {
        if host.eq_ignore_ascii_case(f.value) {
            Ordering::Equal
        } else {
            Ordering::Less
        }
    } else {
        cmp_versions(&host, f.value)
    };
    holds(f.op, o)
}

/// Check every requirement for every selected GPU (once with no device when none is selected).
pub fn check(reqs: &[Requirement], gpus: &[u32], facts: &mut dyn Facts) -> Result<(), Error> {
    let devices: Vec<Option<u32>> = if gpus.is_empty() {
        vec![None]
    } else {
        gpus.iter().copied().map(Some).collect()
    };
    for r in reqs {
        let terms = parse(r)?;
        if terms.is_empty() {
            continue;
        }
        for d in &devices {
            let mut seen = Vec::new();
            let ok = terms
                .iter()
                .any(|term| term.iter().all(|f| check_factor(f, *d, facts, &mut seen)));
            if !ok {
                let first = r
                    .expr
                    .split(' ')
                    .find(|t| !t.is_empty())
                    .unwrap_or_default();
                let hint = if first.to_ascii_lowercase().starts_with("cuda>=") {
                    ", please update your driver to a newer version, or use an earlier cuda container"
                } else {
                    ""
                };
                return Err(Error::Requirement {
                    var: crate::text::clip(&r.var),
                    condition: format!("{}{hint}", first.chars().take(200).collect::<String>()),
                    host: if seen.is_empty() {
                        "unknown".into()
                    } else {
                        seen.join(", ")
                    },
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
