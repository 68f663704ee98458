//! Loads real ONNX models through the real ONNX Runtime and checks the contract handling.

use dme_model::{Model, ModelError, ModelOptions, ModelSource};
use dme_testkit::model;

fn load(rel: &str) -> Result<Model, ModelError> {
    Model::load(&ModelSource::File(model(rel)), &ModelOptions::default())
}

#[test]
fn embedded_default_model_separates_into_four_stems_that_sum_to_the_mix() {
    let mut m = Model::load(&ModelSource::Embedded, &ModelOptions::default()).unwrap();
    let info = m.info().clone();
    assert_eq!(info.sources, ["drums", "bass", "other", "vocals"]);
    assert!(!info.fixed);
    assert_eq!(info.segment, 343_980);
    let t = 30_000;
    let input: Vec<f32> = (0..2 * t)
        .map(|i| ((i as f32) * 0.013).sin() * 0.5)
        .collect();
    let out = m.separate(&input).unwrap();
    assert_eq!(out.len(), 4 * 2 * t);
    for i in (0..2 * t).step_by(997) {
        let sum: f32 = (0..4).map(|s| out[s * 2 * t + i]).sum();
        assert!(
            (sum - input[i]).abs() < 1e-4,
            "sample {i}: {sum} vs {}",
            input[i]
        );
    }
}

#[test]
fn fixed_segment_model_reports_its_length_and_refuses_other_lengths() {
    let mut m = load("test/conv_fixed.onnx").unwrap();
    assert!(m.info().fixed);
    assert_eq!(m.info().segment, 44_100);
    assert!(matches!(
        m.separate(&[0.0; 2 * 1000]),
        Err(ModelError::InputSize { .. })
    ));
    assert_eq!(
        m.separate(&vec![0.1; 2 * 44_100]).unwrap().len(),
        4 * 2 * 44_100
    );
}

#[test]
fn six_source_model_names_six_stems() {
    let m = load("test/conv_six.onnx").unwrap();
    assert_eq!(
        m.info().sources,
        ["drums", "bass", "other", "vocals", "guitar", "piano"]
    );
    assert_eq!(m.info().segment, 44_100);
}

#[test]
fn wrong_contract_is_refused_with_a_reason() {
    let err = load("test/bad_contract.onnx")
        .err()
        .expect("must be refused");
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Contract { .. }), "{msg}");
    assert!(msg.contains("mix"), "{msg}");
}

#[test]
fn missing_and_non_onnx_files_are_refused() {
    let err = Model::load(
        &ModelSource::File("/nonexistent.onnx".into()),
        &ModelOptions::default(),
    )
    .err();
    assert!(matches!(err, Some(ModelError::Read { .. })));
    let junk = dme_testkit::repo_root().join("nats.conf");
    let err = Model::load(&ModelSource::File(junk), &ModelOptions::default()).err();
    assert!(matches!(err, Some(ModelError::Load { .. })));
}

#[test]
fn committed_models_are_exactly_what_the_generator_makes() {
    let root = dme_testkit::repo_root();
    let python = root.join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "run `make test` (scripts/setup.sh makes the venv)"
    );
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(python)
        .arg(root.join("models/gen/generate.py"))
        .arg("--out")
        .arg(out.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    for rel in [
        "default.onnx",
        "test/conv_fixed.onnx",
        "test/conv_dynamic.onnx",
        "test/conv_six.onnx",
        "test/sum_dynamic.onnx",
        "test/slow_dynamic.onnx",
        "test/bad_contract.onnx",
        "test/poison_dynamic.onnx",
    ] {
        let fresh = std::fs::read(out.path().join(rel)).unwrap();
        let committed = std::fs::read(model(rel)).unwrap();
        assert!(
            fresh == committed,
            "{rel} differs from what models/gen/generate.py makes"
        );
    }
}
