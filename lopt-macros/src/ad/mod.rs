//! `#[task]` and `#[differentiable]`: parse the signature, lower the body (lower.rs),
//! expand value, JVP and gradient (emit.rs).

mod builtins;
mod emit;
mod ir;
mod lower;

use proc_macro2::TokenStream;
use quote::{format_ident, quote, ToTokens};
use syn::spanned::Spanned;
use syn::{FnArg, ImplItem, Item, ItemFn, Pat, ReturnType, Type};

use emit::{arg_deriv_ident, Emitter};
use ir::{DiffArg, Func};
use lower::Lowerer;

type Result<T> = syn::Result<T>;

const ALLOWS: &str = "#[allow(unused_variables, unused_mut, unused_parens, unused_braces, \
clippy::all, non_snake_case)]";

fn allows() -> TokenStream {
    ALLOWS.parse().expect("attr")
}

/// A parsed argument list: which arguments are differentiated.
struct Sig {
    diff: Vec<DiffArg>,
    /// Position of each argument: `Some(k)` for the k-th differentiated one.
    positions: Vec<Option<usize>>,
    data: Vec<String>,
}

fn arg_ident(arg: &syn::PatType) -> Result<syn::Ident> {
    match &*arg.pat {
        Pat::Ident(p) if p.subpat.is_none() && p.by_ref.is_none() => Ok(p.ident.clone()),
        other => Err(syn::Error::new_spanned(
            other,
            "arguments of a differentiable function must be plain names",
        )),
    }
}

fn referent(ty: &Type) -> (bool, Type) {
    match ty {
        Type::Reference(r) if r.mutability.is_none() => (true, (*r.elem).clone()),
        other => (false, other.clone()),
    }
}

/// Parses the arguments; `is_diff(index_among_typed_args, type)` decides which are
/// differentiated.
fn parse_sig(sig: &syn::Signature, mut is_diff: impl FnMut(usize, &Type) -> bool) -> Result<Sig> {
    let mut diff = Vec::new();
    let mut positions = Vec::new();
    let mut data = Vec::new();
    let mut i = 0;
    for a in &sig.inputs {
        match a {
            FnArg::Receiver(_) => {}
            FnArg::Typed(t) => {
                let ident = arg_ident(t)?;
                if is_diff(i, &t.ty) {
                    if let Type::Reference(r) = &*t.ty {
                        if r.mutability.is_some() {
                            return Err(syn::Error::new_spanned(
                                &t.ty,
                                "differentiated arguments are taken by value or by `&`, not `&mut`",
                            ));
                        }
                    }
                    let (is_ref, ty) = referent(&t.ty);
                    positions.push(Some(diff.len()));
                    diff.push(DiffArg { ident, is_ref, ty });
                } else {
                    positions.push(None);
                    data.push(ident.to_string());
                }
                i += 1;
            }
        }
    }
    Ok(Sig {
        diff,
        positions,
        data,
    })
}

fn return_type(sig: &syn::Signature) -> Result<Type> {
    match &sig.output {
        ReturnType::Type(_, t) => Ok((**t).clone()),
        ReturnType::Default => Err(syn::Error::new_spanned(
            sig,
            "a differentiable function must return a value (a loss returns a scalar)",
        )),
    }
}

fn lower_body(sig: &Sig, block: &syn::Block, scalar: &Type) -> Result<Func> {
    Lowerer::new(&sig.diff, sig.data.clone(), scalar.clone()).lower_fn(block)
}

/// True when `ident` appears as a word anywhere in `ty` (nested generics included).
fn mentions_ident(ty: &Type, ident: &str) -> bool {
    ty.to_token_stream()
        .to_string()
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .any(|w| w == ident)
}

/// The attribute macros take no arguments.
fn no_args(attr: &TokenStream, name: &str) -> Result<()> {
    if attr.is_empty() {
        Ok(())
    } else {
        Err(syn::Error::new_spanned(
            attr,
            format!("#[{name}] takes no arguments"),
        ))
    }
}

