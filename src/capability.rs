//! The driver capabilities (`NVIDIA_DRIVER_CAPABILITIES` words): the vocabulary the config
//! (`supported-driver-capabilities`) and the request share, so neither imports the other.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

/// A driver capability (`NVIDIA_DRIVER_CAPABILITIES` word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Compat32,
    Compute,
    Display,
    Graphics,
    Ngx,
    Utility,
    Video,
}

impl Capability {
    pub const ALL: [Capability; 7] = [
        Capability::Compat32,
        Capability::Compute,
        Capability::Display,
        Capability::Graphics,
        Capability::Ngx,
        Capability::Utility,
        Capability::Video,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capability::Compat32 => "compat32",
            Capability::Compute => "compute",
            Capability::Display => "display",
            Capability::Graphics => "graphics",
            Capability::Ngx => "ngx",
            Capability::Utility => "utility",
            Capability::Video => "video",
        }
    }

    /// Case-sensitive, as the toolkit matches them.
    pub fn from_name(s: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.name() == s)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of capabilities, printed sorted and comma-joined like the toolkit prints them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Capabilities(pub BTreeSet<Capability>);

impl Capabilities {
    pub fn all() -> Self {
        Capabilities(Capability::ALL.into_iter().collect())
    }
    /// The toolkit's default: `compute,utility`.
    pub fn default_set() -> Self {
        Capabilities(
            [Capability::Compute, Capability::Utility]
                .into_iter()
                .collect(),
        )
    }
    pub fn has(&self, c: Capability) -> bool {
        self.0.contains(&c)
    }
    pub fn intersect(&self, other: &Capabilities) -> Capabilities {
        Capabilities(self.0.intersection(&other.0).copied().collect())
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.0.iter().map(|c| c.name()).collect();
        f.write_str(&names.join(","))
    }
}
