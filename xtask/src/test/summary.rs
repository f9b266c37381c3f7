//! Reads `cargo test`'s output (stdout and stderr merged, in order) and counts, per suite (per
//! test binary), the tests that ran, passed, failed, were ignored or printed a SKIP message, so
//! `cargo xtask test` can print a table and fail under CI when a suite ran nothing: a suite
//! whose every test skipped hides a broken setup as well as a failure would.
//!
//! Skips are seen through libtest's `--show-output`: each passing test's captured output comes
//! under a `---- <test> stdout ----` header, and a test whose output has a line starting with
//! `SKIP` (`calltap_lab::root::require_root`, `require_tool`, the corpus helpers...) returned
//! without testing anything.

use std::fmt::Write as _;

/// What built a test binary: the verdict on an empty one depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `unittests src/lib.rs`, `src/main.rs`, `src/bin/*.rs`.
    Unit,
    /// A `[[test]]` target (tests/*.rs, e2e/*.rs).
    Integration,
    /// `Doc-tests <crate>`.
    Doc,
}

/// One test binary's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suite {
    /// `<binary> (<source>)`, e.g. `api (e2e/api.rs)`, or `doc-tests <crate>`.
    pub name: String,
    pub kind: Kind,
    /// As libtest reports them: a test that printed SKIP and returned counts as passed here.
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
    pub filtered_out: u32,
    /// Passing tests that printed a SKIP line (at most `passed`).
    pub skipped: u32,
    /// A `test result:` line was seen (false: the binary crashed or the run stopped).
    pub finished: bool,
}

impl Suite {
    fn new(name: String, kind: Kind) -> Self {
        Self {
            name,
            kind,
            passed: 0,
            failed: 0,
            ignored: 0,
            filtered_out: 0,
            skipped: 0,
            finished: false,
        }
    }

    /// Tests that did their work (passed or failed, SKIPs not counted).
    pub fn ran(&self) -> u32 {
        self.passed.saturating_sub(self.skipped) + self.failed
    }

    /// Tests the run selected (filters applied), whatever became of them.
    pub fn selected(&self) -> u32 {
        self.passed + self.failed + self.ignored
    }

    /// Whether this suite is acceptable when it must run, and why.
    pub fn verdict(&self, allowed_empty: &[(&str, &'static str)]) -> Verdict {
        if !self.finished {
            return Verdict::Unfinished;
        }
        if self.failed > 0 {
            return Verdict::Failed;
        }
        if self.ran() > 0 {
            return Verdict::Ran;
        }
        if self.selected() == 0 && self.filtered_out > 0 {
            return Verdict::Filtered;
        }
        if let Some((_, why)) = allowed_empty.iter().find(|(n, _)| *n == self.name) {
            return Verdict::Allowed(why);
        }
        // libtest counts every #[test] (and rustdoc every example) compiled into the binary,
        // ignored or filtered out included: zero means there are none, e.g. a main.rs whose code
        // is tested through the library, or a crate without doc examples. An integration test
        // file exists only to hold tests, so an empty one is a mistake (or a cfg hiding them).
        if self.selected() == 0 && self.kind != Kind::Integration {
            return Verdict::NoTests;
        }
        Verdict::RanNothing
    }
}

/// How a suite ended, as far as "must run" goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// At least one test did its work and none failed.
    Ran,
    /// A test failed (cargo test fails the run itself).
    Failed,
    /// No `test result:` line: the binary crashed or cargo stopped before it.
    Unfinished,
    /// The run's filter left nothing here.
    Filtered,
    /// The binary holds no tests and is not an integration test target.
    NoTests,
    /// Listed as allowed to run nothing, with the reason.
    Allowed(&'static str),
    /// Nothing ran: no tests in an integration test target, or every test ignored or skipped.
    RanNothing,
}

impl Verdict {
    /// A suite that must run and ran nothing: a failure under CI.
    pub fn is_empty_failure(self) -> bool {
        matches!(self, Verdict::RanNothing)
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Ran => "ok",
            Verdict::Failed => "FAILED",
            Verdict::Unfinished => "NO RESULT",
            Verdict::Filtered => "filtered",
            Verdict::NoTests => "no tests",
            Verdict::Allowed(_) => "allowed empty",
            Verdict::RanNothing => "RAN NOTHING",
        }
    }
}

/// Where in a binary's output the parser is: `--show-output` prints passing tests' output under
/// `successes:` and failing ones' under `failures:`; only a passing test's SKIP is a skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Run,
    Successes,
    Failures,
}

