//! The names a differentiable body may call: the language's own (`data`, `clone`,
//! `stop_gradient`, `select`) and the primitives the runtime declares.
//!
//! This crate holds no list of runtime primitives. `#[task]`, `#[task_family]` and
//! `#[differentiable]` expand to a call of the runtime's `__with_primitives!`, generated
//! by its declarations (`lopt-runtime/src/primitives/declared.rs`), which calls this
//! crate's `__expand!` back with the list (`[name Marker kind, ...]`) in front of the
//! item; [`with_declared`] makes it the table [`lookup`] reads while that item expands.

use std::cell::RefCell;

use proc_macro2::{TokenStream, TokenTree};

/// How a declared primitive is lowered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// `Unary<op::Marker>` with a unit marker.
    Unary,
    /// `Binary<op::Marker, _>`.
    Binary,
    /// `Unary<op::Marker(n)>`: the second argument is a non-differentiated `i32`.
    IntegerExponent,
    /// `Unary<op::Marker::new(labels)>`: the second argument is integer labels.
    Labels,
    /// `Unary<op::Marker::new(&data)>`: the second argument is non-differentiated data
    /// (a convolution's geometry, ids, an epsilon).
    WithData,
    /// `Unary<op::Marker(a as usize, b as usize)>`: two non-differentiated sizes
    /// (`x.rows(start, len)`, `reshape(x, rows, cols)`).
    TwoSizes,
    /// `Unary<op::Marker::new(lo, hi)>`: two non-differentiated scalars (`clip`).
    ScalarBounds,
}

/// `(name, marker, kind)` of a declared primitive.
pub type Declared = (&'static str, &'static str, Kind);

thread_local! {
    /// The runtime's primitives while an item expands (see [`with_declared`]).
    static DECLARED: RefCell<Vec<Declared>> = const { RefCell::new(Vec::new()) };
}

/// A name read from the list, kept for the life of the compiler process (a few hundred
/// bytes per expanded item; each distinct name is leaked once).
fn intern(s: String) -> &'static str {
    thread_local! {
        static NAMES: RefCell<std::collections::HashSet<&'static str>> = RefCell::default();
    }
    NAMES.with(|n| {
        let mut n = n.borrow_mut();
        if let Some(&k) = n.get(s.as_str()) {
            return k;
        }
        let k: &'static str = Box::leak(s.into_boxed_str());
        n.insert(k);
        k
    })
}

/// Reads the runtime's list, `name Marker kind,` repeated (`kind`: `unary`, `binary`, or
/// a special form); a name `_` (an operator such as `+`, which has no function) is
/// skipped.
pub fn parse_declared(list: TokenStream) -> syn::Result<Vec<Declared>> {
    let tokens: Vec<TokenTree> = list.into_iter().collect();
    let mut out = Vec::new();
    for entry in tokens.split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ',')) {
        let words: Vec<String> = entry.iter().map(|t| t.to_string()).collect();
        let [name, marker, kind] = words.as_slice() else {
            if entry.is_empty() {
                continue;
            }
            let all: TokenStream = entry.iter().cloned().collect();
            return Err(syn::Error::new_spanned(
                all,
                "lopt: malformed primitive list entry (want `name Marker kind`)",
            ));
        };
        let kind = match kind.as_str() {
            "unary" => Kind::Unary,
            "binary" => Kind::Binary,
            "integer_exponent" => Kind::IntegerExponent,
            "labels" => Kind::Labels,
            "data" => Kind::WithData,
            "two_sizes" => Kind::TwoSizes,
            "scalar_bounds" => Kind::ScalarBounds,
            other => {
                return Err(syn::Error::new_spanned(
                    &entry[2],
                    format!("lopt: unknown primitive form `{other}` for `{name}`"),
                ))
            }
        };
        if name != "_" {
            out.push((intern(name.clone()), intern(marker.clone()), kind));
        }
    }
    Ok(out)
}

/// Runs `f` with `declared` as the table [`lookup`] reads.
pub fn with_declared<R>(declared: Vec<Declared>, f: impl FnOnce() -> R) -> R {
    let before = DECLARED.with(|d| std::mem::replace(&mut *d.borrow_mut(), declared));
    let r = f();
    DECLARED.with(|d| *d.borrow_mut() = before);
    r
}

