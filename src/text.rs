//! Text helpers for error messages: values from the environment or a config, cut to a size a
//! log line can carry.

/// The longest piece of a value an error message quotes.
const QUOTE_MAX: usize = 100;

/// `s` cut for an error message: its first characters and its size when it is long (a variable
/// of megabytes must not become a log line of megabytes).
pub fn clip(s: &str) -> String {
    if s.len() <= QUOTE_MAX {
        return s.to_owned();
    }
    let head: String = s.chars().take(QUOTE_MAX).collect();
    format!("{head}... ({} bytes)", s.len())
}

/// [`clip`], quoted as `{:?}` quotes.
pub fn quote(s: &str) -> String {
    format!("{:?}", clip(s))
}
