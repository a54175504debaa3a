//! Model loading: the manifest's checksum is checked before parsing, with a clear error for a missing,
//! truncated or altered file; a classifier that answers NaN or the wrong shape is an error, never a pass.

mod common;

use deepgate::config::BoardConfig;
use deepgate::manifest::{Manifest, Role};
use deepgate::pipeline::{Models, Pipeline};
use std::path::Path;

fn load_error(board: &Path) -> String {
    let config = BoardConfig::load(board).unwrap();
    match Models::load(&config) {
        Ok(_) => panic!("loading {} should fail", board.display()),
        Err(error) => format!("{error:#}"),
    }
}

#[test]
fn shipped_manifest_describes_the_shipped_detector() {
    let manifest = Manifest::load(&common::root().join("models/manifest.toml")).unwrap();
    let detector = manifest.get("blazeface_front_128", Role::Detector).unwrap();
    assert_eq!(detector.input.shape, [1, 128, 128, 3]);
    assert_eq!(detector.outputs.len(), 4);
    assert!(manifest.path_of(detector).exists());
    assert!(manifest.get("blazeface_front_128", Role::Classifier).is_err(), "roles are checked");
    let error = manifest.get("no_such_model", Role::Detector).unwrap_err();
    assert!(
        format!("{error:#}").contains("blazeface_front_128"),
        "the error lists the known models: {error:#}"
    );
}

#[test]
fn altered_truncated_or_missing_model_files_are_refused_with_path_and_checksums() {
    let board = common::board(None, &[], &[]);
    let models = board.parent().unwrap().to_path_buf();
    let model = models.join("blazeface_front_128.onnx");
    let original = std::fs::read(&model).unwrap();

    let mut altered = original.clone();
    altered[1000] ^= 0x01;
    std::fs::write(&model, &altered).unwrap();
    let error = load_error(&board);
    assert!(error.contains(&model.display().to_string()), "{error}");
    assert!(error.contains("d388b1cf8a5f6f1af2b3f4c14f6d0f138bab970cd618cccd12dddb7484e82e51"), "{error}");
    assert!(error.contains("found"), "{error}");

    std::fs::write(&model, &original[..original.len() / 2]).unwrap();
    let error = load_error(&board);
    assert!(error.contains("truncated"), "{error}");
    assert!(error.contains(&format!("found {}", original.len() / 2)), "{error}");

    std::fs::remove_file(&model).unwrap();
    let error = load_error(&board);
    assert!(error.contains("cannot read") && error.contains(&model.display().to_string()), "{error}");

    std::fs::write(&model, &original).unwrap();
    assert!(Models::load(&BoardConfig::load(&board).unwrap()).is_ok(), "the restored file loads again");
}

#[test]
fn a_manifest_with_an_unknown_key_or_a_bad_checksum_field_is_refused() {
    let board = common::board(None, &[], &[]);
    let manifest = board.parent().unwrap().join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replacen("bytes = 442005", "bytes = 442005\nquantised = true", 1))
        .unwrap();
    let error = load_error(&board);
    assert!(error.contains("quantised"), "{error}");
    std::fs::write(&manifest, text.replacen("sha256 = \"d388", "sha256 = \"zz88", 1)).unwrap();
    let error = load_error(&board);
    assert!(error.contains("64 hexadecimal digits"), "{error}");
}

#[test]
fn a_classifier_whose_output_shape_differs_from_the_manifest_is_refused_at_load() {
    let board = common::board(Some("wrong_shape"), &[], &[]);
    let error = load_error(&board);
    assert!(error.contains("wrong_shape") && error.contains("shape"), "{error}");
}

#[test]
fn a_classifier_answering_nan_is_an_error_never_a_verdict() {
    let board = common::board(Some("nan_output"), &[], &[]);
    let config = BoardConfig::load(&board).unwrap();
    let mut pipeline = Pipeline::new(&config, Models::load(&config).unwrap()).unwrap();
    let mut source = deepgate::capture::replay::open_input(&common::fixture("faces/obama.jpg")).unwrap();
    let frame = source.next_frame().unwrap().unwrap();
    let error = pipeline.process(&frame).unwrap_err();
    assert!(format!("{error:#}").contains("NaN"), "{error:#}");
    // The failed frame gave no evidence: the session ends undecided, not genuine.
    let verdict = pipeline.finish();
    assert!(
        verdict.as_ref().is_none_or(|v| v.decision != deepgate::decide::Decision::Genuine),
        "{verdict:?}"
    );
}

