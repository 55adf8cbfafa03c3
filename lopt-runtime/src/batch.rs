//! Batched task instances: the Rust form of `jax.vmap` over a task family.
//!
//! Instances are packed into lane groups: every scalar of a group's parameters,
//! configurations and optimizer states is a [`Lanes<W>`] whose lane `i` belongs to
//! instance `i` of the group, so one instruction advances `W` instances. Instances whose
//! configurations have different shapes (a sampled hidden width) go to different groups;
//! groups run side by side on Rayon threads. Each group computes exactly what its
//! instances compute alone, in the same order, so results do not depend on the lane width
//! or the number of threads.
//!
//! The function to run is written once, generic over the scalar type ([`VmapFn`]), like
//! the seed's `train_task(cfg, key)`; [`vmap`] runs it over many configurations and keys.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::key::{Key, KeyOps};
use crate::lanes::Lanes;
use crate::params::Params;
use crate::scalar::Real;
use crate::task::TaskFamily;

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

/// Family operations on lane-packed values.
pub trait FamilyLanes: TaskFamily {
    /// Packs configurations (all of one shape, at most `S::LANES`) into one; unused lanes
    /// repeat the last instance.
    fn pack_cfg<S: Real>(&self, cfgs: &[&Self::Cfg<f32>]) -> Self::Cfg<S> {
        let mut out = self.cast_cfg::<f32, S>(cfgs[0]);
        for lane in 0..S::LANES {
            set_lane(&mut out, lane, cfgs[lane.min(cfgs.len() - 1)]);
        }
        out
    }
    /// Packs parameters like [`FamilyLanes::pack_cfg`].
    fn pack_params<S: Real>(&self, ps: &[&Self::Params<f32>]) -> Self::Params<S> {
        let mut out = self.cast_params::<f32, S>(ps[0]);
        for lane in 0..S::LANES {
            set_lane(&mut out, lane, ps[lane.min(ps.len() - 1)]);
        }
        out
    }
    /// The configuration of lane `lane`.
    fn unpack_cfg<S: Real>(&self, cfg: &Self::Cfg<S>, lane: usize) -> Self::Cfg<f32> {
        let mut out = self.cast_cfg::<S, f32>(cfg);
        get_lane(cfg, lane, &mut out);
        out
    }
    /// The parameters of lane `lane`.
    fn unpack_params<S: Real>(&self, p: &Self::Params<S>, lane: usize) -> Self::Params<f32> {
        let mut out = self.cast_params::<S, f32>(p);
        get_lane(p, lane, &mut out);
        out
    }
}

impl<F: TaskFamily + ?Sized> FamilyLanes for F {}

/// A function of one task instance, written once for every scalar type, that [`vmap`]
/// runs over many instances at once (the seed's `train_task(cfg, key)`).
pub trait VmapFn<F: TaskFamily>: Sync {
    /// Runs on the instances packed in `cfg` (one per lane of `S`) with one key per lane
    /// (`S::Key`: a plain [`Key`] when `S` is `f32`).
    fn call<S: Real>(&self, family: &F, cfg: &F::Cfg<S>, keys: S::Key) -> S;
}

/// How [`vmap`] lays instances out.
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
    pub fn lanes(self) -> usize {
        match self {
            Width::Serial => 1,
            Width::W8 => 8,
            Width::W16 => 16,
        }
    }
}

/// The lane groups [`vmap`] forms at `width`: indices into `cfgs`, each group holding
/// instances of one shape, in order of first appearance, at most `width.lanes()` per
/// group (so as few groups as possible).
///
/// Two configurations have one shape when their leaves have the same shapes and their
/// skipped (`#[params(skip)]`) fields are equal, as their `Debug` output shows with every
/// leaf zeroed. A configuration that is a bare leaf (a scalar, `Vec`, array or matrix:
/// one leaf with an empty name) is compared by leaf shape alone, without formatting.
pub fn lane_groups<P: Params>(cfgs: &[P], width: Width) -> Vec<Vec<usize>> {
    let g = Groups::new(cfgs, width.lanes());
    g.iter().map(<[usize]>::to_vec).collect()
}

/// Lane groups as spans of one index list (two allocations whatever their number).
struct Groups {
    /// Instance indices, grouped.
    idx: Vec<usize>,
    /// `idx[ends[k - 1]..ends[k]]` is group `k`.
    ends: Vec<usize>,
}

impl Groups {
    fn new<P: Params>(cfgs: &[P], w: usize) -> Self {
        let n = cfgs.len();
        if w == 1 {
            // One instance per group: shapes do not matter.
            return Groups {
                idx: (0..n).collect(),
                ends: (1..=n).collect(),
            };
        }
        let classes = shape_classes(cfgs);
        let mut idx = Vec::with_capacity(n);
        let mut ends = Vec::with_capacity(n.div_ceil(w) + classes.len());
        for class in &classes {
            for chunk in class.chunks(w) {
                idx.extend_from_slice(chunk);
                ends.push(idx.len());
            }
        }
        Groups { idx, ends }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, k: usize) -> &[usize] {
        let start = if k == 0 { 0 } else { self.ends[k - 1] };
        &self.idx[start..self.ends[k]]
    }

    fn iter(&self) -> impl Iterator<Item = &[usize]> {
        (0..self.len()).map(move |k| self.get(k))
    }
}

/// True for a bare leaf (no field names, hence no skipped fields).
fn is_bare_leaf<P: Params>(p: &P) -> bool {
    let mut name = String::new(); // does not allocate unless written to
    p.num_leaves() == 1 && {
        p.write_leaf_name(0, &mut name);
        name.is_empty()
    }
}