/// The scalar type of a helper: its type parameter bounded by `Real`, else `f32`/`f64`
/// if the return type is one.
fn helper_scalar(f: &ItemFn) -> Result<Type> {
    for p in f.sig.generics.type_params() {
        let bounded = p
            .bounds
            .iter()
            .any(|b| b.to_token_stream().to_string().contains("Real"));
        let in_where = f.sig.generics.where_clause.as_ref().is_some_and(|w| {
            w.predicates.iter().any(|pr| {
                let s = pr.to_token_stream().to_string();
                s.starts_with(&p.ident.to_string()) && s.contains("Real")
            })
        });
        if bounded || in_where {
            let id = &p.ident;
            return Ok(syn::parse_quote!(#id));
        }
    }
    let ret = return_type(&f.sig)?;
    let s = ret.to_token_stream().to_string();
    if s.contains("f32") {
        return Ok(syn::parse_quote!(f32));
    }
    if s.contains("f64") {
        return Ok(syn::parse_quote!(f64));
    }
    Err(syn::Error::new_spanned(
        &f.sig,
        "cannot tell the scalar type: give the function a type parameter bounded by `Real` \
         (`fn f<S: Real>(...)`) or use f32/f64",
    ))
}

fn mod_fn_vis(vis: &syn::Visibility) -> TokenStream {
    match vis {
        syn::Visibility::Public(_) => quote!(pub),
        syn::Visibility::Inherited => quote!(pub(super)),
        _ => quote!(pub(crate)),
    }
}

/// Which macro an item was given to, carried through the runtime's list (see
/// [`builtins`]).
#[derive(Clone, Copy)]
pub enum Mode {
    /// `#[task]`.
    Task,
    /// `#[task_family]`.
    TaskFamily,
    /// `#[differentiable]`.
    Differentiable,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Task => "task",
            Mode::TaskFamily => "task_family",
            Mode::Differentiable => "differentiable",
        }
    }
}

/// What `#[task]`, `#[task_family]` and `#[differentiable]` expand to: the runtime's
/// `__with_primitives!`, which calls [`expand_declared`] (`__expand!`) back with its list
/// of primitives in front of the item. A bad attribute argument is reported here, at it.
pub fn defer(mode: Mode, attr: TokenStream, item: TokenStream) -> Result<TokenStream> {
    no_args(&attr, mode.name())?;
    let mode = format_ident!("{}", mode.name());
    Ok(quote! {
        ::lopt::__private::with_primitives! {
            (::lopt::__private::expand) #mode #item
        }
    })
}

/// `__expand! { [name Marker kind, ...] mode item }`: the item expanded by `mode` with
/// the runtime's primitives as the names a body may call.
pub fn expand_declared(input: TokenStream) -> Result<TokenStream> {
    let mut it = input.into_iter();
    let list = match it.next() {
        Some(proc_macro2::TokenTree::Group(g))
            if g.delimiter() == proc_macro2::Delimiter::Bracket =>
        {
            g.stream()
        }
        other => {
            return Err(syn::Error::new(
                other.map_or_else(proc_macro2::Span::call_site, |t| t.span()),
                "lopt: expected the runtime's primitive list",
            ))
        }
    };
    let mode = match it.next() {
        Some(proc_macro2::TokenTree::Ident(i)) => i.to_string(),
        _ => String::new(),
    };
    let item: TokenStream = it.collect();
    let declared = builtins::parse_declared(list)?;
    builtins::with_declared(declared, || match mode.as_str() {
        "task" => expand_task(TokenStream::new(), item),
        "task_family" => expand_task_family(TokenStream::new(), item),
        "differentiable" => expand_differentiable(TokenStream::new(), item),
        other => Err(syn::Error::new(
            proc_macro2::Span::call_site(),
            format!("lopt: unknown expansion mode `{other}`"),
        )),
    })
}

