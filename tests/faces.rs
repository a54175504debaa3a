//! Face detection on real photos through the whole CPU pipeline: boxes against boxes checked by eye, keypoint
//! plausibility, no face where there is none, several faces per frame, and every camera pixel format.

mod common;

use common::{fixture, iou};
use deepgate::capture::replay::open_input;
use deepgate::config::BoardConfig;
use deepgate::decide::Decision;
use deepgate::frame::{Frame, PixelFormat};
use deepgate::pipeline::{FaceResult, Models, Pipeline};
use std::path::Path;

fn pipeline() -> Pipeline {
    let config = BoardConfig::load(&common::root().join("board/host.toml")).unwrap();
    let models = Models::load(&config).unwrap();
    Pipeline::new(&config, models).unwrap()
}

fn faces_in(pipeline: &mut Pipeline, name: &str) -> Vec<FaceResult> {
    let mut source = open_input(&fixture(name)).unwrap();
    let frame = source.next_frame().unwrap().unwrap();
    let faces = pipeline.process(&frame).unwrap().0.to_vec();
    pipeline.finish();
    faces
}

/// Face boxes [x, y, w, h] in source pixels, checked by eye on the photos (drawn over them and looked at):
/// forehead to chin, ear to ear as BlazeFace frames faces.
const CHECKED: [(&str, [f64; 4]); 6] = [
    ("faces/astronaut.png", [178.0, 81.0, 94.0, 94.0]),
    ("faces/obama.jpg", [349.0, 142.0, 275.0, 275.0]),
    ("faces/obama2.jpg", [187.0, 298.0, 304.0, 304.0]),
    ("faces/biden.jpg", [425.0, 256.0, 311.0, 311.0]),
    ("faces/rgba.png", [187.0, 298.0, 304.0, 304.0]),
    ("scenes/camera.png", [174.0, 119.0, 90.0, 90.0]),
];

#[test]
fn finds_the_face_in_each_real_photo_where_it_is() {
    let mut pipeline = pipeline();
    for (name, checked) in CHECKED {
        let faces = faces_in(&mut pipeline, name);
        assert_eq!(faces.len(), 1, "{name}: expected one face, got {faces:?}");
        let face = &faces[0].face;
        let found = face.bbox.map(f64::from);
        let overlap = iou(found, checked);
        assert!(
            overlap > 0.8,
            "{name}: box {found:?} overlaps the checked box {checked:?} by only {overlap:.2}"
        );
        assert!(face.score > 0.75, "{name}: score {}", face.score);
        assert!(faces[0].main, "{name}: the only face is the main face");
    }
}

#[test]
fn keypoints_sit_where_a_face_has_them() {
    let mut pipeline = pipeline();
    for (name, _) in CHECKED {
        let face = faces_in(&mut pipeline, name)[0].face;
        let [x, y, w, h] = face.bbox;
        let [right_eye, left_eye, nose, mouth, ..] = face.keypoints;
        for (label, point) in
            [("right eye", right_eye), ("left eye", left_eye), ("nose", nose), ("mouth", mouth)]
        {
            assert!(
                point[0] > x && point[0] < x + w && point[1] > y && point[1] < y + h,
                "{name}: {label} {point:?} outside the box {:?}",
                face.bbox
            );
        }
        // The subject's right eye is on the image's left; eyes above the nose, the nose above the mouth.
        assert!(right_eye[0] < left_eye[0], "{name}: eyes swapped");
        let eye_level = (right_eye[1] + left_eye[1]) / 2.0;
        assert!(
            eye_level < nose[1] && nose[1] < mouth[1],
            "{name}: eyes, nose, mouth not in order from the top"
        );
        let eye_distance =
            ((left_eye[0] - right_eye[0]).powi(2) + (left_eye[1] - right_eye[1]).powi(2)).sqrt();
        assert!(
            (0.2..0.6).contains(&(eye_distance / w)),
            "{name}: eye distance {eye_distance} implausible for a box {w} wide"
        );
    }
}

#[test]
fn no_face_where_there_is_none() {
    let mut pipeline = pipeline();
    for name in ["scenes/coffee.png", "scenes/chelsea.png", "scenes/rocket.jpg"] {
        let mut source = open_input(&fixture(name)).unwrap();
        let frame = source.next_frame().unwrap().unwrap();
        let (faces, verdict) = pipeline.process(&frame).unwrap();
        assert!(faces.is_empty(), "{name}: found {faces:?}");
        assert!(verdict.is_none());
        let verdict = pipeline.finish().expect("a session without a face ends as no_face");
        assert_eq!(verdict.decision, Decision::NoFace, "{name}");
    }
}