/// Whether two configurations may share a lane group: the rule of [`lane_groups`] for a
/// pair (leaf shapes, and for structs the skipped fields too, which lanes cannot differ
/// in since packing copies leaves only).
pub(crate) fn same_lane_group<P: Params>(a: &P, b: &P) -> bool {
    if is_bare_leaf(a) {
        a.same_shape(b)
    } else {
        format!("{:?}", a.zeros_like()) == format!("{:?}", b.zeros_like())
    }
}

/// Instance indices by shape, classes in order of first appearance.
fn shape_classes<P: Params>(cfgs: &[P]) -> Vec<Vec<usize>> {
    if cfgs.iter().all(is_bare_leaf) {
        // The common case, all of one shape, without a shape allocated per instance.
        if cfgs.iter().all(|c| c.same_shape(&cfgs[0])) {
            return vec![(0..cfgs.len()).collect()];
        }
        let mut classes = Classes::default();
        for (i, c) in cfgs.iter().enumerate() {
            classes.add(i, c.leaf_shape(0));
        }
        classes.members
    } else {
        // Skipped fields only show in `Debug`: format each zeroed tree.
        let mut classes = Classes::default();
        for (i, c) in cfgs.iter().enumerate() {
            classes.add(i, format!("{:?}", c.zeros_like()));
        }
        classes.members
    }
}

/// Instances sorted into classes by key, classes in order of first appearance.
struct Classes<K> {
    index: HashMap<K, usize>,
    members: Vec<Vec<usize>>,
    /// The key and class of the previous instance: runs of equal keys skip the hashing.
    last: Option<(K, usize)>,
}

impl<K> Default for Classes<K> {
    fn default() -> Self {
        Classes {
            index: HashMap::new(),
            members: Vec::new(),
            last: None,
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Classes<K> {
    fn add(&mut self, i: usize, key: K) {
        let k = match &self.last {
            Some((last, k)) if *last == key => *k,
            _ => {
                let next = self.members.len();
                let k = *self.index.entry(key.clone()).or_insert(next);
                if k == next {
                    self.members.push(Vec::new());
                }
                self.last = Some((key, k));
                k
            }
        };
        self.members[k].push(i);
    }
}

/// Below this estimated time for the groups left after the first, [`vmap`] runs them on
/// the calling thread: waking Rayon's workers costs tens of microseconds on a busy
/// machine, more than it saves on small work.
const INLINE_BELOW: Duration = Duration::from_micros(30);

fn run_groups<F, Fun, S>(family: &F, f: &Fun, cfgs: &[F::Cfg<f32>], keys: &[Key]) -> Vec<f32>
where
    F: TaskFamily,
    Fun: VmapFn<F>,
    S: Real,
{
    let groups = Groups::new(cfgs, S::LANES);
    let run = |g: &[usize]| -> S {
        let refs: Vec<&F::Cfg<f32>> = g.iter().map(|&i| &cfgs[i]).collect();
        let cfg = family.pack_cfg::<S>(&refs);
        // Unused lanes repeat the last instance, as `pack_cfg` does.
        let lane_keys = (0..S::LANES)
            .map(|l| keys[g[l.min(g.len() - 1)]])
            .collect::<Vec<_>>();
        f.call::<S>(family, &cfg, S::Key::from_lane_keys(&lane_keys))
    };
    let mut out = vec![0.0f32; cfgs.len()];
    let mut write = |g: &[usize], v: S| {
        for (lane, &i) in g.iter().enumerate() {
            out[i] = v.lane(lane) as f32;
        }
    };
    // The first group on this thread, timed to decide whether the rest is worth spreading.
    let t = Instant::now();
    write(groups.get(0), run(groups.get(0)));
    let rest = groups.len() - 1;
    let inline = rest == 0
        || rayon::current_num_threads() == 1
        || t.elapsed().saturating_mul(rest as u32) < INLINE_BELOW;
    if inline {
        for k in 1..groups.len() {
            write(groups.get(k), run(groups.get(k)));
        }
    } else {
        let vals: Vec<S> = (1..groups.len())
            .into_par_iter()
            .map(|k| run(groups.get(k)))
            .collect();
        for (k, v) in (1..groups.len()).zip(vals) {
            write(groups.get(k), v);
        }
    }
    out
}

/// Runs `f` over every (configuration, key) pair, batched `width` instances per lane
/// group ([`lane_groups`]), lane groups spread over the current Rayon pool (or run on the
/// calling thread when they are too quick to be worth it). Returns one value per
/// instance, in order. The same instance gives the same value at every width and thread
/// count.
///
/// Errors when `cfgs` and `keys` differ in length.
pub fn vmap<F, Fun>(
    family: &F,
    f: &Fun,
    cfgs: &[F::Cfg<f32>],
    keys: &[Key],
    width: Width,
) -> Result<Vec<f32>>
where
    F: TaskFamily,
    Fun: VmapFn<F>,
{
    if cfgs.len() != keys.len() {
        return Err(Error::ShapeMismatch {
            what: "vmap: configurations and keys".into(),
            expected: vec![cfgs.len()],
            got: vec![keys.len()],
        });
    }
    if cfgs.is_empty() {
        return Ok(Vec::new());
    }
    Ok(match width {
        Width::Serial => run_groups::<F, Fun, f32>(family, f, cfgs, keys),
        Width::W8 => run_groups::<F, Fun, Lanes<8>>(family, f, cfgs, keys),
        Width::W16 => run_groups::<F, Fun, Lanes<16>>(family, f, cfgs, keys),
    })
}
