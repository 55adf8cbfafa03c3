//! Expanding the model (ir) into Rust: the value, the forward mode (JVP) and the reverse
//! mode (value and gradient). The generated code calls the rule traits of
//! `lopt::__private::ad`; it holds no graph and no boxed closures.
//!
//! Reverse mode keeps values defined at the top of the body as ordinary locals. Values
//! defined inside a loop or branch are pushed, at the end of each execution of their
//! block, onto a typed `Vec` per variable (with the loop range and the branch taken), and
//! popped in reverse order by the reverse sweep: a stack, so nested blocks need nothing
//! more.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::ir::*;
use super::lower::{place_of, slot_ident, var_ident};

const AD: &str = "::lopt::__private::ad";

fn ad() -> TokenStream {
    AD.parse().expect("path")
}

fn d_ident(v: VarId) -> syn::Ident {
    format_ident!("__d{}", v)
}
fn dm_ident(s: SlotId) -> syn::Ident {
    format_ident!("__dm{}", s)
}
fn tape_ident(v: VarId) -> syn::Ident {
    format_ident!("__t{}", v)
}
fn range_tape(k: usize) -> syn::Ident {
    format_ident!("__tr{}", k)
}
fn branch_tape(k: usize) -> syn::Ident {
    format_ident!("__tb{}", k)
}
fn mask_tape(k: usize) -> syn::Ident {
    format_ident!("__tmk{}", k)
}
/// The tangent (forward mode) or gradient accumulator (reverse mode) of argument `k`.
pub fn arg_deriv_ident(k: usize) -> syn::Ident {
    format_ident!("__darg{}", k)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Value,
    Jvp,
    Grad,
}

pub struct Emitter<'a> {
    f: &'a Func,
    /// Per slot: declared without a value (the value of an `if`).
    deferred: Vec<bool>,
    /// Per variable: how many times the body reads it (see [`Uses`]).
    uses: Uses,
    args: &'a [DiffArg],
    /// The scalar type of the body (for literals and data).
    scalar: &'a syn::Type,
}

impl<'a> Emitter<'a> {
    /// An emitter for a lowered body whose differentiated arguments are `args`.
    pub fn new(f: &'a Func, args: &'a [DiffArg], scalar: &'a syn::Type) -> Self {
        Emitter {
            deferred: deferred_slots(f),
            uses: Uses::of(f),
            f,
            args,
            scalar,
        }
    }

    fn place(&self, v: VarId) -> TokenStream {
        place_of(&self.f.vars, v)
    }
    fn active(&self, v: VarId) -> bool {
        self.f.vars[v].kind == Kind::Active
    }

