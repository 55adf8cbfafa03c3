//! `#[derive(Params)]`: parse a struct into a small model, validate it with spanned
//! errors, expand to an `impl ::lopt::Params` that enumerates the leaf fields (and an
//! `impl ::lopt::params::Rebind` when the struct is generic over one `Real` scalar).
//!
//! Every tree operation lives in the runtime's provided methods; the expansion only
//! answers "how many leaves, which slice is leaf `i`, what is it called, what shape".

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{
    parse_quote_spanned, Attribute, Data, DeriveInput, GenericParam, Generics, Ident, Member, Type,
    TypeParamBound, WherePredicate,
};

/// Entry point: the derive's output, or the compile errors to emit instead.
pub fn derive(input: &DeriveInput) -> syn::Result<TokenStream> {
    let cont = Container::from_ast(input)?;
    Ok(expand(&cont))
}

/// The struct being derived, as far as the expansion cares.
struct Container<'a> {
    ident: &'a Ident,
    generics: &'a Generics,
    fields: Vec<Field<'a>>,
    /// The scalar type parameter when `Rebind` can be derived.
    rebind_param: Option<&'a Ident>,
}

/// One field of the struct.
struct Field<'a> {
    /// `self.<member>`: a name, or an index for tuple structs.
    member: Member,
    /// The field's part of the leaf name.
    name: String,
    ty: &'a Type,
    /// `#[params(skip)]`: carried along (cloned), not a leaf.
    skip: bool,
}

const ENUM: &str = "#[derive(Params)] supports structs only: a parameter tree needs one \
                    fixed set of leaves, which an enum does not have";
const UNION: &str = "#[derive(Params)] supports structs only, not unions";

/// Collects several errors so the user sees them all at once (serde's `Ctxt`).
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

impl<'a> Container<'a> {
    fn from_ast(input: &'a DeriveInput) -> syn::Result<Self> {
        let data = match &input.data {
            Data::Struct(s) => s,
            Data::Enum(e) => return Err(syn::Error::new(e.enum_token.span, ENUM)),
            Data::Union(u) => return Err(syn::Error::new(u.union_token.span, UNION)),
        };

        let mut errors = Errors::default();
        let no_rebind = match container_attrs(&input.attrs) {
            Ok(no_rebind) => no_rebind,
            Err(e) => {
                errors.push(e);
                false
            }
        };

        let mut fields = Vec::new();
        for (index, field) in data.fields.iter().enumerate() {
            let skip = match field_attrs(&field.attrs) {
                Ok(skip) => skip,
                Err(e) => {
                    errors.push(e);
                    false
                }
            };
            let (member, name) = match &field.ident {
                Some(ident) => (Member::Named(ident.clone()), unraw(ident)),
                None => (Member::Unnamed(index.into()), index.to_string()),
            };
            fields.push(Field {
                member,
                name,
                ty: &field.ty,
                skip,
            });
        }

        if fields.iter().all(|f| f.skip) {
            let span = input.ident.span();
            let what = if fields.is_empty() {
                "this struct has no fields"
            } else {
                "every field is #[params(skip)]"
            };
            errors.push(syn::Error::new(
                span,
                format!(
                    "#[derive(Params)] needs at least one leaf field (a scalar, Vec, array, \
                     nalgebra matrix or nested Params struct), but {what}"
                ),
            ));
        }
        errors.finish()?;

        let rebind_param = if no_rebind {
            None
        } else {
            rebind_param(&input.generics, &fields)
        };
        Ok(Container {
            ident: &input.ident,
            generics: &input.generics,
            fields,
            rebind_param,
        })
    }

    fn leaves(&self) -> impl Iterator<Item = &Field<'a>> + Clone {
        self.fields.iter().filter(|f| !f.skip)
    }
}

/// `r#type` names its leaf `type`.
fn unraw(ident: &Ident) -> String {
    let s = ident.to_string();
    s.strip_prefix("r#").map(str::to_owned).unwrap_or(s)
}

/// Parses `#[params(skip)]` on a field.
fn field_attrs(attrs: &[Attribute]) -> syn::Result<bool> {
    let mut skip = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("params")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                if skip {
                    return Err(meta.error("duplicate #[params(skip)]"));
                }
                skip = true;
                Ok(())
            } else {
                Err(meta.error(
                    "unknown #[params] field attribute; the supported one is \
                     #[params(skip)]",
                ))
            }
        })?;
    }
    Ok(skip)
}

