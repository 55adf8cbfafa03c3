//! The checkpoint file: named arrays of `f32` and `u64` behind a header that says what
//! setup wrote them, saved atomically and durably.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `LOPTCKPT` |
//! | 4 | format version ([`FORMAT_VERSION`]) |
//! | 8 | header length `h` |
//! | `h` | header, JSON: lopt's version, the setup (what the run was), the sections' names, kinds and lengths |
//! | … | the sections' values, in order: raw `f32` or `u64` |
//! | 8 | FNV-1a 64 of everything before |
//!
//! Values are raw little-endian numbers rather than JSON text: an `f32` round-trips bit
//! for bit with no decimal conversion, a θ of 2.3 million values is 9 MB instead of about
//! 25, and loading it is a copy rather than a parse (see the README's measurement). The
//! header stays readable (`head -c 4096 file`).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::params::Params;

/// What a checkpoint belongs to: named descriptions, in order (lopt's version, the learned
/// optimizer, θ's leaves, ...).
pub type Setup = Vec<(String, String)>;

/// The version of the checkpoint layout this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC: &[u8; 8] = b"LOPTCKPT";

#[derive(Debug, Clone, PartialEq)]
enum Values {
    F32(Vec<f32>),
    U64(Vec<u64>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SectionHeader {
    name: String,
    kind: String,
    len: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    lopt_version: String,
    setup: Setup,
    sections: Vec<SectionHeader>,
}

/// A checkpoint in memory: the setup it belongs to and named arrays of values.
///
/// ```
/// use lopt_runtime::outer_trainers::Checkpoint;
///
/// let mut ck = Checkpoint::new();
/// ck.set_setup("learned optimizer", "MlpLOpt".into());
/// ck.put_f32("theta", vec![0.5, -1.0])?;
/// ck.put_u64("outer_iteration", vec![7])?;
/// let path = std::env::temp_dir().join("lopt_doc_checkpoint.bin");
/// ck.save(&path)?;
/// let back = Checkpoint::load(&path)?;
/// assert_eq!(back.f32s("theta", 2)?, &[0.5, -1.0]);
/// assert_eq!(back.u64("outer_iteration")?, 7);
/// // Non-finite values are refused when saving, naming where they are.
/// assert!(ck.put_f32("bad", vec![1.0, f32::NAN]).is_err());
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), lopt_runtime::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    setup: Setup,
    sections: Vec<(String, Values)>,
    index: HashMap<String, usize>,
    source: String,
}

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint::new()
    }
}

impl Checkpoint {
    /// An empty checkpoint.
    pub fn new() -> Checkpoint {
        Checkpoint {
            setup: Setup::new(),
            sections: Vec::new(),
            index: HashMap::new(),
            source: "(checkpoint in memory)".into(),
        }
    }

    /// Records one fact of the setup that wrote it (`what` → a description), replacing
    /// an earlier one of the same name.
    pub fn set_setup(&mut self, what: &str, description: String) {
        match self.setup.iter_mut().find(|(k, _)| k == what) {
            Some((_, d)) => *d = description,
            None => self.setup.push((what.to_string(), description)),
        }
    }