/// How a builtin maps onto the runtime's rule traits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Builtin {
    /// `Unary<op::Name>` with a unit marker.
    Unary(&'static str),
    /// `Unary<op::Name(n)>`: second argument is a non-differentiable `i32`.
    Powi(&'static str),
    /// `Binary<op::Name, _>`.
    Binary(&'static str),
    /// `Unary<op::Name::new(labels)>`: second argument is integer labels.
    SoftmaxCrossEntropy(&'static str),
    /// `Unary<op::Name::new(&data)>`: second argument is non-differentiated data.
    WithData(&'static str),
    /// `Unary<op::Name(a as usize, b as usize)>`: two non-differentiated sizes.
    TwoSizes(&'static str),
    /// `Unary<op::Name::new(lo, hi)>`: two non-differentiated scalars.
    ScalarBounds(&'static str),
    /// `select(mask, a, b)`: `Where<A, B>` on the mask.
    Select,
    /// Explicit data conversion `data(x)`.
    Data,
    /// `x.clone()`: the same value.
    Identity,
    /// `stop_gradient(x)`: the value of `x`, treated as a constant.
    StopGradient,
}

/// Looks up a primitive by the name used in the loss.
pub fn lookup(name: &str) -> Option<Builtin> {
    Some(match name {
        "data" => Builtin::Data,
        "clone" => Builtin::Identity,
        "stop_gradient" => Builtin::StopGradient,
        "select" => Builtin::Select,
        _ => {
            let (_, marker, kind) =
                DECLARED.with(|d| d.borrow().iter().find(|(n, _, _)| *n == name).copied())?;
            match kind {
                Kind::Unary => Builtin::Unary(marker),
                Kind::Binary => Builtin::Binary(marker),
                Kind::IntegerExponent => Builtin::Powi(marker),
                Kind::Labels => Builtin::SoftmaxCrossEntropy(marker),
                Kind::WithData => Builtin::WithData(marker),
                Kind::TwoSizes => Builtin::TwoSizes(marker),
                Kind::ScalarBounds => Builtin::ScalarBounds(marker),
            }
        }
    })
}

/// Methods that read a value's shape; they are not differentiated.
pub fn is_shape_query(name: &str) -> bool {
    matches!(name, "nrows" | "ncols" | "len" | "shape" | "is_empty")
}

/// What exists, for "unsupported" errors: where the primitives are declared, and the
/// rest of the language.
pub const SUPPORTED: &str = "the primitives of `lopt::ops` (declared in \
lopt-runtime/src/primitives/declared.rs), data, stop_gradient, and calls to #[differentiable] \
functions and user primitives (lopt::elementwise_primitive!)";

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A list in the form the runtime's `__with_primitives!` passes: one entry of each
    /// kind and the names the fused compositions need.
    pub(crate) fn fixture() -> Vec<Declared> {
        let list: TokenStream = "exp Exp unary, atan Atan unary, square Square unary, \
            relu Relu unary, _ Add binary, max Max binary, component_div ComponentDiv binary, \
            sum Sum unary, mean Mean unary, hconcat HConcat binary, powi Powi integer_exponent, \
            softmax_cross_entropy SoftmaxCrossEntropy labels, embed Embed data, dot Dot binary, \
            columns Columns two_sizes, clip Clip scalar_bounds,"
            .parse()
            .expect("tokens");
        parse_declared(list).expect("parses")
    }

    /// The list is read with each kind, `_` entries skipped, and [`lookup`] finds a name
    /// only while the table is set. Catches a parser that drops or confuses a kind, or a
    /// table left set after an item (the names would then lower wrongly, or as calls to
    /// `#[differentiable]` functions that do not exist). The runtime's own list is checked
    /// in `lopt-runtime/src/primitives/declared.rs`.
    #[test]
    fn declared_names_are_read_with_their_kinds() {
        let table = fixture();
        assert_eq!(table.len(), 15, "`_ Add` is skipped");
        with_declared(table, || {
            assert_eq!(lookup("exp"), Some(Builtin::Unary("Exp")));
            assert_eq!(lookup("atan"), Some(Builtin::Unary("Atan")));
            assert_eq!(lookup("sum"), Some(Builtin::Unary("Sum")));
            assert_eq!(lookup("max"), Some(Builtin::Binary("Max")));
            assert_eq!(
                lookup("component_div"),
                Some(Builtin::Binary("ComponentDiv"))
            );
            assert_eq!(lookup("powi"), Some(Builtin::Powi("Powi")));
            assert_eq!(
                lookup("softmax_cross_entropy"),
                Some(Builtin::SoftmaxCrossEntropy("SoftmaxCrossEntropy"))
            );
            assert_eq!(lookup("embed"), Some(Builtin::WithData("Embed")));
            assert_eq!(lookup("clip"), Some(Builtin::ScalarBounds("Clip")));
            assert_eq!(lookup("data"), Some(Builtin::Data));
            assert_eq!(lookup("columns"), Some(Builtin::TwoSizes("Columns")));
            assert_eq!(lookup("hconcat"), Some(Builtin::Binary("HConcat")));
            assert_eq!(lookup("floor"), None);
            assert_eq!(lookup("_"), None);
        });
        assert_eq!(lookup("exp"), None, "the table is the item's only");
        assert!(parse_declared("exp Exp unknown_form,".parse().expect("tokens")).is_err());
        assert!(parse_declared("exp Exp,".parse().expect("tokens")).is_err());
    }
}
