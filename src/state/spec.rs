//! The parts of a bundle's `config.json` that nvhook reads, and nothing else.
//!
//! The rule (docs/compat.md): a value nvhook does not use, or does not recognise, is never a
//! reason to fail a container. So this is not a model of the runtime spec: it reads the few
//! fields nvhook uses, each with a visitor that takes any JSON type, keeps what it can use and
//! skips the rest (a field of another type counts as absent: nvhook then does less, never more).
//! Every other field, of any type, any size, any spelling of any version, is skipped unread.
//!
//! Field names match as runc (Go's encoding/json) matches them: exactly or ignoring case, a
//! repeated key overwrites the earlier one and a repeated object merges into it. crun (yajl)
//! takes the first of two equal keys instead (measured with runc 1.1.5 and crun 1.8.1): where the
//! two readings give different values to a field nvhook uses, the field is recorded as ambiguous
//! and a container that asks for a device is refused rather than guessed at.
//!
//! Memory is bounded by what is kept: `process.env` keeps only the entries nvhook reads
//! (`NVIDIA_*`, `NVHOOK_DEVICES_*`, `CUDA_VERSION`), borrowed from the file's bytes while they
//! are read; skipped values cost nothing.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// At most this many `process.env` entries that nvhook reads (the toolkit's images set a dozen).
pub const MAX_KEPT_ENV: usize = 4096;
/// At most this many mounts: the kernel's default `fs.mount-max` per mount namespace, so no
/// spec with more can start.
pub const MAX_MOUNTS: usize = 100_000;
/// At most this many id mappings or additional groups (the kernel takes 340 mappings).
pub const MAX_IDS: usize = 65_536;

/// The prefix of every device-class variable (`NVHOOK_DEVICES_<CLASS>`, src/class/).
pub const CLASS_ENV_PREFIX: &str = "NVHOOK_DEVICES_";
/// The variable CUDA images set to their CUDA version (read by `NVIDIA_REQUIRE_CUDA` checks).
pub const CUDA_VERSION: &str = "CUDA_VERSION";

/// The `process.env` entries nvhook reads: every other variable is dropped while reading.
pub fn env_entry_is_read(e: &str) -> bool {
    e.starts_with("NVIDIA_") || e.starts_with(CLASS_ENV_PREFIX) || e.starts_with(CUDA_VERSION)
}

/// One mount of the spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub destination: String,
}

/// One `linux.uidMappings`/`gidMappings` range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// What nvhook reads of `config.json`. `None` is "absent, or of a type nvhook cannot use".
#[derive(Debug, Default)]
pub struct SpecView {
    /// `process.env`, only the entries [`env_entry_is_read`] keeps, in order.
    pub env: Vec<String>,
    /// `root.path`.
    pub root_path: Option<String>,
    /// `CAP_SYS_ADMIN` in `process.capabilities.bounding` (or in the flat list of specs before
    /// OCI 1.0.0-rc5, which had one set): what the toolkit calls privileged. Names compare as
    /// strings, so a name nvhook does not know is simply not `CAP_SYS_ADMIN`.
    pub sys_admin: Option<bool>,
    /// `process.user.uid`/`gid`; `Some(u32::MAX)` for a value that is no id.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub additional_gids: Vec<u32>,
    pub mounts: Vec<Mount>,
    /// `linux.cgroupsPath`.
    pub cgroups_path: Option<String>,
    pub uid_mappings: Vec<IdMapping>,
    pub gid_mappings: Vec<IdMapping>,
    /// `annotations."run.oci.keep_original_groups"`.
    pub keep_original_groups: Option<String>,
    /// Fields given twice with different values (runc reads the last, crun the first).
    pub ambiguous: Vec<&'static str>,
    /// A bound passed (too many kept entries): the reason.
    pub over_limit: Option<String>,
}

impl SpecView {
    /// Read `text`, which must be one JSON object.
    pub fn parse(text: &[u8]) -> Result<SpecView, String> {
        // Go's decoder replaces invalid UTF-8 in strings by U+FFFD; serde_json refuses it.
        let text = String::from_utf8_lossy(text);
        match Self::parse_str(&text) {
            // and a lone UTF-16 surrogate escape by U+FFFD; serde_json refuses that too
            Err(e) if e.contains("surrogate") || e.contains("hex escape") => {
                Self::parse_str(&replace_lone_surrogates(&text))
            }
            r => r,
        }
    }

