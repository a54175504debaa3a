//! The YUV4MPEG2 video source: header parsing, frame reading, and 4:2:0 → NV12 / 4:2:2 → YUYV conversion.

use crate::capture::FrameSource;
use crate::frame::{Frame, PixelFormat, MAX_DIMENSION};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// The longest YUV4MPEG2 stream header line we accept, newline included; real headers are under 100 bytes.
const MAX_Y4M_HEADER_BYTES: u64 = 1024;

/// The longest per-frame `FRAME` line we accept, newline included; writers put no parameters there in practice.
const MAX_Y4M_FRAME_LINE_BYTES: u64 = 256;

/// The frame rate assumed when a YUV4MPEG2 header gives none (or the spec's "unknown", 0:0).
const DEFAULT_Y4M_FRAME_RATE: (u32, u32) = (25, 1);

/// The chroma layouts of YUV4MPEG2 we read, and what each becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Y4mLayout {
    /// 4:2:0 planes (any chroma siting), lent as NV12.
    Yuv420,
    /// 4:2:2 planes, lent as YUYV.
    Yuv422,
    /// A luma plane only, lent as Grey.
    Mono,
}

/// What a YUV4MPEG2 stream header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Y4mHeader {
    width: u32,
    height: u32,
    rate_numerator: u32,
    rate_denominator: u32,
    layout: Y4mLayout,
}

/// Parses the stream header line (without its newline), e.g. `YUV4MPEG2 W640 H480 F30:1 Ip A1:1 C420jpeg`.
fn parse_y4m_header(line: &str, name: &str) -> Result<Y4mHeader> {
    let mut tokens = line.split(' ').filter(|token| !token.is_empty());
    if tokens.next() != Some("YUV4MPEG2") {
        bail!("{name} is not a YUV4MPEG2 file (its first line does not start with \"YUV4MPEG2 \")");
    }
    let mut width = None;
    let mut height = None;
    let mut rate = DEFAULT_Y4M_FRAME_RATE;
    let mut colour_space = "420jpeg";
    for token in tokens {
        let mut characters = token.chars();
        let tag = characters.next();
        let value = characters.as_str();
        match tag {
            Some('W') => width = Some(parse_y4m_number(value, token, name)?),
            Some('H') => height = Some(parse_y4m_number(value, token, name)?),
            Some('F') => {
                let Some((numerator, denominator)) = value.split_once(':') else {
                    bail!("{name}: frame rate {token:?} is not of the form F<numerator>:<denominator>");
                };
                let numerator = parse_y4m_number(numerator, token, name)?;
                let denominator = parse_y4m_number(denominator, token, name)?;
                rate = match (numerator, denominator) {
                    // The specification's "unknown".
                    (0, 0) => DEFAULT_Y4M_FRAME_RATE,
                    (0, _) | (_, 0) => bail!("{name}: frame rate {token:?} is not a positive rate"),
                    known => known,
                };
            }
            Some('C') => colour_space = value,
            // Interlacing and pixel aspect ratio do not change how the planes are laid out.
            Some('I') | Some('A') => {}
            Some('X') => {
                if value.eq_ignore_ascii_case("COLORRANGE=FULL") {
                    bail!(
                        "{name} is full-range YUV (XCOLORRANGE=FULL); the pipeline assumes limited-range BT.601, \
                         so convert it first (ffmpeg -vf scale=out_range=tv)"
                    );
                }
            }
            _ => bail!("{name}: unknown YUV4MPEG2 header parameter {token:?}"),
        }
    }
    let (Some(width), Some(height)) = (width, height) else {
        bail!("{name}: the YUV4MPEG2 header lacks its width (W) or height (H)");
    };
    if width == 0 || height == 0 || width > MAX_DIMENSION || height > MAX_DIMENSION {
        bail!("{name} is {width}x{height}; each side must be between 1 and {MAX_DIMENSION} pixels");
    }
    let layout = match colour_space {
        // The sitings differ by under a chroma sample; NV12 consumers do not distinguish them.
        "420jpeg" | "420paldv" | "420mpeg2" | "420" => Y4mLayout::Yuv420,
        "422" => Y4mLayout::Yuv422,
        "mono" => Y4mLayout::Mono,
        other => bail!(
            "{name}: colour space C{other} is not supported (8-bit 420jpeg, 420paldv, 420mpeg2, 420, 422 or \
             mono only)"
        ),
    };
    Ok(Y4mHeader { width, height, rate_numerator: rate.0, rate_denominator: rate.1, layout })
}