    /// The setup that wrote it, in the order recorded.
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    /// `Ok` when `current` describes the same setup; otherwise
    /// [`Error::CheckpointMismatch`] naming the first fact, in `current`'s order, that
    /// differs (a fact only one side has counts as differing).
    pub fn check_setup(&self, current: &Setup) -> Result<()> {
        let none = String::from("(nothing)");
        let get = |s: &'_ Setup, k: &str| -> Option<String> {
            s.iter().find(|(n, _)| n == k).map(|(_, d)| d.clone())
        };
        let keys = current
            .iter()
            .chain(self.setup.iter())
            .map(|(k, _)| k.as_str());
        for k in keys {
            let (saved, now) = (
                get(&self.setup, k).unwrap_or_else(|| none.clone()),
                get(current, k).unwrap_or_else(|| none.clone()),
            );
            if saved != now {
                let (saved, current) = differing_part(&saved, &now);
                return Err(Error::CheckpointMismatch {
                    what: k.to_string(),
                    saved,
                    current,
                });
            }
        }
        Ok(())
    }

    fn put(&mut self, name: &str, values: Values) -> Result<()> {
        if self.index.contains_key(name) {
            return Err(Error::InvalidArgument(format!(
                "checkpoint section `{name}` written twice"
            )));
        }
        self.index.insert(name.to_string(), self.sections.len());
        self.sections.push((name.to_string(), values));
        Ok(())
    }

    /// Stores `values` as section `name`. A NaN or infinite value is refused
    /// ([`Error::InvalidArgument`]) with the section and index: a run that produced one
    /// cannot be resumed into anything meaningful.
    pub fn put_f32(&mut self, name: &str, values: Vec<f32>) -> Result<()> {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "refusing to save non-finite value {} at index {i} of `{name}`",
                values[i]
            )));
        }
        self.put(name, Values::F32(values))
    }

    /// Stores `values` as section `name`.
    pub fn put_u64(&mut self, name: &str, values: Vec<u64>) -> Result<()> {
        self.put(name, Values::U64(values))
    }

    /// Stores every leaf of `p` as section `name`, refusing a non-finite element with the
    /// leaf's name and index.
    pub fn put_params<P: Params<Scalar = f32>>(&mut self, name: &str, p: &P) -> Result<()> {
        for i in 0..p.num_leaves() {
            if let Some(j) = p.leaf(i).iter().position(|v| !v.is_finite()) {
                let mut leaf = String::new();
                p.write_leaf_name(i, &mut leaf);
                return Err(Error::InvalidArgument(format!(
                    "refusing to save non-finite value {} in `{name}`, leaf `{leaf}` (#{i}), index {j}",
                    p.leaf(i)[j]
                )));
            }
        }
        self.put(name, Values::F32(p.flatten()))
    }

    fn missing(&self, name: &str, what: String) -> Error {
        Error::Checkpoint {
            path: self.source.clone(),
            message: format!("section `{name}`: {what}"),
        }
    }

    fn section(&self, name: &str) -> Result<&Values> {
        self.index
            .get(name)
            .map(|&i| &self.sections[i].1)
            .ok_or_else(|| self.missing(name, "missing".into()))
    }

    /// Section `name`, which must hold `len` `f32` values.
    pub fn f32s(&self, name: &str, len: usize) -> Result<&[f32]> {
        match self.section(name)? {
            Values::F32(v) if v.len() == len => Ok(v),
            Values::F32(v) => {
                Err(self.missing(name, format!("{} values where this run has {len}", v.len())))
            }
            Values::U64(_) => Err(self.missing(name, "integers where floats belong".into())),
        }
    }

    /// Section `name`, which must hold `len` `u64` values.
    pub fn u64s(&self, name: &str, len: usize) -> Result<&[u64]> {
        match self.section(name)? {
            Values::U64(v) if v.len() == len => Ok(v),
            Values::U64(v) => {
                Err(self.missing(name, format!("{} values where this run has {len}", v.len())))
            }
            Values::F32(_) => Err(self.missing(name, "floats where integers belong".into())),
        }
    }

    /// Section `name` of `f32` values, whatever its length.
    pub fn f32s_any(&self, name: &str) -> Result<&[f32]> {
        match self.section(name)? {
            Values::F32(v) => Ok(v),
            Values::U64(_) => Err(self.missing(name, "integers where floats belong".into())),
        }
    }

    /// Section `name` of `u64` values, whatever its length.
    pub fn u64s_any(&self, name: &str) -> Result<&[u64]> {
        match self.section(name)? {
            Values::U64(v) => Ok(v),
            Values::F32(_) => Err(self.missing(name, "floats where integers belong".into())),
        }
    }

    /// The names of the sections, in the order written.
    pub fn section_names(&self) -> Vec<&str> {
        self.sections.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Removes section `name` (to write it anew); false when there was none.
    pub fn remove(&mut self, name: &str) -> bool {
        let Some(i) = self.index.remove(name) else {
            return false;
        };
        self.sections.remove(i);
        for v in self.index.values_mut() {
            if *v > i {
                *v -= 1;
            }
        }
        true
    }

    /// The one value of section `name`.
    pub fn u64(&self, name: &str) -> Result<u64> {
        Ok(self.u64s(name, 1)?[0])
    }

    /// Section `name` as a count no larger than `max` (a larger one is refused: no run
    /// gets there, so the file is corrupt or not a checkpoint of this run).
    pub fn count(&self, name: &str, max: u64) -> Result<usize> {
        let v = self.u64(name)?;
        if v > max {
            return Err(self.missing(name, format!("{v} exceeds the largest plausible {max}")));
        }
        usize::try_from(v).map_err(|_| self.missing(name, format!("{v} does not fit in usize")))
    }

    /// Overwrites every leaf of `p` from section `name` (same number of elements).
    pub fn read_params<P: Params<Scalar = f32>>(&self, name: &str, p: &mut P) -> Result<()> {
        let v = self.f32s(name, p.num_elements())?;
        p.unflatten_from(v)
    }

    /// Writes the checkpoint to `path` atomically and durably: to a temporary file beside
    /// it, flushed to disk (`fsync`), renamed over `path`, and the directory flushed, so a
    /// crash or power loss leaves the old checkpoint or the new one, never a mix.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| Error::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let bytes = self.to_bytes()?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io)?;
        // The rename is durable once the directory's entry is on disk.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }

    /// The file's bytes (see the module docs for the layout).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let header = Header {
            lopt_version: env!("CARGO_PKG_VERSION").to_string(),
            setup: self.setup.clone(),
            sections: self
                .sections
                .iter()
                .map(|(name, v)| SectionHeader {
                    name: name.clone(),
                    kind: match v {
                        Values::F32(_) => "f32".into(),
                        Values::U64(_) => "u64".into(),
                    },
                    len: match v {
                        Values::F32(x) => x.len() as u64,
                        Values::U64(x) => x.len() as u64,
                    },
                })
                .collect(),
        };
        let json = serde_json::to_vec(&header).map_err(|e| Error::Data(e.to_string()))?;
        let payload: usize = self
            .sections
            .iter()
            .map(|(_, v)| match v {
                Values::F32(x) => 4 * x.len(),
                Values::U64(x) => 8 * x.len(),
            })
            .sum();
        let mut out = Vec::with_capacity(28 + json.len() + payload);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        for (_, v) in &self.sections {
            match v {
                Values::F32(x) => x
                    .iter()
                    .for_each(|f| out.extend_from_slice(&f.to_le_bytes())),
                Values::U64(x) => x
                    .iter()
                    .for_each(|u| out.extend_from_slice(&u.to_le_bytes())),
            }
        }
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        Ok(out)
    }

    /// Reads a checkpoint written by [`Checkpoint::save`].
    ///
    /// Errors ([`Error::Checkpoint`]): not a checkpoint, another format version, a
    /// truncated or altered file (length or checksum), a header whose sections do not add
    /// up to the file, a non-finite `f32` value. Nothing is allocated from a length the
    /// file cannot hold.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Checkpoint::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses the bytes of a checkpoint file; `source` names it in errors.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Checkpoint> {
        let bad = |message: String| Error::Checkpoint {
            path: source.to_string(),
            message,
        };
        if bytes.len() < 28 || &bytes[..8] != MAGIC {
            return Err(bad("not a lopt checkpoint (no LOPTCKPT header)".into()));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {version}; this build reads version {FORMAT_VERSION}"
            )));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        if fnv1a(body) != u64::from_le_bytes(sum.try_into().expect("8 bytes")) {
            return Err(bad(
                "checksum mismatch: the file is truncated or was altered".into(),
            ));
        }
        let hlen = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let rest = &body[20..];
        if hlen > rest.len() as u64 {
            return Err(bad(format!(
                "header of {hlen} bytes in a file of {}",
                bytes.len()
            )));
        }
        let (json, mut payload) = rest.split_at(hlen as usize);
        let header: Header =
            serde_json::from_slice(json).map_err(|e| bad(format!("header: {e}")))?;
        let mut need: u64 = 0;
        for s in &header.sections {
            let width = match s.kind.as_str() {
                "f32" => 4u64,
                "u64" => 8,
                k => return Err(bad(format!("section `{}` of unknown kind `{k}`", s.name))),
            };
            need = s
                .len
                .checked_mul(width)
                .and_then(|b| need.checked_add(b))
                .ok_or_else(|| bad(format!("section `{}` of absurd length {}", s.name, s.len)))?;
        }
        if need != payload.len() as u64 {
            return Err(bad(format!(
                "the header lists {need} bytes of values, the file holds {}",
                payload.len()
            )));
        }
        let mut ck = Checkpoint::new();
        ck.source = source.to_string();
        ck.setup = header.setup;
        for s in header.sections {
            let n = s.len as usize;
            let values = if s.kind == "f32" {
                let (raw, more) = payload.split_at(4 * n);
                payload = more;
                let v: Vec<f32> = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect();
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(bad(format!(
                        "section `{}` holds the non-finite value {} at index {i}",
                        s.name, v[i]
                    )));
                }
                Values::F32(v)
            } else {
                let (raw, more) = payload.split_at(8 * n);
                payload = more;
                Values::U64(
                    raw.chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect(),
                )
            };
            ck.put(&s.name, values)
                .map_err(|_| bad(format!("section `{}` appears twice", s.name)))?;
        }
        Ok(ck)
    }
}