    fn parse_str(text: &str) -> Result<SpecView, String> {
        let mut de = serde_json::Deserializer::from_str(text);
        let mut view = SpecView::default();
        let top = Obj(Top(&mut view))
            .deserialize(&mut de)
            .map_err(|e| e.to_string())?;
        if top.is_none() {
            return Err("it is not a JSON object".into());
        }
        de.end().map_err(|e| e.to_string())?;
        Ok(view)
    }
}

/// `text` with every `\uXXXX` escape of a UTF-16 surrogate that is not part of a pair
/// replaced by `\ufffd`, as Go's decoder reads it. Escapes are found as the decoder finds them:
/// inside strings, after an unescaped backslash.
pub(crate) fn replace_lone_surrogates(text: &str) -> String {
    let b = text.as_bytes();
    let unit = |i: usize| -> Option<u16> {
        let h = b.get(i..i + 6)?;
        if h[0] != b'\\' || h[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&h[2..]).ok()?, 16).ok()
    };
    let mut out = String::with_capacity(text.len());
    let (mut i, mut from, mut in_string) = (0, 0, false);
    while i < b.len() {
        match b[i] {
            b'"' => in_string = !in_string,
            b'\\' if in_string => {
                let Some(u) = unit(i) else {
                    i += 2; // any other escape: two bytes
                    continue;
                };
                let high = (0xD800..0xDC00).contains(&u);
                let pair = high && unit(i + 6).is_some_and(|l| (0xDC00..0xE000).contains(&l));
                if pair {
                    i += 12;
                    continue;
                }
                if (0xD800..0xE000).contains(&u) {
                    out.push_str(&text[from..i]);
                    out.push_str("\\ufffd");
                    from = i + 6;
                }
                i += 6;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&text[from..]);
    out
}

/// Whether a field was given (to tell a repeated key from a first one).
trait IsSet {
    fn is_set(&self) -> bool;
}
impl<T> IsSet for Option<T> {
    fn is_set(&self) -> bool {
        self.is_some()
    }
}
impl<T> IsSet for Vec<T> {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

/// Does JSON key `key` name the spec field `name` for runc? Go's encoding/json matches a key to
/// a struct field exactly or else case-insensitively under Unicode simple folding; for the
/// spec's ASCII names that is ASCII case plus the two non-ASCII letters that fold onto ASCII
/// ones: KELVIN SIGN (k) and LATIN SMALL LETTER LONG S (s).
pub fn key_is(key: &str, name: &str) -> bool {
    let mut k = key.chars();
    for n in name.chars() {
        let c = match k.next() {
            Some('\u{212A}') => 'k',
            Some('\u{17F}') => 's',
            Some(c) => c.to_ascii_lowercase(),
            None => return false,
        };
        if c != n.to_ascii_lowercase() {
            return false;
        }
    }
    k.next().is_none()
}

/// A JSON value read without a type expectation: strings and numbers kept, the rest skipped.
#[derive(Debug)]
enum Any<'de> {
    Str(Cow<'de, str>),
    Uint(u64),
    Other,
}

impl Any<'_> {
    fn into_string(self) -> Option<String> {
        match self {
            Any::Str(s) => Some(s.into_owned()),
            _ => None,
        }
    }
    /// An id: a number that fits 32 bits; anything else is no id (`u32::MAX`).
    fn id(&self) -> u32 {
        match self {
            Any::Uint(n) => u32::try_from(*n).unwrap_or(u32::MAX),
            _ => u32::MAX,
        }
    }
}

/// Visitor methods for the JSON types a field cannot use: consume the value, keep nothing.
macro_rules! skip_other_types {
    ($out:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($out)
        }
    };
}

/// Consume the rest of a sequence or map nobody reads.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}
fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

struct AnyVisitor;