    /// The tangent of `v` as an `Option<&V>` expression.
    fn tan_ref(&self, v: VarId) -> TokenStream {
        if !self.active(v) {
            return quote!(::core::option::Option::None);
        }
        let d = d_ident(v);
        match self.f.vars[v].access {
            Access::Owned => quote!(#d.as_ref()),
            Access::Deref => quote!(#d),
        }
    }
    /// The tangent of `v` as an `Option<V>` expression.
    fn tan_owned(&self, v: VarId) -> TokenStream {
        if !self.active(v) {
            return quote!(::core::option::Option::None);
        }
        let d = d_ident(v);
        match self.f.vars[v].access {
            Access::Owned => quote!(::core::clone::Clone::clone(&#d)),
            Access::Deref => quote!(#d.cloned()),
        }
    }

    fn arg_expr(&self, a: &CallArg) -> TokenStream {
        let p = self.place(a.var);
        if a.by_ref {
            quote!(&#p)
        } else if a.is_ref_value {
            // The user passed a reference argument on as it is.
            let v = var_ident(a.var);
            quote!(#v)
        } else {
            quote!(::core::clone::Clone::clone(&#p))
        }
    }

    /// The primal value of a definition.
    fn value_expr(&self, rhs: &Rhs) -> TokenStream {
        let ad = ad();
        let s = self.scalar;
        match rhs {
            Rhs::Binary { op, a, b } => {
                let (pa, pb) = (self.place(*a), self.place(*b));
                quote!(#ad::Binary::<#op, _>::eval(&#pa, &#pb))
            }
            Rhs::Unary { op, x } => {
                let (px, po) = (self.place(*x), self.place(*op));
                quote!(#ad::Unary::eval(&#px, &#po))
            }
            Rhs::Select { mask, a, b } => {
                let (pm, pa, pb) = (self.place(*mask), self.place(*a), self.place(*b));
                quote!(#ad::Where::eval(&#pm, &#pa, &#pb))
            }
            Rhs::ArgRead { arg, path } => {
                let a = &self.args[*arg];
                let id = &a.ident;
                if path.is_empty() {
                    if a.is_ref {
                        quote!(#id)
                    } else {
                        quote!(&#id)
                    }
                } else {
                    quote!(&#id #path)
                }
            }
            Rhs::SlotRead(s) => {
                let m = slot_ident(*s);
                quote!(::core::clone::Clone::clone(&#m))
            }
            Rhs::Call { func, args, .. } => {
                let args = args.iter().map(|a| self.arg_expr(a));
                quote!(#func(#(#args),*))
            }
            Rhs::Data { expr, borrow } => {
                if *borrow {
                    quote!(#ad::Data::<#s>::data(&(#expr)))
                } else {
                    quote!(#ad::Data::<#s>::data(&(#expr)).into_owned())
                }
            }
            Rhs::Lit(t) => quote!(#ad::lit::<#s>((#t) as f64)),
            Rhs::Raw(t) => quote!(#t),
        }
    }

    // ----- forward sweep (all modes) -----

    fn fwd_block(&self, stmts: &[Stmt], mode: Mode, nested: bool) -> TokenStream {
        let mut out = TokenStream::new();
        for (i, s) in stmts.iter().enumerate() {
            if let Some(moved) = self.fwd_move(stmts, i, mode) {
                out.extend(moved);
            } else {
                out.extend(self.fwd_stmt(s, mode));
            }
        }
        if mode == Mode::Grad && nested {
            for v in direct_vars(stmts) {
                let (t, id) = (tape_ident(v), var_ident(v));
                out.extend(quote!(#t.push(#id);));
            }
        }
        out
    }

    /// Statement `i` of the block `stmts` as a move instead of a clone, when the value it
    /// copies is read nowhere after it (a matrix copied into the value of an `if` and
    /// out again cost three passes over memory): `None` for the general form.
    ///
    /// - `slot = v` and `let mut slot = v`: `v` is read once in the whole body, defined
    ///   in this same block (so not once outside a loop that assigns it again), and owned.
    ///   Not in reverse mode, where `v` stays for its rule's reverse step.
    /// - `let v = slot`: the slot is read once in the whole body, declared in this block,
    ///   and nothing after this statement in the block touches it. In every mode (the
    ///   reverse sweep uses the slot's adjoint, never its value).
    ///
    /// The compiler checks every move: a wrong one would not build, never run wrongly.
    fn fwd_move(&self, stmts: &[Stmt], i: usize, mode: Mode) -> Option<TokenStream> {
        let local = |v: VarId| {
            self.uses.var[v] == 1
                && self.f.vars[v].access == Access::Owned
                && direct_vars(stmts).contains(&v)
        };
        match &stmts[i] {
            Stmt::SlotSet { slot, from } if mode != Mode::Grad && local(*from) => {
                let (m, v) = (slot_ident(*slot), var_ident(*from));
                let mut out = quote!(#m = #v;);
                if mode == Mode::Jvp {
                    let dm = dm_ident(*slot);
                    let t = self.tan_moved(*from);
                    out.extend(quote!(#dm = #t;));
                }
                Some(out)
            }
            Stmt::SlotDecl {
                slot,
                init: Some(from),
            } if mode != Mode::Grad && local(*from) => {
                let (m, v) = (slot_ident(*slot), var_ident(*from));
                let mut out = quote!(let mut #m = #v;);
                if mode == Mode::Jvp {
                    let dm = dm_ident(*slot);
                    let t = self.tan_moved(*from);
                    out.extend(quote!(let mut #dm = #t;));
                }
                Some(out)
            }
            Stmt::Def {
                var,
                rhs: Rhs::SlotRead(slot),
            } if self.uses.slot[*slot] == 1
                && stmts[..i]
                    .iter()
                    .any(|s| matches!(s, Stmt::SlotDecl { slot: d, .. } if d == slot))
                && !stmts[i + 1..].iter().any(|s| touches_slot(s, *slot)) =>
            {
                let (v, m) = (var_ident(*var), slot_ident(*slot));
                let mut out = quote!(let #v = #m;);
                if mode == Mode::Jvp && self.active(*var) {
                    let (d, dm) = (d_ident(*var), dm_ident(*slot));
                    out.extend(quote!(let #d = #dm;));
                }
                Some(out)
            }
            _ => None,
        }
    }

    /// The tangent of the owned variable `v` as an `Option<V>`, moved out.
    fn tan_moved(&self, v: VarId) -> TokenStream {
        if !self.active(v) {
            return quote!(::core::option::Option::None);
        }
        let d = d_ident(v);
        quote!(#d)
    }

    fn fwd_stmt(&self, s: &Stmt, mode: Mode) -> TokenStream {
        let ad = ad();
        match s {
            Stmt::Def { var, rhs } => {
                let v = var_ident(*var);
                let d = d_ident(*var);
                if mode == Mode::Jvp && self.active(*var) {
                    match rhs {
                        Rhs::Call { func, args, .. } => {
                            let vals = args.iter().map(|a| self.arg_expr(a));
                            let tans = args.iter().map(|a| self.tan_ref(a.var));
                            return quote! {
                                let (#v, #d) = #func::jvp(#(#vals,)* #(#tans),*);
                                let #d = ::core::option::Option::Some(#d);
                            };
                        }
                        Rhs::ArgRead { arg, path } => {
                            let t = arg_deriv_ident(*arg);
                            let val = self.value_expr(rhs);
                            return quote! {
                                let #v = #val;
                                let #d = match #t {
                                    ::core::option::Option::Some(__t) => ::core::option::Option::Some(&(*__t) #path),
                                    ::core::option::Option::None => ::core::option::Option::None,
                                };
                            };
                        }
                        _ => {}
                    }
                    let val = self.value_expr(rhs);
                    let tan = match rhs {
                        Rhs::Binary { op, a, b } => {
                            let (pa, pb) = (self.place(*a), self.place(*b));
                            let (ta, tb) = (self.tan_ref(*a), self.tan_ref(*b));
                            quote! {
                                match (#ta, #tb) {
                                    (::core::option::Option::None, ::core::option::Option::None) => ::core::option::Option::None,
                                    (__ta, __tb) => ::core::option::Option::Some(
                                        #ad::Binary::<#op, _>::jvp(&#pa, &#pb, &#v, __ta, __tb)),
                                }
                            }
                        }
                        Rhs::Select { mask, a, b } => {
                            let (pm, pa, pb) = (self.place(*mask), self.place(*a), self.place(*b));
                            let (ta, tb) = (self.tan_ref(*a), self.tan_ref(*b));
                            quote! {
                                match (#ta, #tb) {
                                    (::core::option::Option::None, ::core::option::Option::None) => ::core::option::Option::None,
                                    (__ta, __tb) => ::core::option::Option::Some(
                                        #ad::Where::jvp(&#pm, &#pa, &#pb, __ta, __tb)),
                                }
                            }
                        }
                        Rhs::Unary { op, x } => {
                            let (px, po) = (self.place(*x), self.place(*op));
                            let tx = self.tan_ref(*x);
                            quote! {
                                match #tx {
                                    ::core::option::Option::None => ::core::option::Option::None,
                                    ::core::option::Option::Some(__tx) => ::core::option::Option::Some(
                                        #ad::Unary::jvp(&#px, &#po, &#v, __tx)),
                                }
                            }
                        }
                        Rhs::SlotRead(s) => {
                            let dm = dm_ident(*s);
                            quote!(::core::clone::Clone::clone(&#dm))
                        }
                        _ => quote!(::core::option::Option::None),
                    };
                    quote!(let #v = #val; let #d = #tan;)
                } else {
                    let val = self.value_expr(rhs);
                    quote!(let #v = #val;)
                }
            }
            Stmt::Passive(t) => t.clone(),
            Stmt::SlotDecl { slot, init } => {
                let m = slot_ident(*slot);
                let mut out = match init {
                    Some(v) => {
                        let p = self.place(*v);
                        quote!(let mut #m = ::core::clone::Clone::clone(&#p);)
                    }
                    None => quote!(let mut #m;),
                };
                if mode == Mode::Jvp {
                    let dm = dm_ident(*slot);
                    let t = match init {
                        Some(v) => self.tan_owned(*v),
                        None => quote!(::core::option::Option::None),
                    };
                    out.extend(quote!(let mut #dm = #t;));
                }
                out
            }
            Stmt::SlotSet { slot, from } => {
                let m = slot_ident(*slot);
                let p = self.place(*from);
                let mut out = quote!(#m = ::core::clone::Clone::clone(&#p););
                if mode == Mode::Jvp {
                    let dm = dm_ident(*slot);
                    let t = self.tan_owned(*from);
                    out.extend(quote!(#dm = #t;));
                }
                out
            }
            Stmt::For {
                id,
                pat,
                lo,
                hi,
                body,
            } => {
                let b = self.fwd_block(body, mode, true);
                if mode == Mode::Grad {
                    let tr = range_tape(*id);
                    quote! {{
                        let (__lo, __hi) = (#lo, #hi);
                        #tr.push((__lo, __hi));
                        for #pat in __lo..__hi { #b }
                    }}
                } else {
                    quote!(for #pat in (#lo)..(#hi) { #b })
                }
            }
            Stmt::If {
                id,
                cond,
                then,
                els,
            } => {
                let t = self.fwd_block(then, mode, true);
                let e = self.fwd_block(els, mode, true);
                let tb = branch_tape(*id);
                let (push_t, push_e, push_mixed) = if mode == Mode::Grad {
                    (
                        quote!(#tb.push(1u8);),
                        quote!(#tb.push(0u8);),
                        quote!(#tb.push(2u8);),
                    )
                } else {
                    (TokenStream::new(), TokenStream::new(), TokenStream::new())
                };
                match cond {
                    Cond::Bool(c) => quote!(if #c { #t #push_t } else { #e #push_e }),
                    Cond::Mask(m) => {
                        let mk = format_ident!("__mk{}", id);
                        let blend = self.blend_slots(then, els);
                        let jvp = mode == Mode::Jvp;
                        let mut save = TokenStream::new();
                        let mut keep = TokenStream::new();
                        let mut restore = TokenStream::new();
                        let mut mix = TokenStream::new();
                        for &sl in &blend {
                            let m_ = slot_ident(sl);
                            let dm = dm_ident(sl);
                            let (pre, th) =
                                (format_ident!("__pre{}", sl), format_ident!("__th{}", sl));
                            let (pred, thd) =
                                (format_ident!("__pred{}", sl), format_ident!("__thd{}", sl));
                            if !self.deferred[sl] {
                                save.extend(quote!(let #pre = ::core::clone::Clone::clone(&#m_);));
                                restore.extend(quote!(#m_ = #pre;));
                                if jvp {
                                    save.extend(
                                        quote!(let #pred = ::core::clone::Clone::clone(&#dm);),
                                    );
                                    restore.extend(quote!(#dm = #pred;));
                                }
                            }
                            keep.extend(quote!(let #th = ::core::clone::Clone::clone(&#m_);));
                            mix.extend(quote!(#m_ = #ad::select(#mk, &#th, &#m_);));
                            if jvp {
                                keep.extend(quote!(let #thd = #dm.take();));
                                mix.extend(quote!(#dm = #ad::select_opt(#mk, #thd, #dm.take());));
                            }
                        }
                        let tape_mask = if mode == Mode::Grad {
                            let tm = mask_tape(*id);
                            quote!(#tm.push(#mk);)
                        } else {
                            TokenStream::new()
                        };
                        // Lanes that agree run one branch; mixed lanes run both and blend.
                        quote! {{
                            let #mk = #m;
                            if ::lopt::scalar::Mask::all(#mk) { #t #push_t }
                            else if !::lopt::scalar::Mask::any(#mk) { #e #push_e }
                            else {
                                #save
                                #t
                                #keep
                                #restore
                                #e
                                #mix
                                #tape_mask
                                #push_mixed
                            }
                        }}
                    }
                }
            }
        }
    }

    /// Slots assigned inside either branch but declared outside: a mixed lane mask blends
    /// them per lane.
    fn blend_slots(&self, then: &[Stmt], els: &[Stmt]) -> Vec<SlotId> {
        let mut assigned = Vec::new();
        let mut declared = Vec::new();
        for b in [then, els] {
            for_each_stmt(b, &mut |s| match s {
                Stmt::SlotSet { slot, .. } => assigned.push(*slot),
                Stmt::SlotDecl { slot, .. } => declared.push(*slot),
                _ => {}
            });
        }
        let mut out: Vec<SlotId> = assigned
            .into_iter()
            .filter(|s| !declared.contains(s))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    // ----- reverse sweep -----

    /// Pops a nested block's values and declares its adjoints.
    fn rev_prologue(&self, stmts: &[Stmt]) -> TokenStream {
        let mut out = TokenStream::new();
        for v in direct_vars(stmts) {
            let (t, id) = (tape_ident(v), var_ident(v));
            out.extend(quote!(let #id = #t.pop().expect("lopt: reverse tape");));
        }
        out.extend(self.adjoint_decls(stmts));
        out
    }

    fn adjoint_decls(&self, stmts: &[Stmt]) -> TokenStream {
        let ad = ad();
        let mut out = TokenStream::new();
        for v in direct_vars(stmts) {
            if self.active(v) {
                let d = d_ident(v);
                let p = self.place(v);
                out.extend(quote!(let mut #d = #ad::none_like(&#p);));
            }
        }
        for s in stmts {
            if let Stmt::SlotDecl { slot, .. } = s {
                let dm = dm_ident(*slot);
                out.extend(quote!(let mut #dm = ::core::option::Option::None;));
            }
        }
        out
    }

    fn rev_block(&self, stmts: &[Stmt]) -> TokenStream {
        let mut out = TokenStream::new();
        for s in stmts.iter().rev() {
            out.extend(self.rev_stmt(s));
        }
        out
    }

    fn acc(&self, target: VarId, g: TokenStream) -> TokenStream {
        if !self.active(target) {
            return TokenStream::new();
        }
        let ad = ad();
        let d = d_ident(target);
        quote!(#ad::acc(&mut #d, #g);)
    }

    fn rev_stmt(&self, s: &Stmt) -> TokenStream {
        let ad = ad();
        match s {
            Stmt::Def { var, rhs } if self.active(*var) => {
                let d = d_ident(*var);
                let pv = self.place(*var);
                let body = match rhs {
                    Rhs::Binary { op, a, b } => {
                        let (pa, pb) = (self.place(*a), self.place(*b));
                        let (na, nb) = (self.active(*a), self.active(*b));
                        // The rule adds into the adjoint slots (in place where it can);
                        // an operand used twice (`x * x`) takes both cotangents first.
                        let (da, db) = (d_ident(*a), d_ident(*b));
                        match (na, nb) {
                            (true, true) if a != b => quote! {
                                #ad::Binary::<#op, _>::vjp_acc(&#pa, &#pb, &#pv, __g, &mut #da, &mut #db);
                            },
                            (true, false) => quote! {
                                #ad::Binary::<#op, _>::vjp_acc_a(&#pa, &#pb, &#pv, __g, &mut #da);
                            },
                            (false, true) => quote! {
                                #ad::Binary::<#op, _>::vjp_acc_b(&#pa, &#pb, &#pv, __g, &mut #db);
                            },
                            _ => {
                                let mut t = quote! {
                                    let (__ga, __gb) = #ad::Binary::<#op, _>::vjp(&#pa, &#pb, &#pv, __g, #na, #nb);
                                };
                                if na {
                                    t.extend(quote!(#ad::acc_opt(&mut #da, __ga);));
                                }
                                if nb {
                                    t.extend(quote!(#ad::acc_opt(&mut #db, __gb);));
                                }
                                t
                            }
                        }
                    }
                    Rhs::Unary { op, x } => {
                        let (px, po) = (self.place(*x), self.place(*op));
                        if self.active(*x) {
                            let dx = d_ident(*x);
                            quote!(#ad::Unary::vjp_acc(&#px, &#po, &#pv, __g, &mut #dx);)
                        } else {
                            TokenStream::new()
                        }
                    }
                    Rhs::Select { mask, a, b } => {
                        let (pm, pa, pb) = (self.place(*mask), self.place(*a), self.place(*b));
                        let (na, nb) = (self.active(*a), self.active(*b));
                        let mut t = quote! {
                            let (__ga, __gb) = #ad::Where::vjp(&#pm, &#pa, &#pb, __g, #na, #nb);
                        };
                        if na {
                            let da = d_ident(*a);
                            t.extend(quote!(#ad::acc_opt(&mut #da, __ga);));
                        }
                        if nb {
                            let db = d_ident(*b);
                            t.extend(quote!(#ad::acc_opt(&mut #db, __gb);));
                        }
                        t
                    }
                    Rhs::ArgRead { arg, path } => {
                        let dp = path_slot(self.path_index(*arg, path));
                        quote!(#ad::acc(&mut #dp, __g);)
                    }
                    Rhs::SlotRead(s) => {
                        let dm = dm_ident(*s);
                        quote!(#ad::acc(&mut #dm, __g);)
                    }
                    Rhs::Call {
                        func,
                        args,
                        with_out,
                    } => {
                        let vals = args.iter().map(|a| self.arg_expr(a));
                        let out = with_out.then(|| quote!(&#pv,));
                        let mut t = quote!(let __gs = #func::vjp(#(#vals,)* #out &__g););
                        for (i, a) in args.iter().enumerate() {
                            if self.active(a.var) {
                                let da = d_ident(a.var);
                                let i = syn::Index::from(i);
                                t.extend(quote!(#ad::acc_opt(&mut #da, __gs.#i);));
                            }
                        }
                        t
                    }
                    Rhs::Data { .. } | Rhs::Lit(_) | Rhs::Raw(_) => TokenStream::new(),
                };
                quote!(if let ::core::option::Option::Some(__g) = #d.take() { #body })
            }
            Stmt::Def { .. } | Stmt::Passive(_) => TokenStream::new(),
            Stmt::SlotDecl { slot, init } => {
                let dm = dm_ident(*slot);
                match init {
                    Some(v) if self.active(*v) => {
                        let acc = self.acc(*v, quote!(__g));
                        quote!(if let ::core::option::Option::Some(__g) = #dm.take() { #acc })
                    }
                    _ => TokenStream::new(),
                }
            }
            Stmt::SlotSet { slot, from } => {
                let dm = dm_ident(*slot);
                if self.active(*from) {
                    let acc = self.acc(*from, quote!(__g));
                    quote!(if let ::core::option::Option::Some(__g) = #dm.take() { #acc })
                } else {
                    quote!(let _ = #dm.take();)
                }
            }
            Stmt::For { id, pat, body, .. } => {
                let tr = range_tape(*id);
                let pro = self.rev_prologue(body);
                let rb = self.rev_block(body);
                quote! {{
                    let (__lo, __hi) = #tr.pop().expect("lopt: reverse tape");
                    for #pat in (__lo..__hi).rev() { #pro #rb }
                }}
            }
            Stmt::If {
                id,
                cond,
                then,
                els,
            } => {
                let tb = branch_tape(*id);
                let (pt, rt) = (self.rev_prologue(then), self.rev_block(then));
                let (pe, re) = (self.rev_prologue(els), self.rev_block(els));
                let mixed = match cond {
                    Cond::Bool(_) => quote!(unreachable!("lopt: mixed lanes on a bool condition")),
                    Cond::Mask(_) => {
                        let tm = mask_tape(*id);
                        let blend = self.blend_slots(then, els);
                        let mut split = TokenStream::new();
                        let mut to_else = TokenStream::new();
                        let mut from_else = TokenStream::new();
                        let mut to_then = TokenStream::new();
                        let mut join = TokenStream::new();
                        for &sl in &blend {
                            let dm = dm_ident(sl);
                            let gt = format_ident!("__gt{}", sl);
                            let ge = format_ident!("__ge{}", sl);
                            let pe_ = format_ident!("__pe{}", sl);
                            split.extend(
                                quote!(let (#gt, #ge) = #ad::split_adjoint(__mk, #dm.take());),
                            );
                            to_else.extend(quote!(#dm = #ge;));
                            from_else.extend(quote!(let #pe_ = #dm.take();));
                            to_then.extend(quote!(#dm = #gt;));
                            if !self.deferred[sl] {
                                join.extend(quote!(#ad::acc_opt(&mut #dm, #pe_);));
                            }
                        }
                        quote! {{
                            let __mk = #tm.pop().expect("lopt: reverse tape");
                            #split
                            #to_else
                            { #pe #re }
                            #from_else
                            #to_then
                            { #pt #rt }
                            #join
                        }}
                    }
                };
                quote! {
                    match #tb.pop().expect("lopt: reverse tape") {
                        1u8 => { #pt #rt }
                        0u8 => { #pe #re }
                        _ => #mixed
                    }
                }
            }
        }
    }

    /// Distinct (argument, field path) pairs read by the body, in first-read order.
    fn arg_paths(&self) -> Vec<(usize, TokenStream)> {
        let mut out: Vec<(usize, TokenStream)> = Vec::new();
        for_each_stmt(&self.f.body, &mut |s| {
            if let Stmt::Def {
                rhs: Rhs::ArgRead { arg, path },
                ..
            } = s
            {
                let key = path.to_string();
                if !out.iter().any(|(a, p)| a == arg && p.to_string() == key) {
                    out.push((*arg, path.clone()));
                }
            }
        });
        out
    }

    fn path_index(&self, arg: usize, path: &TokenStream) -> usize {
        let key = path.to_string();
        self.arg_paths()
            .iter()
            .position(|(a, p)| *a == arg && p.to_string() == key)
            .expect("path collected")
    }

    /// The value at a field path of argument `k`, as a place.
    fn arg_place(&self, k: usize, path: &TokenStream) -> TokenStream {
        let a = &self.args[k];
        let id = &a.ident;
        if path.is_empty() {
            if a.is_ref {
                quote!((*#id))
            } else {
                quote!(#id)
            }
        } else {
            quote!((#id #path))
        }
    }

    fn tape_decls(&self) -> TokenStream {
        let mut out = TokenStream::new();
        for (v, var) in self.f.vars.iter().enumerate() {
            if var.depth > 0 {
                let t = tape_ident(v);
                out.extend(quote!(let mut #t = ::std::vec::Vec::new();));
            }
        }
        for k in 0..self.f.n_loops {
            let t = range_tape(k);
            out.extend(quote!(let mut #t = ::std::vec::Vec::new();));
        }
        for k in 0..self.f.n_ifs {
            let t = branch_tape(k);
            out.extend(quote!(let mut #t: ::std::vec::Vec<u8> = ::std::vec::Vec::new();));
        }
        for_each_stmt(&self.f.body, &mut |s| {
            if let Stmt::If {
                id,
                cond: Cond::Mask(_),
                ..
            } = s
            {
                let t = mask_tape(*id);
                out.extend(quote!(let mut #t = ::std::vec::Vec::new();));
            }
        });
        out
    }

    // ----- whole bodies -----

    /// The result's value at the end of a body: moved out when the body owns it (nothing
    /// reads it after), cloned when it is a reference.
    fn result_moved(&self) -> TokenStream {
        let r = self.place(self.f.result);
        match self.f.vars[self.f.result].access {
            Access::Owned => r,
            Access::Deref => quote!(::core::clone::Clone::clone(&#r)),
        }
    }

    /// The body computing the value.
    pub fn value_body(&self) -> TokenStream {
        let fwd = self.fwd_block(&self.f.body, Mode::Value, false);
        let r = self.result_moved();
        quote!({ #fwd #r })
    }

    /// The body computing `(value, tangent)`; argument tangents are in scope as
    /// `__darg{k}: Option<&T>`.
    pub fn jvp_body(&self) -> TokenStream {
        let ad = ad();
        let fwd = self.fwd_block(&self.f.body, Mode::Jvp, false);
        let r = self.place(self.f.result);
        let owned = self.f.vars[self.f.result].access == Access::Owned;
        let tan = if self.active(self.f.result) {
            // The result's tangent is read nowhere else: move it when it is owned.
            let t = if owned {
                self.tan_moved(self.f.result)
            } else {
                self.tan_owned(self.f.result)
            };
            quote!(match #t { ::core::option::Option::Some(__t) => __t, ::core::option::Option::None => #ad::zero_like(&#r) })
        } else {
            quote!(#ad::zero_like(&#r))
        };
        let value = self.result_moved();
        quote!({ #fwd let __tan = #tan; (#value, __tan) })
    }

    /// The body computing the value and the gradient accumulators `__darg{k}` (which it
    /// declares); `seed` is the cotangent of the result. Returns tokens ending in `value`.
    pub fn grad_body(&self, seed: TokenStream, ret: TokenStream) -> TokenStream {
        let ad = ad();
        let tapes = self.tape_decls();
        let fwd = self.fwd_block(&self.f.body, Mode::Grad, false);
        let value = self.result_moved();
        // One adjoint slot per distinct argument path read; the gradient is assembled from
        // them at the end, moving each slot into place (no zero-fill-then-add pass).
        let paths = self.arg_paths();
        let mut path_decls = TokenStream::new();
        for (i, (k, path)) in paths.iter().enumerate() {
            let dp = path_slot(i);
            let p = self.arg_place(*k, path);
            path_decls.extend(quote!(let mut #dp = #ad::none_like(&#p);));
        }
        let mut grads = TokenStream::new();
        for k in 0..self.args.len() {
            let g = arg_deriv_ident(k);
            let mine: Vec<usize> = (0..paths.len()).filter(|&i| paths[i].0 == k).collect();
            let strs: Vec<String> = mine.iter().map(|&i| paths[i].1.to_string()).collect();
            let whole = self.arg_place(k, &TokenStream::new());
            let overlap = strs.iter().enumerate().any(|(a, x)| {
                strs.iter()
                    .enumerate()
                    .any(|(b, y)| a != b && is_path_prefix(x, y))
            });
            if mine.len() == 1 && strs[0].is_empty() {
                let dp = path_slot(mine[0]);
                grads.extend(quote! {
                    let #g = match #dp {
                        ::core::option::Option::Some(__v) => __v,
                        ::core::option::Option::None => ::lopt::Params::zeros_like(&#whole),
                    };
                });
                continue;
            }
            if overlap {
                // Adjoints of a field and of a part of it are summed: start from zeros.
                grads.extend(quote!(let mut #g = ::lopt::Params::zeros_like(&#whole);));
                for &i in &mine {
                    let (dp, path) = (path_slot(i), &paths[i].1);
                    grads.extend(quote!(#ad::acc_into(&mut #g #path, #dp);));
                }
                continue;
            }
            // Disjoint paths: each adjoint moves into a hollow tree (no zero-filled
            // buffers to drop), and whatever is left hollow (fields the loss never reads
            // or reads without a gradient) becomes zeros of the right shape.
            grads.extend(quote!(let mut #g = ::lopt::Params::hollow_like(&#whole);));
            for &i in &mine {
                let (dp, path) = (path_slot(i), &paths[i].1);
                grads.extend(quote! {
                    if let ::core::option::Option::Some(__v) = #dp { #g #path = __v; }
                });
            }
            grads.extend(quote!(::lopt::Params::fill_hollow(&mut #g, &#whole);));
        }
        let decls = self.adjoint_decls(&self.f.body);
        let seed_stmt = if self.active(self.f.result) {
            let d = d_ident(self.f.result);
            quote!(#d = ::core::option::Option::Some(#seed);)
        } else {
            TokenStream::new()
        };
        let rev = self.rev_block(&self.f.body);
        let _ = &ad;
        quote!({
            #ad::keep_freed_memory();
            #tapes
            #fwd
            #path_decls
            #decls
            #seed_stmt
            #rev
            // After the reverse sweep, which reads the result's value by reference.
            let __value = #value;
            #grads
            #ret
        })
    }
}

fn path_slot(i: usize) -> syn::Ident {
    format_ident!("__dp{}", i)
}

/// `a` is a field path prefix of `b` (`.w` of `.w.x`, or the whole argument).
fn is_path_prefix(a: &str, b: &str) -> bool {
    a.is_empty() || (b.starts_with(a) && b[a.len()..].trim_start().starts_with('.'))
}

/// Per slot, whether it is declared without a value.
fn deferred_slots(f: &Func) -> Vec<bool> {
    let mut out = Vec::new();
    for_each_stmt(&f.body, &mut |s| {
        if let Stmt::SlotDecl { slot, init } = s {
            if out.len() <= *slot {
                out.resize(*slot + 1, false);
            }
            out[*slot] = init.is_none();
        }
    });
    out
}

/// Variables defined directly in a block (not in nested blocks).
fn direct_vars(stmts: &[Stmt]) -> Vec<VarId> {
    stmts
        .iter()
        .filter_map(|s| match s {
            Stmt::Def { var, .. } => Some(*var),
            _ => None,
        })
        .collect()
}

/// How many times the body reads each variable and each slot. Raw and passive tokens
/// that name a variable or a slot (`stop_gradient`'s copy) count as reads, so such a
/// value is never moved.
struct Uses {
    var: Vec<usize>,
    slot: Vec<usize>,
}

impl Uses {
    fn of(f: &Func) -> Self {
        let n_slots = {
            let mut n = 0;
            for_each_stmt(&f.body, &mut |s| match s {
                Stmt::SlotDecl { slot, .. } | Stmt::SlotSet { slot, .. } => n = n.max(slot + 1),
                Stmt::Def {
                    rhs: Rhs::SlotRead(slot),
                    ..
                } => n = n.max(slot + 1),
                _ => {}
            });
            n
        };
        let mut u = Uses {
            var: vec![0; f.vars.len()],
            slot: vec![0; n_slots],
        };
        u.var[f.result] += 1;
        for_each_stmt(&f.body, &mut |s| match s {
            Stmt::Def { rhs, .. } => match rhs {
                Rhs::Binary { a, b, .. } => {
                    u.var[*a] += 1;
                    u.var[*b] += 1;
                }
                Rhs::Select { mask, a, b } => {
                    u.var[*mask] += 1;
                    u.var[*a] += 1;
                    u.var[*b] += 1;
                }
                Rhs::Unary { op, x } => {
                    u.var[*op] += 1;
                    u.var[*x] += 1;
                }
                Rhs::Call { args, .. } => args.iter().for_each(|a| u.var[a.var] += 1),
                Rhs::SlotRead(slot) => u.slot[*slot] += 1,
                Rhs::Data { expr: t, .. } | Rhs::Lit(t) | Rhs::Raw(t) => u.tokens(t.clone()),
                Rhs::ArgRead { .. } => {}
            },
            Stmt::SlotDecl { init: Some(v), .. } => u.var[*v] += 1,
            Stmt::SlotSet { from, .. } => u.var[*from] += 1,
            Stmt::Passive(t) => u.tokens(t.clone()),
            Stmt::For { lo, hi, .. } => {
                u.tokens(lo.clone());
                u.tokens(hi.clone());
            }
            Stmt::If { cond, .. } => match cond {
                Cond::Bool(t) | Cond::Mask(t) => u.tokens(t.clone()),
            },
            Stmt::SlotDecl { init: None, .. } => {}
        });
        u
    }

    /// Counts the generated names (`__vN`, `__mN`) in `t` as reads.
    fn tokens(&mut self, t: TokenStream) {
        for tt in t {
            match tt {
                proc_macro2::TokenTree::Group(g) => self.tokens(g.stream()),
                proc_macro2::TokenTree::Ident(i) => {
                    let name = i.to_string();
                    let num = |p: &str| name.strip_prefix(p)?.parse::<usize>().ok();
                    if let Some(v) = num("__v").filter(|&v| v < self.var.len()) {
                        self.var[v] += 1;
                    }
                    if let Some(m) = num("__m") {
                        if m >= self.slot.len() {
                            self.slot.resize(m + 1, 0);
                        }
                        self.slot[m] += 1;
                    }
                }
                _ => {}
            }
        }
    }
}

/// Whether `s` (or a block nested in it) declares, assigns or reads `slot`, or is an `if`
/// whose lanes may blend it.
fn touches_slot(s: &Stmt, slot: SlotId) -> bool {
    let mut hit = false;
    let name = slot_ident(slot).to_string();
    let mut check = |s: &Stmt| match s {
        Stmt::SlotDecl { slot: x, .. } | Stmt::SlotSet { slot: x, .. } if *x == slot => hit = true,
        Stmt::Def {
            rhs: Rhs::SlotRead(x),
            ..
        } if *x == slot => hit = true,
        Stmt::Passive(t)
        | Stmt::Def {
            rhs: Rhs::Raw(t), ..
        } if t.to_string().contains(&name) => hit = true,
        _ => {}
    };
    check(s);
    match s {
        Stmt::For { body, .. } => for_each_stmt(body, &mut check),
        Stmt::If { then, els, .. } => {
            for_each_stmt(then, &mut check);
            for_each_stmt(els, &mut check);
        }
        _ => {}
    }
    hit
}
