//! Streaming stereo sample-rate conversion on top of rubato.
//!
//! [`StreamResampler`] accepts blocks of any size, keeps at most one resampler chunk of input
//! pending, removes the resampler's latency from the front of the output and flushes its tail at
//! the end, so the output is time-aligned with the input and has
//! `round(frames_in * out_rate / in_rate)` frames.

use rubato::{
    calculate_cutoff, FftFixedInOut, SincFixedIn, SincInterpolationParameters,
    SincInterpolationType, VecResampler, WindowFunction,
};

use crate::{AudioError, StereoBlock};

/// Input frames per resampler call. Large enough that the FFT resampler's anti-aliasing filter
/// (as long as one chunk) is steep, small enough that the pending buffer stays at ~32 KiB.
const CHUNK_FRAMES: usize = 4096;

/// Largest reduced input rate (`in_rate / gcd(in_rate, out_rate)`) for which the synchronous FFT
/// resampler is used; one FFT chunk is at least that many frames. Every common rate pair (8 k,
/// 11.025 k, 16 k, 22.05 k, 32 k, 48 k, 88.2 k, 96 k, 192 k to 44.1 k) reduces to at most 640;
/// 48 000 still admits any integer rate up to 48 kHz (one second of audio per chunk, a few MB of
/// FFT state). Odd rates above that, which would need FFTs of millions of points, go to the sinc
/// resampler.
const MAX_FFT_UNIT: usize = 48_000;

/// Sinc filter length for the asynchronous fallback: rubato's recommended starting point for
/// high quality (rolloff well above 20 kHz at 44.1 kHz output).
const SINC_LEN: usize = 256;

/// Sinc oversampling for the asynchronous fallback; with cubic interpolation between the
/// oversampled points the interpolation error stays below 16-bit noise.
const SINC_OVERSAMPLING: usize = 256;

/// Streaming two-channel resampler with latency compensation.
pub(crate) struct StreamResampler {
    inner: Box<dyn VecResampler<f32>>,
    /// Input received but not yet consumed by `inner` (always shorter than one chunk between
    /// calls to [`StreamResampler::push`]).
    pending: Vec<Vec<f32>>,
    /// Scratch output of one `inner` call.
    scratch: Vec<Vec<f32>>,
    in_rate: u32,
    out_rate: u32,
    frames_in: u64,
    frames_out: u64,
    /// Output frames still to drop from the front: the resampler's latency.
    delay_left: usize,
}

impl StreamResampler {
    /// A resampler from `in_rate` to `out_rate` (both non-zero and different).
    ///
    /// # Errors
    ///
    /// [`AudioError::UnsupportedCodec`] when rubato rejects the rate pair.
    pub(crate) fn new(in_rate: u32, out_rate: u32) -> Result<Self, AudioError> {
        let unsupported = |e: &dyn std::fmt::Display| {
            AudioError::UnsupportedCodec(format!("resampling {in_rate} Hz to {out_rate} Hz: {e}"))
        };
        let (in_hz, out_hz) = (in_rate as usize, out_rate as usize);
        // The gcd is 0 only when both rates are, which callers rule out; never divide by it.
        let unit = in_hz / num_integer::gcd(in_hz, out_hz).max(1);
        let (inner, delay): (Box<dyn VecResampler<f32>>, usize) = if unit <= MAX_FFT_UNIT {
            // The FFT filter is centred on input sample floor(chunk_in / 2), i.e. on output
            // sample floor(chunk_in / 2) * chunk_out / chunk_in, while rubato reports
            // floor(chunk_out / 2). They agree exactly only when both chunks are even, which an
            // even number of rate units guarantees (measured: odd chunks misalign by ~0.5 sample).
            let units = CHUNK_FRAMES.div_ceil(unit).next_multiple_of(2);
            let resampler = FftFixedInOut::<f32>::new(in_hz, out_hz, units * unit, 2)
                .map_err(|e| unsupported(&e))?;
            let delay = resampler.output_delay();
            (Box::new(resampler), delay)
        } else {
            let params = SincInterpolationParameters {
                sinc_len: SINC_LEN,
                f_cutoff: calculate_cutoff(SINC_LEN, WindowFunction::BlackmanHarris2),
                oversampling_factor: SINC_OVERSAMPLING,
                interpolation: SincInterpolationType::Cubic,
                window: WindowFunction::BlackmanHarris2,
            };
            let ratio = f64::from(out_rate) / f64::from(in_rate);
            let resampler = SincFixedIn::<f32>::new(ratio, 1.0, params, CHUNK_FRAMES, 2)
                .map_err(|e| unsupported(&e))?;
            // rubato 0.16 reports half the sinc length as this resampler's latency, but it
            // starts its read position half a filter early, so the output is already aligned to
            // within one sample: measured with sines, it leads by (1 - out/in) of an output
            // sample, a fraction that cannot be trimmed. Only odd rates above 48 kHz get here.
            (Box::new(resampler), 0)
        };
        let scratch = inner.output_buffer_allocate(true);
        Ok(Self {
            pending: (0..2)
                .map(|_| Vec::with_capacity(inner.input_frames_max()))
                .collect(),
            inner,
            scratch,
            in_rate,
            out_rate,
            frames_in: 0,
            frames_out: 0,
            delay_left: delay,
        })
    }

