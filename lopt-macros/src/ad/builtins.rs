//! The names a differentiable body may call: the language's own (`data`, `clone`,
//! `stop_gradient`) and the primitives the runtime declares, read from
//! `lopt-runtime/src/primitives/declared.rs` by the build script (this crate holds no
//! list of runtime primitives).

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

include!(concat!(env!("OUT_DIR"), "/declared.rs"));

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
            let &(_, marker, kind) = DECLARED.iter().find(|(n, _, _)| *n == name)?;
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
mod tests {
    use super::*;

    /// The build script read every kind of declaration in the runtime's `declared.rs`.
    /// Catches a build script that skips a block or misreads a line (the names would then
    /// lower as calls to `#[differentiable]` functions that do not exist).
    #[test]
    fn declared_names_are_read_with_their_kinds() {
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
        assert_eq!(lookup("data"), Some(Builtin::Data));
        assert_eq!(lookup("columns"), Some(Builtin::TwoSizes("Columns")));
        assert_eq!(lookup("hconcat"), Some(Builtin::Binary("HConcat")));
        assert_eq!(lookup("floor"), None);
        // Every name once, and at least today's 17 elementwise, 6 reductions, 6 binary
        // and 2 special (a bound, so adding a primitive does not touch this file).
        let mut names: Vec<&str> = DECLARED.iter().map(|d| d.0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DECLARED.len());
        assert!(DECLARED.len() >= 31, "{} names", DECLARED.len());
    }
}
