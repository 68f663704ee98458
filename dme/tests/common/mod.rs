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

/// What is spooled under the spool folder `root` (`DME_SPOOL_DIR`): the files and folders of work
/// in each process's folder, not the folders themselves nor their locks, which live as long as
/// their process.
///
/// # Panics
/// When `root` cannot be read.
pub fn spooled(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).expect("the spool folder") {
        let path = entry.expect("a spool entry").path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.as_deref().is_some_and(|n| n.starts_with('.')) {
            continue; // the folder's own sweep lock
        }
        if !path.is_dir() {
            out.push(path);
            continue;
        }
        for inner in std::fs::read_dir(&path).into_iter().flatten() {
            let inner = inner.expect("a spool entry").path();
            let name = inner.file_name().and_then(|n| n.to_str());
            // The lock, and the gateway's download cache: files it keeps, not leftovers.
            if name != Some(dme_storage::PROCESS_LOCK)
                && name != Some(dme_gateway::DOWNLOAD_CACHE_FOLDER)
            {
                out.push(inner);
            }
        }
    }
    out
}