/// Parses one decimal number of a header token.
fn parse_y4m_number(text: &str, token: &str, name: &str) -> Result<u32> {
    text.parse().with_context(|| format!("{name}: malformed YUV4MPEG2 header parameter {token:?}"))
}

/// Reads until `buffer` is full or the input ends, and says how many bytes arrived; unlike `read_exact`, this
/// lets a truncated frame's error say how much is missing.
fn read_fully(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// A YUV4MPEG2 video (`ffmpeg -f yuv4mpegpipe`), lent frame by frame with timestamps from its frame rate:
/// 4:2:0 as NV12, 4:2:2 as YUYV, mono as Grey. All buffers are allocated at open.
pub struct Y4mSource {
    path: String,
    reader: BufReader<File>,
    header: Y4mHeader,
    /// Row stride of the frames lent.
    stride: usize,
    /// One frame's planes as stored in the file (unused for mono, which is read straight into `pixels`).
    planes: Vec<u8>,
    /// The converted frame lent to the caller.
    pixels: Vec<u8>,
    /// The current `FRAME` line.
    frame_line: Vec<u8>,
    next_sequence: u64,
    /// Set at the end of the stream or after an error that leaves no next frame to find.
    finished: bool,
}

impl Y4mSource {
    /// Opens the file and reads its stream header; an unsupported layout or range is refused here.
    pub fn open(path: impl AsRef<Path>) -> Result<Y4mSource> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = File::open(path).with_context(|| format!("cannot open video {name}"))?;
        let mut reader = BufReader::new(file);
        let mut header_line = Vec::new();
        let read = (&mut reader)
            .take(MAX_Y4M_HEADER_BYTES)
            .read_until(b'\n', &mut header_line)
            .with_context(|| format!("cannot read video {name}"))?;
        if read == 0 {
            bail!("video {name} is empty (0 bytes)");
        }
        if header_line.pop() != Some(b'\n') {
            bail!(
                "{name} is not a YUV4MPEG2 file (no header line ending within its first {MAX_Y4M_HEADER_BYTES} \
                 bytes)"
            );
        }
        let Ok(header_text) = std::str::from_utf8(&header_line) else {
            bail!("{name} is not a YUV4MPEG2 file (its header line is not text)");
        };
        let header = parse_y4m_header(header_text, &name)?;

        let width = header.width as usize;
        let height = header.height as usize;
        let chroma_width = width.div_ceil(2);
        let (format, stored_bytes) = match header.layout {
            Y4mLayout::Yuv420 => (PixelFormat::Nv12, width * height + 2 * chroma_width * height.div_ceil(2)),
            Y4mLayout::Yuv422 => (PixelFormat::Yuyv, width * height + 2 * chroma_width * height),
            Y4mLayout::Mono => (PixelFormat::Grey, 0),
        };
        let stride = match format {
            // An NV12 chroma row holds chroma_width U V pairs: for an odd width that is one byte more than
            // the width, so the stride is rounded up to even to keep the last pair inside its row.
            PixelFormat::Nv12 => chroma_width * 2,
            _ => format.min_stride(header.width),
        };
        let pixels = vec![0; format.frame_bytes(stride, header.height)];
        log::debug!(
            "video {name}: {}x{} {:?} at {}:{} frames per second, lent as {}",
            header.width,
            header.height,
            header.layout,
            header.rate_numerator,
            header.rate_denominator,
            format.name()
        );
        Ok(Y4mSource {
            path: name,
            reader,
            header,
            stride,
            planes: vec![0; stored_bytes],
            pixels,
            frame_line: Vec::with_capacity(MAX_Y4M_FRAME_LINE_BYTES as usize),
            next_sequence: 0,
            finished: false,
        })
    }

    /// The frame rate as numerator and denominator (frames per second = numerator / denominator).
    pub fn frame_rate(&self) -> (u32, u32) {
        (self.header.rate_numerator, self.header.rate_denominator)
    }

    /// The pixel format of the frames lent.
    pub fn format(&self) -> PixelFormat {
        match self.header.layout {
            Y4mLayout::Yuv420 => PixelFormat::Nv12,
            Y4mLayout::Yuv422 => PixelFormat::Yuyv,
            Y4mLayout::Mono => PixelFormat::Grey,
        }
    }

    /// Reads frame `index`'s `FRAME` line and planes; false at a clean end of the stream.
    fn read_frame(&mut self, index: u64) -> Result<bool> {
        let name = &self.path;
        self.frame_line.clear();
        let read = (&mut self.reader)
            .take(MAX_Y4M_FRAME_LINE_BYTES)
            .read_until(b'\n', &mut self.frame_line)
            .with_context(|| format!("cannot read frame {index} of video {name}"))?;
        if read == 0 {
            return Ok(false);
        }
        let is_frame_line = self.frame_line.last() == Some(&b'\n')
            && self.frame_line.starts_with(b"FRAME")
            && matches!(self.frame_line.get(5), Some(b' ' | b'\n'));
        if !is_frame_line {
            if self.frame_line.starts_with(b"FRAME") && (read as u64) < MAX_Y4M_FRAME_LINE_BYTES {
                bail!("video {name}: frame {index} is truncated (the file ends inside its FRAME line)");
            }
            let shown = &self.frame_line[..self.frame_line.len().min(16)];
            bail!(
                "video {name}: expected FRAME at the start of frame {index}, found {:?}",
                String::from_utf8_lossy(shown)
            );
        }
        let target = match self.header.layout {
            Y4mLayout::Mono => &mut self.pixels,
            Y4mLayout::Yuv420 | Y4mLayout::Yuv422 => &mut self.planes,
        };
        let arrived = read_fully(&mut self.reader, target)
            .with_context(|| format!("cannot read frame {index} of video {name}"))?;
        if arrived < target.len() {
            bail!(
                "video {name}: frame {index} is truncated: {} bytes missing ({arrived} of {} arrived)",
                target.len() - arrived,
                target.len()
            );
        }
        Ok(true)
    }

    /// Rearranges the stored 4:2:0 planes into NV12: the Y plane, then U V pairs.
    fn convert_420_to_nv12(&mut self) {
        let width = self.header.width as usize;
        let height = self.header.height as usize;
        let chroma_width = width.div_ceil(2);
        let chroma_plane = chroma_width * height.div_ceil(2);
        let (luma, chroma) = self.planes.split_at(width * height);
        let (u_plane, v_plane) = chroma.split_at(chroma_plane);
        let (luma_out, chroma_out) = self.pixels.split_at_mut(self.stride * height);
        for (out_row, in_row) in luma_out.chunks_exact_mut(self.stride).zip(luma.chunks_exact(width)) {
            out_row[..width].copy_from_slice(in_row);
        }
        for ((out_row, u_row), v_row) in chroma_out
            .chunks_exact_mut(self.stride)
            .zip(u_plane.chunks_exact(chroma_width))
            .zip(v_plane.chunks_exact(chroma_width))
        {
            for ((pair, &u), &v) in out_row.chunks_exact_mut(2).zip(u_row).zip(v_row) {
                pair[0] = u;
                pair[1] = v;
            }
        }
    }

    /// Packs the stored 4:2:2 planes into YUYV; an odd width repeats the last luma sample in its pair.
    fn convert_422_to_yuyv(&mut self) {
        let width = self.header.width as usize;
        let height = self.header.height as usize;
        let chroma_width = width.div_ceil(2);
        let (luma, chroma) = self.planes.split_at(width * height);
        let (u_plane, v_plane) = chroma.split_at(chroma_width * height);
        for (((out_row, y_row), u_row), v_row) in self
            .pixels
            .chunks_exact_mut(self.stride)
            .zip(luma.chunks_exact(width))
            .zip(u_plane.chunks_exact(chroma_width))
            .zip(v_plane.chunks_exact(chroma_width))
        {
            for (((quad, pair), &u), &v) in
                out_row.chunks_exact_mut(4).zip(y_row.chunks(2)).zip(u_row).zip(v_row)
            {
                let first = pair[0];
                let second = pair.get(1).copied().unwrap_or(first);
                quad.copy_from_slice(&[first, u, second, v]);
            }
        }
    }
}

