//! Replay frame sources: still images and directories of stills read from disk, for tests, evaluation and kiosks
//! without a camera; `open_input` picks between them and the YUV4MPEG2 video source in [`crate::capture::y4m`].

use crate::capture::y4m::Y4mSource;
use crate::capture::FrameSource;
use crate::codec::{decode_image_file, DecodedImage};
use crate::frame::Frame;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// One still image, lent once as a frame (sequence 0, time 0, a discontinuity), then the end of the stream.
pub struct ImageSource {
    path: String,
    image: DecodedImage,
    lent: bool,
}

impl ImageSource {
    /// Decodes the JPEG or PNG at `path` (recognised from its content, not its extension).
    pub fn open(path: impl AsRef<Path>) -> Result<ImageSource> {
        let path = path.as_ref();
        Ok(ImageSource { path: path.display().to_string(), image: decode_image_file(path)?, lent: false })
    }
}

impl FrameSource for ImageSource {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        if self.lent {
            return Ok(None);
        }
        self.lent = true;
        Ok(Some(self.image.frame(&self.path, 0, 0, true)))
    }

    fn describe(&self) -> &str {
        &self.path
    }
}

/// One image file of a directory, with its path as text for `describe`.
struct ImageFile {
    path: PathBuf,
    name: String,
}

/// The JPEG and PNG files of one directory (not its subdirectories), in file-name order, each lent as a still.
/// A frame's sequence is its file's position in that order, so a file that failed to decode shows as a gap.
pub struct DirectorySource {
    directory: String,
    files: Vec<ImageFile>,
    next_index: usize,
    /// The file of the latest frame or error, until the next call.
    current: Option<usize>,
    image: Option<DecodedImage>,
}

impl DirectorySource {
    /// Lists the directory's `.jpg`, `.jpeg` and `.png` files (any case); a directory without one is an error.
    pub fn open(directory: impl AsRef<Path>) -> Result<DirectorySource> {
        let directory = directory.as_ref();
        let name = directory.display().to_string();
        let entries =
            std::fs::read_dir(directory).with_context(|| format!("cannot list directory {name}"))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.with_context(|| format!("cannot list directory {name}"))?.path();
            let is_image =
                path.extension().and_then(|extension| extension.to_str()).is_some_and(|extension| {
                    ["jpg", "jpeg", "png"].iter().any(|known| extension.eq_ignore_ascii_case(known))
                });
            if is_image && path.is_file() {
                files.push(ImageFile { name: path.display().to_string(), path });
            }
        }
        if files.is_empty() {
            bail!("directory {name} holds no JPEG or PNG image (.jpg, .jpeg, .png)");
        }
        files.sort_by(|first, second| first.path.file_name().cmp(&second.path.file_name()));
        Ok(DirectorySource { directory: name, files, next_index: 0, current: None, image: None })
    }

    /// The number of image files found at open.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Always false: `open` refuses a directory without images.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

impl FrameSource for DirectorySource {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        let index = self.next_index;
        let Some(file) = self.files.get(index) else {
            self.current = None;
            self.image = None;
            return Ok(None);
        };
        self.next_index += 1;
        self.current = Some(index);
        match decode_image_file(&file.path) {
            Ok(image) => {
                let image = self.image.insert(image);
                // A directory listing holds far fewer than 2^64 files.
                Ok(Some(image.frame(&file.name, index as u64, 0, true)))
            }
            Err(error) => {
                self.image = None;
                Err(error)
            }
        }
    }

    /// The file being lent (or that just failed), so the caller can name each frame's source; the directory
    /// before the first frame and after the last.
    fn describe(&self) -> &str {
        match self.current.and_then(|index| self.files.get(index)) {
            Some(file) => &file.name,
            None => &self.directory,
        }
    }
}

