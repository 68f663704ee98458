//! The optimised-graph cache: kept in its own folder, shared safely by racing loads, and never
//! a reason for a load to fail.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use dme_model::{Model, ModelOptions, ModelSource};
use dme_testkit::model;

/// A copy of a small dynamic model as `m.onnx` in a fresh folder.
fn model_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    std::fs::copy(model("test/conv_dynamic.onnx"), &path).unwrap();
    (dir, path)
}

fn options(cache_dir: &Path) -> ModelOptions {
    ModelOptions {
        cache_dir: cache_dir.to_path_buf(),
        ..ModelOptions::default()
    }
}

fn load(path: &Path, cache_dir: &Path) -> Model {
    Model::load(&ModelSource::File(path.to_path_buf()), &options(cache_dir)).unwrap()
}

fn input() -> Vec<f32> {
    (0..2 * 5000).map(|i| ((i as f32) * 0.01).sin()).collect()
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, Permissions::from_mode(mode)).unwrap();
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_file_model_caches_its_optimised_graph_and_gives_the_same_output_from_it() {
    let (_dir, path) = model_copy();
    let cache_dir = tempfile::tempdir().unwrap();
    // The cache folder is created when missing.
    let cache_dir = cache_dir.path().join("nested/dme");
    let mut first = load(&path, &cache_dir);
    assert!(!first.loaded_from_cache());
    let cache = dme_model::optimized_cache_path(&cache_dir, &path, &first.info().fingerprint);
    assert!(cache.is_file(), "no cache at {}", cache.display());
    assert_eq!(names(&cache_dir).len(), 1, "{:?}", names(&cache_dir));
    // Readable by other replicas sharing the folder.
    assert_eq!(
        cache.metadata().unwrap().permissions().mode() & 0o777,
        0o644
    );
    let mut second = load(&path, &cache_dir);
    assert!(second.loaded_from_cache());
    assert_eq!(second.info(), first.info());
    assert_eq!(
        first.separate(&input()).unwrap(),
        second.separate(&input()).unwrap()
    );
    // A damaged cache is ignored, not fatal, and replaced by a good one.
    std::fs::write(&cache, b"garbage").unwrap();
    let third = load(&path, &cache_dir);
    assert!(!third.loaded_from_cache());
    assert!(load(&path, &cache_dir).loaded_from_cache());
}

#[test]
fn nothing_is_written_beside_the_model_so_a_read_only_model_folder_works() {
    let (dir, path) = model_copy();
    let cache_dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o555);
    let mut first = load(&path, cache_dir.path());
    let second = load(&path, cache_dir.path());
    assert!(!first.loaded_from_cache());
    assert!(second.loaded_from_cache());
    assert_eq!(first.separate(&input()).unwrap().len(), 4 * 2 * 5000);
    // Checked by listing rather than relied on: root may write into a 0555 folder.
    assert_eq!(names(dir.path()), ["m.onnx"]);
    set_mode(dir.path(), 0o755);
}

#[test]
fn an_unwritable_cache_folder_only_costs_the_cache() {
    let (_dir, path) = model_copy();
    let scratch = tempfile::tempdir().unwrap();
    // A folder below a regular file can never be created, not even by root.
    let file = scratch.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let mut unwritable = vec![file.join("cache")];
    // A 0555 folder, where it really refuses writes (not as root).
    let locked = scratch.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    set_mode(&locked, 0o555);
    if std::fs::write(locked.join("probe"), b"").is_err() {
        unwritable.push(locked.clone());
    }
    let expected = load(&path, scratch.path().join("good").as_path())
        .separate(&input())
        .unwrap();
    for cache_dir in unwritable {
        for _ in 0..2 {
            let mut m = load(&path, &cache_dir);
            assert!(!m.loaded_from_cache(), "{}", cache_dir.display());
            assert_eq!(m.separate(&input()).unwrap(), expected);
        }
    }
    set_mode(&locked, 0o755);
}

#[test]
fn loads_racing_on_one_cache_folder_all_succeed_and_leave_one_valid_cache_file() {
    const LOADERS: usize = 4;
    let (_dir, path) = model_copy();
    let cache_dir = tempfile::tempdir().unwrap();
    let start = Arc::new(Barrier::new(LOADERS));
    let outputs: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let loaders: Vec<_> = (0..LOADERS)
            .map(|_| {
                let start = Arc::clone(&start);
                let (path, cache_dir) = (&path, cache_dir.path());
                scope.spawn(move || {
                    start.wait();
                    load(path, cache_dir).separate(&input()).unwrap()
                })
            })
            .collect();
        loaders.into_iter().map(|l| l.join().unwrap()).collect()
    });
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
    // One finished cache file and no temporary leftovers.
    let files = names(cache_dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(".optimized.onnx"), "{files:?}");
    let mut cached = load(&path, cache_dir.path());
    assert!(cached.loaded_from_cache());
    assert_eq!(cached.separate(&input()).unwrap(), outputs[0]);
}
