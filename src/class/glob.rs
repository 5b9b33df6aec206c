//! A small shell-style pattern matcher for device names, and the natural order the matches are
//! numbered in.
//!
//! Only what a class file needs: `*` (any run of characters), `?` (one character), and bracket
//! sets `[abc]`, `[a-z]`, `[!0-9]` (`^` also negates). Patterns match one path component: `/` is
//! never matched by a wildcard, so `video*` cannot reach into a subdirectory. Written here rather
//! than taken from a crate: it is ~100 lines, has no I/O, and the patterns come from the host's
//! administrator, not the container.

use std::cmp::Ordering;

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    Any,
    Star,
    /// (negated, ranges): a single character that is (not) in one of the inclusive ranges.
    Set(bool, Vec<(char, char)>),
}

/// A compiled pattern for one path component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

impl Pattern {
    /// Compile `text`; the error says what is wrong with it.
    pub fn new(text: &str) -> Result<Pattern, String> {
        if text.contains('/') {
            return Err(format!(
                "{text:?}: a pattern matches one path component (no '/')"
            ));
        }
        if text.contains('\\') {
            return Err(format!("{text:?}: '\\' escapes are not supported"));
        }
        let mut tokens = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                }
                '?' => tokens.push(Token::Any),
                '[' => {
                    let negated = matches!(chars.peek(), Some('!') | Some('^'));
                    if negated {
                        chars.next();
                    }
                    let mut ranges = Vec::new();
                    let mut closed = false;
                    let mut first = true;
                    while let Some(c) = chars.next() {
                        // a ']' right after '[' or '[!' is a member, as in the shell
                        if c == ']' && !first {
                            closed = true;
                            break;
                        }
                        first = false;
                        let mut iter = chars.clone();
                        if iter.next() == Some('-') && iter.peek().is_some_and(|n| *n != ']') {
                            chars.next();
                            let hi = chars.next().unwrap_or(c);
                            if hi < c {
                                return Err(format!("{text:?}: range {c}-{hi} is reversed"));
                            }
                            ranges.push((c, hi));
                        } else {
                            ranges.push((c, c));
                        }
                    }
                    if !closed {
                        return Err(format!("{text:?}: '[' without a closing ']'"));
                    }
                    tokens.push(Token::Set(negated, ranges));
                }
                c => tokens.push(Token::Literal(c)),
            }
        }
        Ok(Pattern {
            text: text.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern has any wildcard (else it names exactly one entry).
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// Does `name` match? A leading `.` must be matched literally, as in the shell.
    pub fn matches(&self, name: &str) -> bool {
        if name.contains('/') {
            return false;
        }
        if name.starts_with('.') && !matches!(self.tokens.first(), Some(Token::Literal('.'))) {
            return false;
        }
        let name: Vec<char> = name.chars().collect();
        match_from(&self.tokens, &name)
    }
}

/// Iterative matcher with one backtrack point per star (linear in practice, no recursion).
fn match_from(tokens: &[Token], name: &[char]) -> bool {
    let (mut t, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                star = Some((t, n));
                t += 1;
                continue;
            }
            Some(Token::Any) => {
                t += 1;
                n += 1;
                continue;
            }
            Some(Token::Literal(c)) if *c == name[n] => {
                t += 1;
                n += 1;
                continue;
            }
            Some(Token::Set(neg, ranges))
                if ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&name[n])) != *neg =>
            {
                t += 1;
                n += 1;
                continue;
            }
            _ => {}
        }
        // mismatch: let the last star eat one more character, or fail
        match star {
            Some((st, sn)) => {
                t = st + 1;
                n = sn + 1;
                star = Some((st, sn + 1));
            }
            None => return false,
        }
    }
    tokens[t..].iter().all(|t| *t == Token::Star)
}

/// Natural order: runs of digits compare as numbers, so `video2` < `video10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let si = i;
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let da = trim_zeros(&a[si..i]);
            let db = trim_zeros(&b[sj..j]);
            let ord = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
            if ord != Ordering::Equal {
                return ord;
            }
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j)).then_with(|| a.cmp(b))
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|c| **c == b'0').count();
    &d[z.min(d.len().saturating_sub(1))..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        Pattern::new(p).unwrap().matches(n)
    }

    #[test]
    fn stars_and_questions() {
        assert!(m("video*", "video0") && m("video*", "video") && m("video*", "video12"));
        assert!(!m("video*", "xvideo0") && !m("video*", "vide"));
        assert!(m("uverbs?", "uverbs3") && !m("uverbs?", "uverbs10"));
        assert!(m("*", "anything") && m("a*b*c", "aXXbYYc") && !m("a*b*c", "aXXbYY"));
        assert!(m("render*D*", "renderD128") && m("**x", "x"));
        assert!(m("exact", "exact") && !m("exact", "exact1"));
    }

    #[test]
    fn bracket_sets() {
        assert!(m("video[0-9]", "video7") && !m("video[0-9]", "videoa"));
        assert!(m("video[!0-9]", "videoa") && !m("video[^0-9]", "video1"));
        assert!(m("hidraw[13]", "hidraw3") && !m("hidraw[13]", "hidraw2"));
        assert!(m("x[]]", "x]") && m("x[a-]", "x-"));
        assert!(Pattern::new("video[0-9").is_err());
        assert!(Pattern::new("x[9-0]").is_err());
    }

    #[test]
    fn never_crosses_a_slash_or_matches_hidden_names() {
        assert!(Pattern::new("by-id/*").is_err());
        assert!(!m("*", "a/b") && !m("*", ".hidden") && m(".*", ".hidden"));
        assert!(Pattern::new("a\\*").is_err());
    }

    #[test]
    fn literal_patterns() {
        assert!(Pattern::new("rdma_cm").unwrap().is_literal());
        assert!(!Pattern::new("uverbs*").unwrap().is_literal());
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["video10", "video2", "video1", "media0", "video02", "video"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            ["media0", "video", "video1", "video02", "video2", "video10"]
        );
        assert_eq!(natural_cmp("uverbs0", "uverbs0"), Ordering::Equal);
    }

    #[test]
    fn many_stars_stay_fast_enough_to_finish() {
        let name = "a".repeat(200);
        assert!(!m("*a*a*a*a*a*a*a*a*b", &name));
    }
}
