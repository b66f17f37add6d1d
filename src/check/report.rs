//! The report of `dialbackd check`: sections of items, each ✔, ⚠ or ✘ with its details and,
//! for warnings and failures, hints; plain text, no colours; and the exit status.

use std::fmt;

/// The exit status when every item passed (warnings allowed).
pub const EXIT_OK: u8 = 0;
/// The exit status when at least one item failed.
pub const EXIT_FAILED: u8 = 1;
/// The exit status when the check could not run: bad arguments or configuration.
pub const EXIT_USAGE: u8 = 2;

/// How one item came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Ok,
    /// Works for now, but worth fixing (an expiring certificate, an unreachable secondary
    /// address, a step skipped).
    Warn,
    /// Broken: federation with the domain fails at this step.
    Fail,
}

impl Status {
    /// ✔, ⚠ or ✘.
    pub fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✔",
            Status::Warn => "⚠",
            Status::Fail => "✘",
        }
    }
}

/// One line of the report, with what goes below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The verdict.
    pub status: Status,
    /// The line itself.
    pub text: String,
    /// Facts shown below the line (records, addresses), whatever the status.
    pub details: Vec<String>,
    /// What to do about it; shown for warnings and failures only.
    pub hints: Vec<String>,
}

impl Item {
    /// An item with no details or hints.
    pub fn new(status: Status, text: impl Into<String>) -> Item {
        Item {
            status,
            text: text.into(),
            details: Vec::new(),
            hints: Vec::new(),
        }
    }

    /// A passing item.
    pub fn ok(text: impl Into<String>) -> Item {
        Item::new(Status::Ok, text)
    }

    /// A warning.
    pub fn warn(text: impl Into<String>) -> Item {
        Item::new(Status::Warn, text)
    }

    /// A failure.
    pub fn fail(text: impl Into<String>) -> Item {
        Item::new(Status::Fail, text)
    }

    /// This item with one more detail line.
    pub fn detail(mut self, text: impl Into<String>) -> Item {
        self.details.push(text.into());
        self
    }

    /// This item with one more hint.
    pub fn hint(mut self, text: impl Into<String>) -> Item {
        self.hints.push(text.into());
        self
    }
}

/// A titled group of items: one step of the check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// The step's title ("DNS", "TCP connect", …).
    pub title: String,
    /// Its items, in order.
    pub items: Vec<Item>,
}

impl Section {
    /// An empty section.
    pub fn new(title: impl Into<String>) -> Section {
        Section {
            title: title.into(),
            items: Vec::new(),
        }
    }

    /// Append an item.
    pub fn push(&mut self, item: Item) {
        self.items.push(item);
    }

    /// True when some item failed.
    pub fn failed(&self) -> bool {
        self.items.iter().any(|i| i.status == Status::Fail)
    }
}

/// The whole report: a heading line, the sections in order, and a summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The first line (what is checked, from where).
    pub heading: String,
    /// The steps.
    pub sections: Vec<Section>,
}

impl Report {
    /// A report with no sections yet.
    pub fn new(heading: impl Into<String>) -> Report {
        Report {
            heading: heading.into(),
            sections: Vec::new(),
        }
    }

    /// How many items have `status`.
    pub fn count(&self, status: Status) -> usize {
        self.sections
            .iter()
            .flat_map(|s| &s.items)
            .filter(|i| i.status == status)
            .count()
    }

    /// [`EXIT_FAILED`] when any item failed, else [`EXIT_OK`] (warnings do not fail a check).
    pub fn exit_code(&self) -> u8 {
        if self.count(Status::Fail) > 0 {
            EXIT_FAILED
        } else {
            EXIT_OK
        }
    }

    /// The last line: the overall verdict with counts.
    pub fn summary(&self) -> String {
        let (failed, warned) = (self.count(Status::Fail), self.count(Status::Warn));
        let warnings = match warned {
            0 => String::new(),
            1 => ", 1 warning".to_string(),
            n => format!(", {n} warnings"),
        };
        match failed {
            0 => format!("✔ all checks passed{warnings}"),
            1 => format!("✘ 1 check failed{warnings}"),
            n => format!("✘ {n} checks failed{warnings}"),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.heading)?;
        for section in &self.sections {
            writeln!(f, "\n{}", section.title)?;
            for item in &section.items {
                writeln!(f, "  {} {}", item.status.mark(), item.text)?;
                for d in &item.details {
                    writeln!(f, "      {d}")?;
                }
                if item.status != Status::Ok {
                    for h in &item.hints {
                        writeln!(f, "      hint: {h}")?;
                    }
                }
            }
        }
        writeln!(f, "\n{}", self.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(items: Vec<Item>) -> Report {
        let mut r = Report::new("dialbackd check b.test (from a.test)");
        let mut s = Section::new("DNS");
        for i in items {
            s.push(i);
        }
        r.sections.push(s);
        r
    }

    #[test]
    fn exit_status_is_zero_only_without_failures() {
        assert_eq!(
            report(vec![Item::ok("a"), Item::ok("b")]).exit_code(),
            EXIT_OK
        );
        assert_eq!(
            report(vec![Item::ok("a"), Item::warn("b")]).exit_code(),
            EXIT_OK
        );
        assert_eq!(
            report(vec![Item::warn("a"), Item::fail("b")]).exit_code(),
            EXIT_FAILED
        );
        assert_eq!(report(vec![]).exit_code(), EXIT_OK);
        assert_ne!(EXIT_FAILED, EXIT_USAGE);
    }

    #[test]
    fn lines_carry_marks_details_and_hints_for_problems_only() {
        let r = report(vec![
            Item::ok("_xmpp-server._tcp.b.test: 1 record")
                .detail("10 0 5269 host.b.test")
                .hint("never shown"),
            Item::fail("127.0.0.9:5269: connection refused").hint("start the server"),
            Item::warn("expires in 3 days").hint("renew it"),
        ]);
        let text = r.to_string();
        let expected = "\
dialbackd check b.test (from a.test)

DNS
  ✔ _xmpp-server._tcp.b.test: 1 record
      10 0 5269 host.b.test
  ✘ 127.0.0.9:5269: connection refused
      hint: start the server
  ⚠ expires in 3 days
      hint: renew it

✘ 1 check failed, 1 warning
";
        assert_eq!(text, expected);
        assert!(!text.contains("never shown"));
        assert!(!text.contains('\x1b'), "no colour codes");
    }

    #[test]
    fn summary_counts_in_words() {
        assert_eq!(report(vec![Item::ok("a")]).summary(), "✔ all checks passed");
        assert_eq!(
            report(vec![Item::warn("a"), Item::warn("b")]).summary(),
            "✔ all checks passed, 2 warnings"
        );
        assert_eq!(
            report(vec![Item::fail("a"), Item::fail("b")]).summary(),
            "✘ 2 checks failed"
        );
    }
}
