//! Lowering a loss body (syn) to the single-assignment model (ir), with spanned errors
//! for everything outside the supported language.

use std::collections::{HashMap, HashSet};

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::visit::Visit;
use syn::visit_mut::VisitMut;
use syn::{BinOp, Expr, Pat, Stmt as SynStmt, UnOp};

use super::builtins::{self, Builtin, SUPPORTED};
use super::ir::*;

type Result<T> = syn::Result<T>;

/// What a user-visible name refers to inside the body.
#[derive(Clone)]
enum Binding {
    /// An immutable active value.
    Var(VarId),
    /// An active `let mut`.
    Slot(SlotId),
    /// A differentiated argument, or an alias of a field path inside one.
    ArgPath(usize, TokenStream),
    /// A name that is not differentiated; it keeps its name in the generated code.
    Passive,
}

pub struct Lowerer<'a> {
    diff_args: &'a [DiffArg],
    /// The scalar type (for lane masks).
    scalar: syn::Type,
    /// Names assigned (anywhere) from something active: their `let mut` is active.
    active_names: HashSet<String>,
    /// Non-differentiated arguments (and `self`): data places rooted here can be borrowed.
    data_args: HashSet<String>,
    scopes: Vec<HashMap<String, Binding>>,
    vars: Vec<Var>,
    n_slots: usize,
    n_loops: usize,
    n_ifs: usize,
    depth: usize,
    /// Per open block, the variable each `let mut` slot was last set from in this block
    /// (since its last nested block): a read of the slot there is that variable, not a
    /// copy (one value fewer kept per loop step for each such read).
    known: Vec<HashMap<SlotId, VarId>>,
}

fn err<T>(span: impl ToTokens, msg: impl std::fmt::Display) -> Result<T> {
    Err(syn::Error::new_spanned(span, msg))
}

impl<'a> Lowerer<'a> {
    pub fn new(diff_args: &'a [DiffArg], data_args: Vec<String>, scalar: syn::Type) -> Self {
        let mut scope = HashMap::new();
        for (k, a) in diff_args.iter().enumerate() {
            scope.insert(a.ident.to_string(), Binding::ArgPath(k, TokenStream::new()));
        }
        for d in &data_args {
            scope.insert(d.clone(), Binding::Passive);
        }
        let mut data_args: HashSet<String> = data_args.into_iter().collect();
        data_args.insert("self".into());
        Lowerer {
            diff_args,
            scalar,
            active_names: HashSet::new(),
            data_args,
            scopes: vec![scope],
            vars: Vec::new(),
            n_slots: 0,
            n_loops: 0,
            n_ifs: 0,
            depth: 0,
            known: vec![HashMap::new()],
        }
    }

    pub fn lower_fn(mut self, block: &syn::Block) -> Result<Func> {
        self.active_names = active_names(block, self.diff_args);
        let (body, tail) = self.lower_block(&block.stmts, true)?;
        let tail = match tail {
            Some(t) => t,
            None => {
                return err(
                    block,
                    "a differentiable body must end with the value it returns (an expression \
                     without a trailing `;`)",
                )
            }
        };
        let mut body = body;
        let result = self.lower_expr(&tail, &mut body)?;
        Ok(Func {
            vars: self.vars,
            body,
            result,
            n_loops: self.n_loops,
            n_ifs: self.n_ifs,
        })
    }

    // ----- environment -----

    fn lookup(&self, name: &str) -> Option<Binding> {
        self.scopes.iter().rev().find_map(|s| s.get(name).cloned())
    }

    fn bind(&mut self, name: String, b: Binding) {
        self.scopes.last_mut().expect("scope").insert(name, b);
    }

    /// The value of slot `s`: the variable it was last set from in this block, or a read.
    fn slot_read(&mut self, out: &mut Vec<Stmt>, s: SlotId) -> VarId {
        if let Some(&v) = self.known.last().and_then(|k| k.get(&s)) {
            return v;
        }
        self.def(out, Kind::Active, Access::Owned, Rhs::SlotRead(s))
    }

    /// Slot `s` now holds `v` (in this block).
    fn note_set(&mut self, s: SlotId, v: VarId) {
        self.known.last_mut().expect("block").insert(s, v);
    }

    /// Entering a nested block: what this block knew may change inside it (and in the
    /// next iteration of a loop), and the nested block starts knowing nothing.
    fn enter_block(&mut self) {
        self.known.last_mut().expect("block").clear();
        self.known.push(HashMap::new());
    }

    fn leave_block(&mut self) {
        self.known.pop();
    }

    fn new_slot(&mut self) -> SlotId {
        self.n_slots += 1;
        self.n_slots - 1
    }

    fn new_var(&mut self, kind: Kind, access: Access) -> VarId {
        self.vars.push(Var {
            kind,
            access,
            depth: self.depth,
        });
        self.vars.len() - 1
    }

    fn def(&mut self, out: &mut Vec<Stmt>, kind: Kind, access: Access, rhs: Rhs) -> VarId {
        // An operation on constants is a constant (no tangent, no adjoint).
        let kind = match (&rhs, kind) {
            (Rhs::Binary { a, b, .. }, Kind::Active)
                if self.vars[*a].kind != Kind::Active && self.vars[*b].kind != Kind::Active =>
            {
                Kind::Const
            }
            (Rhs::Unary { x, .. }, Kind::Active) if self.vars[*x].kind != Kind::Active => {
                Kind::Const
            }
            (Rhs::Select { a, b, .. }, Kind::Active)
                if self.vars[*a].kind != Kind::Active && self.vars[*b].kind != Kind::Active =>
            {
                Kind::Const
            }
            _ => kind,
        };
        let var = self.new_var(kind, access);
        out.push(Stmt::Def { var, rhs });
        var
    }

    /// A spanned error unless `e`, the second argument of the data-carrying builtin
    /// `name`, is free of differentiated values.
    fn refuse_differentiated_data(&self, e: &Expr, name: impl std::fmt::Display) -> Result<()> {
        if self.mentions_active(e) {
            return err(
                e,
                format!("the second argument of `{name}` is data and cannot be differentiated"),
            );
        }
        Ok(())
    }