/// Parses `#[params(no_rebind)]` on the struct.
fn container_attrs(attrs: &[Attribute]) -> syn::Result<bool> {
    let mut no_rebind = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("params")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("no_rebind") {
                if no_rebind {
                    return Err(meta.error("duplicate #[params(no_rebind)]"));
                }
                no_rebind = true;
                Ok(())
            } else {
                Err(meta.error(
                    "unknown #[params] struct attribute; the supported one is \
                     #[params(no_rebind)]",
                ))
            }
        })?;
    }
    Ok(no_rebind)
}

/// The one type parameter `S` when the struct can rebind its scalar: exactly one type
/// parameter, every bound on it (inline or in the where clause) is `Real` and there is
/// at least one, no other where predicate, no lifetime parameter, every leaf field's type
/// mentions `S` and no skipped field's does. Anything else gets no `Rebind`.
fn rebind_param<'a>(generics: &'a Generics, fields: &[Field]) -> Option<&'a Ident> {
    let mut type_params = generics.type_params();
    let param = type_params.next()?;
    if type_params.next().is_some() || generics.lifetimes().next().is_some() {
        return None;
    }
    let mut bounds: Vec<&TypeParamBound> = param.bounds.iter().collect();
    if let Some(wc) = &generics.where_clause {
        for pred in &wc.predicates {
            match pred {
                WherePredicate::Type(t)
                    if t.lifetimes.is_none() && is_ident_type(&t.bounded_ty, &param.ident) =>
                {
                    bounds.extend(t.bounds.iter())
                }
                _ => return None,
            }
        }
    }
    let is_real = |b: &&TypeParamBound| match b {
        TypeParamBound::Trait(t) => {
            t.lifetimes.is_none()
                && matches!(t.modifier, syn::TraitBoundModifier::None)
                && t.path.segments.last().is_some_and(|s| {
                    s.ident == "Real" && matches!(s.arguments, syn::PathArguments::None)
                })
        }
        _ => false,
    };
    if bounds.is_empty() || !bounds.iter().all(is_real) {
        return None;
    }
    // A skipped field of a type with `S` could not be converted; a leaf field without
    // `S` has a fixed scalar, so the struct mixes scalars and cannot rebind either.
    if fields
        .iter()
        .any(|f| f.skip == mentions_ident(f.ty, &param.ident))
    {
        return None;
    }
    Some(&param.ident)
}

/// The scalar of a leaf type that shows it syntactically: `f32`, `f64`, `[S; N]`, and
/// `Vec`/nalgebra matrix and vector types whose first argument is the scalar.
fn evident_scalar(ty: &Type) -> Option<&Type> {
    const CONTAINERS: &[&str] = &[
        "Vec",
        "DMatrix",
        "DVector",
        "RowDVector",
        "SMatrix",
        "SVector",
        "RowSVector",
        "OMatrix",
        "OVector",
        "Matrix",
    ];
    match ty {
        Type::Path(p) if p.qself.is_none() => {
            if p.path.is_ident("f32") || p.path.is_ident("f64") {
                return Some(ty);
            }
            let last = p.path.segments.last()?;
            if !CONTAINERS.iter().any(|c| last.ident == c) {
                return None;
            }
            match &last.arguments {
                syn::PathArguments::AngleBracketed(a) => match a.args.first()? {
                    syn::GenericArgument::Type(t) => Some(t),
                    _ => None,
                },
                _ => None,
            }
        }
        Type::Array(a) => Some(&a.elem),
        Type::Paren(p) => evident_scalar(&p.elem),
        Type::Group(g) => evident_scalar(&g.elem),
        _ => None,
    }
}

fn is_ident_type(ty: &Type, ident: &Ident) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.is_ident(ident))
}