/// The setting in which two long descriptions first differ (from the `{`, `,` or `(`
/// before the difference to the `,` or `}` after it), or both whole when short.
fn differing_part(a: &str, b: &str) -> (String, String) {
    if a.len().max(b.len()) <= 60 {
        return (a.to_string(), b.to_string());
    }
    let first = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i);
    let cut = |s: &str| {
        let start = s[..first.min(s.len())]
            .rfind([',', '{', '('])
            .map_or(0, |i| i + 1);
        let end = s[first.min(s.len())..]
            .find([',', '}', ')'])
            .map_or(s.len(), |i| i + first.min(s.len()));
        format!("…{}…", s[start..end].trim())
    };
    (cut(a), cut(b))
}

/// FNV-1a, 64 bits: detects truncation and stray edits (not an adversary).
fn fnv1a(bytes: &[u8]) -> u64 {
    // Eight independent lanes so the loop is not one long dependency chain, then folded.
    let mut h = [0xcbf2_9ce4_8422_2325u64; 8];
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        for (h, &b) in h.iter_mut().zip(c) {
            *h = (*h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    let mut out = 0xcbf2_9ce4_8422_2325u64;
    for b in h
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .chain(chunks.remainder().iter().copied())
    {
        out = (out ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut ck = Checkpoint::new();
        ck.set_setup("family", "quadratic".into());
        ck.put_f32("a", vec![1.5, -0.0, f32::MIN_POSITIVE / 2.0])
            .unwrap();
        ck.put_u64("n", vec![3, u64::MAX]).unwrap();
        ck
    }

    #[test]
    fn bytes_round_trip_bit_for_bit() {
        let ck = sample();
        let back = Checkpoint::from_bytes(&ck.to_bytes().unwrap(), "x").unwrap();
        let (a, b) = (ck.f32s("a", 3).unwrap(), back.f32s("a", 3).unwrap());
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert_eq!(back.u64s("n", 2).unwrap(), &[3, u64::MAX]);
        assert_eq!(back.setup(), ck.setup());
    }

    /// Every truncation and every single flipped byte is refused (a mutation that skips
    /// the checksum lets some through).
    #[test]
    fn truncated_or_altered_files_are_refused() {
        let bytes = sample().to_bytes().unwrap();
        for n in 0..bytes.len() {
            assert!(
                Checkpoint::from_bytes(&bytes[..n], "x").is_err(),
                "length {n}"
            );
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(
                matches!(
                    Checkpoint::from_bytes(&b, "x"),
                    Err(Error::Checkpoint { .. })
                ),
                "byte {i}"
            );
        }
    }

    #[test]
    fn wrong_lengths_and_kinds_are_errors_naming_the_section() {
        let ck = sample();
        let e = ck.f32s("a", 4).unwrap_err().to_string();
        assert!(e.contains("`a`") && e.contains("3 values"), "{e}");
        assert!(ck.u64s("a", 3).is_err());
        assert!(ck
            .f32s("missing", 1)
            .unwrap_err()
            .to_string()
            .contains("missing"));
        assert!(ck.count("n", 10).is_err());
    }

    #[test]
    fn setup_differences_are_named() {
        let ck = sample();
        let mut other = ck.setup().clone();
        assert!(ck.check_setup(&other).is_ok());
        other[0].1 = "image MLP".into();
        let e = ck.check_setup(&other).unwrap_err();
        assert_eq!(
            e,
            Error::CheckpointMismatch {
                what: "family".into(),
                saved: "quadratic".into(),
                current: "image MLP".into()
            }
        );
    }

    /// A header that promises more than the file holds is refused before any allocation.
    #[test]
    fn absurd_lengths_are_refused() {
        let mut ck = Checkpoint::new();
        ck.put_u64("x", vec![1]).unwrap();
        let mut b = ck.to_bytes().unwrap();
        let at = b.windows(7).position(|w| w == b"\"len\":1").unwrap();
        b[at + 6] = b'9';
        // Re-seal so only the length check can object.
        b.truncate(b.len() - 8);
        let sum = fnv1a(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        let e = Checkpoint::from_bytes(&b, "x").unwrap_err().to_string();
        assert!(e.contains("lists"), "{e}");
    }
}
