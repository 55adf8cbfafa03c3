//! Compile-fail tests of `#[derive(Params)]`: each error is spanned and says what to do.

#[test]
fn params_compile_errors() {
    trybuild::TestCases::new().compile_fail("tests/ui/params_*.rs");
}
