//! URL globs for `wait_for_url`, with Playwright's syntax: `*` matches
//! within one path segment, `**` across segments, `{a,b}` alternatives,
//! `\` escapes; `?` is a literal (it is in URLs all the time).
//!
//! Matched here rather than by playwright-rs, whose `wait_for_url` treats a
//! pattern without `*` as an exact URL (so `{a,b}` would silently never
//! match), and so that a bad glob is rejected when the script is attached
//! instead of timing out at 3 a.m.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**`: any run of characters.
    GlobStar,
    /// `{a,b}`: one of these literal strings.
    OneOf(Vec<String>),
}

/// A compiled URL glob; `Display` gives back the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    tokens: Vec<Token>,
}

/// Why a glob was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobError {
    Empty,
    UnclosedBrace,
    UnopenedBrace,
    NestedBrace,
    WildcardInBraces,
    TrailingBackslash,
}

impl fmt::Display for GlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GlobError::Empty => "empty pattern",
            GlobError::UnclosedBrace => "`{` is never closed",
            GlobError::UnopenedBrace => "`}` without `{`",
            GlobError::NestedBrace => "`{…}` cannot be nested",
            GlobError::WildcardInBraces => "`*` inside `{…}` is not supported",
            GlobError::TrailingBackslash => "trailing `\\` escapes nothing",
        })
    }
}

impl Glob {
    pub fn parse(source: &str) -> Result<Glob, GlobError> {
        if source.is_empty() {
            return Err(GlobError::Empty);
        }
        let mut tokens = Vec::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            let token = match c {
                '\\' => Token::Literal(chars.next().ok_or(GlobError::TrailingBackslash)?),
                '*' if chars.next_if_eq(&'*').is_some() => Token::GlobStar,
                '*' => Token::Star,
                '{' => Token::OneOf(parse_alternatives(&mut chars)?),
                '}' => return Err(GlobError::UnopenedBrace),
                other => Token::Literal(other),
            };
            tokens.push(token);
        }
        Ok(Glob {
            source: source.to_string(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        match_tokens(&self.tokens, &text)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Reads `a,b}` (the `{` is already consumed) into its alternatives.
fn parse_alternatives(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> Result<Vec<String>, GlobError> {
    let mut alternatives = vec![String::new()];
    loop {
        let c = chars.next().ok_or(GlobError::UnclosedBrace)?;
        let current = alternatives.last_mut().expect("never empty");
        match c {
            '}' => return Ok(alternatives),
            ',' => alternatives.push(String::new()),
            '{' => return Err(GlobError::NestedBrace),
            '*' => return Err(GlobError::WildcardInBraces),
            '\\' => current.push(chars.next().ok_or(GlobError::TrailingBackslash)?),
            other => current.push(other),
        }
    }
}

/// Backtracking match; URL globs are short, so the worst case stays small.
fn match_tokens(tokens: &[Token], text: &[char]) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return text.is_empty();
    };
    match first {
        Token::Literal(c) => text.first() == Some(c) && match_tokens(rest, &text[1..]),
        Token::Star => {
            let segment_end = text.iter().position(|&c| c == '/').unwrap_or(text.len());
            (0..=segment_end).any(|n| match_tokens(rest, &text[n..]))
        }
        Token::GlobStar => (0..=text.len()).any(|n| match_tokens(rest, &text[n..])),
        Token::OneOf(alternatives) => alternatives.iter().any(|alt| {
            let alt: Vec<char> = alt.chars().collect();
            text.starts_with(&alt) && match_tokens(rest, &text[alt.len()..])
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(glob: &str, url: &str) -> bool {
        Glob::parse(glob).unwrap().matches(url)
    }

    #[test]
    fn wildcards() {
        assert!(m("http://h/a/*", "http://h/a/b"));
        assert!(!m("http://h/a/*", "http://h/a/b/c"));
        assert!(m("http://h/**", "http://h/a/b/c?x=1"));
        assert!(m(
            "**/interaction/*/login",
            "http://127.0.0.1:9/interaction/abc/login"
        ));
        assert!(m("**/{login,consent}", "http://h/x/consent"));
        assert!(!m("**/{login,consent}", "http://h/x/totp"));
        assert!(m("http://h/a?b=\\*", "http://h/a?b=*"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exactly"));
    }

    #[test]
    fn errors() {
        assert_eq!(Glob::parse(""), Err(GlobError::Empty));
        assert_eq!(Glob::parse("a{b"), Err(GlobError::UnclosedBrace));
        assert_eq!(Glob::parse("a}b"), Err(GlobError::UnopenedBrace));
        assert_eq!(Glob::parse("{a,{b}}"), Err(GlobError::NestedBrace));
        assert_eq!(Glob::parse("{a*,b}"), Err(GlobError::WildcardInBraces));
        assert_eq!(Glob::parse("a\\"), Err(GlobError::TrailingBackslash));
    }
}