/// Line-by-line reader of `cargo test` output.
#[derive(Debug)]
pub struct Parser {
    suites: Vec<Suite>,
    part: Part,
    /// The test whose captured output is being read, and whether it printed SKIP.
    output_of: Option<(String, bool)>,
    /// Passing tests that printed SKIP, in the current suite.
    skipped: Vec<String>,
    /// SKIP lines not under a test's header (`--nocapture`): one per skipped test.
    loose_skips: u32,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    pub fn new() -> Self {
        Self {
            suites: Vec::new(),
            part: Part::Run,
            output_of: None,
            skipped: Vec::new(),
            loose_skips: 0,
        }
    }

    /// Feeds one line (without its newline).
    pub fn line(&mut self, line: &str) {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("Running ") {
            if let Some(suite) = running(rest) {
                self.start(suite);
            }
            return;
        }
        if let Some(krate) = trimmed.strip_prefix("Doc-tests ") {
            self.start(Suite::new(format!("doc-tests {krate}"), Kind::Doc));
            return;
        }
        if self.suites.is_empty() {
            return;
        }
        if let Some(rest) = trimmed.strip_prefix("test result: ") {
            self.close_output();
            self.result(rest);
            return;
        }
        if let Some(test) = trimmed
            .strip_prefix("---- ")
            .and_then(|t| t.strip_suffix(" stdout ----"))
        {
            self.close_output();
            self.output_of = Some((test.to_owned(), false));
            return;
        }
        // The header lines themselves, outside any test's output: libtest prints them at the
        // start of a line, and a test's own output is unlikely to be exactly this.
        if line == "successes:" || line == "failures:" {
            self.close_output();
            self.part = if line == "successes:" {
                Part::Successes
            } else {
                Part::Failures
            };
            return;
        }
        if is_skip(trimmed) {
            match &mut self.output_of {
                Some((_, skipped)) => *skipped = true,
                None => self.loose_skips += 1,
            }
        }
    }

    /// The suites seen, in order.
    pub fn finish(mut self) -> Vec<Suite> {
        self.close_output();
        self.suites
    }

    fn start(&mut self, suite: Suite) {
        self.close_output();
        self.part = Part::Run;
        self.skipped.clear();
        self.loose_skips = 0;
        self.suites.push(suite);
    }

    fn close_output(&mut self) {
        if let Some((test, true)) = self.output_of.take() {
            if self.part == Part::Successes && !self.skipped.contains(&test) {
                self.skipped.push(test);
            }
        }
    }

    /// `ok. 3 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; finished in 0.01s`
    fn result(&mut self, rest: &str) {
        let skipped = u32::try_from(self.skipped.len())
            .unwrap_or(u32::MAX)
            .saturating_add(self.loose_skips);
        let Some(suite) = self.suites.last_mut() else {
            return;
        };
        let counts = rest.split_once(". ").map_or(rest, |(_, c)| c);
        for part in counts.split(';') {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u32>() else {
                continue;
            };
            match what {
                "passed" => suite.passed = n,
                "failed" => suite.failed = n,
                "ignored" => suite.ignored = n,
                "filtered" => suite.filtered_out = n,
                _ => {}
            }
        }
        suite.skipped = skipped.min(suite.passed);
        suite.finished = true;
    }
}

/// `unittests src/lib.rs (target/debug/deps/calltap-1a2b3c)` or `e2e/api.rs (/t/debug/deps/api-9f)`.
fn running(rest: &str) -> Option<Suite> {
    let (source, binary) = rest.rsplit_once(" (")?;
    let binary = binary.strip_suffix(')')?;
    let file = binary.rsplit('/').next()?;
    let stem = file.rsplit_once('-').map_or(file, |(s, _)| s);
    let (kind, source) = match source.strip_prefix("unittests ") {
        Some(s) => (Kind::Unit, s),
        None => (Kind::Integration, source),
    };
    Some(Suite::new(format!("{stem} ({source})"), kind))
}

/// `SKIP name: why`, `SKIP: why`: the form every skipping test prints.
fn is_skip(line: &str) -> bool {
    line.strip_prefix("SKIP")
        .is_some_and(|r| r.is_empty() || r.starts_with([' ', ':']))
}