#[test]
fn the_stand_in_classifier_yields_probabilities_and_verdicts() {
    let board = common::board(Some("stand_in"), &[], &[]);
    let config = BoardConfig::load(&board).unwrap();
    let mut pipeline = Pipeline::new(&config, Models::load(&config).unwrap()).unwrap();
    assert_eq!(pipeline.crop_size(), 64, "the crop size comes from the classifier's manifest entry");
    let mut source = deepgate::capture::replay::open_input(&common::fixture("faces/obama.jpg")).unwrap();
    let frame = source.next_frame().unwrap().unwrap();
    let (faces, verdict) = pipeline.process(&frame).unwrap();
    let probability = faces[0].fake_probability.expect("a configured classifier judges every face");
    assert!((0.0..=1.0).contains(&probability));
    let verdict = verdict.or_else(|| pipeline.finish()).expect("a still gets a verdict");
    assert_eq!(verdict.fake_probability, Some(probability));
    assert_eq!(verdict.frames_used, 1);
}

/// `Placement::Cuda` where tract's CUDA runtime can run: the model runs on the GPU, within `GPU_AGREEMENT` of
/// the CPU plan on inputs it was not checked on at load. Where it cannot (no driver, GPU, cuDNN…): the model
/// still loads and runs on the CPU, identical to a CPU-placed one, and the reason is kept, once, for the
/// runtime to report. (Each load times its convolution layouts: where the two loads chose different ones, as
/// can happen where both run alike, e.g. under qemu, the outputs agree as the layouts do, within
/// `layout::AGREEMENT`.)
#[test]
fn a_model_placed_on_the_gpu_runs_there_or_on_the_cpu_with_the_reason_kept() {
    use deepgate::infer::Placement;
    use deepgate::infer::{cuda_runtime, fill_test_pattern, Model, GPU_AGREEMENT};
    let manifest = Manifest::load(&common::root().join("models/manifest.toml")).unwrap();
    let usable = cuda_runtime().map(|_| ()).map_err(|error| format!("{error:#}"));
    if let Err(reason) = &usable {
        eprintln!("no GPU inference here ({reason}): checking that placed models fall back to the CPU");
    }
    for (id, role) in [("blazeface_front_128", Role::Detector), ("deepgate_student", Role::Classifier)] {
        let entry = manifest.get(id, role).unwrap();
        let mut on_cpu = Model::load(&manifest, entry).unwrap();
        let mut placed = Model::load_on(&manifest, entry, Placement::Cuda).unwrap();
        assert_eq!(on_cpu.placement_name(), "CPU");
        let failure = placed.take_gpu_failure().map(|error| format!("{error:#}"));
        match &usable {
            Ok(()) => assert_eq!((placed.placement_name(), failure), ("GPU", None)),
            Err(reason) => {
                assert_eq!(placed.placement_name(), "CPU");
                let failure = failure.expect("the reason the model is not on the GPU is kept");
                assert!(failure.contains(id) && failure.contains(reason.as_str()), "{failure}");
            }
        }
        assert!(placed.take_gpu_failure().is_none(), "the reason is given once");

        for shift in [0.0f32, 0.5, -0.7] {
            for model in [&mut on_cpu, &mut placed] {
                model
                    .write_input(|_, values| {
                        fill_test_pattern(values);
                        values.iter_mut().for_each(|value| *value = (*value + shift).clamp(-1.0, 1.0));
                        Ok(())
                    })
                    .unwrap();
            }
            let (expected, found) = (on_cpu.run().unwrap(), placed.run().unwrap());
            for (expected, found) in expected.iter().zip(&found) {
                let expected = expected.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
                let found = found.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
                let scale = expected.iter().fold(1f32, |most, value| most.max(value.abs()));
                let worst = expected.iter().zip(&found).fold(0f32, |most, (a, b)| most.max((a - b).abs()));
                match &usable {
                    Ok(()) => assert!(
                        worst <= GPU_AGREEMENT * scale && found.iter().all(|value| value.is_finite()),
                        "{id} on the GPU: {worst} from the CPU (scale {scale})"
                    ),
                    Err(_) if on_cpu.layout().layout == placed.layout().layout => {
                        assert_eq!(found, expected, "{id} falls back to exactly the CPU plan")
                    }
                    Err(_) => assert!(
                        worst <= deepgate::infer::layout::AGREEMENT * scale,
                        "{id} falls back to the CPU plan in the other layout: {worst} from it (scale {scale})"
                    ),
                }
            }
        }
    }
}
