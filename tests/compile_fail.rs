//! The DSL rejects what it cannot differentiate with a message at the offending span.
//! Each case's expected message and span are in tests/ui/*.stderr.

#[test]
fn unsupported_constructs_are_spanned_compile_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/task_*.rs");
}