/// Whether `ident` occurs anywhere in `ty` (conservative: any token equal to it).
fn mentions_ident(ty: &Type, ident: &Ident) -> bool {
    fn walk(ts: TokenStream, ident: &Ident) -> bool {
        ts.into_iter().any(|tt| match tt {
            proc_macro2::TokenTree::Ident(i) => i == *ident,
            proc_macro2::TokenTree::Group(g) => walk(g.stream(), ident),
            _ => false,
        })
    }
    walk(quote!(#ty), ident)
}

fn expand(cont: &Container) -> TokenStream {
    let params_impl = expand_params(cont);
    let rebind_impl = cont.rebind_param.map(|p| expand_rebind(cont, p));
    quote! {
        #params_impl
        #rebind_impl
    }
}

/// The where clause shared by both impls, and the `Scalar` type.
///
/// The scalar is read off the first leaf field whose type shows it (`f32`, `Vec<S>`,
/// `DMatrix<S>`, ...), else it is that of the first leaf field (naming a plain scalar
/// rather than a nested struct keeps a private nested struct out of the public `Scalar`).
///
/// Every leaf field gets `Ty: Params<Scalar = scalar>`, spanned at its type, so mixing
/// scalars is rustc's type-mismatch error at the offending field, and a generic struct is
/// `Params` exactly for the instantiations whose scalars agree. One exception: a field of
/// concrete type when the scalar is a projection `<Nested as Params>::Scalar`; such a
/// global predicate in the impl's environment would shadow the real impls and make rustc
/// cycle while normalising it, so those fields are checked by the method bodies instead.
/// Skipped fields must be carriable by a `Params` struct, and comparable (instances
/// share a lane group only when their skipped fields are equal).
fn where_clause(cont: &Container) -> (TokenStream, TokenStream) {
    let first = cont
        .leaves()
        .next()
        .expect("validated: at least one leaf")
        .ty;
    let (scalar, source) = match cont.leaves().find_map(|f| evident_scalar(f.ty)) {
        Some(s) => (s.to_token_stream(), None),
        None => (
            quote_spanned!(first.span()=> <#first as ::lopt::Params>::Scalar),
            Some(first),
        ),
    };

    let mut preds: Vec<WherePredicate> = cont
        .generics
        .where_clause
        .iter()
        .flat_map(|w| w.predicates.iter().cloned())
        .collect();
    for f in cont.leaves() {
        let ty = f.ty;
        let generic = is_generic(cont.generics, ty);
        if source == Some(ty) {
            if generic {
                preds.push(parse_quote_spanned!(ty.span()=> #ty: ::lopt::Params));
            }
        } else if generic || source.is_none() {
            // All of the predicate at this field, so a mismatch underlines it alone.
            let scalar = respan(scalar.clone(), ty.span());
            preds.push(parse_quote_spanned!(ty.span()=> #ty: ::lopt::Params<Scalar = #scalar>));
        }
    }
    for f in cont.fields.iter().filter(|f| f.skip) {
        let ty = f.ty;
        preds.push(parse_quote_spanned!(ty.span()=>
            #ty: ::core::clone::Clone
                + ::core::fmt::Debug
                + ::core::cmp::PartialEq
                + ::core::marker::Send
                + ::core::marker::Sync
                + 'static
        ));
    }
    (quote!(where #(#preds,)*), scalar)
}

/// `ts` with every token at `span`.
fn respan(ts: TokenStream, span: Span) -> TokenStream {
    ts.into_iter()
        .map(|mut tt| {
            if let proc_macro2::TokenTree::Group(g) = &tt {
                let mut group = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                tt = group.into();
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
}

/// Whether `ty` involves one of the struct's type or const parameters.
fn is_generic(generics: &Generics, ty: &Type) -> bool {
    generics.params.iter().any(|p| match p {
        GenericParam::Type(t) => mentions_ident(ty, &t.ident),
        GenericParam::Const(c) => mentions_ident(ty, &c.ident),
        GenericParam::Lifetime(_) => false,
    })
}

/// `let mut j = i;` then, field by field, "if `j` is within this field, `on_hit`; else
/// skip its leaves", ending in an out-of-range panic (an index past `num_leaves` is a
/// caller bug, like indexing a slice out of bounds).
fn dispatch(
    cont: &Container,
    self_ref: TokenStream,
    on_hit: impl Fn(&Field, TokenStream) -> TokenStream,
) -> TokenStream {
    let leaves: Vec<&Field> = cont.leaves().collect();
    let last = leaves.len() - 1;
    let steps = leaves.iter().enumerate().map(|(k, f)| {
        let m = &f.member;
        let hit = on_hit(f, quote!(#self_ref self.#m));
        // Spanned at the field type: a scalar mismatch caught here points at the field.
        let hit = respan(quote!(return #hit;), f.ty.span());
        let advance = (k != last).then(|| quote!(j -= n;));
        quote! {
            let n = ::lopt::Params::num_leaves(&self.#m);
            if j < n {
                #hit
            }
            #advance
        }
    });
    let ty = cont.ident.to_string();
    quote! {
        let mut j = i;
        #(#steps)*
        ::core::panic!(
            "leaf index {} out of range for `{}` with {} leaves",
            i,
            #ty,
            ::lopt::Params::num_leaves(self),
        )
    }
}

fn expand_params(cont: &Container) -> TokenStream {
    let ident = cont.ident;
    let (impl_g, ty_g, _) = cont.generics.split_for_impl();
    let (where_clause, scalar) = where_clause(cont);

    let members = cont.leaves().map(|f| &f.member);
    let num_leaves = quote!(0usize #(+ ::lopt::Params::num_leaves(&self.#members))*);
    let leaf = dispatch(cont, quote!(&), |_, x| quote!(::lopt::Params::leaf(#x, j)));
    let leaf_mut = dispatch(
        cont,
        quote!(&mut),
        |_, x| quote!(::lopt::Params::leaf_mut(#x, j)),
    );
    let leaf_shape = dispatch(
        cont,
        quote!(&),
        |_, x| quote!(::lopt::Params::leaf_shape(#x, j)),
    );
    let write_leaf_name = dispatch(cont, quote!(&), |f, x| {
        let name = &f.name;
        quote!(::lopt::__private::write_field_leaf_name(out, #name, #x, j))
    });

    // Field by field: leaves hollow, skipped fields carried along as `zeros_like` does.
    let hollow = cont.fields.iter().map(|f| {
        let m = &f.member;
        if f.skip {
            quote!(#m: ::core::clone::Clone::clone(&self.#m))
        } else {
            quote_spanned!(f.ty.span()=> #m: ::lopt::Params::hollow_like(&self.#m))
        }
    });
    let fill = cont.leaves().map(|f| {
        let m = &f.member;
        quote_spanned!(f.ty.span()=> ::lopt::Params::fill_hollow(&mut self.#m, &like.#m);)
    });

    // Leaves recursively, skipped fields by `==` (what lanes of one group must share).
    let same_structure = cont.fields.iter().map(|f| {
        let m = &f.member;
        if f.skip {
            quote_spanned!(f.ty.span()=> && self.#m == other.#m)
        } else {
            quote_spanned!(f.ty.span()=> && ::lopt::Params::same_structure(&self.#m, &other.#m))
        }
    });

    // Leaf by leaf without allocating (the default builds every leaf's shape), so an
    // optimizer can check its gradient on every update.
    let same_shape = cont.leaves().map(|f| {
        let m = &f.member;
        quote_spanned!(f.ty.span()=> && ::lopt::Params::same_shape(&self.#m, &other.#m))
    });

    quote! {
        #[automatically_derived]
        impl #impl_g ::lopt::Params for #ident #ty_g #where_clause {
            type Scalar = #scalar;

            fn same_structure(&self, other: &Self) -> bool {
                true #(#same_structure)*
            }

            fn same_shape(&self, other: &Self) -> bool {
                true #(#same_shape)*
            }

            fn hollow_like(&self) -> Self {
                Self { #(#hollow,)* }
            }

            fn fill_hollow(&mut self, like: &Self) {
                #(#fill)*
            }

            #[inline]
            fn num_leaves(&self) -> usize {
                #num_leaves
            }

            fn leaf(&self, i: usize) -> &[Self::Scalar] {
                #leaf
            }

            fn leaf_mut(&mut self, i: usize) -> &mut [Self::Scalar] {
                #leaf_mut
            }

            fn write_leaf_name(&self, i: usize, out: &mut ::std::string::String) {
                #write_leaf_name
            }

            fn leaf_shape(&self, i: usize) -> ::std::vec::Vec<usize> {
                #leaf_shape
            }
        }
    }
}

fn expand_rebind(cont: &Container, param: &Ident) -> TokenStream {
    let ident = cont.ident;
    let (impl_g, ty_g, _) = cont.generics.split_for_impl();
    let (where_clause, _) = where_clause(cont);
    let t = format_ident!("__LoptT", span = Span::call_site());

    // `Name<S, N>` with `S` replaced by the new scalar.
    let args = cont.generics.params.iter().map(|p| match p {
        GenericParam::Type(tp) if tp.ident == *param => quote!(#t),
        GenericParam::Type(tp) => tp.ident.to_token_stream(),
        GenericParam::Const(c) => c.ident.to_token_stream(),
        GenericParam::Lifetime(l) => l.lifetime.to_token_stream(),
    });
    let inits = cont.fields.iter().map(|f| {
        let m = &f.member;
        if f.skip {
            quote!(#m: ::core::clone::Clone::clone(&self.#m))
        } else {
            quote_spanned!(f.ty.span()=> #m: ::lopt::params::Rebind::cast::<#t>(&self.#m))
        }
    });

    quote! {
        #[automatically_derived]
        impl #impl_g ::lopt::params::Rebind for #ident #ty_g #where_clause {
            type With<#t: ::lopt::Real> = #ident<#(#args),*>;

            fn cast<#t: ::lopt::Real>(&self) -> Self::With<#t> {
                #ident { #(#inits,)* }
            }
        }
    }
}
