//! The primitives a differentiable body may call, by name.

/// How a builtin maps onto the runtime's rule traits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Builtin {
    /// `Unary<op::Name>` with a unit marker.
    Unary(&'static str),
    /// `Unary<op::Powi(n)>`: second argument is a non-differentiable `i32`.
    Powi,
    /// `Binary<op::Name, _>`.
    Binary(&'static str),
    /// `Unary<op::SoftmaxCrossEntropy(labels)>`: second argument is integer labels.
    SoftmaxCrossEntropy,
    /// Explicit data conversion `data(x)`.
    Data,
    /// `x.clone()`: the same value.
    Identity,
    /// `stop_gradient(x)`: the value of `x`, treated as a constant.
    StopGradient,
}

/// Looks up a primitive by the name used in the loss.
pub fn lookup(name: &str) -> Option<Builtin> {
    use Builtin::*;
    Some(match name {
        "exp" => Unary("Exp"),
        "ln" => Unary("Ln"),
        "sqrt" => Unary("Sqrt"),
        "tanh" => Unary("Tanh"),
        "sin" => Unary("Sin"),
        "cos" => Unary("Cos"),
        "abs" => Unary("Abs"),
        "square" => Unary("Square"),
        "relu" => Unary("Relu"),
        "sigmoid" => Unary("Sigmoid"),
        "softplus" => Unary("Softplus"),
        "gelu" => Unary("Gelu"),
        "sum" => Unary("Sum"),
        "mean" => Unary("Mean"),
        "norm_squared" => Unary("NormSquared"),
        "transpose" => Unary("Transpose"),
        "log_softmax" => Unary("LogSoftmax"),
        "log_sum_exp" => Unary("LogSumExp"),
        "powi" => Powi,
        "max" => Binary("Max"),
        "min" => Binary("Min"),
        "powf" => Binary("Powf"),
        "dot" => Binary("Dot"),
        "component_mul" => Binary("ComponentMul"),
        "component_div" => Binary("ComponentDiv"),
        "softmax_cross_entropy" => SoftmaxCrossEntropy,
        "data" => Data,
        "clone" => Identity,
        "stop_gradient" => StopGradient,
        _ => return None,
    })
}

/// Methods that read a value's shape; they are not differentiated.
pub fn is_shape_query(name: &str) -> bool {
    matches!(name, "nrows" | "ncols" | "len" | "shape" | "is_empty")
}

/// The list shown in "unsupported" errors.
pub const SUPPORTED: &str = "exp, ln, sqrt, tanh, sin, cos, abs, square, powi, powf, max, \
min, relu, sigmoid, softplus, gelu, sum, mean, dot, norm_squared, transpose, component_mul, \
component_div, log_softmax, log_sum_exp, softmax_cross_entropy, data, stop_gradient, and calls to \
#[differentiable] functions";