/// The table printed at the end of a run.
pub fn table(suites: &[Suite], allowed_empty: &[(&str, &'static str)]) -> String {
    let width = suites
        .iter()
        .map(|s| s.name.len())
        .chain([5])
        .max()
        .unwrap_or(5);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:>5}  {:>6}  {:>6}  {:>7}  {:>4}  verdict",
        "suite", "ran", "passed", "failed", "ignored", "SKIP"
    );
    let (mut ran, mut passed, mut failed, mut ignored, mut skipped) = (0, 0, 0, 0, 0);
    for s in suites {
        let verdict = s.verdict(allowed_empty);
        let why = match verdict {
            Verdict::Allowed(why) => format!(" ({why})"),
            _ => String::new(),
        };
        let real_passed = s.passed - s.skipped;
        let _ = writeln!(
            out,
            "{:<width$}  {:>5}  {:>6}  {:>6}  {:>7}  {:>4}  {}{why}",
            s.name,
            s.ran(),
            real_passed,
            s.failed,
            s.ignored,
            s.skipped,
            verdict.label()
        );
        ran += s.ran();
        passed += real_passed;
        failed += s.failed;
        ignored += s.ignored;
        skipped += s.skipped;
    }
    let _ = writeln!(
        out,
        "{:<width$}  {ran:>5}  {passed:>6}  {failed:>6}  {ignored:>7}  {skipped:>4}",
        "total"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Suite> {
        let mut p = Parser::new();
        for line in text.lines() {
            p.line(line);
        }
        p.finish()
    }

    /// Captured from `cargo test -p calltap-lab -- --show-output` without root (trimmed).
    const NOT_ROOT: &str = "\
   Compiling calltap-lab v0.1.0 (/work/tests)
    Finished `test` profile [unoptimized + debuginfo] target(s) in 9.10s
     Running unittests src/lib.rs (/work/main/target/debug/deps/calltap_lab-0f6b1e9d2c3a4b5c)

running 2 tests
test frames::tests::builds ... ok
test rtp_pcap::tests::reads ... ok

test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

     Running unittests src/bin/loadgen.rs (/work/main/target/debug/deps/calltap_loadgen-77aa)

running 0 tests

test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

     Running e2e/api.rs (/work/main/target/debug/deps/api-1234abcd)

running 2 tests
test api_lists_calls ... ok
test api_serves_openapi ... ok

successes:

---- api_lists_calls stdout ----
SKIP api_lists_calls: needs root (BPF/XDP/netns); run `sudo -E cargo xtask test`

---- api_serves_openapi stdout ----
SKIP api_serves_openapi: needs root (BPF/XDP/netns); run `sudo -E cargo xtask test`


successes:
    api_lists_calls
    api_serves_openapi

test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

     Running e2e/rules.rs (/work/main/target/debug/deps/rules-55)

running 3 tests
test a ... ok
test b ... ok
test c ... ignored

successes:

---- a stdout ----
daemon started
SKIP: tshark missing
---- b stdout ----
daemon started
recorded 3 calls


successes:
    a
    b

test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.20s

   Doc-tests calltap_lab

running 0 tests

test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

";

    #[test]
    fn counts_per_binary_with_skips_attributed_to_tests() {
        let suites = parse(NOT_ROOT);
        let names: Vec<_> = suites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "calltap_lab (src/lib.rs)",
                "calltap_loadgen (src/bin/loadgen.rs)",
                "api (e2e/api.rs)",
                "rules (e2e/rules.rs)",
                "doc-tests calltap_lab",
            ]
        );
        let lib = &suites[0];
        assert_eq!(
            (lib.kind, lib.passed, lib.skipped, lib.ran()),
            (Kind::Unit, 2, 0, 2)
        );
        let api = &suites[2];
        assert_eq!(
            (api.kind, api.passed, api.skipped, api.ran()),
            (Kind::Integration, 2, 2, 0)
        );
        let rules = &suites[3];
        assert_eq!(
            (rules.passed, rules.ignored, rules.skipped, rules.ran()),
            (2, 1, 1, 1)
        );
        assert_eq!(suites[4].kind, Kind::Doc);
        assert!(suites.iter().all(|s| s.finished));
    }

    #[test]
    fn verdicts_separate_empty_binaries_from_suites_that_ran_nothing() {
        let suites = parse(NOT_ROOT);
        let v: Vec<_> = suites.iter().map(|s| s.verdict(&[])).collect();
        assert_eq!(
            v,
            [
                Verdict::Ran,
                Verdict::NoTests,
                Verdict::RanNothing,
                Verdict::Ran,
                Verdict::NoTests,
            ]
        );
        let allowed = [("api (e2e/api.rs)", "needs a NIC")];
        assert_eq!(suites[2].verdict(&allowed), Verdict::Allowed("needs a NIC"));
    }

    #[test]
    fn an_integration_target_without_tests_or_all_ignored_ran_nothing() {
        let suites = parse(
            "     Running tests/empty.rs (target/debug/deps/empty-aa)\n\
             running 0 tests\n\
             test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
                  Running tests/slow.rs (target/debug/deps/slow-bb)\n\
             test result: ok. 0 passed; 0 failed; 4 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
                  Running unittests src/lib.rs (target/debug/deps/x-cc)\n\
             test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 7 filtered out; finished in 0.00s\n",
        );
        let v: Vec<_> = suites.iter().map(|s| s.verdict(&[])).collect();
        assert_eq!(
            v,
            [Verdict::RanNothing, Verdict::RanNothing, Verdict::Filtered]
        );
    }

    #[test]
    fn a_failing_test_that_printed_skip_is_a_failure_not_a_skip() {
        let suites = parse(
            "     Running e2e/x.rs (target/debug/deps/x-1)\n\
             test a ... ok\n\
             test b ... FAILED\n\
             \n\
             successes:\n\
             \n\
             ---- a stdout ----\n\
             SKIP a: needs root\n\
             \n\
             successes:\n    a\n\
             \n\
             failures:\n\
             \n\
             ---- b stdout ----\n\
             SKIP b: tool missing\n\
             thread 'b' panicked at e2e/x.rs:3:5\n\
             \n\
             failures:\n    b\n\
             \n\
             test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n",
        );
        let x = &suites[0];
        assert_eq!((x.passed, x.failed, x.skipped, x.ran()), (1, 1, 1, 1));
        assert_eq!(x.verdict(&[]), Verdict::Failed);
    }

    #[test]
    fn nocapture_skips_count_per_binary_and_a_crash_leaves_no_result() {
        let suites = parse(
            "     Running e2e/x.rs (target/debug/deps/x-1)\n\
             running 2 tests\n\
             SKIP a: needs root\n\
             SKIP b: needs root\n\
             test a ... ok\n\
             test b ... ok\n\
             test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
                  Running e2e/y.rs (target/debug/deps/y-2)\n\
             running 1 test\n",
        );
        assert_eq!((suites[0].skipped, suites[0].ran()), (2, 0));
        assert_eq!(suites[1].verdict(&[]), Verdict::Unfinished);
    }

    /// Captured from calltap's unit test binary run with `--show-output` and no telnet on PATH.
    const TELNET_MISSING: &str =
        "     Running unittests src/lib.rs (/work/main/target/debug/deps/calltap-7eab34447cf620a0)

