//! A single-process implementation of dme's segmenting, written from its description (Demucs'
//! `apply_model(shifts=0, split=True, overlap=0.25, transition_power=1)`, see
//! docs/ARCHITECTURE.md), not from `dme_segment`: segments in offset order, centred padding for
//! a fixed-length model, triangular weights, weighted sum divided by the sum of weights.
//! Distributed results are compared with it.
//!
//! It takes the model as a function, so this crate needs no ONNX Runtime: a test passes
//! `|input| model.separate(input).unwrap()` and the model's [`Segmenting`].

/// Overlap of consecutive segments, as a fraction of the segment length.
const OVERLAP: f64 = 0.25;

/// What the segmenting needs to know of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segmenting {
    /// Frames per segment.
    pub segment: usize,
    /// True when the model only takes exactly `segment` frames (a shorter last segment is
    /// padded on both sides); false when it takes any length up to `segment`.
    pub fixed: bool,
    /// Stems it outputs.
    pub sources: usize,
}

/// Separates `left`/`right` in one process, segment by segment; returns `S × 2` lanes (each
/// stem's left then right), each as long as the input.
///
/// `run` is the model: it takes a segment as planar stereo (`2 × width` samples, left then
/// right) and returns `S × 2 × width` samples, stem by stem, left then right.
pub fn separate(
    model: Segmenting,
    left: &[f32],
    right: &[f32],
    mut run: impl FnMut(&[f32]) -> Vec<f32>,
) -> Vec<Vec<f32>> {
    let seg = model.segment;
    let len = left.len();
    let stride = ((1.0 - OVERLAP) * seg as f64) as usize;
    let m = (seg / 2) as f32;
    let weight = |i: usize| {
        if i < seg / 2 {
            (i + 1) as f32 / m
        } else {
            (seg - i) as f32 / m
        }
    };
    let lanes = 2 * model.sources;
    let mut out = vec![vec![0.0f32; len]; lanes];
    let mut sum_w = vec![0.0f32; len];
    let mut offset = 0;
    while offset < len {
        let n = seg.min(len - offset);
        let (start, width) = if model.fixed {
            (offset as i64 - ((seg - n) / 2) as i64, seg)
        } else {
            (offset as i64, n)
        };
        let mut input = vec![0.0f32; 2 * width];
        for i in 0..width {
            let t = start + i as i64;
            if t >= 0 && (t as usize) < len {
                input[i] = left[t as usize];
                input[width + i] = right[t as usize];
            }
        }
        let stems = run(&input);
        let crop = (offset as i64 - start) as usize;
        for i in 0..n {
            sum_w[offset + i] += weight(i);
        }
        for (lane, acc) in out.iter_mut().enumerate() {
            for i in 0..n {
                acc[offset + i] += weight(i) * stems[lane * width + crop + i];
            }
        }
        offset += stride;
    }
    for acc in &mut out {
        for (v, w) in acc.iter_mut().zip(&sum_w) {
            *v /= w;
        }
    }
    out
}

/// The largest absolute difference between two sets of lanes.
///
/// # Panics
/// When their lane counts or lengths differ.
pub fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "lane count");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "lane length");
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max)
        })
        .fold(0.0, f32::max)
}

/// Asserts `got` equals `expected` within 1e-6 (float summation order aside, the same
/// arithmetic), naming `what` when it does not.
///
/// # Panics
/// When they differ.
pub fn assert_same(got: &[Vec<f32>], expected: &[Vec<f32>], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: lanes");
    let err = max_abs_diff(got, expected);
    assert!(
        err <= 1e-6,
        "{what}: differs from the expected result by {err}"
    );
}
