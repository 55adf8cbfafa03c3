//! The loss language: every primitive a `#[task]`, `#[task_family]` or
//! `#[differentiable]` body may call, its operands and result, its JAX equivalent, and
//! what the macro fuses.
//!
//! A loss is ordinary Rust over a parameter struct (its first argument, differentiated);
//! every other argument is data, converted to the loss's scalar type `S` where it meets
//! the parameters. Values are scalars `S`, vectors and matrices of `S` (nalgebra).
//! Batched activations are matrices with one row per example (or per example and
//! position: `n·H·W + h·W + w` for NHWC images, one matrix per time step for sequences)
//! and one column per feature or channel; the geometry is data passed to the primitives
//! that need it. Every primitive has exact forward-mode and reverse-mode rules on `f32`,
//! `f64` and [`Lanes`](crate::lanes::Lanes) (each lane its own instance), and each is also
//! a plain function in [`crate::ops`].
//!
//! Shapes: `S` a scalar, `M` any matrix or vector, `D` a `DMatrix` (`B × F`), `v` a
//! `DVector` or `RowDVector`. A shape mismatch panics with a message naming the operation
//! and both shapes.
//!
//! # Operators and language forms
//!
//! | written | operands → result | JAX |
//! |---|---|---|
//! | `a + b`, `a - b` | `S∘S`, `M∘M`, `M∘S`, `S∘M`; `D ∘ v` (bias, `v` one entry per column, broadcast over rows) | `a + b`, `a - b` |
//! | `a * b` | `S·S`, `M·S`, `S·M` (scaling); `M·M` (matrix product) | `a * b`, `a @ b` |
//! | `a / b` | `S/S`, `M/S`, `S/M` | `a / b` |
//! | `-x` | `S`, `M` | `-x` |
//! | `v[i]`, `m[(i, j)]` | `M` → `S` (`v[i]` is column-major on a matrix) | `x[i]`, `x[i, j]` |
//! | `a > b`, `a >= b`, `a < b`, `a <= b` | as `+`; a mask: 1 where true, 0 where false, never differentiated | `a > b` |
//! | `m1 && m2`, `m1 \|\| m2`, `!m` | masks (non-zero = true) | `&`, `\|`, `~` |
//! | `if c { .. } else { .. }` | `c` a comparison of scalars or a `bool` of data; lanes that disagree run both branches | `lax.cond` / `jnp.where` on scalars |
//! | `for i in lo..hi` | bounds from data; reverse mode keeps each step's values on a stack | `lax.fori_loop`, `lax.scan` |
//! | `stop_gradient(x)` | any → same | `lax.stop_gradient` |
//! | `data(x)` | data → `S` values (to pass data into a `#[differentiable]` helper) | — |
//! | `x.clone()` | any → same | — |
//!
//! An `if` whose condition compares matrices or vectors is one compile error at the
//! condition that names `select`.
//!
//! # Elementwise, one operand (`S` → `S`, `M` → `M`)
//!
//! | primitive | JAX |
//! |---|---|
//! | `neg` | `jnp.negative` |
//! | `exp`, `ln`, `sqrt` | `jnp.exp`, `jnp.log`, `jnp.sqrt` |
//! | `tanh`, `sin`, `cos`, `atan` | `jnp.tanh`, `jnp.sin`, `jnp.cos`, `jnp.arctan` |
//! | `abs`, `square` | `jnp.abs`, `jnp.square` (derivative of `abs` at 0: 0) |
//! | `relu`, `sigmoid`, `softplus`, `gelu` | `jax.nn.relu`, `jax.nn.sigmoid`, `jax.nn.softplus`, `jax.nn.gelu(approximate=False)` |
//! | `log1p`, `expm1`, `erf` | `jnp.log1p`, `jnp.expm1`, `jax.scipy.special.erf` |
//! | `gelu_tanh` | `jax.nn.gelu(approximate=True)` (the JAX library's transformer MLP) |
//! | `powi(x, n)` | `x ** n`, `n` an integer from data |
//! | `clip(x, lo, hi)` | `jnp.clip`; `lo`, `hi` scalars from data or literals; derivative 1 inside, 0 outside, ½ at exactly `lo` or `hi` (as JAX's) |
//!
//! # Elementwise, two operands (`S∘S`, `M∘M`, `M∘S`, `S∘M`)
//!
//! | primitive | JAX |
//! |---|---|
//! | `max(a, b)`, `min(a, b)` | `jnp.maximum`, `jnp.minimum`; at ties the derivative goes to `a` (JAX splits it ½, ½) |
//! | `powf(a, b)` | `a ** b` (`S^S`, `M^S`) |
//! | `logaddexp(a, b)` | `jnp.logaddexp`, stable; derivative `e^(a−y)`, `e^(b−y)` |
//! | `component_mul(a, b)`, `component_div(a, b)` | `a * b`, `a / b` (`M∘M` only) |
//! | `scale_columns(x, s)` | `x * s` with `s` a `[features]` vector broadcast over the rows (`D`, `v` → `D`): the learned scale of `hk.LayerNorm` / `hk.RMSNorm` |
//! | `select(mask, a, b)` | `jnp.where(mask, a, b)`: the gradient reaches the chosen side only; `mask` a comparison or data of `a`'s shape, `a`/`b` matrices of that shape or scalars |
//!
//! # Reductions and shape
//!
//! | primitive | operands → result | JAX |
//! |---|---|---|
//! | `sum`, `mean`, `norm_squared` | `M` → `S` | `jnp.sum`, `jnp.mean`, `jnp.sum(x**2)` |
//! | `dot(a, b)` | `M·M` (same shape) → `S` | `jnp.vdot` |
//! | `log_sum_exp` | `M` → `S`, all elements | `jax.nn.logsumexp` |
//! | `log_softmax` | `D` → `D` per row; a column vector whole | `jax.nn.log_softmax(axis=-1)` |
//! | `transpose` | `R × C` → `C × R` | `x.T` |
//! | `x.rows(i, n)` | `D` → `n` rows; a column vector's segment | `x[i:i+n]` |
//! | `x.columns(j, n)` | `D` → `n` columns; a row vector's segment | `x[:, j:j+n]` |
//! | `hconcat(a, b)` | `R × C1`, `R × C2` → `R × (C1+C2)` (matrices, row vectors) | `jnp.concatenate([a, b], axis=1)` |
//! | `vconcat(a, b)` | `R1 × C`, `R2 × C` → `(R1+R2) × C` (matrices, column vectors) | `jnp.concatenate([a, b], axis=0)` |
//! | `reshape(x, r, c)` | `D` → `r × c`, row-major order (a copy) | `jnp.reshape(x, (r, c))` |
//!
//! # Losses, gathers, normalization, convolution (second argument data)
//!
//! | primitive | operands → result | JAX |
//! |---|---|---|
//! | `softmax_cross_entropy(z, labels)` | `B × K` logits, `B` integer labels (`u8`, `u16`, `u32`, `i32`, `i64`, `usize`; a float type is a compile error at the argument) → `DVector` of `B` losses | `optax.softmax_cross_entropy_with_integer_labels` |
//! | `embed(&table, &ids)` | `V × F` table, `N` integer ids → `N × F` (scatter-add in reverse) | `hk.Embed`, `jnp.take(table, ids, axis=0)` |
//! | `take_along(x, &idx)` | `B × K`, `B` integer indices → `DVector` of `B` | `jnp.take_along_axis(x, idx[:, None], 1)` |
//! | `layer_norm(x, eps)`, `rms_norm(x, eps)` | `D` → `D`, each row | `hk.LayerNorm`, `hk.RMSNorm` without scale and offset |
//! | `im2col(x, &g)` | NHWC rows → one row per output position, `kh·kw·C` columns; a convolution is `im2col(x, &g) * w + b` (HWIO `w`) | `lax.conv_general_dilated` (`SAME` with TensorFlow's padding, `VALID`) |
//! | `avg_pool(x, &g)`, `max_pool(x, &g)` | NHWC rows → pooled rows | `hk.avg_pool`, `hk.max_pool` |
//! | `global_mean_pool(x, positions)` | `N·H·W × C` → `N × C` | `jnp.mean(x, axis=(1, 2))` |
//! | `causal_self_attention(qkv, &g)` | `B·T × 3·H·d` rows `b·T + t`, columns `[q \| k \| v]` → `B·T × H·d` (heads concatenated); `g` an `AttentionGeometry` | haiku `MultiHeadAttention`'s core with a causal mask (`key_size` `d`, logits `/ √d`, masked to −1e30, softmax over keys); one fused rule |
//! | `lstm_sequence(&xw, &wh, &h0, &c0)` (`use lopt::ops::lstm_sequence`; four differentiated operands) | `xw` `T·B × 4H` (rows `t·B + b`, the input's gate pre-activations `x W_x + b`, gates `i, g, f, o`), `wh` `H × 4H`, `h0`, `c0` `B × H` → every step's `h`, `T·B × H` | `hk.dynamic_unroll(hk.LSTM(H))` (forget bias `+1`); one rule: the batch in fixed row chunks on the thread pool, the forward pass kept for the reverse one, `dW_h` as one product over the steps |
//! | `lstm_projected(x, &wx, &b, &wh, &h0, &c0)` (no import: the macro calls the rule, telling it which operands are differentiated) | `x` `T·B × E` (rows `t·B + b`), `wx` `E × 4H`, `b` `4H` entries, `wh`, `h0`, `c0` as for `lstm_sequence` → every step's `h`, `T·B × H` | `hk.dynamic_unroll(hk.LSTM(H))` with the input weights inside the cell; `lstm_sequence` of `x·wx + b` with the projection made step by step inside the rule (the `T·B × 4H` product and its cotangent never stored; `x`'s and `wx`'s cotangents only when differentiated) |
//! | `linear(&x, &w, &b)` (`use lopt::ops::linear`) | `x` `B × K`, `w` `K × N`, `b` a vector of `N` → `B × N` | `hk.Linear`; one rule: the bias added by the GEMM to each block while it is in registers, values `x * w + b`'s bit for bit |
//! | `layer_norm_affine(&x, &s, &o, eps)` (`use lopt::ops::layer_norm_affine`) | `x` `B × D`, `s`, `o` vectors of `D` → `B × D` | `hk.LayerNorm(axis=-1, create_scale=True, create_offset=True)`; one rule: one pass writes the value, the reverse recomputes `x̂`; bit for bit `scale_columns(layer_norm(x, eps), s) + o` |
//!
//! # Fused compositions
//!
//! The macro lowers these compositions, written directly (not through a `let`), to one
//! rule each with one pass:
//!
//! | written | fused rule |
//! |---|---|
//! | `relu(a + b)` | `AddRelu`: no `a + b` intermediate, the mask read off the output |
//! | `sum(square(x))` | `NormSquared`: no squared intermediate |
//! | `mean(softmax_cross_entropy(z, labels))` | `MeanSoftmaxCrossEntropy`: the loss sweep also makes the gradient, kept for the reverse sweep |
//! | `im2col(x, &g) * w` | `ad::conv::im2col_mul`: the convolution formed a cache-sized block of patches at a time (no patch matrix), chunks of images on the thread pool; the reverse rule skips the product of an undifferentiated `x` or `w` |
//! | `dot(embed(t, ids), r)` (either order, call or method form) | `ad::gather::embed_dot`: the looked-up rows never stored: the value is `⟨t, scatter_add(r, ids)⟩`, the table's cotangent the scatter-add of `g·r` straight from `r` (what XLA does to `jnp.vdot(t[ids], r)`) |
//! | `relu(im2col(x, &g) * w + b)` | `ad::conv::im2col_mul_add_relu`: the convolution with its bias and ReLU applied to each block of the product while it is in cache; the reverse rule takes the mask and the bias gradient while it copies each block of the cotangent (bias sums per fixed chunk of images, added in chunk order: the same on any number of threads) |
//! | `gelu_tanh(linear(x, w, b))` (call form, in parentheses or not) | `op::GeluTanhKeep`: on `f32` the value's pass also computes `gelu_tanh'` (one `tanh` per element for both) and keeps it; the reverse sweep multiplies the cotangent by it instead of computing the `tanh` again (the same bits as `gelu_tanh`'s rule) |
//! | `lstm_sequence(&embed(&t, ids), &wh, &h0, &c0)` (call or method form of the lookup, written inside the call) | `ad::lstm::lstm_embedded`: each step's gate block gathered from the table's rows by the ids (the table in cache), the reverse sweep scattering `dz_t` into each chunk's own part of the table's cotangent (summed in chunk order): the `T·B × 4H` rows and their cotangent never stored |
//!
//! Matrix products run on the project's GEMM (`f32`, `f64` and lanes); elementwise rules
//! write cotangents into the buffer of the output cotangent they replace.
//!
//! # Adding a primitive
//!
//! Each primitive is declared once, in `lopt-runtime/src/primitives/declared.rs` (see
//! [`crate::primitives`]); the macros receive the names from there. Add its row to this page
//! and to the README's table: `tests/language_reference.rs` checks that every declared
//! primitive appears in both.