impl FrameSource for Y4mSource {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        if self.finished {
            return Ok(None);
        }
        let sequence = self.next_sequence;
        match self.read_frame(sequence) {
            Ok(true) => {}
            Ok(false) => {
                self.finished = true;
                return Ok(None);
            }
            // After a truncated or malformed frame there is no reliable place to resume.
            Err(error) => {
                self.finished = true;
                return Err(error);
            }
        }
        self.next_sequence += 1;
        match self.header.layout {
            Y4mLayout::Yuv420 => self.convert_420_to_nv12(),
            Y4mLayout::Yuv422 => self.convert_422_to_yuyv(),
            Y4mLayout::Mono => {}
        }
        let timestamp_ns = u128::from(sequence) * 1_000_000_000 * u128::from(self.header.rate_denominator)
            / u128::from(self.header.rate_numerator);
        Ok(Some(Frame {
            format: self.format(),
            width: self.header.width,
            height: self.header.height,
            stride: self.stride,
            data: &self.pixels,
            source: &self.path,
            sequence,
            // Only a video of hundreds of years overflows; saturate rather than wrap.
            timestamp_ns: u64::try_from(timestamp_ns).unwrap_or(u64::MAX),
            discontinuity: sequence == 0,
        }))
    }

    fn describe(&self) -> &str {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::replay::open_input;
    use crate::capture::test_support::{error_text, fixture, scratch_directory};
    use crate::codec::decode_image_file;
    use std::io::Write;

    use crate::capture::synthetic::yuv420_planes as rgb_to_yuv420;

    /// Writes a YUV4MPEG2 file: the header line, then each frame's planes after a `FRAME` line.
    fn write_y4m(path: &Path, header: &str, frames: &[Vec<u8>]) {
        let mut file = std::io::BufWriter::new(File::create(path).unwrap());
        writeln!(file, "{header}").unwrap();
        for planes in frames {
            file.write_all(b"FRAME\n").unwrap();
            file.write_all(planes).unwrap();
        }
        file.flush().unwrap();
    }

    const ODD_WIDTH: usize = 511;
    const ODD_HEIGHT: usize = 301;

    /// Three 511x301 crops of the astronaut at different offsets, as 4:2:0 planes.
    fn astronaut_frames() -> Vec<Vec<u8>> {
        let astronaut = decode_image_file(&fixture("faces/astronaut.png")).unwrap();
        [(0usize, 0usize), (1, 100), (1, 211)]
            .iter()
            .map(|&(left, top)| {
                let crop: Vec<u8> = (top..top + ODD_HEIGHT)
                    .flat_map(|y| {
                        let start = (y * 512 + left) * 3;
                        astronaut.data[start..start + ODD_WIDTH * 3].iter().copied()
                    })
                    .collect();
                rgb_to_yuv420(&crop, ODD_WIDTH, ODD_HEIGHT)
            })
            .collect()
    }

    #[test]
    fn y4m_420_round_trip_with_odd_width() {
        let directory = scratch_directory("y4m-round-trip");
        let path = directory.join("astronaut.y4m");
        let frames = astronaut_frames();
        write_y4m(&path, "YUV4MPEG2 W511 H301 F30000:1001 Ip A1:1 C420jpeg XYSCSS=420JPEG", &frames);

        let mut source = Y4mSource::open(&path).unwrap();
        assert_eq!(source.frame_rate(), (30000, 1001));
        let luma_bytes = ODD_WIDTH * ODD_HEIGHT;
        let chroma_width = ODD_WIDTH.div_ceil(2);
        let chroma_bytes = chroma_width * ODD_HEIGHT.div_ceil(2);
        let expected_timestamps = [0, 33_366_666, 66_733_333];
        for (index, planes) in frames.iter().enumerate() {
            let frame = source.next_frame().unwrap().unwrap();
            frame.validate().unwrap();
            assert_eq!((frame.format, frame.width, frame.height), (PixelFormat::Nv12, 511, 301));
            // An odd width needs one more byte than the width for its last U V pair.
            assert_eq!(frame.stride, 512);
            assert_eq!(frame.data.len(), 512 * (301 + 151));
            assert_eq!(frame.sequence, index as u64);
            assert_eq!(frame.timestamp_ns, expected_timestamps[index]);
            assert_eq!(frame.discontinuity, index == 0);
            for (x, y) in [(0, 0), (510, 0), (255, 150), (510, 300), (0, 300)] {
                assert_eq!(frame.data[y * 512 + x], planes[y * ODD_WIDTH + x], "Y at {x},{y}");
            }
            for (chroma_x, chroma_y) in [(0, 0), (255, 0), (127, 75), (255, 150)] {
                let uv = 512 * 301 + chroma_y * 512 + chroma_x * 2;
                let stored = chroma_y * chroma_width + chroma_x;
                assert_eq!(frame.data[uv], planes[luma_bytes + stored], "U at {chroma_x},{chroma_y}");
                assert_eq!(
                    frame.data[uv + 1],
                    planes[luma_bytes + chroma_bytes + stored],
                    "V at {chroma_x},{chroma_y}"
                );
            }
        }
        assert!(source.next_frame().unwrap().is_none());
        assert!(source.next_frame().unwrap().is_none());
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[test]
    fn truncated_y4m_gives_two_frames_then_an_error_then_the_end() {
        let directory = scratch_directory("y4m-truncated");
        let path = directory.join("cut.y4m");
        write_y4m(&path, "YUV4MPEG2 W511 H301 F25:1 C420", &astronaut_frames());
        let length = std::fs::metadata(&path).unwrap().len();
        File::options().write(true).open(&path).unwrap().set_len(length - 1000).unwrap();

        let mut source = open_input(&path).unwrap();
        assert_eq!(source.next_frame().unwrap().unwrap().sequence, 0);
        assert_eq!(source.next_frame().unwrap().unwrap().timestamp_ns, 40_000_000);
        let message = error_text(source.next_frame());
        assert!(
            message.contains("cut.y4m")
                && message.contains("frame 2")
                && message.contains("1000 bytes missing"),
            "{message}"
        );
        assert!(source.next_frame().unwrap().is_none());
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[test]
    fn y4m_mono_is_grey_and_missing_rate_is_25() {
        let directory = scratch_directory("y4m-mono");
        let path = directory.join("camera.Y4M");
        let camera = decode_image_file(&fixture("scenes/camera.png")).unwrap();
        write_y4m(&path, "YUV4MPEG2 W512 H512 Cmono", &[camera.data.clone(), camera.data.clone()]);
        let mut source = open_input(&path).unwrap();
        let frame = source.next_frame().unwrap().unwrap();
        frame.validate().unwrap();
        assert_eq!((frame.format, frame.stride), (PixelFormat::Grey, 512));
        assert_eq!(frame.data, &camera.data[..]);
        assert_eq!(source.next_frame().unwrap().unwrap().timestamp_ns, 40_000_000);
        assert!(source.next_frame().unwrap().is_none());
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[test]
    fn y4m_422_becomes_yuyv() {
        let directory = scratch_directory("y4m-422");
        let path = directory.join("small.y4m");
        // 3x2: Y 10..15, U 100..103 (2 per row), V 200..203.
        let planes: Vec<u8> = (10..16).chain(100..104).chain(200..204).collect();
        write_y4m(&path, "YUV4MPEG2 W3 H2 F30:1 C422", &[planes]);
        let mut source = Y4mSource::open(&path).unwrap();
        let frame = source.next_frame().unwrap().unwrap();
        frame.validate().unwrap();
        assert_eq!((frame.format, frame.stride), (PixelFormat::Yuyv, 8));
        assert_eq!(frame.data, &[10, 100, 11, 200, 12, 101, 12, 201, 13, 102, 14, 202, 15, 103, 15, 203][..]);
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[test]
    fn y4m_headers_that_are_refused() {
        let directory = scratch_directory("y4m-refused");
        let cases = [
            ("YUV4MPEG2 W16 H16 C444", "C444"),
            ("YUV4MPEG2 W16 H16 C420p10", "C420p10"),
            ("YUV4MPEG2 W16 H16 C420jpeg XCOLORRANGE=FULL", "full-range"),
            ("YUV4MPEG2 W0 H16", "0x16"),
            ("YUV4MPEG2 W20000 H16", "20000x16"),
            ("YUV4MPEG2 H16", "width (W) or height (H)"),
            ("YUV4MPEG2 W16 H16 F30:0", "not a positive rate"),
            ("YUV4MPEG2 W1x H16", "malformed"),
            ("YUV4MPEG2 W16 H16 Z9", "unknown YUV4MPEG2 header parameter"),
            ("RIFF W16 H16", "not a YUV4MPEG2 file"),
        ];
        for (index, (header, expected)) in cases.iter().enumerate() {
            let path = directory.join(format!("refused{index}.y4m"));
            write_y4m(&path, header, &[]);
            let message = error_text(Y4mSource::open(&path));
            assert!(
                message.contains(&format!("refused{index}.y4m")) && message.contains(expected),
                "{header}: {message}"
            );
        }
        let long = directory.join("long.y4m");
        std::fs::write(&long, vec![b'Y'; 4096]).unwrap();
        let message = error_text(Y4mSource::open(&long));
        assert!(message.contains("long.y4m") && message.contains("no header line"), "{message}");
        let empty = directory.join("empty.y4m");
        std::fs::write(&empty, b"").unwrap();
        assert!(error_text(Y4mSource::open(&empty)).contains("empty"));
        // Limited range is said explicitly by some writers and is what we assume.
        let limited = directory.join("limited.y4m");
        write_y4m(&limited, "YUV4MPEG2 W2 H2 XCOLORRANGE=LIMITED", &[]);
        assert!(Y4mSource::open(&limited).unwrap().next_frame().unwrap().is_none());
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[test]
    fn y4m_garbage_instead_of_frame_ends_the_stream() {
        let directory = scratch_directory("y4m-garbage");
        let path = directory.join("garbage.y4m");
        let mut bytes = b"YUV4MPEG2 W2 H2 Cmono\nFRAME\n\x01\x02\x03\x04".to_vec();
        bytes.extend_from_slice(b"GARBAGE here\n\x01\x02\x03\x04FRAME\n\x01\x02\x03\x04");
        std::fs::write(&path, bytes).unwrap();
        let mut source = Y4mSource::open(&path).unwrap();
        assert_eq!(source.next_frame().unwrap().unwrap().data, &[1, 2, 3, 4][..]);
        let message = error_text(source.next_frame());
        assert!(
            message.contains("garbage.y4m")
                && message.contains("expected FRAME")
                && message.contains("frame 1"),
            "{message}"
        );
        assert!(source.next_frame().unwrap().is_none());
        let _ = std::fs::remove_dir_all(&directory);
    }
}
