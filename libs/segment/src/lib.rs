//! Segment geometry of demucs' `apply_model` (shifts 0, overlap 0.25, triangular weights,
//! centred padding of a short last segment, weighted sum divided by the sum of weights).
//!
//! Consumes: a song length in samples and a model's segment length. Produces: a [`SegmentPlan`]
//! (where each segment starts, how long it is, which window the model sees) and a streaming
//! [`Blender`] that puts separated segments back together. Guarantees: the splitter, the mixer and
//! the single-process reference all use this one implementation, so a song separated by many
//! workers equals, within float rounding of the blend order, a song separated in one process.

use std::ops::Range;

use ndarray::{s, Array1, Array2, ArrayView1, NewAxis, Zip};

/// Overlap between consecutive segments, as a fraction of the segment: demucs' default, which the
/// reference geometry fixes (`overlap=0.25`).
pub const OVERLAP: f64 = 0.25;

/// Segment length of htdemucs (`int(44100 * 7.8)`), used when a dynamic-length model declares none.
pub const DEFAULT_SEGMENT_SAMPLES: u32 = 343_980;

/// Where the segments of one song lie. Deserialising checks the geometry (a plan read from a
/// message or record is the same as one made by [`SegmentPlan::new`]), so a damaged message
/// can never make the arithmetic divide by zero or run away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RawPlan")]
pub struct SegmentPlan {
    /// Song length in samples per channel (`L`).
    pub frames: u64,
    /// Model segment in samples (`seg`).
    pub segment: u32,
    /// Distance between segment starts: `int((1 - overlap) * seg)`.
    pub stride: u32,
    /// True when the model takes exactly `segment` samples (short segments are padded, centred).
    pub fixed: bool,
}

/// A [`SegmentPlan`] as it travels, before its geometry is checked.
#[derive(serde::Deserialize)]
struct RawPlan {
    frames: u64,
    segment: u32,
    stride: u32,
    fixed: bool,
}

/// Longest song a plan may describe: 24 hours at 44.1 kHz, far beyond any upload limit.
const MAX_PLAN_FRAMES: u64 = 24 * 3600 * 44_100;

/// Why a [`SegmentPlan`] read from a message or record was refused.
#[derive(Debug, thiserror::Error)]
enum PlanError {
    /// The segment is too short for a stride or the song longer than any upload.
    #[error("implausible plan: {frames} frames, segment {segment}")]
    Implausible {
        /// Song length claimed.
        frames: u64,
        /// Segment length claimed.
        segment: u32,
    },
    /// The stride is not the one the segment length gives.
    #[error("stride {stride} does not match segment {segment}")]
    Stride {
        /// Stride claimed.
        stride: u32,
        /// Segment length claimed.
        segment: u32,
    },
}

impl TryFrom<RawPlan> for SegmentPlan {
    type Error = PlanError;

    fn try_from(raw: RawPlan) -> Result<Self, Self::Error> {
        if raw.segment < 4 || raw.frames > MAX_PLAN_FRAMES {
            return Err(PlanError::Implausible {
                frames: raw.frames,
                segment: raw.segment,
            });
        }
        let plan = SegmentPlan::new(raw.frames, raw.segment, raw.fixed);
        if plan.stride != raw.stride {
            return Err(PlanError::Stride {
                stride: raw.stride,
                segment: raw.segment,
            });
        }
        Ok(plan)
    }
}

/// One segment of a [`SegmentPlan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Index in the plan, from 0.
    pub index: u32,
    /// First sample of the segment in the song.
    pub offset: u64,
    /// Samples the segment covers (`n = min(seg, L - offset)`).
    pub len: u32,
    /// First sample (may be negative) of the window the model sees.
    pub window_start: i64,
    /// Samples in the window the model sees (`seg` for a fixed model, else `len`).
    pub window_len: u32,
}

impl Segment {
    /// Offset of the segment's samples inside the model's output window.
    pub fn crop_start(&self) -> usize {
        (self.offset as i64 - self.window_start) as usize
    }

    /// The song samples this segment covers.
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + self.len as u64
    }
}

impl SegmentPlan {
    /// The plan for a song of `frames` samples and a model segment of `segment` samples.
    ///
    /// # Panics
    /// When `segment` is below 4 (the stride would be 0); models are validated before this.
    pub fn new(frames: u64, segment: u32, fixed: bool) -> Self {
        assert!(segment >= 4, "segment must be at least 4 samples");
        let stride = ((1.0 - OVERLAP) * segment as f64) as u32;
        Self {
            frames,
            segment,
            stride,
            fixed,
        }
    }

