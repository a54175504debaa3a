"""The Python peer of `deepgate bench`: the same work on the same frames, done the usual Python way.

It reads the frames `deepgate bench --save-frames DIR` wrote (DIR/frames.json indexes them, with the board's
settings and the pipeline's constants as deepgate loaded them) and runs, per frame and per stage as deepgate
times them:

  mjpeg_decode         cv2.imdecode straight to RGB (MJPEG only)
  letterbox            cv2.cvtColor YUYV/NV12 -> RGB, cv2.resize INTER_AREA, cv2.copyMakeBorder black,
                       normalisation into the detector's input (manifest mean/std, layout)
  detector             onnxruntime, BlazeFace (manifest id and file)
  detector_decode_nms  the anchors of the manifest's grids decoded and MediaPipe's weighted NMS, in numpy,
                       with the board's score threshold, NMS overlap and smallest face
  classifier_crop      every crop of the frame, as deepgate makes them in one call: per face,
                       cv2.estimateAffinePartial2D keypoints -> the alignment template (with its margin), the
                       quality crop and the classifier's crop (deepgate's supersampled warp: cv2.warpAffine at
                       taps x the size, then cv2.resize INTER_AREA), the latter normalised into the input
  align_quality        per face: the quality measures on the quality crop (pose, variance of the Laplacian,
                       brightness, clipped fraction, share outside the frame) and the gates
  classifier           per face: onnxruntime, the fake probability from the manifest's rule
  frame                all of the above (deepgate's frame also holds its sequential decision, a few us)

The stage boundaries follow deepgate's pipeline (src/pipeline.rs, `Stage` in src/timing.rs): when those move,
`Peer.process` moves with them. With --reference (deepgate bench --json of the same frames) it also judges
deepgate's own faces, untimed, so that the crops and the classifier are checked apart from the detectors.

One thread everywhere (cv2.setNumThreads(1), onnxruntime intra/inter-op 1). Prints JSON on stdout: the versions
used and, per frame file, the per-stage medians and what the last frame found, in the shape of
`deepgate bench --json`. `cargo xtask bench-peer` runs it alternately with deepgate and checks that both agree.

Usage: python bench/peer.py --frames-dir DIR [--frames N] [--warm-up N] [--reference DEEPGATE.json]
"""
import argparse
import hashlib
import json
import platform
import sys
import time
import tomllib
from pathlib import Path

import cv2
import numpy as np
import onnxruntime

STAGES = ["mjpeg_decode", "letterbox", "detector", "detector_decode_nms", "align_quality", "classifier_crop",
          "classifier", "frame"]
# The keypoints the alignment uses, by their manifest names (= the alignment template's keys).
ALIGNED_KEYPOINTS = ["right_eye", "left_eye", "nose_tip", "mouth_centre"]


def load_toml(path):
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def model_entry(manifest, model_id, role):
    for entry in manifest["model"]:
        if entry["id"] == model_id:
            if entry["role"] != role:
                sys.exit(f"peer: model `{model_id}` is a {entry['role']}, not a {role}")
            return entry
    sys.exit(f"peer: no model `{model_id}` in the manifest")


def image_size(spec):
    """(width, height) of a model input, as deepgate's InputSpec::image_size."""
    shape = spec["shape"]
    return (shape[2], shape[1]) if spec["layout"] == "NHWC" else (shape[3], shape[2])


