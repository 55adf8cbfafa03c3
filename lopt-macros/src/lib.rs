//! Procedural macros of lopt. Each macro parses into a small model, validates with
//! spanned errors, and expands to calls into `lopt-runtime`.

use proc_macro::TokenStream;

mod ad;

/// Derives `lopt::Params` for a struct of parameter fields.
#[proc_macro_derive(Params, attributes(params))]
pub fn derive_params(input: TokenStream) -> TokenStream {
    let _ = input;
    TokenStream::new()
}

/// Generates value, reverse-mode gradient and forward-mode JVP from a scalar loss.
///
/// On a free function `fn name(params, data...) -> S`, it keeps `name` (the value) and
/// adds `name::value_and_grad` and `name::value_and_jvp`. On an `impl Task for T` block,
/// it fills in the trait's `value_and_grad` and `value_and_jvp` from `loss`.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    ad::expand_task(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Marks a helper function that a `#[task]` loss may call; adds `name::jvp` and
/// `name::vjp` beside it. Arguments whose type mentions the scalar type are
/// differentiated; the others are data.
#[proc_macro_attribute]
pub fn differentiable(attr: TokenStream, item: TokenStream) -> TokenStream {
    ad::expand_differentiable(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
