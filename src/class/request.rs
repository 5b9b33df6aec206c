//! A container's class requests: its `NVHOOK_DEVICES_*` variables, checked against the host's
//! classes. Pure: no file is read here.

use std::path::Path;

use serde::Serialize;

use super::{Class, ENV_PREFIX, load_dir};
use crate::config::Config;
use crate::error::Error;
use crate::state::env_map;

/// A selection value longer than this is refused (no host has that many devices to name).
const MAX_VALUE_LEN: usize = 4096;

/// What a container asked of one class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// Every node the class's `devices` globs match.
    All,
    /// No selectable node: only the shared nodes, mounts and libraries.
    None,
    /// Indexes into, or names of, the matched nodes, in the container's order.
    List(Vec<String>),
}

/// Does the environment ask for any class? Cheap: no file is read. True for any
/// `NVHOOK_DEVICES_*` variable whose value is not empty or `void`.
pub fn asks_for_a_class(env: &[String]) -> bool {
    env.iter().any(|e| {
        e.strip_prefix(ENV_PREFIX)
            .and_then(|rest| rest.split_once('='))
            .is_some_and(|(_, v)| !matches!(v.trim(), "" | "void"))
    })
}

/// The value of a class variable -> a selection, or `None` when the class is not asked for
/// (empty, only commas, `void`).
pub fn parse_selection(var: &str, value: &str) -> Result<Option<Selection>, Error> {
    let bad = |reason: String| Error::BadRequest {
        var: var.to_owned(),
        reason,
    };
    if value.len() > MAX_VALUE_LEN {
        return Err(bad(format!("longer than {MAX_VALUE_LEN} bytes")));
    }
    let tokens: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let keyword = tokens
        .iter()
        .find(|t| matches!(**t, "all" | "none" | "void"));
    match (keyword, tokens.len()) {
        (_, 0) => Ok(None),
        (Some(&"void"), 1) => Ok(None),
        (Some(&"all"), 1) => Ok(Some(Selection::All)),
        (Some(&"none"), 1) => Ok(Some(Selection::None)),
        (Some(k), _) => Err(bad(format!(
            "{k:?} cannot be combined with other entries (use all, none, void, or a comma list of indexes and device names)"
        ))),
        (None, _) => {
            let mut list: Vec<String> = Vec::new();
            for t in tokens {
                let t = t.strip_prefix("/dev/").unwrap_or(t);
                if !list.iter().any(|x| x == t) {
                    list.push(t.to_owned());
                }
            }
            Ok(Some(Selection::List(list)))
        }
    }
}

/// One class a container asked for.
#[derive(Debug, Clone)]
pub struct ClassRequest {
    pub class: Class,
    pub selection: Selection,
}

/// The classes the environment asks for, in class-file order. Every `NVHOOK_DEVICES_*` variable
/// must belong to a class of this host; a `privileged-only` class is ignored (with a warning) in
/// a container without CAP_SYS_ADMIN.
pub fn requests(
    env: &[String],
    classes: &[Class],
    privileged: bool,
    dir: &Path,
) -> Result<Vec<ClassRequest>, Error> {
    let map = env_map(env);
    let mut vars: Vec<&&str> = map.keys().filter(|k| k.starts_with(ENV_PREFIX)).collect();
    vars.sort();
    for var in vars {
        if classes.iter().any(|c| c.env == **var) {
            continue;
        }
        if parse_selection(var, map[*var])?.is_some() {
            let known: Vec<String> = classes
                .iter()
                .map(|c| format!("{} ({})", c.name, c.env))
                .collect();
            let known = if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            };
            return Err(Error::BadRequest {
                var: (*var).to_owned(),
                reason: format!(
                    "no device class of this host is selected by this variable; classes here: {known} (class files in {})",
                    dir.display()
                ),
            });
        }
    }
    let mut out = Vec::new();
    for c in classes {
        let Some(value) = map.get(c.env.as_str()) else {
            continue;
        };
        let Some(selection) = parse_selection(&c.env, value)? else {
            continue;
        };
        if c.privileged_only && !privileged {
            log::warn!(
                "ignoring {} in an unprivileged container: class {} is privileged-only ({})",
                c.env,
                c.name,
                c.file.display()
            );
            continue;
        }
        out.push(ClassRequest {
            class: c.clone(),
            selection,
        });
    }
    Ok(out)
}

/// The container's class requests under the host's config: reads the class files only when the
/// environment asks for a class.
pub fn requests_for(
    env: &[String],
    privileged: bool,
    config: &Config,
) -> Result<Vec<ClassRequest>, Error> {
    if !asks_for_a_class(env) {
        return Ok(Vec::new());
    }
    let classes = load_dir(&config.classes_dir)?;
    requests(env, &classes, privileged, &config.classes_dir)
}
