//! Compile-fail tests: each misuse of the derives gives a spanned error that
//! says what to write instead.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