/// Opens a replay input: a directory of stills, a `.y4m` video (extension in any case), or else a still image.
pub fn open_input(path: &Path) -> Result<Box<dyn FrameSource>> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("cannot open input {}", path.display()))?;
    if metadata.is_dir() {
        return Ok(Box::new(DirectorySource::open(path)?));
    }
    let is_y4m = path
        .extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| extension.eq_ignore_ascii_case("y4m"));
    if is_y4m {
        Ok(Box::new(Y4mSource::open(path)?))
    } else {
        Ok(Box::new(ImageSource::open(path)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::test_support::{error_text, fixture, scratch_directory};
    use crate::codec::{decode_image_bytes, sample_to_8bit};
    use crate::frame::PixelFormat;

    const BAD: &str = "tests/fixtures/bad";

    fn bad(file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(BAD).join(file)
    }

    /// The single frame of a still, checked to be valid, tightly packed and alone.
    fn only_frame(path: &Path) -> DecodedImage {
        let mut source = ImageSource::open(path).unwrap();
        let frame = source.next_frame().unwrap().unwrap();
        frame.validate().unwrap();
        assert_eq!(frame.stride, frame.format.min_stride(frame.width));
        assert_eq!(frame.data.len(), frame.stride * frame.height as usize);
        assert_eq!((frame.sequence, frame.timestamp_ns, frame.discontinuity), (0, 0, true));
        let image = DecodedImage {
            format: frame.format,
            width: frame.width,
            height: frame.height,
            data: frame.data.to_vec(),
        };
        assert!(source.next_frame().unwrap().is_none());
        assert!(source.next_frame().unwrap().is_none());
        image
    }

    #[test]
    fn rgb_png_is_one_rgb24_frame() {
        let image = only_frame(&fixture("faces/astronaut.png"));
        assert_eq!((image.format, image.width, image.height), (PixelFormat::Rgb24, 512, 512));
    }

    #[test]
    fn jpeg_photo_is_one_rgb24_frame() {
        let image = only_frame(&fixture("faces/obama.jpg"));
        assert_eq!((image.format, image.width, image.height), (PixelFormat::Rgb24, 910, 1137));
    }

    #[test]
    fn grey_png_is_one_grey_frame() {
        let image = only_frame(&fixture("scenes/camera.png"));
        assert_eq!((image.format, image.width, image.height), (PixelFormat::Grey, 512, 512));
    }

    #[test]
    fn rgba_png_drops_alpha() {
        let image = only_frame(&fixture("faces/rgba.png"));
        assert_eq!((image.format, image.width, image.height), (PixelFormat::Rgb24, 626, 1200));
        let original = image::open(fixture("faces/rgba.png")).unwrap().into_rgba8();
        for (x, y) in [(0, 0), (313, 600), (625, 1199)] {
            let offset = (y as usize * 626 + x as usize) * 3;
            assert_eq!(&image.data[offset..offset + 3], &original.get_pixel(x, y).0[..3]);
        }
    }

    #[test]
    fn format_comes_from_content_not_extension() {
        let directory = scratch_directory("content-format");
        let disguised = directory.join("really_a_png.jpg");
        std::fs::copy(bad("one_by_one.png"), &disguised).unwrap();
        let image = only_frame(&disguised);
        assert_eq!(image.data, vec![255, 0, 0]);
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[test]
    fn one_by_one_png_is_a_valid_frame() {
        let image = only_frame(&bad("one_by_one.png"));
        assert_eq!((image.format, image.width, image.height), (PixelFormat::Rgb24, 1, 1));
        assert_eq!(image.data, vec![255, 0, 0]);
    }

    #[test]
    fn grey16_png_is_rounded_to_8_bits() {
        let image = only_frame(&bad("grey16.png"));
        assert_eq!((image.format, image.width, image.height), (PixelFormat::Grey, 64, 48));
        // Column x holds x * 65535 / 63 (integer division); 8 bits keep round(x * 255 / 63) of it.
        for x in 0..64u32 {
            let sample = (x * 65535 / 63) as f64;
            let expected = (sample * 255.0 / 65535.0).round() as u8;
            assert_eq!(image.data[(47 * 64 + x) as usize], expected, "column {x}");
        }
        assert_eq!(sample_to_8bit(0), 0);
        assert_eq!(sample_to_8bit(65535), 255);
        assert_eq!(sample_to_8bit(128), 0);
        assert_eq!(sample_to_8bit(129), 1);
    }

    #[test]
    fn empty_file_is_refused_by_name() {
        let message = error_text(ImageSource::open(bad("empty.jpg")));
        assert!(message.contains("empty.jpg") && message.contains("empty (0 bytes)"), "{message}");
        let message = error_text(decode_image_bytes(&[], "MJPEG frame 3"));
        assert!(message.contains("MJPEG frame 3") && message.contains("empty"), "{message}");
    }

    #[test]
    fn text_renamed_jpg_is_refused_by_name() {
        let message = error_text(ImageSource::open(bad("text.jpg")));
        assert!(message.contains("text.jpg") && message.contains("neither JPEG nor PNG"), "{message}");
    }

    #[test]
    fn truncated_jpeg_is_refused_by_name() {
        let message = error_text(ImageSource::open(bad("truncated.jpg")));
        assert!(message.contains("truncated.jpg") && message.contains("cannot decode"), "{message}");
    }

    #[test]
    fn huge_dimensions_are_refused_before_decoding() {
        let message = error_text(ImageSource::open(bad("huge_dims.png")));
        assert!(message.contains("huge_dims.png") && message.contains("100000x100000"), "{message}");
    }

    #[test]
    fn cmyk_jpeg_is_converted_to_rgb() {
        let image = only_frame(&bad("cmyk.jpg"));
        assert_eq!((image.format, image.width, image.height), (PixelFormat::Rgb24, 32, 16));
        // Left half cyan, right half yellow, within JPEG loss.
        let left = &image.data[(8 * 32 + 4) * 3..][..3];
        let right = &image.data[(8 * 32 + 28) * 3..][..3];
        let near = |pixel: &[u8], expected: [u8; 3]| {
            pixel.iter().zip(expected).all(|(&got, want)| got.abs_diff(want) <= 24)
        };
        assert!(near(left, [0, 255, 255]), "left {left:?}");
        assert!(near(right, [255, 255, 0]), "right {right:?}");
    }

    #[test]
    fn exif_orientation_is_applied() {
        let image = only_frame(&bad("exif_rotate90.jpg"));
        assert_eq!((image.width, image.height), (8, 16));
        let top = &image.data[(2 * 8 + 4) * 3..][..3];
        let bottom = &image.data[(13 * 8 + 4) * 3..][..3];
        assert!(top[0] > 200 && top[2] < 50, "top {top:?}");
        assert!(bottom[0] < 50 && bottom[2] > 200, "bottom {bottom:?}");
    }

    #[test]
    fn decode_image_bytes_matches_the_file_decoder() {
        let bytes = std::fs::read(fixture("faces/obama.jpg")).unwrap();
        let from_bytes = decode_image_bytes(&bytes, "obama").unwrap();
        assert_eq!(from_bytes, decode_image_file(&fixture("faces/obama.jpg")).unwrap());
        let message = error_text(decode_image_bytes(&bytes[..2000], "MJPEG frame 7"));
        assert!(message.contains("MJPEG frame 7"), "{message}");
    }

    #[test]
    fn directory_yields_good_bad_good_in_name_order() {
        let directory = scratch_directory("directory-mixed");
        std::fs::copy(bad("one_by_one.png"), directory.join("a.png")).unwrap();
        std::fs::copy(bad("text.jpg"), directory.join("b.jpeg")).unwrap();
        std::fs::copy(fixture("scenes/camera.png"), directory.join("c.PNG")).unwrap();
        std::fs::write(directory.join("notes.txt"), "not an image").unwrap();
        std::fs::create_dir(directory.join("d.png")).unwrap();
        let directory_name = directory.display().to_string();

        let mut source = DirectorySource::open(&directory).unwrap();
        assert_eq!(source.len(), 3);
        assert_eq!(source.describe(), directory_name);

        let frame = source.next_frame().unwrap().unwrap();
        assert_eq!((frame.width, frame.sequence, frame.discontinuity), (1, 0, true));
        assert!(source.describe().ends_with("a.png"));

        let message = error_text(source.next_frame());
        assert!(message.contains("b.jpeg") && message.contains("neither JPEG nor PNG"), "{message}");
        assert!(source.describe().ends_with("b.jpeg"));

        let frame = source.next_frame().unwrap().unwrap();
        assert_eq!((frame.format, frame.width, frame.sequence), (PixelFormat::Grey, 512, 2));
        assert!(source.describe().ends_with("c.PNG"));

        assert!(source.next_frame().unwrap().is_none());
        assert_eq!(source.describe(), directory_name);
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[test]
    fn directory_without_images_is_refused() {
        let directory = scratch_directory("directory-empty");
        std::fs::write(directory.join("readme.txt"), "nothing to see").unwrap();
        let message = error_text(DirectorySource::open(&directory));
        let named = message.contains(&directory.display().to_string());
        assert!(named && message.contains("no JPEG or PNG"), "{message}");
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[test]
    fn open_input_picks_the_source_by_kind() {
        let mut still = open_input(&fixture("faces/astronaut.png")).unwrap();
        assert!(still.describe().ends_with("astronaut.png"));
        assert!(still.next_frame().unwrap().is_some());
        let mut directory = open_input(&fixture("faces")).unwrap();
        let frame = directory.next_frame().unwrap().unwrap();
        assert_eq!((frame.width, frame.height), (512, 512));
        assert!(directory.describe().ends_with("astronaut.png"));
        let missing = fixture("faces/no_such_file.png");
        let message = error_text(open_input(&missing));
        assert!(message.contains("no_such_file.png"), "{message}");
    }
}
