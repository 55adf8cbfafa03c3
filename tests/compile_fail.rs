//! What the macros cannot accept is a compile error with a clear message at the offending
//! span. Each case's expected message and span are in tests/ui/*.stderr.

#[test]
fn task_dsl_rejects_unsupported_constructs() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/task_*.rs");
}

#[test]
fn derive_params_rejects_non_parameter_types() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/params_*.rs");
}