    /// Feed one block of input; whatever output is ready is appended to `out`.
    ///
    /// # Errors
    ///
    /// [`AudioError::Corrupt`] if rubato fails (it only does on buffer-size bugs).
    pub(crate) fn push(
        &mut self,
        left: &[f32],
        right: &[f32],
        out: &mut StereoBlock,
    ) -> Result<(), AudioError> {
        self.pending[0].extend_from_slice(left);
        self.pending[1].extend_from_slice(right);
        self.frames_in += left.len() as u64;
        while self.pending[0].len() >= self.inner.input_frames_next() {
            let (used, produced) = self
                .inner
                .process_into_buffer(&self.pending, &mut self.scratch, None)
                .map_err(resample_failed)?;
            for channel in &mut self.pending {
                channel.drain(..used);
            }
            self.emit(produced, u64::MAX, out);
        }
        Ok(())
    }

    /// Flush the tail: pad the input with silence until every output frame that corresponds to
    /// real input has come out, and append it to `out`.
    ///
    /// # Errors
    ///
    /// [`AudioError::Corrupt`] if rubato fails.
    pub(crate) fn finish(&mut self, out: &mut StereoBlock) -> Result<(), AudioError> {
        let expected = self.expected_output_frames();
        // Each round yields at least one chunk of output unless it is all latency; the latency is
        // below two chunks, so this bound is never reached by a working resampler.
        let max_rounds = 4 + self.inner.output_delay() / self.inner.output_frames_max().max(1);
        for _ in 0..max_rounds {
            if self.frames_out >= expected {
                break;
            }
            let input = if self.pending[0].is_empty() {
                None
            } else {
                Some(&self.pending[..])
            };
            let (_, produced) = self
                .inner
                .process_partial_into_buffer(input, &mut self.scratch, None)
                .map_err(resample_failed)?;
            for channel in &mut self.pending {
                channel.clear();
            }
            self.emit(produced, expected, out);
        }
        Ok(())
    }

    /// Output length that matches the input duration exactly (rounded to the nearest frame).
    fn expected_output_frames(&self) -> u64 {
        let num = u128::from(self.frames_in) * u128::from(self.out_rate);
        let den = u128::from(self.in_rate);
        ((num + den / 2) / den) as u64
    }

    /// Append `produced` scratch frames to `out`, first dropping latency, never exceeding `limit`
    /// frames in total.
    fn emit(&mut self, produced: usize, limit: u64, out: &mut StereoBlock) {
        let skip = self.delay_left.min(produced);
        self.delay_left -= skip;
        let room = limit.saturating_sub(self.frames_out);
        let take = ((produced - skip) as u64).min(room) as usize;
        out.left
            .extend_from_slice(&self.scratch[0][skip..skip + take]);
        out.right
            .extend_from_slice(&self.scratch[1][skip..skip + take]);
        self.frames_out += take as u64;
    }
}

fn resample_failed(e: rubato::ResampleError) -> AudioError {
    AudioError::Corrupt(format!("resampler failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resample a sine in uneven blocks and compare it with the ideal sine at the output rate:
    /// checks the length, the latency compensation (phase) and the amplitude in one go.
    fn check_sine(in_rate: u32, out_rate: u32, tolerance: f64) {
        let freq = 1000.0_f64;
        let frames = in_rate as usize * 2;
        let signal: Vec<f32> = (0..frames)
            .map(|i| {
                (0.5 * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(in_rate)).sin())
                    as f32
            })
            .collect();
        let mut resampler = StreamResampler::new(in_rate, out_rate).unwrap();
        let mut out = StereoBlock::default();
        for block in signal.chunks(1000 + 37) {
            resampler.push(block, block, &mut out).unwrap();
        }
        resampler.finish(&mut out).unwrap();
        let expected = (frames as f64 * f64::from(out_rate) / f64::from(in_rate)).round() as usize;
        assert_eq!(out.left.len(), expected, "{in_rate} -> {out_rate}");
        assert_eq!(out.left, out.right);
        // Skip the edges, where the filter sees the implicit silence around the signal.
        let edge = out_rate as usize / 50;
        let worst = out.left[edge..expected - edge]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let t = (i + edge) as f64 / f64::from(out_rate);
                let ideal = 0.5 * (2.0 * std::f64::consts::PI * freq * t).sin();
                (f64::from(*s) - ideal).abs()
            })
            .fold(0.0, f64::max);
        assert!(
            worst < tolerance,
            "{in_rate} -> {out_rate}: max error {worst}"
        );
    }

    #[test]
    fn fft_path_is_aligned_and_exact_length() {
        check_sine(48_000, 44_100, 1e-3);
        check_sine(8_000, 44_100, 1e-3);
        check_sine(96_000, 44_100, 1e-3);
        check_sine(47_999, 44_100, 1e-3);
    }

    #[test]
    fn sinc_path_is_aligned_and_exact_length() {
        // A 1 kHz sine at 0.5 moves 0.071 per output sample: 0.05 allows the sinc resampler's
        // measured 0.54-sample lead at this ratio (see `StreamResampler::new`) and nothing more.
        check_sine(96_001, 44_100, 0.05);
    }
}
