//! The small model a loss is parsed into: single-assignment statements over variables,
//! with structured `for` loops and `if`/`else` kept as blocks.

use proc_macro2::TokenStream;

/// Index of a variable in [`Func::vars`].
pub type VarId = usize;
/// Index of a mutable slot (a `let mut` or the value of an `if`).
pub type SlotId = usize;

/// What a variable holds and how the derivative passes treat it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Depends on a differentiated argument: has a tangent and an adjoint.
    Active,
    /// Data converted to the scalar type (batch/config fields, literals): no derivative.
    Const,
    /// A raw non-differentiable value (an op's argument, a helper's data argument).
    Opaque,
}

/// How the generated code reaches the value of a variable.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// `__vN` owns the value.
    Owned,
    /// `__vN` is a reference (argument reads) or a `Cow` (borrowed data): use `(*__vN)`.
    Deref,
}

#[derive(Clone, Debug)]
pub struct Var {
    pub kind: Kind,
    pub access: Access,
    /// Block depth at which it is defined (0 = function body: never taped).
    pub depth: usize,
}

/// How a helper-call argument is passed.
#[derive(Clone, Debug)]
pub struct CallArg {
    pub var: VarId,
    /// The user wrote `&arg`.
    pub by_ref: bool,
    /// The argument is a reference-typed argument of the caller passed on unchanged.
    pub is_ref_value: bool,
}

#[derive(Clone, Debug)]
pub enum Rhs {
    /// `<A as Binary<op, B>>`.
    Binary { op: TokenStream, a: VarId, b: VarId },
    /// `select(mask, a, b)`: `<M as Where<A, B>>` (the mask is never differentiated).
    Select { mask: VarId, a: VarId, b: VarId },
    /// `<X as Unary<Op>>` with the op value held in an opaque variable.
    Unary { op: VarId, x: VarId },
    /// A read of differentiated argument `arg` followed by a field path (`.w1.b`).
    ArgRead { arg: usize, path: TokenStream },
    /// The current value of a mutable slot.
    SlotRead(SlotId),
    /// A call of a `#[differentiable]` helper; with `with_out`, its `vjp` also takes the
    /// call's value (before the cotangent).
    Call {
        func: syn::Path,
        args: Vec<CallArg>,
        with_out: bool,
    },
    /// Converted data: `Data::<S>::data(&(expr))`; `borrow` keeps the `Cow` borrowed.
    Data { expr: TokenStream, borrow: bool },
    /// A literal in the scalar type.
    Lit(TokenStream),
    /// A raw expression (opaque value).
    Raw(TokenStream),
}

#[derive(Clone, Debug)]
pub enum Stmt {
    /// `let __vN = rhs;`
    Def { var: VarId, rhs: Rhs },
    /// Non-differentiable statement, emitted as written (after renaming).
    Passive(TokenStream),
    /// Declares a mutable slot, initialised from a variable (or left for later: the value
    /// of an `if` expression, assigned in both branches).
    SlotDecl { slot: SlotId, init: Option<VarId> },
    /// `slot = var`.
    SlotSet { slot: SlotId, from: VarId },
    /// `for pat in lo..hi { body }`.
    For {
        id: usize,
        pat: TokenStream,
        lo: TokenStream,
        hi: TokenStream,
        body: Vec<Stmt>,
    },
    /// `if cond { then } else { els }`.
    If {
        id: usize,
        cond: Cond,
        then: Vec<Stmt>,
        els: Vec<Stmt>,
    },
}

/// Calls `f` on every statement of `stmts` and of the blocks nested in them, in program
/// order (a loop or `if` before its body).
pub fn for_each_stmt<'a>(stmts: &'a [Stmt], f: &mut impl FnMut(&'a Stmt)) {
    for s in stmts {
        f(s);
        match s {
            Stmt::For { body, .. } => for_each_stmt(body, f),
            Stmt::If { then, els, .. } => {
                for_each_stmt(then, f);
                for_each_stmt(els, f);
            }
            _ => {}
        }
    }
}

/// An `if` condition.
#[derive(Clone, Debug)]
pub enum Cond {
    /// A plain `bool` (non-differentiated data): the same for every lane.
    Bool(TokenStream),
    /// A lane mask (`<S as Real>::Mask`) from comparing scalars: lanes may disagree, and
    /// then both branches run and each lane keeps its own branch's values.
    Mask(TokenStream),
}

/// A differentiated argument.
#[derive(Clone, Debug)]
pub struct DiffArg {
    pub ident: syn::Ident,
    /// The argument's type is a reference (`&P`).
    pub is_ref: bool,
    /// The type of its gradient (the referent type).
    pub ty: syn::Type,
}

/// A lowered function body.
#[derive(Clone, Debug)]
pub struct Func {
    pub vars: Vec<Var>,
    pub body: Vec<Stmt>,
    pub result: VarId,
    pub n_loops: usize,
    pub n_ifs: usize,
}