    /// Number of segments: offsets `0, stride, ...` while `offset < L`.
    pub fn count(&self) -> u32 {
        self.frames.div_ceil(self.stride as u64) as u32
    }

    /// Segment `index`, or `None` past the end.
    pub fn segment(&self, index: u32) -> Option<Segment> {
        let offset = index as u64 * self.stride as u64;
        if offset >= self.frames {
            return None;
        }
        let len = (self.frames - offset).min(self.segment as u64) as u32;
        let (window_start, window_len) = if self.fixed {
            let pad = (self.segment - len) / 2;
            (offset as i64 - pad as i64, self.segment)
        } else {
            (offset as i64, len)
        };
        Some(Segment {
            index,
            offset,
            len,
            window_start,
            window_len,
        })
    }

    /// Where the finished samples of the first `parts` segments end: a segment's part runs
    /// from its offset to the next segment's, the last one's to the song's end (what
    /// [`Blender::push`] hands out for it). 0 for none; the song's length for all of them.
    pub fn part_end(&self, parts: u32) -> u64 {
        if parts >= self.count() {
            return self.frames;
        }
        u64::from(parts) * u64::from(self.stride)
    }

    /// All segments in offset order.
    pub fn segments(&self) -> impl Iterator<Item = Segment> + '_ {
        (0..self.count()).filter_map(|k| self.segment(k))
    }

    /// The triangular weight of sample `i` of a segment: `(i + 1) / m` rising, `(seg - i) / m`
    /// falling, with `m = seg / 2`.
    pub fn weight(&self, i: usize) -> f32 {
        let seg = self.segment as usize;
        let m = (seg / 2) as f32;
        if i < seg / 2 {
            (i + 1) as f32 / m
        } else {
            (seg - i) as f32 / m
        }
    }

    /// The weights of the first `len` samples of a segment.
    pub fn weights(&self, len: usize) -> Vec<f32> {
        (0..len).map(|i| self.weight(i)).collect()
    }
}