    /// True when `e` reads anything differentiated (shape queries do not count).
    fn mentions_active(&self, e: &Expr) -> bool {
        struct V<'b, 'c> {
            l: &'b Lowerer<'c>,
            found: bool,
        }
        impl<'ast> Visit<'ast> for V<'_, '_> {
            fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
                if builtins::is_shape_query(&m.method.to_string()) {
                    for a in &m.args {
                        self.visit_expr(a);
                    }
                } else {
                    syn::visit::visit_expr_method_call(self, m);
                }
            }
            fn visit_expr_path(&mut self, p: &'ast syn::ExprPath) {
                if let Some(id) = p.path.get_ident() {
                    if let Some(b) = self.l.lookup(&id.to_string()) {
                        if !matches!(b, Binding::Passive) {
                            self.found = true;
                        }
                    }
                }
            }
            fn visit_macro(&mut self, m: &'ast syn::Macro) {
                // Conservative: a macro could read anything.
                let s = m.tokens.to_string();
                for part in s.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                    if let Some(b) = self.l.lookup(part) {
                        if !matches!(b, Binding::Passive) {
                            self.found = true;
                        }
                    }
                }
            }
        }
        let mut v = V {
            l: self,
            found: false,
        };
        v.visit_expr(e);
        v.found
    }

    /// Rewrites a non-differentiated expression so that names of active values point at
    /// their generated variables (for shape queries and comparisons).
    fn rewrite_passive(&self, e: &Expr) -> TokenStream {
        struct R<'b, 'c> {
            l: &'b Lowerer<'c>,
        }
        impl VisitMut for R<'_, '_> {
            fn visit_expr_mut(&mut self, e: &mut Expr) {
                if let Expr::Path(p) = e {
                    if let Some(id) = p.path.get_ident() {
                        match self.l.lookup(&id.to_string()) {
                            Some(Binding::Var(v)) => {
                                let place = self.l.place(v);
                                *e = syn::parse_quote!(#place);
                                return;
                            }
                            Some(Binding::Slot(s)) => {
                                let m = slot_ident(s);
                                *e = syn::parse_quote!(#m);
                                return;
                            }
                            Some(Binding::ArgPath(k, path)) if !path.is_empty() => {
                                let a = &self.l.diff_args[k].ident;
                                *e = syn::parse_quote!((#a #path));
                                return;
                            }
                            _ => {}
                        }
                    }
                }
                syn::visit_mut::visit_expr_mut(self, e);
            }
        }
        let mut e = e.clone();
        R { l: self }.visit_expr_mut(&mut e);
        e.into_token_stream()
    }

    /// `(*__vN)` or `__vN`: the value of a variable as a place.
    pub fn place(&self, v: VarId) -> TokenStream {
        place_of(&self.vars, v)
    }

    /// If `e` is a field path inside a differentiated argument, the argument and path.
    fn arg_path(&self, e: &Expr) -> Option<(usize, TokenStream)> {
        match e {
            Expr::Path(p) => match self.lookup(&p.path.get_ident()?.to_string())? {
                Binding::ArgPath(k, path) => Some((k, path)),
                _ => None,
            },
            Expr::Field(f) => {
                let (k, path) = self.arg_path(&f.base)?;
                let m = &f.member;
                Some((k, quote!(#path . #m)))
            }
            Expr::Paren(p) => self.arg_path(&p.expr),
            Expr::Reference(r) if r.mutability.is_none() => self.arg_path(&r.expr),
            _ => None,
        }
    }

    /// True for a place rooted at a non-differentiated argument (borrowable data).
    fn is_data_place(&self, e: &Expr) -> bool {
        match e {
            Expr::Path(p) => p
                .path
                .get_ident()
                .map(|i| {
                    let n = i.to_string();
                    self.data_args.contains(&n) && matches!(self.lookup(&n), Some(Binding::Passive))
                })
                .unwrap_or(false),
            Expr::Field(f) => self.is_data_place(&f.base),
            Expr::Paren(p) => self.is_data_place(&p.expr),
            _ => false,
        }
    }

    // ----- blocks and statements -----

    /// Lowers statements; returns them and the trailing expression, if any.
    fn lower_block(
        &mut self,
        stmts: &[SynStmt],
        allow_tail: bool,
    ) -> Result<(Vec<Stmt>, Option<Expr>)> {
        let mut out = Vec::new();
        let mut tail = None;
        for (i, s) in stmts.iter().enumerate() {
            let last = i + 1 == stmts.len();
            match s {
                SynStmt::Local(l) => self.lower_local(l, &mut out)?,
                SynStmt::Expr(e, semi) => {
                    let statement_like = match e {
                        Expr::Assign(_) | Expr::ForLoop(_) => true,
                        Expr::Binary(b) => compound_op(&b.op).is_some(),
                        Expr::If(_) => !allow_tail,
                        _ => false,
                    };
                    if semi.is_none() && last && !statement_like {
                        if !allow_tail {
                            return err(e, "this block cannot end with a value; add `;`");
                        }
                        tail = Some(e.clone());
                    } else {
                        self.lower_stmt_expr(e, &mut out)?;
                    }
                }
                SynStmt::Item(it) => {
                    return err(
                        it,
                        "items (fn, struct, use, ...) cannot be declared inside a differentiable \
                         body; define them outside and call #[differentiable] functions",
                    )
                }
                SynStmt::Macro(m) => {
                    return err(
                        &m.mac,
                        "macros are not supported in a differentiable body; compute values with \
                         `let` and the supported operations",
                    )
                }
            }
        }
        Ok((out, tail))
    }

    fn lower_local(&mut self, l: &syn::Local, out: &mut Vec<Stmt>) -> Result<()> {
        let (ident, mutable) =
            match pat_ident(&l.pat) {
                Some(x) => x,
                None => return err(
                    &l.pat,
                    "only simple `let name = ...` and `let mut name = ...` bindings are supported \
                     (no tuple or struct patterns)",
                ),
            };
        let name = ident.to_string();
        let init = match &l.init {
            Some(init) => {
                if let Some((_, diverge)) = &init.diverge {
                    return err(diverge, "`let ... else` is not supported");
                }
                &*init.expr
            }
            None => {
                return err(l, "declare variables with a value: `let name = ...;`");
            }
        };
        if mutable {
            if self.active_names.contains(&name) {
                let v = self.lower_expr(init, out)?;
                let slot = self.new_slot();
                out.push(Stmt::SlotDecl {
                    slot,
                    init: Some(v),
                });
                self.note_set(slot, v);
                self.bind(name, Binding::Slot(slot));
            } else {
                self.passive_local(l, out)?;
                self.bind(name, Binding::Passive);
            }
            return Ok(());
        }
        if let Expr::Closure(c) = init {
            return err(
                c,
                "closures are not supported; use a #[differentiable] function",
            );
        }
        if let Some((k, path)) = self.arg_path(init) {
            self.bind(name, Binding::ArgPath(k, path));
            return Ok(());
        }
        if self.mentions_active(init) {
            let v = self.lower_expr(init, out)?;
            self.bind(name, Binding::Var(v));
        } else {
            self.passive_local(l, out)?;
            self.bind(name, Binding::Passive);
        }
        Ok(())
    }

    fn passive_local(&mut self, l: &syn::Local, out: &mut Vec<Stmt>) -> Result<()> {
        let mut l = l.clone();
        if let Some(init) = &mut l.init {
            let e = self.rewrite_passive(&init.expr);
            *init.expr = syn::parse2(e)?;
        }
        out.push(Stmt::Passive(l.into_token_stream()));
        Ok(())
    }

    fn lower_stmt_expr(&mut self, e: &Expr, out: &mut Vec<Stmt>) -> Result<()> {
        match e {
            Expr::Assign(a) => self.lower_assign(&a.left, None, &a.right, e, out),
            Expr::Binary(b) if compound_op(&b.op).is_some() => {
                self.lower_assign(&b.left, compound_op(&b.op), &b.right, e, out)
            }
            Expr::ForLoop(f) => self.lower_for(f, out),
            Expr::If(i) => {
                self.lower_if(i, None, out)?;
                Ok(())
            }
            Expr::Block(b) if b.label.is_none() => err(
                b,
                "nested blocks are not supported; write the statements inline",
            ),
            _ => {
                if let Some(msg) = unsupported_message(e) {
                    return err(e, msg);
                }
                if self.mentions_active(e) {
                    err(
                        e,
                        "a statement must be a `let`, an assignment (`=`, `+=`, `-=`, `*=`, \
                         `/=`), a `for` loop or an `if`",
                    )
                } else {
                    let t = self.rewrite_passive(e);
                    out.push(Stmt::Passive(quote!(#t;)));
                    Ok(())
                }
            }
        }
    }

    fn lower_assign(
        &mut self,
        left: &Expr,
        op: Option<&'static str>,
        right: &Expr,
        whole: &Expr,
        out: &mut Vec<Stmt>,
    ) -> Result<()> {
        let name = match left {
            Expr::Path(p) => p.path.get_ident().map(|i| i.to_string()),
            _ => None,
        };
        let name = match name {
            Some(n) => n,
            None => {
                if self.arg_path(left).is_some() {
                    return err(left, "the differentiated arguments cannot be assigned to");
                }
                return err(
                    left,
                    "only whole variables can be assigned (`x = ...`, `x += ...`); indexing or \
                     field assignment is not supported",
                );
            }
        };
        match self.lookup(&name) {
            Some(Binding::Slot(slot)) => {
                let rhs = self.lower_expr(right, out)?;
                let from = match op {
                    None => rhs,
                    Some(op) => {
                        let cur = self.slot_read(out, slot);
                        let op = op_marker(op);
                        self.def(
                            out,
                            Kind::Active,
                            Access::Owned,
                            Rhs::Binary { op, a: cur, b: rhs },
                        )
                    }
                };
                out.push(Stmt::SlotSet { slot, from });
                self.note_set(slot, from);
                Ok(())
            }
            Some(Binding::Passive) | None => {
                if self.mentions_active(right) {
                    return err(
                        whole,
                        format!(
                            "`{name}` is not differentiated here but is assigned a \
                             differentiated value; declare it with `let mut` in this function"
                        ),
                    );
                }
                let t = self.rewrite_passive(whole);
                out.push(Stmt::Passive(quote!(#t;)));
                Ok(())
            }
            Some(_) => err(
                left,
                format!("`{name}` is immutable; declare it with `let mut` to assign to it"),
            ),
        }
    }

    fn lower_for(&mut self, f: &syn::ExprForLoop, out: &mut Vec<Stmt>) -> Result<()> {
        if let Some(l) = &f.label {
            return err(l, "loop labels are not supported");
        }
        let pat = match &*f.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.mutability.is_none() && p.subpat.is_none() => {
                p.ident.to_token_stream()
            }
            Pat::Wild(w) => w.to_token_stream(),
            other => return err(other, "the loop variable must be a plain name or `_`"),
        };
        let (lo, hi) =
            match &*f.expr {
                Expr::Range(r) => match (&r.start, &r.end, &r.limits) {
                    (Some(lo), Some(hi), syn::RangeLimits::HalfOpen(_)) => (lo, hi),
                    _ => {
                        return err(
                            r,
                            "only `for i in lo..hi` loops over a half-open range are supported",
                        )
                    }
                },
                other => return err(
                    other,
                    "only `for i in lo..hi` loops over a half-open range are supported (iterators \
                     are not)",
                ),
            };
        for bound in [lo, hi] {
            if self.mentions_active(bound) {
                return err(bound, "loop bounds cannot depend on differentiated values");
            }
        }
        let (lo, hi) = (self.rewrite_passive(lo), self.rewrite_passive(hi));
        let id = self.n_loops;
        self.n_loops += 1;
        self.depth += 1;
        let mut scope = HashMap::new();
        if let Pat::Ident(p) = &*f.pat {
            scope.insert(p.ident.to_string(), Binding::Passive);
        }
        self.scopes.push(scope);
        self.enter_block();
        let body = self.lower_block(&f.body.stmts, false);
        self.leave_block();
        let (body, _) = body?;
        self.scopes.pop();
        self.depth -= 1;
        out.push(Stmt::For {
            id,
            pat,
            lo,
            hi,
            body,
        });
        Ok(())
    }

    /// Lowers an `if`; with `value`, each branch's value is stored in that slot.
    fn lower_if(
        &mut self,
        i: &syn::ExprIf,
        value: Option<SlotId>,
        out: &mut Vec<Stmt>,
    ) -> Result<()> {
        let cond = self.lower_cond(&i.cond, out)?;
        self.known.last_mut().expect("block").clear();
        let id = self.n_ifs;
        self.n_ifs += 1;
        let then = self.lower_branch(&i.then_branch, value)?;
        let els = match &i.else_branch {
            None => {
                if value.is_some() {
                    return err(i, "an `if` used as a value needs an `else` branch");
                }
                Vec::new()
            }
            Some((_, e)) => match &**e {
                Expr::Block(b) => self.lower_branch(&b.block, value)?,
                Expr::If(inner) => {
                    self.depth += 1;
                    self.scopes.push(HashMap::new());
                    self.enter_block();
                    let mut v = Vec::new();
                    let r = self.lower_if(inner, value, &mut v);
                    self.leave_block();
                    self.scopes.pop();
                    self.depth -= 1;
                    r?;
                    v
                }
                other => return err(other, "unsupported `else` branch"),
            },
        };
        out.push(Stmt::If {
            id,
            cond,
            then,
            els,
        });
        Ok(())
    }

    fn lower_branch(&mut self, b: &syn::Block, value: Option<SlotId>) -> Result<Vec<Stmt>> {
        self.depth += 1;
        self.scopes.push(HashMap::new());
        self.enter_block();
        let r = (|| {
            let (mut body, tail) = self.lower_block(&b.stmts, value.is_some())?;
            if let Some(slot) = value {
                let tail = match tail {
                    Some(t) => t,
                    None => {
                        return err(
                            b,
                            "this branch of an `if` used as a value must end with a value",
                        )
                    }
                };
                let v = self.lower_expr(&tail, &mut body)?;
                body.push(Stmt::SlotSet { slot, from: v });
            }
            Ok(body)
        })();
        self.leave_block();
        self.scopes.pop();
        self.depth -= 1;
        r
    }

    /// A condition: comparisons of scalars (differentiated values, or data against a
    /// float literal) become lane masks; the rest stays a plain `bool` as written.
    fn lower_cond(&mut self, e: &Expr, out: &mut Vec<Stmt>) -> Result<Cond> {
        let mask_ty = self.mask_ty();
        let as_mask = |c: Cond| match c {
            Cond::Mask(t) => t,
            Cond::Bool(b) => quote!(<#mask_ty as ::lopt::scalar::Mask>::splat(#b)),
        };
        match e {
            Expr::Paren(p) => self.lower_cond(&p.expr, out),
            Expr::Unary(u) if matches!(u.op, UnOp::Not(_)) => {
                Ok(match self.lower_cond(&u.expr, out)? {
                    Cond::Bool(b) => Cond::Bool(quote!(!(#b))),
                    Cond::Mask(m) => Cond::Mask(quote!(::lopt::scalar::Mask::not(#m))),
                })
            }
            Expr::Binary(b) if matches!(b.op, BinOp::And(_) | BinOp::Or(_)) => {
                let l = self.lower_cond(&b.left, out)?;
                let r = self.lower_cond(&b.right, out)?;
                if let (Cond::Bool(l), Cond::Bool(r)) = (&l, &r) {
                    let op = &b.op;
                    return Ok(Cond::Bool(quote!((#l) #op (#r))));
                }
                let f = if matches!(b.op, BinOp::And(_)) {
                    quote!(and)
                } else {
                    quote!(or)
                };
                let (l, r) = (as_mask(l), as_mask(r));
                Ok(Cond::Mask(quote!(::lopt::scalar::Mask::#f(#l, #r))))
            }
            Expr::Binary(b)
                if is_comparison(&b.op) && (self.mentions_active(e) || has_float_lit(b)) =>
            {
                let f = match b.op {
                    BinOp::Lt(_) => quote!(lt),
                    BinOp::Le(_) => quote!(le),
                    BinOp::Gt(_) => quote!(gt),
                    BinOp::Ge(_) => quote!(ge),
                    _ => {
                        return err(
                            e,
                            "compare differentiated values with <, <=, > or >= (== and != on \
                             floats are not supported)",
                        )
                    }
                };
                let a = self.lower_expr(&b.left, out)?;
                let c = self.lower_expr(&b.right, out)?;
                let (pa, pc) = (self.place(a), self.place(c));
                // Spanned at the condition: comparing matrices is one error there, naming
                // `select` (the trait's `on_unimplemented`).
                let span = syn::spanned::Spanned::span(e);
                let f = quote::format_ident!("if_{}", f.to_string());
                Ok(Cond::Mask(respan(
                    quote!(::lopt::__private::ad::#f(&#pa, &#pc)),
                    span,
                )))
            }
            _ if self.mentions_active(e) => err(
                e,
                "a condition on differentiated values must be a comparison (<, <=, >, >=), \
                 possibly combined with &&, || and !",
            ),
            _ => Ok(Cond::Bool(self.rewrite_passive(e))),
        }
    }

    fn mask_ty(&self) -> TokenStream {
        let s = &self.scalar;
        quote!(<#s as ::lopt::Real>::Mask)
    }

    // ----- expressions -----

    /// Lowers an expression used as a value; returns the variable holding it.
    fn lower_expr(&mut self, e: &Expr, out: &mut Vec<Stmt>) -> Result<VarId> {
        if let Expr::Lit(l) = e {
            return match &l.lit {
                syn::Lit::Float(_) | syn::Lit::Int(_) => Ok(self.def(
                    out,
                    Kind::Const,
                    Access::Owned,
                    Rhs::Lit(l.to_token_stream()),
                )),
                other => err(other, "only numeric literals can be used as values"),
            };
        }
        if let Some(msg) = unsupported_message(e) {
            return err(e, msg);
        }
        if let Some((arg, path)) = self.arg_path(e) {
            return Ok(self.def(out, Kind::Active, Access::Deref, Rhs::ArgRead { arg, path }));
        }
        if !self.mentions_active(e) && is_atomic(e) {
            return Ok(self.data(e, out));
        }
        match e {
            Expr::Paren(p) => self.lower_expr(&p.expr, out),
            Expr::Group(g) => self.lower_expr(&g.expr, out),
            Expr::Reference(r) if r.mutability.is_none() => self.lower_expr(&r.expr, out),
            Expr::Path(p) => {
                let name = p.path.get_ident().map(|i| i.to_string()).unwrap_or_default();
                match self.lookup(&name) {
                    Some(Binding::Var(v)) => Ok(v),
                    Some(Binding::Slot(s)) => Ok(self.slot_read(out, s)),
                    _ => Ok(self.data(e, out)),
                }
            }
            Expr::Binary(b)
                if is_comparison(&b.op) || matches!(b.op, BinOp::And(_) | BinOp::Or(_)) =>
            {
                Ok(self.lower_mask(e, out)?.0)
            }
            Expr::Binary(b) if matches!(b.op, BinOp::Mul(_)) && im2col_args(&b.left).is_some() => {
                let (x, g) = im2col_args(&b.left).expect("checked");
                self.conv_product(x, g, &b.right, None, out)
            }
            Expr::Binary(b) => {
                let op = match b.op {
                    BinOp::Add(_) => "Add",
                    BinOp::Sub(_) => "Sub",
                    BinOp::Mul(_) => "Mul",
                    BinOp::Div(_) => "Div",
                    _ => {
                        return err(
                            b.op,
                            "unsupported operator on differentiated values; supported: + - * /, \
                             and comparisons < <= > >= (masks for `select`, or `if` conditions)",
                        )
                    }
                };
                let a = self.lower_expr(&b.left, out)?;
                let c = self.lower_expr(&b.right, out)?;
                Ok(self.def(out, Kind::Active, Access::Owned, Rhs::Binary { op: op_marker(op), a, b: c }))
            }
            Expr::Unary(u) => match u.op {
                UnOp::Neg(_) => {
                    let x = self.lower_expr(&u.expr, out)?;
                    Ok(self.unary(out, quote!(::lopt::__private::ad::op::Neg), x))
                }
                UnOp::Deref(_) => self.lower_expr(&u.expr, out),
                UnOp::Not(_) => Ok(self.lower_mask(e, out)?.0),
                _ => err(u, "unsupported unary operator"),
            },
            Expr::Call(c) => self.lower_call(c, out),
            Expr::MethodCall(m) => self.lower_method(m, out),
            Expr::Index(ix) => {
                let x = self.lower_expr(&ix.expr, out)?;
                let op = match &*ix.index {
                    Expr::Tuple(t) if t.elems.len() == 2 => {
                        let (i, j) = (&t.elems[0], &t.elems[1]);
                        for k in [i, j] {
                            if self.mentions_active(k) {
                                return err(k, "indices cannot depend on differentiated values");
                            }
                        }
                        let (i, j) = (self.rewrite_passive(i), self.rewrite_passive(j));
                        quote!(::lopt::__private::ad::op::Index2((#i) as usize, (#j) as usize))
                    }
                    idx => {
                        if self.mentions_active(idx) {
                            return err(idx, "indices cannot depend on differentiated values");
                        }
                        let i = self.rewrite_passive(idx);
                        quote!(::lopt::__private::ad::op::Index((#i) as usize))
                    }
                };
                let op = self.def(out, Kind::Opaque, Access::Owned, Rhs::Raw(op));
                Ok(self.def(out, Kind::Active, Access::Owned, Rhs::Unary { op, x }))
            }
            Expr::Field(f) => err(
                f,
                "field access is supported on the differentiated arguments and on data, not on \
                 computed values",
            ),
            Expr::If(i) => {
                let slot = self.new_slot();
                out.push(Stmt::SlotDecl { slot, init: None });
                self.lower_if(i, Some(slot), out)?;
                Ok(self.def(out, Kind::Active, Access::Owned, Rhs::SlotRead(slot)))
            }
            Expr::Cast(c) => err(
                c,
                "`as` casts of differentiated values are not supported; literals and data are \
                 converted to the scalar type automatically",
            ),
            other => err(other, format!("unsupported expression in a differentiable body; supported: literals, variables, field access, indexing, + - * /, unary -, if/else, and the functions {SUPPORTED}")),
        }
    }

    /// The mask of a `select`: comparisons (`a > b`, elementwise, of values or data),
    /// combined with `&&`, `||` and `!`, or a data value (non-zero = true). Returns the
    /// (never differentiated) mask and whether it holds only 0 and 1.
    fn lower_mask(&mut self, e: &Expr, out: &mut Vec<Stmt>) -> Result<(VarId, bool)> {
        let binary = |l: &mut Self, out: &mut Vec<Stmt>, op: &str, a: VarId, b: VarId| {
            l.def(
                out,
                Kind::Const,
                Access::Owned,
                Rhs::Binary {
                    op: op_marker(op),
                    a,
                    b,
                },
            )
        };
        match e {
            Expr::Paren(p) => self.lower_mask(&p.expr, out),
            Expr::Group(g) => self.lower_mask(&g.expr, out),
            Expr::Binary(b) if is_comparison(&b.op) => {
                let op =
                    match b.op {
                        BinOp::Lt(_) => "Lt",
                        BinOp::Le(_) => "Le",
                        BinOp::Gt(_) => "Gt",
                        BinOp::Ge(_) => "Ge",
                        _ => return err(
                            e,
                            "compare with <, <=, > or >= (== and != on floats are not supported)",
                        ),
                    };
                let a = self.lower_expr(&b.left, out)?;
                let c = self.lower_expr(&b.right, out)?;
                Ok((binary(self, out, op, a, c), true))
            }
            Expr::Binary(b) if matches!(b.op, BinOp::And(_) | BinOp::Or(_)) => {
                let l = self.lower_mask(&b.left, out)?;
                let r = self.lower_mask(&b.right, out)?;
                let (l, r) = (self.normalized(l, out), self.normalized(r, out));
                let op = if matches!(b.op, BinOp::And(_)) {
                    "Min"
                } else {
                    "Max"
                };
                Ok((binary(self, out, op, l, r), true))
            }
            Expr::Unary(u) if matches!(u.op, UnOp::Not(_)) => {
                // 1 where the mask is 0: |m| <= 0.
                let m = self.lower_mask(&u.expr, out)?.0;
                let abs = self.unary(out, op_marker("Abs"), m);
                self.vars[abs].kind = Kind::Const;
                let zero = self.def(out, Kind::Const, Access::Owned, Rhs::Lit(quote!(0.0)));
                Ok((binary(self, out, "Le", abs, zero), true))
            }
            _ => {
                let m = self.lower_expr(e, out)?;
                if self.vars[m].kind == Kind::Active {
                    return err(
                        e,
                        "the mask of `select` is not differentiated: write a comparison \
                         (`select(x > 0.0, x, 0.1 * x)`) or pass data (non-zero = true), or \
                         `stop_gradient(..)` of a value",
                    );
                }
                Ok((m, false))
            }
        }
    }

    /// A mask as 0 and 1 (`|m| > 0`) unless it is already.
    fn normalized(&mut self, (m, is01): (VarId, bool), out: &mut Vec<Stmt>) -> VarId {
        if is01 {
            return m;
        }
        let abs = self.unary(out, op_marker("Abs"), m);
        self.vars[abs].kind = Kind::Const;
        let zero = self.def(out, Kind::Const, Access::Owned, Rhs::Lit(quote!(0.0)));
        self.def(
            out,
            Kind::Const,
            Access::Owned,
            Rhs::Binary {
                op: op_marker("Gt"),
                a: abs,
                b: zero,
            },
        )
    }

    /// A non-differentiated value converted to the scalar type.
    fn data(&mut self, e: &Expr, out: &mut Vec<Stmt>) -> VarId {
        let borrow = self.is_data_place(e);
        let expr = self.rewrite_passive(&with_scalar(e, &self.scalar));
        let access = if borrow { Access::Deref } else { Access::Owned };
        self.def(out, Kind::Const, access, Rhs::Data { expr, borrow })
    }

    fn unary(&mut self, out: &mut Vec<Stmt>, op: TokenStream, x: VarId) -> VarId {
        let op = self.def(out, Kind::Opaque, Access::Owned, Rhs::Raw(op));
        self.def(out, Kind::Active, Access::Owned, Rhs::Unary { op, x })
    }

    fn builtin(
        &mut self,
        b: Builtin,
        name: &syn::Ident,
        args: &[&Expr],
        span: &dyn ToTokens,
        out: &mut Vec<Stmt>,
    ) -> Result<VarId> {
        let want = match b {
            Builtin::Unary(_) | Builtin::Data | Builtin::Identity | Builtin::StopGradient => 1,
            Builtin::TwoSizes(_) | Builtin::Select | Builtin::ScalarBounds(_) => 3,
            _ => 2,
        };
        if args.len() != want {
            return err(span, format!("`{name}` takes {want} argument(s)"));
        }
        match b {
            Builtin::Unary("Sum") if square_arg(args[0]).is_some() => {
                // sum(square(x)) in one pass, without the squared intermediate.
                let inner = square_arg(args[0]).expect("checked");
                let x = self.lower_expr(inner, out)?;
                Ok(self.unary(out, op_marker("NormSquared"), x))
            }
            Builtin::Unary("Relu")
                if add_args(args[0]).is_some_and(|(l, _)| conv_args(l).is_some()) =>
            {
                // relu(im2col(x, g) * w + b): the convolution, its bias and the ReLU in
                // one rule, whose passes over the output are the product's own.
                let (l, b) = add_args(args[0]).expect("checked");
                let (x, g, w) = conv_args(l).expect("checked");
                self.conv_product(x, g, w, Some(b), out)
            }
            Builtin::Unary("Relu") if add_args(args[0]).is_some() => {
                // relu(a + b) in one pass, without the sum as an intermediate.
                let (l, r) = add_args(args[0]).expect("checked");
                let a = self.lower_expr(l, out)?;
                let c = self.lower_expr(r, out)?;
                Ok(self.def(
                    out,
                    Kind::Active,
                    Access::Owned,
                    Rhs::Binary {
                        op: op_marker("AddRelu"),
                        a,
                        b: c,
                    },
                ))
            }
            Builtin::Binary("Dot")
                if embed_args(args[0]).is_some() || embed_args(args[1]).is_some() =>
            {
                // dot(embed(t, ids), r) in one rule: the looked-up rows never stored.
                let (e, r) = match embed_args(args[0]) {
                    Some(_) => (args[0], args[1]),
                    None => (args[1], args[0]),
                };
                let (t, ids) = embed_args(e).expect("checked");
                self.embed_dot(t, ids, r, out)
            }
            Builtin::Unary("Mean") if cross_entropy_args(args[0]).is_some() => {
                // mean(softmax_cross_entropy(z, labels)) in one rule, which makes the
                // gradient in the sweep that makes the loss.
                let (z, labels) = cross_entropy_args(args[0]).expect("checked");
                self.cross_entropy(quote!(MeanSoftmaxCrossEntropy), z, labels, out)
            }
            Builtin::Unary("GeluTanh") if is_linear_call(args[0]) => {
                // gelu_tanh(linear(x, w, b)), a matrix: the op keeps the derivative it
                // computes with the value, and the reverse sweep multiplies by it instead
                // of computing the tanh again.
                let x = self.lower_expr(args[0], out)?;
                Ok(self.unary(
                    out,
                    quote!(::lopt::__private::ad::op::GeluTanhKeep::new()),
                    x,
                ))
            }
            Builtin::Unary(op) => {
                let x = self.lower_expr(args[0], out)?;
                Ok(self.unary(out, op_marker(op), x))
            }
            Builtin::Identity => self.lower_expr(args[0], out),
            Builtin::StopGradient => {
                let x = self.lower_expr(args[0], out)?;
                let p = self.place(x);
                let copy = quote!(::core::clone::Clone::clone(&#p));
                Ok(self.def(out, Kind::Const, Access::Owned, Rhs::Raw(copy)))
            }
            Builtin::Data => {
                let e = strip_ref(args[0]);
                if self.mentions_active(e) {
                    return err(e, "`data(...)` takes non-differentiated data");
                }
                Ok(self.data(e, out))
            }
            Builtin::Powi(op) => {
                if self.mentions_active(args[1]) {
                    return err(
                        args[1],
                        "the exponent of `powi` cannot be differentiated; use `powf`",
                    );
                }
                let x = self.lower_expr(args[0], out)?;
                let n = self.rewrite_passive(args[1]);
                let op = op_marker(op);
                Ok(self.unary(out, quote!(#op((#n) as i32)), x))
            }
            Builtin::Binary(op) => {
                let a = self.lower_expr(args[0], out)?;
                let c = self.lower_expr(args[1], out)?;
                Ok(self.def(
                    out,
                    Kind::Active,
                    Access::Owned,
                    Rhs::Binary {
                        op: op_marker(op),
                        a,
                        b: c,
                    },
                ))
            }
            Builtin::Select => {
                let m = self.lower_mask(args[0], out)?.0;
                let a = self.lower_expr(args[1], out)?;
                let c = self.lower_expr(args[2], out)?;
                Ok(self.def(
                    out,
                    Kind::Active,
                    Access::Owned,
                    Rhs::Select { mask: m, a, b: c },
                ))
            }
            Builtin::ScalarBounds(op) => {
                for a in &args[1..] {
                    if self.mentions_active(a) {
                        return err(
                            a,
                            format!(
                                "the bounds of `{name}` are not differentiated; for a \
                                 differentiated bound write `min(max(x, lo), hi)`"
                            ),
                        );
                    }
                }
                let x = self.lower_expr(args[0], out)?;
                let lo = self.lower_expr(args[1], out)?;
                let hi = self.lower_expr(args[2], out)?;
                let (lo, hi) = (self.place(lo), self.place(hi));
                let op = op_marker(op);
                Ok(self.unary(out, quote!(#op::new(#lo, #hi)), x))
            }
            Builtin::TwoSizes(op) => {
                for a in &args[1..] {
                    if self.mentions_active(a) {
                        return err(
                            a,
                            format!("the sizes given to `{name}` cannot be differentiated values"),
                        );
                    }
                }
                let x = self.lower_expr(args[0], out)?;
                let (i, n) = (self.rewrite_passive(args[1]), self.rewrite_passive(args[2]));
                let op = op_marker(op);
                Ok(self.unary(out, quote!(#op((#i) as usize, (#n) as usize)), x))
            }
            Builtin::SoftmaxCrossEntropy(op) => {
                let op = syn::Ident::new(op, proc_macro2::Span::call_site());
                self.cross_entropy(quote!(#op), args[0], args[1], out)
            }
            Builtin::WithData(op) => {
                self.refuse_differentiated_data(args[1], name)?;
                let x = self.lower_expr(args[0], out)?;
                let data = self.rewrite_passive(strip_ref(args[1]));
                let op = syn::Ident::new(op, proc_macro2::Span::call_site());
                Ok(self.unary(
                    out,
                    quote!(::lopt::__private::ad::op::#op::new(&(#data))),
                    x,
                ))
            }
        }
    }

    /// `im2col(x, g) * w` as one rule (`ad::conv::im2col_mul`): the convolution formed a
    /// block of patches at a time, without the patch matrix, and told which of `x` and
    /// `w` are differentiated. With a bias `b`, `relu(im2col(x, g) * w + b)` as one rule
    /// (`ad::conv::im2col_mul_add_relu`): the bias and the ReLU applied to each block of
    /// the product as it is made, the mask and the bias's cotangent taken in the reverse
    /// rule's pass over the output's cotangent; its reverse rule also takes the value
    /// (the ReLU's mask).
    fn conv_product(
        &mut self,
        x: &Expr,
        g: &Expr,
        w: &Expr,
        b: Option<&Expr>,
        out: &mut Vec<Stmt>,
    ) -> Result<VarId> {
        self.refuse_differentiated_data(g, "im2col")?;
        let x = self.lower_expr(x, out)?;
        let w = self.lower_expr(w, out)?;
        let b = b.map(|b| self.lower_expr(b, out)).transpose()?;
        let data = self.rewrite_passive(strip_ref(g));
        let g = self.def(out, Kind::Opaque, Access::Owned, Rhs::Raw(quote!(&(#data))));
        // The differentiated operands, in the rule's order `[x, w]` or `[x, w, b]`.
        let operands: Vec<VarId> = [x, w].into_iter().chain(b).collect();
        let needs = self.needs_of(&operands, out);
        let mut args: Vec<(VarId, bool)> = operands.iter().map(|&v| (v, true)).collect();
        args.extend([(g, false), (needs, true)]);
        let func: syn::Path = if b.is_some() {
            syn::parse_quote!(::lopt::__private::ad::conv::im2col_mul_add_relu)
        } else {
            syn::parse_quote!(::lopt::__private::ad::conv::im2col_mul)
        };
        Ok(self.rule_call(func, &args, b.is_some(), out))
    }

    /// `[a, b, ..]`: which of `operands` are differentiated, as the `needs` argument of a
    /// fused rule (whose reverse rule skips the cotangents of the others).
    fn needs_of(&mut self, operands: &[VarId], out: &mut Vec<Stmt>) -> VarId {
        let active = operands.iter().map(|&v| self.vars[v].kind == Kind::Active);
        self.def(
            out,
            Kind::Opaque,
            Access::Owned,
            Rhs::Raw(quote!([#(#active),*])),
        )
    }

    /// Integer ids (data) as the `Embed` operand of the lookup rules.
    fn embed_ids(&mut self, ids: &Expr, out: &mut Vec<Stmt>) -> VarId {
        let data = self.rewrite_passive(strip_ref(ids));
        self.def(
            out,
            Kind::Opaque,
            Access::Owned,
            Rhs::Raw(quote!(::lopt::__private::ad::op::Embed::new(&(#data)))),
        )
    }

    /// The differentiated result of a fused rule `func`, called with `args` (each by
    /// reference or not); `with_out`: its reverse rule also takes the value.
    fn rule_call(
        &mut self,
        func: syn::Path,
        args: &[(VarId, bool)],
        with_out: bool,
        out: &mut Vec<Stmt>,
    ) -> VarId {
        let args = args
            .iter()
            .map(|&(var, by_ref)| CallArg {
                var,
                by_ref,
                is_ref_value: false,
            })
            .collect();
        self.def(
            out,
            Kind::Active,
            Access::Owned,
            Rhs::Call {
                func,
                args,
                with_out,
            },
        )
    }

    /// `lstm_projected(x, wx, b, wh, h0, c0)` (`ad::lstm::lstm_projected`: the LSTM of
    /// `x·wx + b` with the input projection inside the rule), told which of its six
    /// operands are differentiated, so that its reverse rule skips the products of the
    /// others (a data `x`'s cotangent, `dz·wxᵀ`, is a third of the input products).
    fn lstm_projected(&mut self, args: &[&Expr], out: &mut Vec<Stmt>) -> Result<VarId> {
        let mut operands = Vec::new();
        for a in args {
            operands.push(self.lower_expr(strip_ref(a), out)?);
        }
        let needs = self.needs_of(&operands, out);
        operands.push(needs);
        let args: Vec<(VarId, bool)> = operands.iter().map(|&v| (v, true)).collect();
        let func = syn::parse_quote!(::lopt::__private::ad::lstm::lstm_projected);
        Ok(self.rule_call(func, &args, false, out))
    }

    /// `lstm_sequence(embed(t, ids), wh, h0, c0)` as one rule (`ad::lstm::lstm_embedded`:
    /// each step's gate block gathered from the table's rows, the table's cotangent
    /// scattered step by step; the looked-up rows and their cotangent never stored).
    fn lstm_embedded(
        &mut self,
        t: &Expr,
        ids: &Expr,
        rest: &[&Expr],
        out: &mut Vec<Stmt>,
    ) -> Result<VarId> {
        self.refuse_differentiated_data(ids, "embed")?;
        let mut operands = vec![self.lower_expr(strip_ref(t), out)?];
        for a in rest {
            operands.push(self.lower_expr(strip_ref(a), out)?);
        }
        let ids = self.embed_ids(ids, out);
        operands.push(ids);
        let args: Vec<(VarId, bool)> = operands.iter().map(|&v| (v, true)).collect();
        let func = syn::parse_quote!(::lopt::__private::ad::lstm::lstm_embedded);
        Ok(self.rule_call(func, &args, false, out))
    }

    /// `dot(embed(t, ids), r)` as one rule (`ad::gather::embed_dot`), told which of `t`
    /// and `r` are differentiated.
    fn embed_dot(&mut self, t: &Expr, ids: &Expr, r: &Expr, out: &mut Vec<Stmt>) -> Result<VarId> {
        self.refuse_differentiated_data(ids, "embed")?;
        let t = self.lower_expr(t, out)?;
        let r = self.lower_expr(r, out)?;
        let ids = self.embed_ids(ids, out);
        let needs = self.needs_of(&[t, r], out);
        let args = [(t, true), (r, true), (ids, true), (needs, true)];
        let func = syn::parse_quote!(::lopt::__private::ad::gather::embed_dot);
        Ok(self.rule_call(func, &args, false, out))
    }

    /// `op(logits, labels)` for a cross-entropy op `op` (`new(&[i32])`).
    fn cross_entropy(
        &mut self,
        op: TokenStream,
        logits: &Expr,
        labels: &Expr,
        out: &mut Vec<Stmt>,
    ) -> Result<VarId> {
        if self.mentions_active(labels) {
            return err(labels, "labels cannot be differentiated");
        }
        let x = self.lower_expr(logits, out)?;
        let inner = strip_ref(labels);
        // A place is borrowed; a temporary (`&labels_from(batch)`) is copied, so the op
        // does not outlive it. Spanned at the argument: labels of another type are one
        // error there, listing the integer types that work.
        let read = if is_place(inner) {
            quote!(labels_of)
        } else {
            quote!(owned_labels)
        };
        let span = syn::spanned::Spanned::span(labels);
        let l = self.rewrite_passive(inner);
        let read = respan(quote!(::lopt::__private::ad::#read(&(#l))), span);
        Ok(self.unary(
            out,
            quote!(::lopt::__private::ad::op::#op::from_labels(#read)),
            x,
        ))
    }

    fn lower_call(&mut self, c: &syn::ExprCall, out: &mut Vec<Stmt>) -> Result<VarId> {
        let path = match &*c.func {
            Expr::Path(p) if p.qself.is_none() => &p.path,
            other => return err(other, "only calls of named functions are supported"),
        };
        let last = &path.segments.last().expect("path").ident;
        if is_builtin_path(path, &last.to_string()) {
            if let Some(b) = builtins::lookup(&last.to_string()) {
                let args: Vec<&Expr> = c.args.iter().collect();
                return self.builtin(b, last, &args, c, out);
            }
        }
        if is_builtin_path(path, "lstm_sequence") && c.args.len() == 4 {
            if let Some((t, ids)) = embed_args(strip_ref(&c.args[0])) {
                let rest: Vec<&Expr> = c.args.iter().skip(1).collect();
                return self.lstm_embedded(t, ids, &rest, out);
            }
        }
        if is_builtin_path(path, "lstm_projected") {
            if c.args.len() != 6 {
                return err(
                    c,
                    format!("`{last}` takes 6 argument(s): x, wx, b, wh, h0, c0"),
                );
            }
            let args: Vec<&Expr> = c.args.iter().collect();
            return self.lstm_projected(&args, out);
        }
        // A #[differentiable] helper: its companions live in a module of the same name.
        let mut args = Vec::new();
        for a in &c.args {
            let by_ref = matches!(a, Expr::Reference(_));
            let inner = strip_ref(a);
            let mut is_ref_value = false;
            let explicit_data = matches!(inner, Expr::Call(c) if matches!(&*c.func, Expr::Path(p) if p.path.is_ident("data")));
            let var = if self.mentions_active(inner) || explicit_data {
                if !by_ref {
                    if let Some((k, path)) = self.arg_path(inner) {
                        is_ref_value = path.is_empty() && self.diff_args[k].is_ref;
                    }
                }
                self.lower_expr(inner, out)?
            } else {
                // Data and literals go to the helper as written: its signature decides.
                let t = self.rewrite_passive(a);
                self.def(out, Kind::Opaque, Access::Owned, Rhs::Raw(t))
            };
            let by_ref = by_ref && self.vars[var].kind != Kind::Opaque;
            args.push(CallArg {
                var,
                by_ref,
                is_ref_value,
            });
        }
        Ok(self.def(
            out,
            Kind::Active,
            Access::Owned,
            Rhs::Call {
                func: path.clone(),
                args,
                with_out: false,
            },
        ))
    }

    fn lower_method(&mut self, m: &syn::ExprMethodCall, out: &mut Vec<Stmt>) -> Result<VarId> {
        let name = m.method.to_string();
        match builtins::lookup(&name) {
            Some(b) if b != Builtin::Data => {
                let mut args: Vec<&Expr> = vec![&m.receiver];
                args.extend(m.args.iter());
                self.builtin(b, &m.method, &args, m, out)
            }
            _ => err(
                &m.method,
                format!(
                    "unsupported method `{name}` on a differentiated value; supported: {SUPPORTED}"
                ),
            ),
        }
    }
}

/// Messages for constructs that are never supported, wherever they appear.
fn unsupported_message(e: &Expr) -> Option<&'static str> {
    Some(match e {
        Expr::While(_) => "`while` loops are not supported; use `for i in lo..hi`",
        Expr::Loop(_) => "`loop` is not supported; use `for i in lo..hi`",
        Expr::Match(_) => "`match` is not supported; use `if`/`else`",
        Expr::Closure(_) => "closures are not supported; use a #[differentiable] function",
        Expr::Return(_) => "`return` is not supported; end the body with the returned value",
        Expr::Break(_) | Expr::Continue(_) => "`break` and `continue` are not supported",
        Expr::Macro(_) => "macros are not supported in a differentiable body",
        Expr::Async(_) | Expr::Await(_) => "async code is not supported",
        Expr::Unsafe(_) => "`unsafe` blocks are not supported",
        Expr::Try(_) => "the `?` operator is not supported",
        Expr::Let(_) => "`if let` is not supported; use a plain `if`",
        _ => return None,
    })
}

/// A non-differentiated expression read as one data value (rather than lowered
/// operation by operation).
fn is_atomic(e: &Expr) -> bool {
    match e {
        Expr::Path(_) | Expr::Field(_) | Expr::Index(_) | Expr::Cast(_) | Expr::Lit(_) => true,
        Expr::Paren(p) => is_atomic(&p.expr),
        Expr::Reference(r) => is_atomic(&r.expr),
        Expr::MethodCall(m) => builtins::lookup(&m.method.to_string()).is_none(),
        Expr::Call(c) => match &*c.func {
            Expr::Path(p) => p
                .path
                .segments
                .last()
                .map(|s| builtins::lookup(&s.ident.to_string()).is_none())
                .unwrap_or(true),
            _ => true,
        },
        _ => false,
    }
}

/// A place expression (a variable, a field, an element): borrowing it outlives the
/// statement that reads it.
fn is_place(e: &Expr) -> bool {
    match e {
        Expr::Path(_) => true,
        Expr::Field(f) => is_place(&f.base),
        Expr::Index(i) => is_place(&i.expr),
        Expr::Paren(p) => is_place(&p.expr),
        Expr::Reference(r) => is_place(&r.expr),
        _ => false,
    }
}

/// `DVector::zeros(n)` as `DVector::<S>::zeros(n)` (also `DMatrix`, `RowDVector`, and
/// `identity`), in data read as a value of the loss: plain Rust infers the element type
/// from the later uses, which the generated code's conversion to `S` hides. Constructors
/// that take an element (`from_element(n, 0.5)`) keep the element's own type.
fn with_scalar(e: &Expr, scalar: &syn::Type) -> Expr {
    struct V<'a>(&'a syn::Type);
    impl VisitMut for V<'_> {
        fn visit_expr_call_mut(&mut self, c: &mut syn::ExprCall) {
            if let Expr::Path(p) = &mut *c.func {
                let segs = &mut p.path.segments;
                let untyped =
                    segs.len() == 2 && ["zeros", "identity"].iter().any(|m| segs[1].ident == m);
                if p.qself.is_none() && untyped {
                    let first = &mut segs[0];
                    let generic = ["DVector", "DMatrix", "RowDVector"]
                        .iter()
                        .any(|t| first.ident == t);
                    if generic && first.arguments.is_none() {
                        let s = self.0;
                        first.arguments =
                            syn::PathArguments::AngleBracketed(syn::parse_quote!(::<#s>));
                    }
                }
            }
            syn::visit_mut::visit_expr_call_mut(self, c);
        }
    }
    let mut e = e.clone();
    V(scalar).visit_expr_mut(&mut e);
    e
}

/// `(a, b)` when `e` is `a + b` (in parentheses or not).
fn add_args(e: &Expr) -> Option<(&Expr, &Expr)> {
    match strip_ref(e) {
        Expr::Binary(b) if matches!(b.op, BinOp::Add(_)) => Some((&b.left, &b.right)),
        Expr::Group(g) => add_args(&g.expr),
        _ => None,
    }
}

/// `(logits, labels)` when `e` is `softmax_cross_entropy(logits, labels)` (the builtin,
/// as `lower_call` resolves it) or `logits.softmax_cross_entropy(labels)`.
fn cross_entropy_args(e: &Expr) -> Option<(&Expr, &Expr)> {
    const NAME: &str = "softmax_cross_entropy";
    match strip_ref(e) {
        Expr::Call(c) if c.args.len() == 2 => match &*c.func {
            Expr::Path(p) if p.qself.is_none() && is_builtin_path(&p.path, NAME) => {
                Some((&c.args[0], &c.args[1]))
            }
            _ => None,
        },
        Expr::MethodCall(m) if m.method == NAME && m.args.len() == 1 => {
            Some((&m.receiver, &m.args[0]))
        }
        Expr::Paren(p) => cross_entropy_args(&p.expr),
        Expr::Group(g) => cross_entropy_args(&g.expr),
        _ => None,
    }
}

/// `(table, ids)` when `e` is `embed(table, ids)` (the builtin, as `lower_call` resolves
/// it) or `table.embed(ids)`, in parentheses or not.
fn embed_args(e: &Expr) -> Option<(&Expr, &Expr)> {
    match strip_ref(e) {
        Expr::Call(c) if c.args.len() == 2 => match &*c.func {
            Expr::Path(p) if p.qself.is_none() && is_builtin_path(&p.path, "embed") => {
                Some((&c.args[0], &c.args[1]))
            }
            _ => None,
        },
        Expr::MethodCall(m) if m.method == "embed" && m.args.len() == 1 => {
            Some((&m.receiver, &m.args[0]))
        }
        Expr::Paren(p) => embed_args(&p.expr),
        Expr::Group(g) => embed_args(&g.expr),
        _ => None,
    }
}

/// `(x, geometry, w)` when `e` is `im2col(x, geometry) * w`.
fn conv_args(e: &Expr) -> Option<(&Expr, &Expr, &Expr)> {
    match strip_ref(e) {
        Expr::Binary(b) if matches!(b.op, BinOp::Mul(_)) => {
            im2col_args(&b.left).map(|(x, g)| (x, g, &*b.right))
        }
        Expr::Paren(p) => conv_args(&p.expr),
        Expr::Group(g) => conv_args(&g.expr),
        _ => None,
    }
}

/// `(x, geometry)` when `e` is `im2col(x, geometry)` (the builtin, as `lower_call`
/// resolves it), in parentheses or not.
fn im2col_args(e: &Expr) -> Option<(&Expr, &Expr)> {
    match e {
        Expr::Call(c) if c.args.len() == 2 => match &*c.func {
            Expr::Path(p) if p.qself.is_none() && is_builtin_path(&p.path, "im2col") => {
                Some((&c.args[0], &c.args[1]))
            }
            _ => None,
        },
        Expr::Paren(p) => im2col_args(&p.expr),
        Expr::Group(g) => im2col_args(&g.expr),
        _ => None,
    }
}

/// Whether `path` names the builtin `name`: the bare name, or a path through `lopt` or
/// `ops` ending in it.
fn is_builtin_path(path: &syn::Path, name: &str) -> bool {
    let last = &path.segments.last().expect("path").ident;
    last == name
        && (path.segments.len() == 1
            || path
                .segments
                .iter()
                .any(|s| s.ident == "ops" || s.ident == "lopt"))
}

/// Whether `e` is a call of `linear(x, w, b)` (`ops::linear`: its value is a matrix), in
/// parentheses or not.
fn is_linear_call(e: &Expr) -> bool {
    match strip_ref(e) {
        Expr::Call(c) if c.args.len() == 3 => {
            matches!(&*c.func, Expr::Path(p) if p.qself.is_none() && is_builtin_path(&p.path, "linear"))
        }
        Expr::Paren(p) => is_linear_call(&p.expr),
        Expr::Group(g) => is_linear_call(&g.expr),
        _ => false,
    }
}

/// `x` when `e` is `square(x)` or `x.square()`.
fn square_arg(e: &Expr) -> Option<&Expr> {
    match strip_ref(e) {
        Expr::Call(c) if c.args.len() == 1 => match &*c.func {
            Expr::Path(p) if p.path.is_ident("square") => Some(&c.args[0]),
            _ => None,
        },
        Expr::MethodCall(m) if m.method == "square" && m.args.is_empty() => Some(&m.receiver),
        _ => None,
    }
}

fn is_comparison(op: &BinOp) -> bool {
    matches!(
        op,
        BinOp::Lt(_) | BinOp::Le(_) | BinOp::Gt(_) | BinOp::Ge(_) | BinOp::Eq(_) | BinOp::Ne(_)
    )
}

/// A comparison with a float literal on one side compares scalars (lane masks).
fn has_float_lit(b: &syn::ExprBinary) -> bool {
    let lit = |e: &Expr| match strip_neg(e) {
        Expr::Lit(l) => matches!(l.lit, syn::Lit::Float(_)),
        _ => false,
    };
    lit(&b.left) || lit(&b.right)
}

fn strip_neg(e: &Expr) -> &Expr {
    match e {
        Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => strip_neg(&u.expr),
        Expr::Paren(p) => strip_neg(&p.expr),
        _ => e,
    }
}

fn strip_ref(e: &Expr) -> &Expr {
    match e {
        Expr::Reference(r) if r.mutability.is_none() => strip_ref(&r.expr),
        Expr::Paren(p) => strip_ref(&p.expr),
        _ => e,
    }
}

fn pat_ident(p: &Pat) -> Option<(syn::Ident, bool)> {
    match p {
        Pat::Ident(i) if i.by_ref.is_none() && i.subpat.is_none() => {
            Some((i.ident.clone(), i.mutability.is_some()))
        }
        Pat::Type(t) => pat_ident(&t.pat),
        _ => None,
    }
}

fn compound_op(op: &BinOp) -> Option<&'static str> {
    Some(match op {
        BinOp::AddAssign(_) => "Add",
        BinOp::SubAssign(_) => "Sub",
        BinOp::MulAssign(_) => "Mul",
        BinOp::DivAssign(_) => "Div",
        _ => return None,
    })
}

/// `t` with every token at `span` (so an error in it is reported there).
fn respan(t: TokenStream, span: proc_macro2::Span) -> TokenStream {
    t.into_iter()
        .map(|mut tt| {
            if let proc_macro2::TokenTree::Group(g) = &tt {
                let mut ng = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                ng.set_span(span);
                tt = proc_macro2::TokenTree::Group(ng);
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
}

pub fn op_marker(name: &str) -> TokenStream {
    let id = syn::Ident::new(name, proc_macro2::Span::call_site());
    quote!(::lopt::__private::ad::op::#id)
}

pub fn var_ident(v: VarId) -> syn::Ident {
    quote::format_ident!("__v{}", v)
}

pub fn slot_ident(s: SlotId) -> syn::Ident {
    quote::format_ident!("__m{}", s)
}

pub fn place_of(vars: &[Var], v: VarId) -> TokenStream {
    let id = var_ident(v);
    match vars[v].access {
        Access::Owned => quote!(#id),
        Access::Deref => quote!((*#id)),
    }
}

/// Names that are ever assigned from something that reads a differentiated value
/// (a fixpoint over the whole body, ignoring shadowing): their `let mut` is active.
fn active_names(block: &syn::Block, diff_args: &[DiffArg]) -> HashSet<String> {
    struct Collect {
        // (assigned name, names read by the right-hand side)
        edges: Vec<(String, HashSet<String>)>,
    }
    fn reads(e: &Expr) -> HashSet<String> {
        struct R(HashSet<String>);
        impl<'ast> Visit<'ast> for R {
            fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
                if builtins::is_shape_query(&m.method.to_string()) {
                    for a in &m.args {
                        self.visit_expr(a);
                    }
                } else {
                    syn::visit::visit_expr_method_call(self, m);
                }
            }
            fn visit_expr_path(&mut self, p: &'ast syn::ExprPath) {
                if let Some(i) = p.path.get_ident() {
                    self.0.insert(i.to_string());
                }
            }
        }
        let mut r = R(HashSet::new());
        r.visit_expr(e);
        r.0
    }
    impl<'ast> Visit<'ast> for Collect {
        fn visit_local(&mut self, l: &'ast syn::Local) {
            if let (Some((id, _)), Some(init)) = (pat_ident(&l.pat), &l.init) {
                self.edges.push((id.to_string(), reads(&init.expr)));
            }
            syn::visit::visit_local(self, l);
        }
        fn visit_expr_assign(&mut self, a: &'ast syn::ExprAssign) {
            if let Expr::Path(p) = &*a.left {
                if let Some(i) = p.path.get_ident() {
                    self.edges.push((i.to_string(), reads(&a.right)));
                }
            }
            syn::visit::visit_expr_assign(self, a);
        }
        fn visit_expr_binary(&mut self, b: &'ast syn::ExprBinary) {
            if compound_op(&b.op).is_some() {
                if let Expr::Path(p) = &*b.left {
                    if let Some(i) = p.path.get_ident() {
                        self.edges.push((i.to_string(), reads(&b.right)));
                    }
                }
            }
            syn::visit::visit_expr_binary(self, b);
        }
        fn visit_expr_if(&mut self, i: &'ast syn::ExprIf) {
            syn::visit::visit_expr_if(self, i);
        }
    }
    let mut c = Collect { edges: Vec::new() };
    c.visit_block(block);
    let mut active: HashSet<String> = diff_args.iter().map(|a| a.ident.to_string()).collect();
    loop {
        let before = active.len();
        for (name, rs) in &c.edges {
            if !active.contains(name) && rs.iter().any(|r| active.contains(r)) {
                active.insert(name.clone());
            }
        }
        if active.len() == before {
            return active;
        }
    }
}