/// `#[differentiable] fn f(...)`: the function (value) plus `mod f { fn jvp; fn vjp }`.
pub fn expand_differentiable(attr: TokenStream, item: TokenStream) -> Result<TokenStream> {
    no_args(&attr, "differentiable")?;
    let f: ItemFn = syn::parse2(item)?;
    check_fn_shape(&f)?;
    let scalar = helper_scalar(&f)?;
    let scalar_name = scalar.to_token_stream().to_string();
    let sig = parse_sig(&f.sig, |_, ty| mentions_ident(ty, &scalar_name))?;
    let ret = return_type(&f.sig)?;
    let func = lower_body(&sig, &f.block, &scalar)?;
    let em = Emitter::new(&func, &sig.diff, &scalar);

    let name = &f.sig.ident;
    let vis = &f.vis;
    let inner_vis = mod_fn_vis(vis);
    let where_c = &f.sig.generics.where_clause;
    let generics = &f.sig.generics;
    let inputs: Vec<_> = f.sig.inputs.iter().collect();
    let attrs = &f.attrs;
    let allow = allows();
    let value = em.value_body();

    // jvp(args..., tangents...) -> (Ret, Ret)
    let mut tan_params = Vec::new();
    for (i, pos) in sig.positions.iter().enumerate() {
        let t = format_ident!("__tan_in{}", i);
        match pos {
            Some(k) => {
                let ty = &sig.diff[*k].ty;
                tan_params.push(quote!(#t: ::core::option::Option<&#ty>));
            }
            None => tan_params.push(quote!(#t: ::core::option::Option<&()>)),
        }
    }
    let mut tan_binds = TokenStream::new();
    for (i, pos) in sig.positions.iter().enumerate() {
        if let Some(k) = pos {
            let t = format_ident!("__tan_in{}", i);
            let d = arg_deriv_ident(*k);
            tan_binds.extend(quote!(let #d = #t;));
        }
    }
    let jvp = em.jvp_body();

    // vjp(args..., g) -> (Option<T0>, Option<T1>, ...)
    let mut outs = Vec::new();
    let mut out_tys = Vec::new();
    for pos in &sig.positions {
        match pos {
            Some(k) => {
                let g = arg_deriv_ident(*k);
                let ty = &sig.diff[*k].ty;
                outs.push(quote!(::core::option::Option::Some(#g)));
                out_tys.push(quote!(::core::option::Option<#ty>));
            }
            None => {
                outs.push(quote!(::core::option::Option::None));
                out_tys.push(quote!(::core::option::Option<()>));
            }
        }
    }
    let grad = em.grad_body(
        quote!(::core::clone::Clone::clone(__cotangent)),
        quote!((#(#outs,)*)),
    );

    Ok(quote! {
        #(#attrs)*
        #allow
        #vis fn #name #generics (#(#inputs),*) -> #ret #where_c #value

        #[doc(hidden)]
        #allow
        #vis mod #name {
            #[allow(unused_imports)]
            use super::*;
            /// Value and forward-mode derivative along the given argument tangents.
            #allow
            #inner_vis fn jvp #generics (#(#inputs,)* #(#tan_params),*) -> (#ret, #ret) #where_c {
                #tan_binds
                #jvp
            }
            /// Cotangents of every argument (`None` for data arguments) given the cotangent
            /// of the result.
            #allow
            #inner_vis fn vjp #generics (#(#inputs,)* __cotangent: &#ret) -> (#(#out_tys,)*) #where_c
            #grad
        }
    })
}

fn check_fn_shape(f: &ItemFn) -> Result<()> {
    if let Some(a) = &f.sig.asyncness {
        return Err(syn::Error::new_spanned(
            a,
            "async functions cannot be differentiated",
        ));
    }
    if let Some(v) = &f.sig.variadic {
        return Err(syn::Error::new_spanned(
            v,
            "variadic functions are not supported",
        ));
    }
    Ok(())
}

/// `#[task]` on a free function or on an `impl Task` block.
pub fn expand_task(attr: TokenStream, item: TokenStream) -> Result<TokenStream> {
    no_args(&attr, "task")?;
    let item: Item = syn::parse2(item)?;
    let out = match item {
        Item::Fn(f) => expand_task_fn(f),
        Item::Impl(i) => expand_impl(i, Kind::Task),
        other => Err(syn::Error::new(
            other.span(),
            "#[task] applies to a loss function or to an `impl Task for ...` block",
        )),
    }?;
    debug_dump(&out);
    Ok(out)
}

/// With `LOPT_DUMP_EXPANSION` set, prints what the macros generate (for debugging).
fn debug_dump(t: &TokenStream) {
    if std::env::var_os("LOPT_DUMP_EXPANSION").is_some() {
        eprintln!("{t}");
    }
}

/// The loss's differentiated argument is its first typed argument.
fn loss_sig(sig: &syn::Signature) -> Result<Sig> {
    let s = parse_sig(sig, |i, _| i == 0)?;
    if s.diff.is_empty() {
        return Err(syn::Error::new_spanned(
            sig,
            "a loss takes the parameters as its first argument",
        ));
    }
    Ok(s)
}

fn expand_task_fn(f: ItemFn) -> Result<TokenStream> {
    check_fn_shape(&f)?;
    let sig = loss_sig(&f.sig)?;
    let scalar = return_type(&f.sig)?;
    let func = lower_body(&sig, &f.block, &scalar)?;
    let em = Emitter::new(&func, &sig.diff, &scalar);
    let p = &sig.diff[0];
    let pty = &p.ty;
    let name = &f.sig.ident;
    let vis = &f.vis;
    let inner_vis = mod_fn_vis(vis);
    let generics = &f.sig.generics;
    let where_c = &f.sig.generics.where_clause;
    let inputs: Vec<_> = f.sig.inputs.iter().collect();
    let rest: Vec<_> = f.sig.inputs.iter().skip(1).collect();
    let attrs = &f.attrs;
    let allow = allows();
    let value = em.value_body();
    let jvp = em.jvp_body();
    let d0 = arg_deriv_ident(0);
    let grad = em.grad_body(
        quote!(<#scalar as ::lopt::Real>::c(1.0)),
        quote!((__value, #d0)),
    );
    let tangent_arg = quote!(__tangent: &#pty);
    let first = &f.sig.inputs[0];
    Ok(quote! {
        #(#attrs)*
        #allow
        #vis fn #name #generics (#(#inputs),*) -> #scalar #where_c #value

        /// Derivatives of the loss of the same name, generated by `#[task]`.
        #allow
        #vis mod #name {
            #[allow(unused_imports)]
            use super::*;
            /// The loss and its gradient with respect to the parameters (reverse mode).
            #allow
            #inner_vis fn value_and_grad #generics (#(#inputs),*) -> (#scalar, #pty) #where_c
            #grad
            /// The loss and its derivative along `tangent` (forward mode).
            #allow
            #inner_vis fn value_and_jvp #generics (#first, #tangent_arg, #(#rest),*) -> (#scalar, #scalar) #where_c {
                let #d0 = ::core::option::Option::Some(__tangent);
                #jvp
            }
        }
    })
}

/// Which trait an annotated impl block implements.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Task,
    Family,
}

/// `#[task_family]` on an `impl TaskFamily for ...` block.
pub fn expand_task_family(attr: TokenStream, item: TokenStream) -> Result<TokenStream> {
    no_args(&attr, "task_family")?;
    let item: Item = syn::parse2(item)?;
    match item {
        Item::Impl(i) => expand_impl(i, Kind::Family),
        other => Err(syn::Error::new(
            other.span(),
            "#[task_family] applies to an `impl TaskFamily for ...` block",
        )),
    }
}

fn has_item(imp: &syn::ItemImpl, name: &str) -> bool {
    imp.items.iter().any(|it| match it {
        ImplItem::Fn(f) => f.sig.ident == name,
        ImplItem::Type(t) => t.ident == name,
        _ => false,
    })
}

/// A family's `init` written generic over the scalar becomes `init_lanes` (every lane of
/// a packet initialised at once), and the plain `f32` `init` the trait asks for calls it.
fn generic_init(imp: &mut syn::ItemImpl, extra: &mut Vec<TokenStream>) -> Result<()> {
    let user_init_lanes = has_item(imp, "init_lanes");
    let Some(ImplItem::Fn(init)) = imp.items.iter_mut().find(|it| {
        matches!(it, ImplItem::Fn(f)
            if f.sig.ident == "init" && f.sig.generics.type_params().next().is_some())
    }) else {
        return Ok(());
    };
    let span = init.sig.ident.span();
    if user_init_lanes {
        return Err(syn::Error::new(
            span,
            "a generic `init` becomes `init_lanes`; define one of the two, not both",
        ));
    }
    init.sig.ident = syn::Ident::new("init_lanes", span);
    extra.push(quote::quote_spanned! {span=>
        fn init(&self, cfg: &Self::Cfg<f32>, key: ::lopt::Key) -> Self::Params<f32> {
            <Self as ::lopt::TaskFamily>::init_lanes::<f32>(self, cfg, key)
        }
    });
    Ok(())
}

fn expand_impl(mut imp: syn::ItemImpl, kind: Kind) -> Result<TokenStream> {
    let pos = imp
        .items
        .iter()
        .position(|it| matches!(it, ImplItem::Fn(f) if f.sig.ident == "loss"))
        .ok_or_else(|| {
            syn::Error::new_spanned(&imp.self_ty, "this impl block needs a `fn loss` inside it")
        })?;
    let loss = match &imp.items[pos] {
        ImplItem::Fn(f) => f.clone(),
        _ => unreachable!(),
    };
    for it in &imp.items {
        if let ImplItem::Fn(f) = it {
            if f.sig.ident == "value_and_grad" || f.sig.ident == "value_and_jvp" {
                return Err(syn::Error::new_spanned(
                    &f.sig.ident,
                    "#[task] generates this method from `loss`; remove it",
                ));
            }
        }
    }
    let sig = loss_sig(&loss.sig)?;
    let scalar = return_type(&loss.sig)?;
    let func = lower_body(&sig, &loss.block, &scalar)?;
    let em = Emitter::new(&func, &sig.diff, &scalar);
    let pty = &sig.diff[0].ty;
    let generics = &loss.sig.generics;
    let where_c = &loss.sig.generics.where_clause;
    let inputs: Vec<_> = loss.sig.inputs.iter().collect();
    let mut it = loss.sig.inputs.iter();
    let recv = it.next();
    let first = it.next();
    let rest: Vec<_> = it.collect();
    let allow = allows();
    let value = em.value_body();
    let jvp = em.jvp_body();
    let d0 = arg_deriv_ident(0);
    let grad = em.grad_body(
        quote!(<#scalar as ::lopt::Real>::c(1.0)),
        quote!((__value, #d0)),
    );

    let mut new_loss = loss.clone();
    new_loss.block = syn::parse2(value)?;
    new_loss.attrs.push(syn::parse_quote!(#allow));
    imp.items[pos] = ImplItem::Fn(new_loss);
    let g: ImplItem = syn::parse2(quote! {
        #allow
        fn value_and_grad #generics (#(#inputs),*) -> (#scalar, #pty) #where_c #grad
    })?;
    let j: ImplItem = syn::parse2(quote! {
        #allow
        fn value_and_jvp #generics (#recv, #first, __tangent: &#pty, #(#rest),*) -> (#scalar, #scalar) #where_c {
            let #d0 = ::core::option::Option::Some(__tangent);
            #jvp
        }
    })?;
    imp.items.push(g);
    imp.items.push(j);
    let mut extra: Vec<TokenStream> = Vec::new();
    if !has_item(&imp, "cast_params") {
        extra.push(quote! {
            fn cast_params<__T: ::lopt::Real, __S: ::lopt::Real>(&self, params: &Self::Params<__T>) -> Self::Params<__S> {
                ::lopt::params::Rebind::cast::<__S>(params)
            }
        });
    }
    if kind == Kind::Family {
        if !has_item(&imp, "cast_cfg") {
            extra.push(quote! {
                fn cast_cfg<__T: ::lopt::Real, __S: ::lopt::Real>(&self, cfg: &Self::Cfg<__T>) -> Self::Cfg<__S> {
                    ::lopt::params::Rebind::cast::<__S>(cfg)
                }
            });
        }
        if !has_item(&imp, "Task") {
            extra.push(quote!(
                type Task<'__a>
                    = ::lopt::FamilyTask<'__a, Self>
                where
                    Self: '__a;
            ));
        }
        generic_init(&mut imp, &mut extra)?;
        if !has_item(&imp, "task_fn") {
            extra.push(quote! {
                fn task_fn<'__a>(&'__a self, cfg: &Self::Cfg<f32>) -> Self::Task<'__a> {
                    ::lopt::FamilyTask::new(self, ::core::clone::Clone::clone(cfg))
                }
            });
        }
    }
    for e in extra {
        imp.items.push(syn::parse2(e)?);
    }
    Ok(imp.into_token_stream())
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;
    use quote::quote;

    /// The expansion of a `#[task]` loss with `body`.
    fn expand(body: TokenStream) -> String {
        let item = quote! {
            fn loss<S: Real>(p: &P<S>, labels: &Vec<i32>, d: &DMatrix<f32>) -> S { #body }
        };
        super::builtins::with_declared(super::builtins::tests::fixture(), || {
            super::expand_task(TokenStream::new(), item)
        })
        .expect("expands")
        .to_string()
    }

    /// The fused rules are emitted for the compositions they stand for (the values would
    /// agree without them, so only the expansion shows it), and not when the parts are
    /// apart or are not the builtins.
    #[test]
    fn compositions_are_fused_into_one_rule() {
        let fused = [
            (
                quote!(mean(softmax_cross_entropy(p.z, labels))),
                "MeanSoftmaxCrossEntropy",
            ),
            (
                quote!(p.z.softmax_cross_entropy(labels).mean()),
                "MeanSoftmaxCrossEntropy",
            ),
            (
                quote!(lopt::ops::mean(lopt::ops::softmax_cross_entropy(
                    p.z, labels
                ))),
                "MeanSoftmaxCrossEntropy",
            ),
            (quote!(sum(square(p.z))), "NormSquared"),
            (quote!(sum(relu(p.z * 2.0 + p.b))), "AddRelu"),
            (
                quote!(sum(relu(im2col(p.z, g) * p.w + p.b))),
                "im2col_mul_add_relu",
            ),
            (
                quote!(sum(relu((im2col(&p.z, &g) * &p.w) + 0.5))),
                "im2col_mul_add_relu",
            ),
            (quote!(dot(embed(&p.z, ids), r)), "embed_dot"),
            (quote!(r.dot(&p.z.embed(&ids))), "embed_dot"),
        ];
        for (body, op) in fused {
            let e = expand(body.clone());
            assert!(e.contains(op), "{body} should use {op}");
        }
        let apart = [
            quote!(let l = softmax_cross_entropy(p.z, labels); mean(l)),
            quote!(mean(other::softmax_cross_entropy(p.z, labels))),
        ];
        for body in apart {
            let e = expand(body.clone());
            assert!(
                !e.contains("MeanSoftmaxCrossEntropy"),
                "{body} is not fused"
            );
        }
        let e = expand(quote!(let e = embed(&p.z, ids); dot(e, r)));
        assert!(!e.contains("embed_dot"), "a bound lookup is not fused");
    }

    /// `gelu_tanh(linear(x, w, b))` (a call or a method, in parentheses or not) uses the op
    /// that keeps its derivative; `gelu_tanh` of anything else (a scalar, a bound value)
    /// keeps `GeluTanh`. Mutation caught: the arm removed (tried).
    #[test]
    fn gelu_tanh_of_linear_keeps_its_derivative() {
        let with_gelu = |list: Vec<super::builtins::Declared>| {
            let mut l = list;
            l.push(("gelu_tanh", "GeluTanh", super::builtins::Kind::Unary));
            l
        };
        let expand_g = |body: TokenStream| {
            let item = quote! {
                fn loss<S: Real>(p: &P<S>, labels: &Vec<i32>, d: &DMatrix<f32>) -> S { #body }
            };
            super::builtins::with_declared(with_gelu(super::builtins::tests::fixture()), || {
                super::expand_task(TokenStream::new(), item)
            })
            .expect("expands")
            .to_string()
        };
        for body in [
            quote!(sum(gelu_tanh(linear(&p.z, &p.w, &p.b)))),
            quote!(sum((linear(&p.z, &p.w, &p.b)).gelu_tanh())),
            quote!(sum(gelu_tanh(ops::linear(d, &p.w, &p.b)))),
        ] {
            let e = expand_g(body.clone());
            assert!(e.contains("GeluTanhKeep"), "{body} keeps: {e}");
        }
        for body in [
            quote!(sum(gelu_tanh(p.z))),
            quote!(let h = linear(&p.z, &p.w, &p.b); sum(gelu_tanh(h))),
            quote!(gelu_tanh(p.s)),
        ] {
            let e = expand_g(body.clone());
            assert!(!e.contains("GeluTanhKeep"), "{body} does not keep: {e}");
            assert!(e.contains("GeluTanh"), "{body} is gelu_tanh: {e}");
        }
    }

    /// `lstm_projected(x, wx, b, wh, h0, c0)` calls the rule with `needs` saying which of
    /// its six operands are differentiated: here `x` and the initial state are data.
    /// Mutation caught: every operand told differentiated (`[true; 6]`; tried).
    #[test]
    fn lstm_projected_is_told_which_operands_are_differentiated() {
        let e = expand(quote!(sum(lstm_projected(d, &p.w, &p.b, &p.z, d, d))));
        assert!(
            e.contains("ad :: lstm :: lstm_projected"),
            "the rule is called: {e}"
        );
        assert!(
            e.contains("[false , true , true , true , false , false]"),
            "needs: {e}"
        );
    }

    /// `lstm_sequence(embed(t, ids), wh, h0, c0)` is one rule, `&` or not, call or method
    /// form of the lookup; a bound lookup is not fused. Mutation caught: the fusion arm
    /// removed from `lower_call` (tried).
    #[test]
    fn lstm_of_a_lookup_is_one_rule() {
        for body in [
            quote!(sum(lstm_sequence(&embed(&p.w, ids), &p.z, &p.h, &p.c))),
            quote!(sum(lstm_sequence(p.w.embed(ids), &p.z, &p.h, &p.c))),
        ] {
            let e = expand(body.clone());
            assert!(e.contains("ad :: lstm :: lstm_embedded"), "{body}: {e}");
        }
        let e = expand(quote!(let x = embed(&p.w, ids); sum(lstm_sequence(&x, &p.z, &p.h, &p.c))));
        assert!(!e.contains("lstm_embedded"), "a bound lookup is not fused");
    }
}
