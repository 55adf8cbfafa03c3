//! Lane groups: many instances in the SIMD lanes of one value, and groups side by side on
//! Rayon threads. Every batched runner (vmap, multi-task training curves, PES's
//! antithetic unroll, FullEs) forms, pads and dispatches its groups here.
//!
//! - **Grouping**: [`LaneGroups::by_structure`] puts instances whose trees may share lanes
//!   ([`Params::same_structure`]: leaf shapes and `#[params(skip)]` fields) into groups
//!   of at most `width`, in order of first appearance; [`LaneGroups::in_order`] chunks
//!   instances as they come (estimators, whose tasks are of one shape per group).
//! - **Padding**: a group with fewer instances than lanes repeats its last instance in
//!   the unused lanes ([`LaneGroups::member`], [`padded`]), so every lane computes
//!   something well defined and nothing is read from the padding.
//! - **Packing**: [`set_lane`] / [`get_lane`] copy one instance into or out of a lane.
//! - **Width**: [`Width`] names the lane counts runners offer.
//! - **Dispatch**: [`map_groups`] and [`map_groups_mut`] run a function per group on the
//!   current Rayon pool; each group computes exactly what its instances compute alone, so
//!   results do not depend on the thread count.

use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::params::Params;
use crate::scalar::Real;

/// Writes instance `src` (plain `f32`) into lane `lane` of `dst`; the trees must have the
/// same leaves.
pub fn set_lane<P: Params, Q: Params<Scalar = f32>>(dst: &mut P, lane: usize, src: &Q) {
    debug_assert_eq!(dst.num_leaves(), src.num_leaves());
    for i in 0..dst.num_leaves() {
        let s = src.leaf(i);
        let d = dst.leaf_mut(i);
        assert_eq!(d.len(), s.len(), "set_lane: leaf {i} differs in size");
        for (x, &v) in d.iter_mut().zip(s) {
            x.set_lane(lane, v as f64);
        }
    }
}

/// Reads lane `lane` of `src` into the plain `f32` tree `dst` (same leaves).
pub fn get_lane<P: Params, Q: Params<Scalar = f32>>(src: &P, lane: usize, dst: &mut Q) {
    for i in 0..src.num_leaves() {
        let s = src.leaf(i);
        let d = dst.leaf_mut(i);
        assert_eq!(d.len(), s.len(), "get_lane: leaf {i} differs in size");
        for (x, v) in d.iter_mut().zip(s) {
            *x = v.lane(lane) as f32;
        }
    }
}

/// How batched runners lay instances out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// One instance at a time in plain `f32` (the serial reference).
    Serial,
    /// 8 instances per lane group.
    W8,
    /// 16 instances per lane group.
    W16,
}

impl Width {
    /// Instances per lane group (1 for [`Width::Serial`]).
    #[inline]
    pub fn lanes(self) -> usize {
        match self {
            Width::Serial => 1,
            Width::W8 => 8,
            Width::W16 => 16,
        }
    }
}

/// Whether two trees may share a lane group ([`Params::same_structure`]).
pub fn same_lane_group<P: Params>(a: &P, b: &P) -> bool {
    a.same_structure(b)
}

/// `items[l]` for lanes `0..lanes`, the last item repeated in lanes past the end (the
/// padding of a group with fewer instances than lanes).
pub fn padded<T: Clone>(items: &[T], lanes: usize) -> Vec<T> {
    (0..lanes)
        .map(|l| items[l.min(items.len() - 1)].clone())
        .collect()
}

/// Instances in lane groups, as spans of one index list (two allocations whatever their
/// number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneGroups {
    /// Instance indices, grouped.
    idx: Vec<usize>,
    /// `idx[ends[k - 1]..ends[k]]` is group `k`.
    ends: Vec<usize>,
}

impl LaneGroups {
    /// Instances `0..n` in groups of `width` as they come: group `k` holds
    /// `k·width..min((k+1)·width, n)`.
    pub fn in_order(n: usize, width: usize) -> LaneGroups {
        let w = width.max(1);
        LaneGroups {
            idx: (0..n).collect(),
            ends: (1..=n.div_ceil(w)).map(|k| (k * w).min(n)).collect(),
        }
    }

    /// `items` in groups of at most `width` whose members may share lanes
    /// ([`Params::same_structure`]), classes in order of first appearance, as few groups
    /// as possible. With `width` 1 structure does not matter.
    pub fn by_structure<P: Params>(items: &[P], width: usize) -> LaneGroups {
        let n = items.len();
        if width <= 1 {
            return LaneGroups::in_order(n, 1);
        }
        // Classes by comparison with each class's first member: families sample few
        // shapes, and a run of one class (the common case) compares with the last one.
        let mut classes: Vec<Vec<usize>> = Vec::new();
        let mut last = 0;
        for (i, item) in items.iter().enumerate() {
            let k = if !classes.is_empty() && items[classes[last][0]].same_structure(item) {
                last
            } else {
                match classes
                    .iter()
                    .position(|c| items[c[0]].same_structure(item))
                {
                    Some(k) => k,
                    None => {
                        classes.push(Vec::new());
                        classes.len() - 1
                    }
                }
            };
            classes[k].push(i);
            last = k;
        }
        let mut idx = Vec::with_capacity(n);
        let mut ends = Vec::with_capacity(n.div_ceil(width) + classes.len());
        for class in &classes {
            for chunk in class.chunks(width) {
                idx.extend_from_slice(chunk);
                ends.push(idx.len());
            }
        }
        LaneGroups { idx, ends }
    }