/// An RGB canvas holding the faces of several photos side by side: each tile is a square around the checked
/// face box, 1.6 times its size (BlazeFace's front model is made for faces filling a good part of the frame).
fn collage(names: &[&str], tile: u32) -> (Vec<u8>, u32, u32) {
    let (width, height) = (tile * names.len() as u32, tile);
    let mut canvas = image::RgbImage::new(width, height);
    for (index, name) in names.iter().enumerate() {
        let photo = image::open(fixture(name)).unwrap().to_rgb8();
        let [x, y, w, _] = CHECKED.iter().find(|(checked, _)| checked == name).unwrap().1;
        let side = (w * 1.6) as u32;
        let (left, top) = ((x + w / 2.0) as u32 - side / 2, (y + w / 2.0) as u32 - side / 2);
        let square = image::imageops::crop_imm(&photo, left, top, side, side).to_image();
        let resized = image::imageops::resize(&square, tile, tile, image::imageops::FilterType::Triangle);
        image::imageops::replace(&mut canvas, &resized, (index as u32 * tile) as i64, 0);
    }
    (canvas.into_raw(), width, height)
}

#[test]
fn finds_several_faces_in_one_frame_and_follows_the_largest() {
    let mut pipeline = pipeline();
    let (pixels, width, height) =
        collage(&["faces/astronaut.png", "faces/obama2.jpg", "faces/biden.jpg"], 400);
    let frame = Frame {
        format: PixelFormat::Rgb24,
        width,
        height,
        stride: width as usize * 3,
        data: &pixels,
        source: "collage",
        sequence: 0,
        timestamp_ns: 0,
        discontinuity: true,
    };
    let faces = pipeline.process(&frame).unwrap().0.to_vec();
    assert_eq!(faces.len(), 3, "{faces:?}");
    let mut centres: Vec<f32> = faces.iter().map(|f| f.face.bbox[0] + f.face.bbox[2] / 2.0).collect();
    centres.sort_by(f32::total_cmp);
    for (index, centre) in centres.iter().enumerate() {
        let tile = (*centre / 400.0) as usize;
        assert_eq!(tile, index, "one face per tile: centres {centres:?}");
    }
    let main: Vec<&FaceResult> = faces.iter().filter(|f| f.main).collect();
    assert_eq!(main.len(), 1);
    let largest = faces.iter().map(|f| f.face.area()).fold(0.0, f32::max);
    assert_eq!(main[0].face.area(), largest, "the main face is the largest");
}

#[test]
fn every_camera_pixel_format_finds_the_same_face() {
    let mut pipeline = pipeline();
    let photo = image::open(fixture("faces/obama.jpg")).unwrap().to_rgb8();
    // An odd width and a stride with padding, as some drivers deliver.
    let photo = image::imageops::crop_imm(&photo, 0, 0, 907, 1137).to_image();
    let (width, height) = photo.dimensions();
    let reference = [349.0, 142.0, 275.0, 275.0];
    let formats = PixelFormat::RAW;
    for format in formats {
        let stride = format.min_stride(width) + 64;
        let data = deepgate::capture::synthetic::camera_frame(photo.as_raw(), width, height, format, stride)
            .unwrap();
        let frame = Frame {
            format,
            width,
            height,
            stride,
            data: &data,
            source: format.name(),
            sequence: 0,
            timestamp_ns: 0,
            discontinuity: true,
        };
        let faces = pipeline.process(&frame).unwrap().0.to_vec();
        pipeline.finish();
        assert_eq!(faces.len(), 1, "{}: {faces:?}", format.name());
        let overlap = iou(faces[0].face.bbox.map(f64::from), reference);
        assert!(overlap > 0.8, "{}: overlap {overlap:.2}", format.name());
    }
    // MJPEG: the same photo as a JPEG frame, decoded by the pipeline.
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85).encode_image(&photo).unwrap();
    let frame = Frame {
        format: PixelFormat::Mjpeg,
        width,
        height,
        stride: 0,
        data: &jpeg,
        source: "mjpeg",
        sequence: 0,
        timestamp_ns: 0,
        discontinuity: true,
    };
    let faces = pipeline.process(&frame).unwrap().0.to_vec();
    assert_eq!(faces.len(), 1);
    assert!(iou(faces[0].face.bbox.map(f64::from), reference) > 0.8);
    // A corrupt MJPEG frame is an error for that frame only; the next frame works.
    let frame = Frame { data: &jpeg[..jpeg.len() / 3], ..frame };
    assert!(pipeline.process(&frame).is_err());
    let frame = Frame { data: &jpeg, ..frame };
    assert_eq!(pipeline.process(&frame).unwrap().0.len(), 1);
}

#[test]
fn huge_and_tiny_frames_are_handled() {
    let mut pipeline = pipeline();
    // 8000x6000 grey: no face, no trouble.
    let data = vec![128u8; 8000 * 6000];
    let frame = Frame {
        format: PixelFormat::Grey,
        width: 8000,
        height: 6000,
        stride: 8000,
        data: &data,
        source: "huge",
        sequence: 0,
        timestamp_ns: 0,
        discontinuity: true,
    };
    assert!(pipeline.process(&frame).unwrap().0.is_empty());
    let pixel = [7u8, 8, 9];
    let frame = Frame { format: PixelFormat::Rgb24, width: 1, height: 1, stride: 3, data: &pixel, ..frame };
    assert!(pipeline.process(&frame).unwrap().0.is_empty());
    // A frame claiming more bytes than it has is refused, not read out of bounds.
    let frame = Frame { width: 2, height: 2, stride: 6, ..frame };
    assert!(pipeline.process(&frame).is_err());
    assert!(Path::new(&fixture("faces/astronaut.png")).exists());
}
