//! What several end-to-end suites share and the test kit cannot hold (it has no ONNX Runtime).

#![allow(dead_code)] // each suite uses its part

use std::path::Path;

use dme_audio::Stereo;
use dme_model::{Model, ModelOptions, ModelSource};
use dme_testkit::model as model_path;
use dme_testkit::reference::{self, Segmenting};
use dme_testkit::system::decode_bytes;

/// The single-process result of the model file at `model` on `input`, with dme's segmenting:
/// `S × 2` lanes.
///
/// # Panics
/// When the model cannot be loaded or run.
pub fn separate(model: &Path, input: &Stereo) -> Vec<Vec<f32>> {
    let source = ModelSource::File(model.to_path_buf());
    let mut model = Model::load(&source, &ModelOptions::default()).expect("the model loads");
    let info = model.info().clone();
    let plan = Segmenting {
        segment: info.segment as usize,
        fixed: info.fixed,
        sources: info.sources.len(),
    };
    reference::separate(plan, &input.left, &input.right, |x| {
        model.separate(x).expect("the model runs")
    })
}

/// The single-process result of the model at `model` (under `models/`) on the WAV file `wav`:
/// `S × 2` lanes.
///
/// # Panics
/// As [`separate`], or when `wav` is not a WAV file.
pub fn reference(model: &str, wav: &[u8]) -> Vec<Vec<f32>> {
    separate(&model_path(model), &decode_bytes(wav, "wav"))
}