running 1 test
test publish::console::tests::the_real_telnet_client_logs_in_and_runs_commands ... ok

successes:

---- publish::console::tests::the_real_telnet_client_logs_in_and_runs_commands stdout ----
SKIP: telnet not installed (apt install telnet)


successes:
    publish::console::tests::the_real_telnet_client_logs_in_and_runs_commands

test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 169 filtered out; finished in 0.00s
";

    #[test]
    fn a_selected_test_that_skipped_leaves_its_suite_with_nothing_run() {
        let suites = parse(TELNET_MISSING);
        let s = &suites[0];
        assert_eq!(s.name, "calltap (src/lib.rs)");
        assert_eq!(
            (s.passed, s.skipped, s.filtered_out, s.ran()),
            (1, 1, 169, 0)
        );
        assert_eq!(s.verdict(&[]), Verdict::RanNothing);
    }

    #[test]
    fn skip_lines_are_recognised_only_at_the_start() {
        assert!(is_skip("SKIP api_lists_calls: needs root"));
        assert!(is_skip("SKIP: tshark missing"));
        assert!(!is_skip("SKIPPED frames: 3"));
        assert!(!is_skip("calltap: SKIP_EBPF set"));
    }

    #[test]
    fn table_lists_every_suite_and_totals() {
        let suites = parse(NOT_ROOT);
        let t = table(&suites, &[]);
        assert!(t.contains("api (e2e/api.rs)"), "{t}");
        assert!(t.contains("RAN NOTHING"), "{t}");
        let total = t.lines().last().unwrap_or_default();
        // ran 2+0+0+1+0, passed the same, failed 0, ignored 1, SKIP 3.
        assert_eq!(
            total.split_whitespace().collect::<Vec<_>>(),
            ["total", "3", "3", "0", "1", "3"]
        );
    }
}
