//! Procedural macros of lopt. Each macro parses into a small model, validates with
//! spanned errors, and expands to calls into `lopt-runtime`.

use proc_macro::TokenStream;

mod ad;
mod params;

/// Derives `lopt::Params` for a struct of parameter fields (the Rust form of a JAX pytree).
///
/// Each field is one or more leaves, in field order: `f32`/`f64` scalars, `Vec<S>`,
/// `[S; N]`, nalgebra vectors and matrices (one leaf each, column-major), and nested
/// `#[derive(Params)]` structs (their leaves, in their order). Named and tuple structs
/// work, generic ones too. `Scalar` is the scalar of the first leaf field; every other
/// field must have the same one (a mismatch is a compile error at that field's type).
///
/// Leaf names are field paths joined by `.`: `layer1.w`, or `0.w` in a tuple struct.
///
/// Attributes:
/// - `#[params(skip)]` on a field: carried along (cloned) but not a leaf, e.g. a `usize`
///   hyperparameter; its type must be `Clone + Debug + Send + Sync + 'static`.
/// - `#[params(no_rebind)]` on the struct: do not derive `Rebind` (below).
///
/// A struct with exactly one type parameter, bounded by `Real` alone (e.g.
/// `struct Mlp<S: Real>`), whose leaf fields all mention it, also gets
/// `lopt::params::Rebind`: `mlp.cast::<f64>()` is the same parameters as an `Mlp<f64>`
/// (each field cast with its own `Rebind`, skipped fields cloned). A skipped field whose
/// type mentions the parameter rules this out, as does `#[params(no_rebind)]` (for a
/// field type that is `Params` but not `Rebind`).
///
/// A nested struct that is less visible than the outer one is fine as long as some leaf
/// field shows the scalar (`f32`, `Vec<S>`, `DMatrix<S>`, ...); otherwise the scalar is
/// named through the first nested struct, which must then be as visible as the outer one.
///
/// The struct must also derive (or implement) `Clone` and `Debug`. Enums, unions and
/// structs without a leaf field are compile errors.
///
/// ```ignore
/// use lopt::prelude::*;
///
/// #[derive(Params, Clone, Debug)]
/// struct Mlp<S: Real> {
///     w1: DMatrix<S>,
///     b1: DVector<S>,
///     #[params(skip)]
///     hidden: usize,
/// }
/// // mlp.leaf_names() == ["w1", "b1"]; mlp.cast::<f64>() is an Mlp<f64>.
/// ```
#[proc_macro_derive(Params, attributes(params))]
pub fn derive_params(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    params::derive(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Generates value, reverse-mode gradient and forward-mode JVP from a scalar loss.
///
/// On a free function `fn name(params, data...) -> S`, it keeps `name` (the value) and
/// adds `name::value_and_grad` and `name::value_and_jvp`. On an `impl Task for T` block,
/// it fills in the trait's `value_and_grad` and `value_and_jvp` from `loss`.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    ad::defer(ad::Mode::Task, attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Generates, from the `loss` of an `impl TaskFamily` block (whose loss reads the
/// parameters, then the sampled configuration, the key and the batch), the gradient and
/// JVP, the casts between scalar types, and `task_fn`. The same code then runs one
/// instance at a time (`f32`, `f64`) or batched across SIMD lanes (`Lanes<N>`).
#[proc_macro_attribute]
pub fn task_family(attr: TokenStream, item: TokenStream) -> TokenStream {
    ad::defer(ad::Mode::TaskFamily, attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Marks a helper function that a `#[task]` loss may call; adds `name::jvp` and
/// `name::vjp` beside it. Arguments whose type mentions the scalar type are
/// differentiated; the others are data.
#[proc_macro_attribute]
pub fn differentiable(attr: TokenStream, item: TokenStream) -> TokenStream {
    ad::defer(ad::Mode::Differentiable, attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The second half of `#[task]`, `#[task_family]` and `#[differentiable]`: called by the
/// runtime's `__with_primitives!` with the list of primitives the runtime declares (this
/// crate holds none) in front of the item. Not for direct use.
#[doc(hidden)]
#[proc_macro]
pub fn __expand(input: TokenStream) -> TokenStream {
    ad::expand_declared(input.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