/// Copies the model window of `seg` out of a song held in memory (`channels` planar buffers of
/// `plan.frames` samples), zero outside the song. Used by the reference path and tests; the
/// splitter builds windows while streaming.
pub fn window_of(channels: &[&[f32]], seg: &Segment) -> Vec<Vec<f32>> {
    channels
        .iter()
        .map(|ch| {
            (0..seg.window_len as i64)
                .map(|i| {
                    let t = seg.window_start + i;
                    if t >= 0 && (t as usize) < ch.len() {
                        ch[t as usize]
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect()
}

/// Puts separated segments back together in offset order with bounded memory: only the region
/// still open to a later segment stays in memory; everything before the next segment's offset is
/// final and is handed out by [`Blender::push`].
///
/// Each segment's samples are laid out as `lanes` planar buffers (stems × channels) of the
/// segment's `len` samples. The sum of weighted samples and the sum of weights are kept in f32,
/// added in offset order exactly as the reference does: per sample, `sum_w += w` and
/// `acc += w · x`, then `acc / sum_w` once the sample is final.
pub struct Blender {
    plan: SegmentPlan,
    next: u32,
    /// Song sample at which column 0 of `acc` and element 0 of `sum_w` lie. It is always the
    /// offset of the next segment, so each segment is added from column 0.
    base: u64,
    /// Weighted sums, `[lanes, samples]`, as wide as the longest segment. Columns at and past
    /// `open` are zero.
    acc: Array2<f32>,
    /// Sums of weights, as wide as `acc`, zero at and past `open`.
    sum_w: Array1<f32>,
    /// Columns that hold overlap carried over from earlier segments.
    open: usize,
}

impl Blender {
    /// A blender for `lanes` planar outputs (e.g. 4 stems × 2 channels = 8).
    pub fn new(plan: SegmentPlan, lanes: usize) -> Self {
        // No segment is longer than the model segment or the song.
        let width = (plan.frames.min(u64::from(plan.segment))) as usize;
        Self {
            plan,
            next: 0,
            base: 0,
            acc: Array2::zeros((lanes, width)),
            sum_w: Array1::zeros(width),
            open: 0,
        }
    }

    /// A blender that starts at segment `index` of the song, holding what segment `index - 1`
    /// (its separated lanes, `previous`) leaves open past segment `index`'s offset: pushing
    /// segment `index` then gives exactly the samples (bit for bit) that a blender fed every
    /// segment from 0 gives for it, and so on for the segments after. With an overlap of
    /// [`OVERLAP`] only the segment just before reaches past a segment's offset. For `index` 0,
    /// `previous` is not read. The mixer makes each segment's finished part from two stored
    /// segments this way, in whatever process takes the segment's event.
    ///
    /// # Panics
    /// When `index` lies outside the plan or `previous` has the wrong shape.
    pub fn resume(plan: SegmentPlan, lanes: usize, index: u32, previous: &[&[f32]]) -> Self {
        let mut blender = Self::new(plan, lanes);
        let seg = plan.segment(index).expect("segment index inside the plan");
        if index == 0 {
            return blender;
        }
        let prev = plan
            .segment(index - 1)
            .expect("the segment before is inside the plan");
        debug_assert!(
            index < 2
                || plan
                    .segment(index - 2)
                    .is_some_and(|s| s.range().end <= seg.offset),
            "only the segment before reaches into this one"
        );
        assert_eq!(previous.len(), lanes);
        let n = prev.len as usize;
        let skip = (seg.offset - prev.offset) as usize;
        let open = n - skip;
        let all = plan.weights(n);
        let weights = ArrayView1::from(&all[skip..]);
        let mut sum_w = blender.sum_w.slice_mut(s![..open]);
        sum_w += &weights;
        for (acc, lane) in blender.acc.outer_iter_mut().zip(previous) {
            assert_eq!(lane.len(), n, "lane length must equal the segment length");
            Zip::from(acc.slice_move(s![..open]))
                .and(&ArrayView1::from(&lane[skip..]))
                .and(&weights)
                .for_each(|a, &x, &w| *a += w * x);
        }
        blender.open = open;
        blender.next = index;
        blender.base = seg.offset;
        blender
    }

    /// Index of the segment the blender expects next.
    pub fn next_index(&self) -> u32 {
        self.next
    }

    /// Adds segment `index` (which must be the next one) and returns the samples that are now
    /// final, per lane, starting at song sample `base` (the second value).
    ///
    /// # Panics
    /// When segments come out of order or with the wrong shape: callers feed them in order.
    pub fn push(&mut self, index: u32, lanes: &[&[f32]]) -> (Vec<Vec<f32>>, u64) {
        assert_eq!(index, self.next, "segments must be pushed in offset order");
        let seg = self
            .plan
            .segment(index)
            .expect("segment index inside the plan");
        assert_eq!(lanes.len(), self.acc.nrows());
        let n = seg.len as usize;
        debug_assert_eq!(
            seg.offset, self.base,
            "each segment starts where the last left off"
        );
        let weights = Array1::from(self.plan.weights(n));
        let mut sum_w = self.sum_w.slice_mut(s![..n]);
        sum_w += &weights;
        for (acc, lane) in self.acc.outer_iter_mut().zip(lanes) {
            assert_eq!(lane.len(), n, "lane length must equal the segment length");
            Zip::from(acc.slice_move(s![..n]))
                .and(&ArrayView1::from(*lane))
                .and(&weights)
                .for_each(|a, &x, &w| *a += w * x);
        }
        self.open = self.open.max(n);
        self.next += 1;
        // Everything before the next segment's offset is final.
        let final_until = match self.plan.segment(self.next) {
            Some(next) => (next.offset - self.base) as usize,
            None => self.open,
        };
        let out_base = self.base;
        let finished =
            &self.acc.slice(s![.., ..final_until]) / &self.sum_w.slice(s![NewAxis, ..final_until]);
        self.carry_over(final_until);
        self.base += final_until as u64;
        (
            finished.outer_iter().map(|lane| lane.to_vec()).collect(),
            out_base,
        )
    }

    /// Moves the still-open columns after `final_until` to the front and zeroes the rest.
    fn carry_over(&mut self, final_until: usize) {
        let open = self.open;
        let kept = open - final_until;
        let rest = self.acc.slice(s![.., final_until..open]).to_owned();
        self.acc.slice_mut(s![.., ..kept]).assign(&rest);
        self.acc.slice_mut(s![.., kept..open]).fill(0.0);
        let rest = self.sum_w.slice(s![final_until..open]).to_owned();
        self.sum_w.slice_mut(s![..kept]).assign(&rest);
        self.sum_w.slice_mut(s![kept..open]).fill(0.0);
        self.open = kept;
    }

    /// True once every segment of the plan has been pushed.
    pub fn is_finished(&self) -> bool {
        self.next >= self.plan.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htdemucs_geometry() {
        let plan = SegmentPlan::new(1_000_000, DEFAULT_SEGMENT_SAMPLES, true);
        assert_eq!(plan.stride, 257_985);
        assert_eq!(plan.count(), 4);
        let last = plan.segment(3).unwrap();
        assert_eq!(last.offset, 3 * 257_985);
        assert_eq!(last.len as u64, 1_000_000 - 3 * 257_985);
        assert_eq!(last.window_len, DEFAULT_SEGMENT_SAMPLES);
        assert_eq!(
            last.window_start,
            last.offset as i64 - ((DEFAULT_SEGMENT_SAMPLES - last.len) / 2) as i64
        );
        assert!(plan.segment(4).is_none());
    }

    #[test]
    fn short_song_one_segment_centred() {
        let plan = SegmentPlan::new(100, 40, true);
        // stride 30: offsets 0, 30, 60, 90
        assert_eq!(plan.count(), 4);
        let s = plan.segment(3).unwrap();
        assert_eq!((s.offset, s.len), (90, 10));
        assert_eq!(s.window_start, 90 - 15);
        assert_eq!(s.crop_start(), 15);
        let dynamic = SegmentPlan::new(100, 40, false);
        let s = dynamic.segment(3).unwrap();
        assert_eq!((s.window_start, s.window_len), (90, 10));
    }

    #[test]
    fn damaged_plans_are_refused_when_read() {
        let good = SegmentPlan::new(1000, 40, true);
        let json = |p: &str| serde_json::from_str::<SegmentPlan>(p);
        assert_eq!(json(&serde_json::to_string(&good).unwrap()).unwrap(), good);
        assert!(json(r#"{"frames":1000,"segment":40,"stride":0,"fixed":true}"#).is_err());
        assert!(json(r#"{"frames":1000,"segment":0,"stride":0,"fixed":true}"#).is_err());
        assert!(
            json(r#"{"frames":18446744073709551615,"segment":40,"stride":30,"fixed":true}"#)
                .is_err()
        );
    }

    #[test]
    fn a_resumed_blender_gives_each_segment_what_the_whole_blend_gives_bit_for_bit() {
        for frames in [41u64, 100, 121, 1000] {
            let plan = SegmentPlan::new(frames, 40, true);
            let mut state = 0x9e37_79b9_u32;
            let mut noise = || {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            };
            let segments: Vec<Vec<Vec<f32>>> = plan
                .segments()
                .map(|seg| {
                    (0..3)
                        .map(|_| (0..seg.len).map(|_| noise()).collect())
                        .collect()
                })
                .collect();
            let views = |k: usize| segments[k].iter().map(Vec::as_slice).collect::<Vec<_>>();
            let mut whole = Blender::new(plan, 3);
            for seg in plan.segments() {
                let k = seg.index as usize;
                let (expected, base) = whole.push(seg.index, &views(k));
                let previous = if k == 0 { Vec::new() } else { views(k - 1) };
                let mut resumed = Blender::resume(plan, 3, seg.index, &previous);
                let (got, got_base) = resumed.push(seg.index, &views(k));
                assert_eq!(got_base, base);
                let bits = |v: &[Vec<f32>]| {
                    v.iter()
                        .map(|l| l.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    bits(&got),
                    bits(&expected),
                    "segment {k} of {frames} frames"
                );
            }
        }
    }

    #[test]
    fn weights_are_a_full_triangle() {
        let plan = SegmentPlan::new(10, 8, false);
        let w = plan.weights(8);
        assert_eq!(w, vec![0.25, 0.5, 0.75, 1.0, 1.0, 0.75, 0.5, 0.25]);
    }

    #[test]
    fn blender_reproduces_a_constant_signal() {
        for frames in [1u64, 39, 40, 41, 100, 121, 1000] {
            let plan = SegmentPlan::new(frames, 40, true);
            let mut blender = Blender::new(plan, 2);
            let mut out = [Vec::new(), Vec::new()];
            for seg in plan.segments() {
                let a = vec![1.5f32; seg.len as usize];
                let b = vec![-2.0f32; seg.len as usize];
                let (done, base) = blender.push(seg.index, &[&a, &b]);
                assert_eq!(base as usize, out[0].len());
                for (o, d) in out.iter_mut().zip(done) {
                    o.extend(d);
                }
            }
            assert!(blender.is_finished());
            assert_eq!(out[0].len() as u64, frames);
            assert!(out[0].iter().all(|v| (v - 1.5).abs() < 1e-6));
            assert!(out[1].iter().all(|v| (v + 2.0).abs() < 1e-6));
        }
    }

    /// The blend as it was written before the blender held ndarrays: flat vectors grown to each
    /// segment's end, `sum_w += w` and `acc += w · x` per sample in offset order, and `acc / sum_w`
    /// for every sample before the next segment's offset.
    fn blend_with_flat_vectors(plan: SegmentPlan, segments: &[Vec<Vec<f32>>]) -> Vec<Vec<f32>> {
        let lanes = segments[0].len();
        let (mut acc, mut sum_w) = (vec![Vec::<f32>::new(); lanes], Vec::<f32>::new());
        let (mut base, mut out) = (0u64, vec![Vec::new(); lanes]);
        for (k, data) in segments.iter().enumerate() {
            let seg = plan.segment(k as u32).unwrap();
            let n = seg.len as usize;
            let start = (seg.offset - base) as usize;
            if sum_w.len() < start + n {
                sum_w.resize(start + n, 0.0);
                acc.iter_mut().for_each(|a| a.resize(start + n, 0.0));
            }
            for i in 0..n {
                sum_w[start + i] += plan.weight(i);
            }
            for (a, lane) in acc.iter_mut().zip(data) {
                for i in 0..n {
                    a[start + i] += plan.weight(i) * lane[i];
                }
            }
            let final_until = match plan.segment(k as u32 + 1) {
                Some(next) => (next.offset - base) as usize,
                None => sum_w.len(),
            };
            let w: Vec<f32> = sum_w.drain(..final_until).collect();
            for (o, a) in out.iter_mut().zip(&mut acc) {
                o.extend(a.drain(..final_until).zip(&w).map(|(a, w)| a / w));
            }
            base += final_until as u64;
        }
        out
    }

    #[test]
    fn blender_is_bit_identical_to_the_flat_vector_blend() {
        // Irrational-looking values, so any change in the order or kind of float operations
        // shows up in the last bit somewhere.
        let value = |lane: usize, t: u64| ((t as f32 * 0.37 + lane as f32).sin() * 0.9) / 3.0;
        for (frames, segment, fixed) in [(1000u64, 40u32, true), (1001, 41, false), (7, 40, true)] {
            let plan = SegmentPlan::new(frames, segment, fixed);
            let lanes = 6;
            let segments: Vec<Vec<Vec<f32>>> = plan
                .segments()
                .map(|seg| {
                    (0..lanes)
                        .map(|l| {
                            seg.range()
                                .map(|t| value(l, t * 31 + seg.index as u64))
                                .collect()
                        })
                        .collect()
                })
                .collect();
            let expected = blend_with_flat_vectors(plan, &segments);
            let mut blender = Blender::new(plan, lanes);
            let mut got = vec![Vec::new(); lanes];
            for (seg, data) in plan.segments().zip(&segments) {
                let views: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
                let (done, base) = blender.push(seg.index, &views);
                assert_eq!(base as usize, got[0].len());
                got.iter_mut().zip(done).for_each(|(g, d)| g.extend(d));
            }
            let bits = |lanes: &[Vec<f32>]| -> Vec<Vec<u32>> {
                lanes
                    .iter()
                    .map(|l| l.iter().map(|v| v.to_bits()).collect())
                    .collect()
            };
            assert_eq!(
                bits(&got),
                bits(&expected),
                "{frames} frames, segment {segment}"
            );
        }
    }

    #[test]
    fn window_pads_with_zeros_only_outside_the_song() {
        let song: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let plan = SegmentPlan::new(100, 40, true);
        let seg = plan.segment(3).unwrap();
        let w = window_of(&[&song], &seg);
        assert_eq!(w[0].len(), 40);
        assert_eq!(w[0][0], 75.0);
        assert_eq!(w[0][24], 99.0);
        assert_eq!(w[0][25], 0.0);
    }
}