impl<'de> Visitor<'de> for AnyVisitor {
    type Value = Any<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Any<'de>, E> {
        Ok(Any::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Any<'de>, E> {
        Ok(Any::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Any<'de>, E> {
        Ok(Any::Str(Cow::Owned(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Any<'de>, E> {
        Ok(Any::Uint(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Any<'de>, E> {
        Ok(Any::Other)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Any<'de>, E> {
        Ok(Any::Other)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Any<'de>, E> {
        Ok(Any::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Any<'de>, E> {
        Ok(Any::Other)
    }
    fn visit_none<E: de::Error>(self) -> Result<Any<'de>, E> {
        Ok(Any::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Any<'de>, A::Error> {
        drain_seq(seq)?;
        Ok(Any::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Any<'de>, A::Error> {
        drain_map(map)?;
        Ok(Any::Other)
    }
}

impl<'de> de::Deserialize<'de> for Any<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AnyVisitor)
    }
}

/// How a JSON key names a spec field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyMatch {
    /// Exactly: every runtime reads it.
    Exact,
    /// Only by Go's case folding: runc reads it, crun does not.
    Folded,
}

fn matched(key: &str, name: &str) -> Option<KeyMatch> {
    if key == name {
        Some(KeyMatch::Exact)
    } else if key_is(key, name) {
        Some(KeyMatch::Folded)
    } else {
        None
    }
}

/// The fields of one JSON object type: `field` reads the value of `key` from `map` and says
/// whether it did (an unread value is skipped).
trait Fields<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error>;
}

/// An object read by its [`Fields`]; `None` for a value of any other type (skipped).
struct Obj<T>(T);

impl<'de, T: Fields<'de>> Visitor<'de> for Obj<T> {
    type Value = Option<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    skip_other_types!(None);
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Option<T>, A::Error> {
        drain_seq(seq)?;
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Option<T>, A::Error> {
        while let Some(key) = map.next_key::<Any<'de>>()? {
            let read = match &key {
                Any::Str(k) => self.0.field(k, &mut map)?,
                _ => false,
            };
            if !read {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Some(self.0))
    }
}

impl<'de, T: Fields<'de>> DeserializeSeed<'de> for Obj<T> {
    type Value = Option<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_any(self)
    }
}

/// A list whose items are read by `item`, at most `max` kept (`over` set past it); a value of
/// another type is an empty list.
struct List<'v, T, F> {
    item: F,
    max: usize,
    over: &'v mut bool,
    _t: std::marker::PhantomData<T>,
}

fn list<T, F>(max: usize, over: &mut bool, item: F) -> List<'_, T, F> {
    List {
        item,
        max,
        over,
        _t: std::marker::PhantomData,
    }
}

impl<'de, T, F> Visitor<'de> for List<'_, T, F>
where
    F: FnMut(Any<'de>) -> Option<T>,
{
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array")
    }
    skip_other_types!(Vec::new());
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
        drain_map(map)?;
        Ok(Vec::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<Any<'de>>()? {
            if let Some(t) = (self.item)(v) {
                if out.len() == self.max {
                    *self.over = true;
                    drain_seq(seq)?;
                    break;
                }
                out.push(t);
            }
        }
        Ok(out)
    }
}

impl<'de, T, F> DeserializeSeed<'de> for List<'_, T, F>
where
    F: FnMut(Any<'de>) -> Option<T>,
{
    type Value = Vec<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_any(self)
    }
}

/// A list of objects read by `T`'s [`Fields`] (items of other types skipped), at most `max`.
struct ObjList<'v, T> {
    max: usize,
    over: &'v mut bool,
    _t: std::marker::PhantomData<T>,
}

fn obj_list<T>(max: usize, over: &mut bool) -> ObjList<'_, T> {
    ObjList {
        max,
        over,
        _t: std::marker::PhantomData,
    }
}

impl<'de, T: Fields<'de> + Default> Visitor<'de> for ObjList<'_, T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of objects")
    }
    skip_other_types!(Vec::new());
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
        drain_map(map)?;
        Ok(Vec::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(t) = seq.next_element_seed(Obj(T::default()))? {
            if let Some(t) = t {
                if out.len() == self.max {
                    *self.over = true;
                    drain_seq(seq)?;
                    break;
                }
                out.push(t);
            }
        }
        Ok(out)
    }
}

impl<'de, T: Fields<'de> + Default> DeserializeSeed<'de> for ObjList<'_, T> {
    type Value = Vec<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_any(self)
    }
}

// ------------------------------------------------------------------------ the spec's objects