def session(directory, entry):
    """An onnxruntime session, one thread, on the manifest's file, after checking its sha256 as deepgate does."""
    path = directory / entry["file"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        sys.exit(f"peer: {path} has sha256 {digest}, the manifest says {entry['sha256']}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: the detector's unused initialisers are not news
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Normaliser:
    """value = (pixel / 255 - mean) / std per channel, in the model's channel order and layout."""

    def __init__(self, spec):
        std = np.asarray(spec["std"], np.float32)
        self.scale = (1.0 / (255.0 * std)).astype(np.float32)
        self.shift = (np.asarray(spec["mean"], np.float32) / std).astype(np.float32)
        self.bgr = spec["colour"] == "BGR"
        self.nchw = spec["layout"] == "NCHW"

    def __call__(self, rgb):
        pixels = rgb[..., ::-1] if self.bgr else rgb
        values = pixels.astype(np.float32) * self.scale - self.shift
        if self.nchw:
            values = values.transpose(2, 0, 1)
        return np.ascontiguousarray(values[None])


class Peer:
    def __init__(self, index):
        manifest_path = Path(index["manifest"])
        manifest = load_toml(manifest_path)
        alignment = load_toml(index["alignment"])
        self.detector_entry = model_entry(manifest, index["detector"], "detector")
        if index["classifier"] is None:
            sys.exit("peer: the board names no classifier; there is nothing to compare")
        self.classifier_entry = model_entry(manifest, index["classifier"], "classifier")
        models = manifest_path.parent
        self.detector = session(models, self.detector_entry)
        self.classifier = session(models, self.classifier_entry)
        self.detector_input = self.detector_entry["input"]["name"]
        self.detector_outputs = [output["name"] for output in self.detector_entry["outputs"]]
        self.classifier_input = self.classifier_entry["input"]["name"]
        self.detector_normaliser = Normaliser(self.detector_entry["input"])
        self.classifier_normaliser = Normaliser(self.classifier_entry["input"])
        self.input_width, self.input_height = image_size(self.detector_entry["input"])
        self.crop_side = image_size(self.classifier_entry["input"])[0]
        self.quality_side = index["quality_crop"]
        self.max_faces = index["max_faces"]
        self.max_taps = index["max_taps"]
        self.detection = index["detector_settings"]
        self.gates = index["quality_settings"]
        blazeface = self.detector_entry["blazeface"]
        self.grids = blazeface["grids"]
        self.logit_clamp = blazeface["logit_clamp"]
        names = blazeface["keypoints"]
        self.keypoint_count = len(names)
        self.aligned = [names.index(name) for name in ALIGNED_KEYPOINTS]
        anchors = []
        for grid, per_cell in self.grids:
            for y in range(grid):
                for x in range(grid):
                    anchors.extend([[(x + 0.5) / grid, (y + 0.5) / grid]] * per_cell)
        self.anchors = np.asarray(anchors, np.float32)
        template = np.asarray([alignment[name] for name in ALIGNED_KEYPOINTS], np.float32)
        self.template = (0.5 + (template - 0.5) / alignment["margin"]).astype(np.float32)
        rule = self.classifier_entry["classifier"]
        self.output_rule = rule["output"]
        self.fake_index = rule.get("fake_index", 0)

    # --- stages -------------------------------------------------------------------------------------------

    def to_rgb(self, raw, frame):
        """The frame's bytes as an RGB image (HxWx3 uint8)."""
        fmt, width, height, stride = frame["format"], frame["width"], frame["height"], frame["stride"]
        if fmt in ("YUYV", "NV12") and (width % 2 or height % 2):
            sys.exit(f"peer: OpenCV converts {fmt} of even sizes only, not {width}x{height}")
        if fmt == "YUYV":
            packed = raw[: stride * height].reshape(height, stride)[:, : 2 * width].reshape(height, width, 2)
            return cv2.cvtColor(packed, cv2.COLOR_YUV2RGB_YUY2)
        if fmt == "NV12":
            planes = raw[: stride * (height + height // 2)].reshape(height + height // 2, stride)[:, :width]
            return cv2.cvtColor(planes, cv2.COLOR_YUV2RGB_NV12)
        if fmt == "RGB24":
            return raw[: stride * height].reshape(height, stride)[:, : 3 * width].reshape(height, width, 3)
        sys.exit(f"peer: pixel format {fmt} is not supported (YUYV, NV12, MJPEG, RGB24)")

    def letterbox(self, rgb):
        """The detector's input, and (scale, offset x, offset y) mapping input pixels back to frame pixels."""
        height, width = rgb.shape[:2]
        scale = min(self.input_width / width, self.input_height / height)
        fitted_width = min(self.input_width, max(1, round(width * scale)))
        fitted_height = min(self.input_height, max(1, round(height * scale)))
        resized = cv2.resize(rgb, (fitted_width, fitted_height), interpolation=cv2.INTER_AREA)
        left = (self.input_width - fitted_width) // 2
        top = (self.input_height - fitted_height) // 2
        padded = cv2.copyMakeBorder(resized, top, self.input_height - fitted_height - top, left,
                                    self.input_width - fitted_width - left, cv2.BORDER_CONSTANT, value=0)
        return self.detector_normaliser(padded), (fitted_width / width, fitted_height / height, left, top)

    def decode(self, outputs, geometry, frame_width, frame_height):
        """Faces in frame pixels, strongest first: box [left, top, width, height], score, keypoints."""
        grids = len(self.grids)
        stride = 4 + 2 * self.keypoint_count
        logits = np.concatenate([outputs[i].reshape(-1) for i in range(grids)])
        regressors = np.concatenate([outputs[grids + i].reshape(-1, stride) for i in range(grids)])
        if len(logits) != len(self.anchors):
            sys.exit(f"peer: the detector gave {len(logits)} scores for {len(self.anchors)} anchors")
        finite = np.isfinite(logits) & np.isfinite(regressors).all(axis=1)
        with np.errstate(over="ignore"):  # exp(100) overflows float32 to inf: a score of 0, as in deepgate
            scores = 1.0 / (1.0 + np.exp(-np.clip(np.where(finite, logits, -np.inf), -self.logit_clamp,
                                                          self.logit_clamp)))
        size = float(self.input_width)
        keep = finite & (scores >= self.detection["score_threshold"]) & (regressors[:, 2] > 0) & \
            (regressors[:, 3] > 0)
        anchors, regressors, scores = self.anchors[keep], regressors[keep], scores[keep]
        order = np.argsort(-scores, kind="stable")
        anchors, regressors, scores = anchors[order], regressors[order], scores[order]
        # Centre x, centre y, width, height, then the keypoints, in input coordinates normalised to [0, 1].
        values = regressors / size
        values[:, 0:2] += anchors
        values[:, 4:stride:2] += anchors[:, :1]
        values[:, 5:stride:2] += anchors[:, 1:]
        corners = np.stack([values[:, 0] - values[:, 2] / 2, values[:, 1] - values[:, 3] / 2,
                            values[:, 0] + values[:, 2] / 2, values[:, 1] + values[:, 3] / 2], axis=1)
        scale_x, scale_y, offset_x, offset_y = geometry
        faces = []
        remaining = np.arange(len(scores))
        while len(remaining) and len(faces) < self.max_faces:
            top = corners[remaining[0]]
            others = corners[remaining]
            width = np.maximum(np.minimum(top[2], others[:, 2]) - np.maximum(top[0], others[:, 0]), 0)
            height = np.maximum(np.minimum(top[3], others[:, 3]) - np.maximum(top[1], others[:, 1]), 0)
            intersection = width * height
            union = (top[2] - top[0]) * (top[3] - top[1]) + \
                (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1]) - intersection
            overlap = np.where(union > 0, intersection / np.where(union > 0, union, 1), 0)
            claimed = overlap >= self.detection["nms_iou"]
            claimed[0] = True
            weights = scores[remaining[claimed]]
            blended = (values[remaining[claimed]] * weights[:, None]).sum(axis=0) / weights.sum()
            best = scores[remaining[0]]
            remaining = remaining[~claimed]
            # To frame pixels through the letterbox.
            to_x = lambda x: (x * size - offset_x) / scale_x  # noqa: E731
            to_y = lambda y: (y * size - offset_y) / scale_y  # noqa: E731
            left, right = to_x(blended[0] - blended[2] / 2), to_x(blended[0] + blended[2] / 2)
            top_y, bottom = to_y(blended[1] - blended[3] / 2), to_y(blended[1] + blended[3] / 2)
            box = [left, top_y, right - left, bottom - top_y]
            if min(box[2], box[3]) < self.detection["min_face_px"]:
                continue
            keypoints = [[to_x(blended[4 + 2 * k]), to_y(blended[5 + 2 * k])] for k in range(self.keypoint_count)]
            faces.append({"box": [float(v) for v in box], "score": float(best),
                          "keypoints": [[float(x), float(y)] for x, y in keypoints]})
        return faces

    def crop_map(self, face, side):
        """The least-squares similarity (frame -> crop, continuous coordinates: pixel i covers [i, i+1)) that puts
        the face's keypoints on the template of a `side` crop; None when the keypoints are degenerate."""
        source = np.asarray([face["keypoints"][k] for k in self.aligned], np.float32)
        target = self.template * side
        # A threshold no residual reaches keeps all four points, so the refined answer is the least-squares
        # similarity over them, as deepgate's closed form.
        matrix, _ = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC, ransacReprojThreshold=1e6)
        if matrix is None or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:, :2])) < 1e-12:
            return None
        return matrix

    def crop(self, rgb, matrix, side):
        """The `side` crop through `matrix`, as deepgate's definition makes it: each crop pixel the mean of
        taps x taps bilinear samples at its sub-cell centres (taps = ceil of how many frame pixels one crop pixel
        spans, 1..max_taps), a sample outside the frame black, inside it bilinear with the edges clamped. That is
        warpAffine (BORDER_REPLICATE: the clamp) to a crop `taps` times larger, black where the sample fell
        outside the frame, then INTER_AREA by `taps`."""
        span = 1.0 / np.sqrt(abs(np.linalg.det(matrix[:, :2])))
        taps = int(min(max(np.ceil(span - 1e-3), 1), self.max_taps))
        scaled = matrix * taps
        # deepgate's coordinates are continuous; OpenCV puts pixel i's centre at i.
        scaled[:, 2] += scaled[:, :2].sum(axis=1) * 0.5 - 0.5
        size = (side * taps, side * taps)
        large = cv2.warpAffine(rgb, scaled, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # Only a crop reaching past the frame's edge (a face near it) has samples outside: black them out, using
        # that the nearest pixel of a sample is inside exactly when the sample is.
        height, width = rgb.shape[:2]
        inverse = cv2.invertAffineTransform(matrix)
        corners = np.asarray([[0, 0, 1], [side, 0, 1], [0, side, 1], [side, side, 1]], np.float64) @ inverse.T
        if corners.min() < 0 or corners[:, 0].max() > width or corners[:, 1].max() > height:
            inside = cv2.warpAffine(np.ones((height, width), np.uint8), scaled, size, flags=cv2.INTER_NEAREST,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            large *= inside[..., None]
        if taps == 1:
            return large
        return cv2.resize(large, (side, side), interpolation=cv2.INTER_AREA)

    def quality(self, face, frame_width, frame_height, crop):
        right, left = face["keypoints"][self.aligned[0]], face["keypoints"][self.aligned[1]]
        nose, mouth = face["keypoints"][self.aligned[2]], face["keypoints"][self.aligned[3]]
        eye_x, eye_y = left[0] - right[0], left[1] - right[1]
        distance = float(np.hypot(eye_x, eye_y))
        roll = float(np.degrees(np.arctan2(eye_y, eye_x)))
        if distance > 0:
            middle = [(left[0] + right[0]) / 2, (left[1] + right[1]) / 2]
            along = lambda p: ((p[0] - middle[0]) * eye_x + (p[1] - middle[1]) * eye_y) / distance  # noqa: E731
            yaw = (along(nose) * 0.7 + along(mouth) * 0.3) / distance
        else:
            yaw = float("nan")
        luma = crop.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
        laplacian = cv2.Laplacian(luma, cv2.CV_32F, ksize=1)
        height, width = luma.shape
        y0, y1, x0, x1 = height // 4, height * 3 // 4, width // 4, width * 3 // 4
        centre = luma[y0:y1, x0:x1]
        sharpness = float(laplacian[y0:y1, x0:x1].astype(np.float64).var())
        brightness = float(centre.astype(np.float64).mean())
        clipped = float(((centre <= 5.0) | (centre >= 250.0)).mean())
        left_x, top_y, box_width, box_height = face["box"]
        inside = max(min(left_x + box_width, frame_width) - max(left_x, 0.0), 0.0) * \
            max(min(top_y + box_height, frame_height) - max(top_y, 0.0), 0.0)
        outside = 1.0 - inside / (box_width * box_height) if box_width * box_height > 0 else 1.0
        measures = {"face_px": min(box_width, box_height), "sharpness": sharpness, "yaw": yaw,
                    "roll_degrees": roll, "brightness": brightness, "clipped": clipped, "outside": outside}
        return measures, self.check(measures)

    def check(self, q):
        """The first failed gate, in deepgate's order; comparisons are false for NaN as there."""
        g = self.gates
        if not q["face_px"] >= g["min_face_px"]:
            return "too_small"
        if not q["outside"] <= g["max_outside"]:
            return "outside_frame"
        if not abs(q["yaw"]) <= g["max_yaw"]:
            return "turned"
        if not abs(q["roll_degrees"]) <= g["max_roll_degrees"]:
            return "tilted"
        if not q["brightness"] >= g["min_brightness"]:
            return "too_dark"
        if not q["brightness"] <= g["max_brightness"]:
            return "too_bright"
        if not q["clipped"] <= g["max_clipped"]:
            return "clipped"
        if not q["sharpness"] >= g["min_sharpness"]:
            return "blurred"
        return None

    def crops(self, rgb, face):
        """The face's quality crop and its classifier input, or None when its keypoints are degenerate."""
        matrix = self.crop_map(face, self.quality_side)
        if matrix is None:
            return None
        quality_crop = self.crop(rgb, matrix, self.quality_side)
        classifier_crop = self.crop(rgb, self.crop_map(face, self.crop_side), self.crop_side)
        return quality_crop, self.classifier_normaliser(classifier_crop)

    def judge(self, rgb, face):
        """Quality and fake probability of a face found elsewhere (deepgate's), outside the timings: the crops and
        the classifier checked on their own, without the detectors' differences."""
        frame_height, frame_width = rgb.shape[:2]
        made = self.crops(rgb, face)
        if made is None:
            return {"quality": None, "issue": "too_small", "fake_probability": None}
        quality, issue = self.quality(face, frame_width, frame_height, made[0])
        outputs = self.classifier.run(None, {self.classifier_input: made[1]})
        return {"quality": quality, "issue": issue, "fake_probability": self.fake_probability(outputs)}

    def fake_probability(self, outputs):
        values = outputs[0].reshape(-1).astype(np.float64)
        if not np.isfinite(values).all():
            sys.exit("peer: the classifier gave a non-finite output")
        if self.output_rule == "softmax":
            exponentials = np.exp(values - values.max())
            return float(exponentials[self.fake_index] / exponentials.sum())
        if self.output_rule == "sigmoid":
            return float(1.0 / (1.0 + np.exp(-values[0])))
        return float(values[0])

    # --- one frame ----------------------------------------------------------------------------------------

    def decode_frame(self, raw, frame):
        if frame["format"] == "MJPEG":
            rgb = cv2.imdecode(raw, cv2.IMREAD_COLOR_RGB)
            if rgb is None:
                sys.exit(f"peer: cannot decode {frame['file']}")
            return rgb
        return self.to_rgb(raw, frame)

    def process(self, raw, frame, times):
        start = time.perf_counter()
        if frame["format"] == "MJPEG":
            rgb = cv2.imdecode(raw, cv2.IMREAD_COLOR_RGB)
            if rgb is None:
                sys.exit(f"peer: cannot decode {frame['file']}")
            mark = time.perf_counter()
            times["mjpeg_decode"].append(mark - start)
        else:
            rgb, mark = None, start
        if rgb is None:
            rgb = self.to_rgb(raw, frame)
        tensor, geometry = self.letterbox(rgb)
        now = time.perf_counter()
        times["letterbox"].append(now - mark)
        mark = now
        outputs = self.detector.run(self.detector_outputs, {self.detector_input: tensor})
        now = time.perf_counter()
        times["detector"].append(now - mark)
        mark = now
        height, width = rgb.shape[:2]
        faces = self.decode(outputs, geometry, width, height)
        now = time.perf_counter()
        times["detector_decode_nms"].append(now - mark)
        # Every crop of the frame first, as deepgate makes them in one call: per face the quality crop and the
        # classifier's crop, normalised into its input.
        mark = time.perf_counter()
        crops = [self.crops(rgb, face) for face in faces]
        if faces:
            times["classifier_crop"].append(time.perf_counter() - mark)
        for face, made in zip(faces, crops):
            mark = time.perf_counter()
            if made is None:
                # Degenerate keypoints: not a face that can be aligned or judged.
                face.update(quality=None, issue="too_small", fake_probability=None)
                times["align_quality"].append(time.perf_counter() - mark)
                continue
            quality_crop, tensor = made
            face["quality"], face["issue"] = self.quality(face, width, height, quality_crop)
            now = time.perf_counter()
            times["align_quality"].append(now - mark)
            mark = now
            outputs = self.classifier.run(None, {self.classifier_input: tensor})
            face["fake_probability"] = self.fake_probability(outputs)
            times["classifier"].append(time.perf_counter() - mark)
        times["frame"].append(time.perf_counter() - start)
        return faces


def summary(times):
    rows = []
    for stage in STAGES:
        samples = sorted(times[stage])
        if not samples:
            continue
        middle = len(samples) // 2
        median = samples[middle] if len(samples) % 2 else (samples[middle - 1] + samples[middle]) / 2
        rows.append({"stage": stage, "count": len(samples), "median_ms": median * 1e3,
                     "min_ms": samples[0] * 1e3, "max_ms": samples[-1] * 1e3})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames-dir", required=True, type=Path)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--warm-up", type=int, default=5, help="frames run before timing, as deepgate bench")
    parser.add_argument("--reference", type=Path,
                        help="deepgate bench --json output for these frames: also judge deepgate's faces")
    arguments = parser.parse_args()
    if not 1 <= arguments.frames <= 100_000:
        sys.exit("peer: --frames must be 1 to 100000")
    cv2.setNumThreads(1)
    index = json.loads((arguments.frames_dir / "frames.json").read_text())
    peer = Peer(index)
    reference = json.loads(arguments.reference.read_text()) if arguments.reference else None
    results = []
    for frame in index["frames"]:
        raw = np.fromfile(arguments.frames_dir / frame["file"], np.uint8)
        for _ in range(arguments.warm_up):
            peer.process(raw, frame, {stage: [] for stage in STAGES})
        times = {stage: [] for stage in STAGES}
        found = 0
        for _ in range(arguments.frames):
            faces = peer.process(raw, frame, times)
            found += len(faces)
        result = {"format": frame["format"], "width": frame["width"], "height": frame["height"],
                  "frames": arguments.frames, "faces": found, "stages": summary(times), "faces_found": faces}
        if reference is not None:
            theirs = [entry for entry in reference if entry["format"] == frame["format"]]
            if len(theirs) != 1:
                sys.exit(f"peer: the reference has {len(theirs)} results for {frame['format']}")
            rgb = peer.decode_frame(raw, frame)
            result["on_deepgate_faces"] = [peer.judge(rgb, face) for face in theirs[0]["faces_found"]]
        results.append(result)
    versions = {"python": platform.python_version(), "opencv": cv2.__version__,
                "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
                "opencv_threads": cv2.getNumThreads()}
    json.dump({"versions": versions, "results": results}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
