//! The language reference stays complete: every primitive declared in
//! `lopt-runtime/src/primitives/declared.rs` (what a loss may call) is named in the
//! rustdoc page `lopt::language` (`src/language.rs`) and in the README's table.
//!
//! Mutation tried: the `logaddexp` row removed from `src/language.rs` fails
//! `every_declared_primitive_is_documented` naming it.

/// The names the build script of `lopt-macros` reads: `name => Marker` lines indented
/// four spaces inside the `declare_*!` blocks.
fn declared() -> Vec<String> {
    let text = include_str!("../lopt-runtime/src/primitives/declared.rs");
    let mut inside = false;
    let mut names = Vec::new();
    for line in text.lines() {
        if line.starts_with("declare_") && line.ends_with('{') {
            inside = true;
        } else if line.starts_with('}') {
            inside = false;
        } else if inside {
            let t = line.trim_start();
            if line.len() - t.len() == 4 && t.contains(" => ") && !t.starts_with("//") {
                names.push(t.split(" => ").next().expect("name").to_string());
            }
        }
    }
    names
}

/// `name` written as code: `` `name` ``, `` `name(`` (a call), or a word of a
/// backquoted list (`` `exp ln sqrt` ``).
fn mentions(doc: &str, name: &str) -> bool {
    doc.split('`').skip(1).step_by(2).any(|code| {
        code.split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|w| w == name)
    })
}

#[test]
fn every_declared_primitive_is_documented() {
    let names = declared();
    assert!(names.len() >= 40, "read {} names: {names:?}", names.len());
    let page = include_str!("../src/language.rs");
    let readme = include_str!("../README.md");
    let section = readme
        .split("## The loss language")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the README's loss language section");
    for n in &names {
        assert!(
            mentions(page, n),
            "`{n}` is declared but not in src/language.rs: add its row"
        );
        assert!(
            mentions(section, n),
            "`{n}` is declared but not in the README's loss language table: add it"
        );
    }
}