/// Record field `name`'s new value `v` in `slot`: the last one wins, as in runc; a different
/// earlier value, or a key only runc's case folding matches, makes the field ambiguous.
fn set<T: PartialEq + IsSet>(
    ambiguous: &mut Vec<&'static str>,
    slot: &mut T,
    v: T,
    m: KeyMatch,
    name: &'static str,
) {
    let differs = slot.is_set() && *slot != v;
    if (differs || (m == KeyMatch::Folded && v.is_set())) && !ambiguous.contains(&name) {
        ambiguous.push(name);
    }
    *slot = v;
}

/// The top-level object.
struct Top<'v>(&'v mut SpecView);

impl<'de> Fields<'de> for Top<'_> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        let v = &mut *self.0;
        if key_is(key, "process") {
            map.next_value_seed(Obj(Process(v)))?;
        } else if key_is(key, "root") {
            map.next_value_seed(Obj(Root(v)))?;
        } else if key_is(key, "linux") {
            map.next_value_seed(Obj(Linux(v)))?;
        } else if let Some(m) = matched(key, "mounts") {
            let mut over = false;
            let ms: Vec<MountFields> = map.next_value_seed(obj_list(MAX_MOUNTS, &mut over))?;
            let ms = ms.into_iter().map(|m| m.0).collect();
            if over {
                v.over_limit = Some(format!("more than {MAX_MOUNTS} mounts"));
            }
            set(&mut v.ambiguous, &mut v.mounts, ms, m, "mounts");
        } else if key_is(key, "annotations") {
            // a map of strings in Go: keys match exactly, a repeated key overwrites
            map.next_value_seed(Obj(Annotations(v)))?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }
}

struct Process<'v>(&'v mut SpecView);

impl<'de> Fields<'de> for Process<'_> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        let v = &mut *self.0;
        if let Some(m) = matched(key, "env") {
            let mut over = false;
            let env = map.next_value_seed(list(MAX_KEPT_ENV, &mut over, |e| match e {
                Any::Str(s) if env_entry_is_read(&s) => Some(s.into_owned()),
                _ => None,
            }))?;
            if over {
                v.over_limit = Some(format!(
                    "process.env holds more than {MAX_KEPT_ENV} NVIDIA_*, NVHOOK_DEVICES_* or CUDA_VERSION entries"
                ));
            }
            set(&mut v.ambiguous, &mut v.env, env, m, "process.env");
        } else if let Some(m) = matched(key, "capabilities") {
            let admin = map.next_value_seed(Caps)?;
            set(
                &mut v.ambiguous,
                &mut v.sys_admin,
                Some(admin),
                m,
                "process.capabilities",
            );
        } else if key_is(key, "user") {
            map.next_value_seed(Obj(User(v)))?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }
}

/// `process.capabilities`: whether the bounding set holds `CAP_SYS_ADMIN`. An object (OCI
/// 1.0.0-rc5 and later) names its sets; a flat list (rc1 to rc4) is the one set there was.
struct Caps;

impl<'de> Visitor<'de> for Caps {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("capabilities")
    }
    skip_other_types!(false);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut admin = false;
        while let Some(c) = seq.next_element::<Any<'de>>()? {
            admin |= matches!(c, Any::Str(s) if s == CAP_SYS_ADMIN);
        }
        Ok(admin)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        // a repeated "bounding" overwrites (Go); crun's first is not modelled here: the field as
        // a whole is compared by the caller
        let mut admin = false;
        while let Some(key) = map.next_key::<Any<'de>>()? {
            match key {
                Any::Str(k) if key_is(&k, "bounding") => {
                    admin = map.next_value_seed(BoundingSet)?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(admin)
    }
}

impl<'de> DeserializeSeed<'de> for Caps {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

/// The bounding set: a list of names, compared as strings.
struct BoundingSet;

impl<'de> DeserializeSeed<'de> for BoundingSet {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        let mut over = false;
        let admin = list(1, &mut over, |c| match c {
            Any::Str(s) if s == CAP_SYS_ADMIN => Some(()),
            _ => None,
        });
        Ok(!d.deserialize_any(admin)?.is_empty())
    }
}

const CAP_SYS_ADMIN: &str = "CAP_SYS_ADMIN";

struct User<'v>(&'v mut SpecView);

