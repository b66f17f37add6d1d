//! Peer-supplied strings made safe to log.
//!
//! Anything a peer sends (a stream id, a header's `to`, the text of its stream error, an
//! attribute it made up) can hold newlines — the `xml` crate turns `&#10;` into a real one —
//! terminal escapes, bidirectional overrides or megabytes of text. Logged as it is, such a
//! string forges log lines or floods the log. [`peer`] wraps it so that its `Display` output is
//! one line of bounded length in which every control or formatting character is escaped
//! (`\n`, `\u{1b}`, `\u{202e}`…) and a backslash is doubled, so the escaped form cannot be
//! confused with a real escape. Longer strings are cut with a note of how much was left out.
//!
//! Validated values ([`crate::domain::Domain`], stream labels we built) need no wrapping.

use std::fmt;

/// Most characters of a peer-supplied string shown in one log line.
pub const MAX_SHOWN: usize = 128;

/// A peer-supplied string as it may appear in a log line: see the module documentation.
#[derive(Clone, Copy)]
pub struct Shown<'a>(&'a str);

/// Wrap a peer-supplied string for a log line.
pub fn peer(s: &str) -> Shown<'_> {
    Shown(s)
}

/// Characters that are escaped: C0/C1 controls and DEL, Unicode line/paragraph separators,
/// bidirectional embedding/override/isolate marks, and zero-width or invisible formatting
/// characters that could disguise what a line says.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for (shown, (i, c)) in self.0.char_indices().enumerate() {
            if shown == MAX_SHOWN {
                return write!(f, "…(+{} bytes)", self.0.len() - i);
            }
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if needs_escape(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(peer("a.example").to_string(), "a.example");
        assert_eq!(peer("héllo wörld ✓").to_string(), "héllo wörld ✓");
        assert_eq!(peer("").to_string(), "");
    }

    #[test]
    fn a_forged_log_line_stays_on_one_line() {
        let forged = "x\n[2026-11-26T03:00:00Z INFO  dialbackd] s2s-in: evil.example verified";
        let shown = peer(forged).to_string();
        assert!(!shown.contains('\n'));
        assert!(shown.starts_with("x\\n[2026"));
    }

    #[test]
    fn controls_and_formatting_characters_are_escaped() {
        assert_eq!(
            peer("a\rb\tc\u{1b}[31m").to_string(),
            "a\\rb\\tc\\u{1b}[31m"
        );
        assert_eq!(peer("\u{7f}\u{85}").to_string(), "\\u{7f}\\u{85}");
        assert_eq!(peer("ab\u{202e}cd").to_string(), "ab\\u{202e}cd");
        assert_eq!(peer("\u{2028}\u{feff}").to_string(), "\\u{2028}\\u{feff}");
        // A backslash is doubled, so a literal "\n" in the input cannot pass for an escape.
        assert_eq!(peer("a\\nb").to_string(), "a\\\\nb");
    }

    #[test]
    fn long_strings_are_cut_with_the_remainder_counted() {
        let long = "é".repeat(30_000);
        let shown = peer(&long).to_string();
        let expected = format!(
            "{}…(+{} bytes)",
            "é".repeat(MAX_SHOWN),
            2 * (30_000 - MAX_SHOWN)
        );
        assert_eq!(shown, expected);
        let exact = "x".repeat(MAX_SHOWN);
        assert_eq!(peer(&exact).to_string(), exact);
    }

    #[test]
    fn debug_quotes_the_escaped_form() {
        assert_eq!(format!("{:?}", peer("a\nb")), "\"a\\nb\"");
    }
}