    /// The number of groups.
    #[inline]
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no groups.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The instances of group `k`, in lane order.
    #[inline]
    pub fn get(&self, k: usize) -> &[usize] {
        let start = if k == 0 { 0 } else { self.ends[k - 1] };
        &self.idx[start..self.ends[k]]
    }

    /// The instance in lane `lane` of group `k`: past the group's last instance, that
    /// instance again (padding).
    #[inline]
    pub fn member(&self, k: usize, lane: usize) -> usize {
        let g = self.get(k);
        g[lane.min(g.len() - 1)]
    }

    /// The groups in order.
    pub fn iter(&self) -> impl Iterator<Item = &[usize]> {
        (0..self.len()).map(move |k| self.get(k))
    }

    /// The groups as owned lists.
    pub fn to_vecs(&self) -> Vec<Vec<usize>> {
        self.iter().map(<[usize]>::to_vec).collect()
    }
}

/// Below this estimated time for the groups left after the first, [`map_groups`] runs
/// them on the calling thread: waking Rayon's workers costs tens of microseconds on a
/// busy machine, more than it saves on small work.
const INLINE_BELOW: Duration = Duration::from_micros(30);

/// `f(k)` for groups `0..n`, in order. The first runs on the calling thread and is timed;
/// the rest go to the Rayon pool unless they would take less than 30 µs in
/// all (or the pool has one thread).
pub fn map_groups<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if n == 0 {
        return Vec::new();
    }
    let t = Instant::now();
    let first = f(0);
    let rest = n - 1;
    let inline = rest == 0
        || rayon::current_num_threads() == 1
        || t.elapsed().saturating_mul(rest as u32) < INLINE_BELOW;
    let mut out = Vec::with_capacity(n);
    out.push(first);
    if inline {
        out.extend((1..n).map(&f));
    } else {
        out.par_extend((1..n).into_par_iter().map(&f));
    }
    out
}

/// `f(k, &mut groups[k])` for every group on the Rayon pool, results in order (groups
/// that carry state between calls, such as tasks in training).
pub fn map_groups_mut<G: Send, T: Send>(
    groups: &mut [G],
    f: impl Fn(usize, &mut G) -> T + Sync,
) -> Vec<T> {
    groups
        .par_iter_mut()
        .enumerate()
        .map(|(k, g)| f(k, g))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::DVector;

    #[test]
    fn in_order_chunks_and_pads_with_the_last_member() {
        let g = LaneGroups::in_order(10, 4);
        assert_eq!(
            g.to_vecs(),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
        );
        assert_eq!((g.member(2, 1), g.member(2, 3)), (9, 9));
        assert!(LaneGroups::in_order(0, 4).is_empty());
    }

    /// Classes in order of first appearance, each chunked (a mutation that groups by
    /// element count instead of shape puts the 2x3 and 3x2 matrices together and fails).
    #[test]
    fn by_structure_groups_equal_shapes_only() {
        let items: Vec<nalgebra::DMatrix<f32>> = [(2, 3), (3, 2), (2, 3), (2, 3), (3, 2)]
            .iter()
            .map(|&(r, c)| nalgebra::DMatrix::zeros(r, c))
            .collect();
        let g = LaneGroups::by_structure(&items, 2);
        assert_eq!(g.to_vecs(), vec![vec![0, 2], vec![3], vec![1, 4]]);
        let one = LaneGroups::by_structure(&items, 1);
        assert_eq!(one.len(), 5);
    }

    #[test]
    fn map_groups_keeps_order_on_any_pool() {
        for threads in [1, 2, 3] {
            let out = crate::on_threads(threads, || {
                map_groups(9, |k| DVector::from_element(2, k as f32))
            });
            assert_eq!(
                out.iter().map(|v| v[0] as usize).collect::<Vec<_>>(),
                (0..9).collect::<Vec<_>>()
            );
            let mut gs: Vec<usize> = (0..5).collect();
            let r = crate::on_threads(threads, || {
                map_groups_mut(&mut gs, |k, g| {
                    *g += 1;
                    k * 10
                })
            });
            assert_eq!((gs, r), (vec![1, 2, 3, 4, 5], vec![0, 10, 20, 30, 40]));
        }
    }
}
