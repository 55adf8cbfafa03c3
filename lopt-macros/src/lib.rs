//! Procedural macros of lopt. Each macro parses into a small model, validates with
//! spanned errors, and expands to calls into `lopt-runtime`.

use proc_macro::TokenStream;

/// Derives `lopt::Params` for a struct of parameter fields.
#[proc_macro_derive(Params, attributes(params))]
pub fn derive_params(input: TokenStream) -> TokenStream {
    let _ = input;
    TokenStream::new()
}

/// Generates value, reverse-mode gradient and forward-mode JVP from a scalar loss.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let _ = attr;
    item
}

/// Marks a helper function that a `#[task]` loss may call.
#[proc_macro_attribute]
pub fn differentiable(attr: TokenStream, item: TokenStream) -> TokenStream {
    let _ = attr;
    item
}
