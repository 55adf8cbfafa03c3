//! Reads the primitives the runtime declares (`lopt-runtime/src/primitives/declared.rs`)
//! and writes their names and kinds for the `#[task]` macro, which holds no list of its
//! own.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let src = Path::new(&dir).join("../lopt-runtime/src/primitives/declared.rs");
    println!("cargo:rerun-if-changed={}", src.display());
    let text = std::fs::read_to_string(&src)
        .unwrap_or_else(|e| panic!("lopt-macros: cannot read {}: {e}", src.display()));
    let mut out =
        String::from("/// `(name, marker, kind)` of every primitive `declared.rs` declares.\n");
    out.push_str("pub const DECLARED: &[(&str, &str, Kind)] = &[\n");
    let mut kind: Option<&str> = None;
    let mut n = 0;
    for line in text.lines() {
        if line.starts_with("declare_elementwise! {") {
            kind = Some("Unary");
        } else if line.starts_with("declare_special! {") {
            kind = Some("Special");
        } else if line.starts_with("declare_ruled! {") {
            kind = Some("Ruled");
        } else if line.starts_with('}') {
            kind = None;
        }
        let Some(k) = kind else { continue };
        let t = line.trim_start();
        if k == "Ruled" && (t == "unary:" || t == "binary:") {
            kind = Some(if t == "unary:" {
                "RuledUnary"
            } else {
                "RuledBinary"
            });
            continue;
        }
        if line.len() - t.len() != 4 || !t.contains(" => ") || t.starts_with("//") {
            continue;
        }
        let (name, rest) = t.split_once(" => ").expect("checked");
        let marker: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let kind = match k {
            "Unary" | "RuledUnary" => "Kind::Unary".to_string(),
            "RuledBinary" => "Kind::Binary".to_string(),
            "Special" => {
                let form = rest
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .trim_end_matches(',');
                match form {
                    "integer_exponent" => "Kind::IntegerExponent".to_string(),
                    "labels" => "Kind::Labels".to_string(),
                    "data" => "Kind::WithData".to_string(),
                    "two_sizes" => "Kind::TwoSizes".to_string(),
                    "scalar_bounds" => "Kind::ScalarBounds".to_string(),
                    other => {
                        panic!("lopt-macros: unknown form `{other}` for `{name}` in declared.rs")
                    }
                }
            }
            _ => unreachable!(),
        };
        writeln!(out, "    ({name:?}, {marker:?}, {kind}),").expect("write");
        n += 1;
    }
    out.push_str("];\n");
    assert!(
        n > 0,
        "lopt-macros: no primitives found in {}",
        src.display()
    );
    let dst = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("declared.rs");
    std::fs::write(dst, out).expect("write declared.rs");
}