impl<'de> Fields<'de> for User<'_> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        let v = &mut *self.0;
        if let Some(m) = matched(key, "uid") {
            let id = map.next_value::<Any<'de>>()?.id();
            set(
                &mut v.ambiguous,
                &mut v.uid,
                Some(id),
                m,
                "process.user.uid",
            );
        } else if let Some(m) = matched(key, "gid") {
            let id = map.next_value::<Any<'de>>()?.id();
            set(
                &mut v.ambiguous,
                &mut v.gid,
                Some(id),
                m,
                "process.user.gid",
            );
        } else if let Some(m) = matched(key, "additionalGids") {
            let mut over = false;
            let ids = map.next_value_seed(list(MAX_IDS, &mut over, |g: Any<'de>| Some(g.id())))?;
            if over {
                v.over_limit = Some(format!("more than {MAX_IDS} additionalGids"));
            }
            set(
                &mut v.ambiguous,
                &mut v.additional_gids,
                ids,
                m,
                "process.user.additionalGids",
            );
        } else {
            return Ok(false);
        }
        Ok(true)
    }
}

struct Root<'v>(&'v mut SpecView);

impl<'de> Fields<'de> for Root<'_> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        let v = &mut *self.0;
        let Some(m) = matched(key, "path") else {
            return Ok(false);
        };
        let p = map.next_value::<Any<'de>>()?.into_string();
        set(&mut v.ambiguous, &mut v.root_path, p, m, "root.path");
        Ok(true)
    }
}

struct Linux<'v>(&'v mut SpecView);

impl<'de> Fields<'de> for Linux<'_> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        let v = &mut *self.0;
        if let Some(m) = matched(key, "cgroupsPath") {
            let p = map.next_value::<Any<'de>>()?.into_string();
            set(
                &mut v.ambiguous,
                &mut v.cgroups_path,
                p,
                m,
                "linux.cgroupsPath",
            );
        } else if let Some((m, uid)) = matched(key, "uidMappings")
            .map(|m| (m, true))
            .or_else(|| matched(key, "gidMappings").map(|m| (m, false)))
        {
            let mut over = false;
            let ms: Vec<MappingFields> = map.next_value_seed(obj_list(MAX_IDS, &mut over))?;
            let (slot, name) = if uid {
                (&mut v.uid_mappings, "linux.uidMappings")
            } else {
                (&mut v.gid_mappings, "linux.gidMappings")
            };
            set(
                &mut v.ambiguous,
                slot,
                ms.into_iter().map(|m| m.0).collect(),
                m,
                name,
            );
            if over {
                v.over_limit = Some(format!("more than {MAX_IDS} entries in {name}"));
            }
        } else {
            return Ok(false);
        }
        Ok(true)
    }
}

#[derive(Default)]
struct MountFields(Mount);

impl<'de> Fields<'de> for MountFields {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        let slot = if key_is(key, "source") {
            &mut self.0.source
        } else if key_is(key, "destination") {
            &mut self.0.destination
        } else {
            return Ok(false);
        };
        *slot = map
            .next_value::<Any<'de>>()?
            .into_string()
            .unwrap_or_default();
        Ok(true)
    }
}

#[derive(Default)]
struct MappingFields(IdMapping);

impl<'de> Fields<'de> for MappingFields {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        let slot = if key_is(key, "containerID") {
            &mut self.0.container_id
        } else if key_is(key, "hostID") {
            &mut self.0.host_id
        } else if key_is(key, "size") {
            &mut self.0.size
        } else {
            return Ok(false);
        };
        *slot = map.next_value::<Any<'de>>()?.id();
        Ok(true)
    }
}

struct Annotations<'v>(&'v mut SpecView);

impl<'de> Fields<'de> for Annotations<'_> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        if key != KEEP_GROUPS {
            return Ok(false);
        }
        let v = &mut *self.0;
        let value = map.next_value::<Any<'de>>()?.into_string();
        set(
            &mut v.ambiguous,
            &mut v.keep_original_groups,
            value,
            KeyMatch::Exact,
            "annotations",
        );
        Ok(true)
    }
}

/// crun's `run.oci.keep_original_groups=1` (podman `--group-add keep-groups`).
pub const KEEP_GROUPS: &str = "run.oci.keep_original_groups";
