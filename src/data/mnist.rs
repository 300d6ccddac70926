//! The MNIST reader: the CSV form (784 pixel values then the label per line), gzipped or plain.

use super::{index_error, Dataset};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Side of an MNIST image in pixels.
pub const MNIST_SIDE: usize = 28;
/// Pixels per MNIST image (28x28).
pub const MNIST_PIXELS: usize = MNIST_SIDE * MNIST_SIDE;
/// Number of classes (the digits 0–9).
pub const MNIST_CLASSES: usize = 10;

/// MNIST images and labels, held as the file's bytes (0–255) and turned into tensors per
/// sample, so that splits and options cost nothing until a sample is read.
///
/// As a [`Dataset`], sample `i` is `(image, label)`: `image` an f32 tensor of shape
/// `[1, S, S]` with `S = 28 + 2 * padding`, pixel values scaled to `[0, 1]` (then normalised
/// by `(x - mean) / std` if [`Mnist::with_normalization`] was used), and `label` the digit.
#[derive(Clone, Debug)]
pub struct Mnist {
    path: String,
    images: Vec<u8>,
    labels: Vec<u8>,
    padding: usize,
    mean_std: Option<(f32, f32)>,
}

fn data_err(path: &str, msg: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_string(),
        msg: msg.into(),
    }
}

impl Mnist {
    /// The 5,000 real MNIST digits bundled with kiln (`data/mnist/mnist_5k.csv.gz`; see
    /// `data/README.md` for provenance and licence). The path is fixed when kiln is compiled,
    /// so this is for kiln's own examples and tests; read other files with
    /// [`Mnist::read_csv`].
    pub fn bundled() -> Result<Mnist> {
        Mnist::read_csv(Mnist::bundled_path())
    }

    /// Where [`Mnist::bundled`] reads from.
    pub fn bundled_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist/mnist_5k.csv.gz")
    }

    /// Reads an MNIST CSV file: one image per line, 784 comma-separated integers 0–255
    /// (28x28, row-major) and then the label 0–9. The file may be gzipped (recognised by its
    /// magic bytes; a name ending in `.gz` must be gzip). Empty lines are skipped.
    ///
    /// Every problem is an [`Error::Data`] naming the file, and for a bad value its line and
    /// column: a missing file, a `.gz` that is not gzip, a corrupt or truncated stream, a line
    /// with the wrong number of values, a value that is not an integer or is out of range, a
    /// file without images.
    pub fn read_csv(path: impl AsRef<Path>) -> Result<Mnist> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| data_err(&name, format!("cannot open: {e}")))?;
        let mut reader = BufReader::new(file);
        let head = reader
            .fill_buf()
            .map_err(|e| data_err(&name, format!("cannot read: {e}")))?;
        let gzipped = head.starts_with(&[0x1f, 0x8b]);
        let says_gz = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
        if says_gz && !gzipped {
            return Err(data_err(
                &name,
                "not a gzip file: the name ends in .gz but the file does not start with the \
                 gzip magic bytes 1f 8b",
            ));
        }
        if gzipped {
            let gz = flate2::read::MultiGzDecoder::new(reader);
            Mnist::parse_csv(BufReader::new(gz), &name)
        } else {
            Mnist::parse_csv(reader, &name)
        }
    }

    /// Parses MNIST CSV text from `reader`; `name` is what errors call the source.
    pub fn parse_csv(mut reader: impl BufRead, name: &str) -> Result<Mnist> {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        let mut line = Vec::new();
        let mut line_no = 0usize;
        loop {
            line.clear();
            line_no += 1;
            let n = reader.read_until(b'\n', &mut line).map_err(|e| {
                data_err(name, format!("line {line_no}: cannot read the file: {e}"))
            })?;
            if n == 0 {
                break;
            }
            let text = std::str::from_utf8(&line)
                .map_err(|_| data_err(name, format!("line {line_no}: not text (invalid UTF-8)")))?;
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let before = images.len();
            match parse_line(text, &mut images) {
                Ok(label) => labels.push(label),
                Err(msg) => {
                    images.truncate(before);
                    return Err(data_err(name, format!("line {line_no}: {msg}")));
                }
            }
        }
        if labels.is_empty() {
            return Err(data_err(name, "no images: the file has no data lines"));
        }
        Ok(Mnist {
            path: name.to_string(),
            images,
            labels,
            padding: 0,
            mean_std: None,
        })
    }

    /// The file the images came from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// All labels, in order.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The label of image `i`.
    pub fn label(&self, i: usize) -> Option<u8> {
        self.labels.get(i).copied()
    }

    /// The raw pixels (0–255, 28x28 row-major) of image `i`.
    pub fn pixels(&self, i: usize) -> Option<&[u8]> {
        self.images.get(i * MNIST_PIXELS..(i + 1) * MNIST_PIXELS)
    }

    /// Pads every image by `pixels` of background on each side (2 turns 28x28 into LeNet's
    /// 32x32, as the tutorial does).
    pub fn with_padding(mut self, pixels: usize) -> Mnist {
        self.padding = pixels;
        self
    }

    /// Normalises pixels after scaling to `[0, 1]`: `(x - mean) / std` (PyTorch's
    /// `transforms.Normalize`; the usual MNIST values are 0.1307 and 0.3081, or compute them
    /// on the training split with [`Mnist::pixel_mean_std`]). Padding gets the normalised
    /// background value, as if the image had been padded before normalising. A `std` that is
    /// not a positive finite number is an error.
    pub fn with_normalization(mut self, mean: f32, std: f32) -> Result<Mnist> {
        if !(std.is_finite() && std > 0.0 && mean.is_finite()) {
            return Err(data_err(
                &self.path,
                format!(
                    "normalisation needs a finite mean and a positive std, got {mean} and {std}"
                ),
            ));
        }
        self.mean_std = Some((mean, std));
        Ok(self)
    }

    /// Side of the images this dataset yields (28 plus the padding on both sides).
    pub fn image_side(&self) -> usize {
        MNIST_SIDE + 2 * self.padding
    }

    /// Mean and standard deviation of all pixels scaled to `[0, 1]` (before padding), for
    /// [`Mnist::with_normalization`].
    pub fn pixel_mean_std(&self) -> (f64, f64) {
        let n = self.images.len().max(1) as f64;
        let (mut s, mut s2) = (0.0f64, 0.0f64);
        for &p in &self.images {
            let x = p as f64 / 255.0;
            s += x;
            s2 += x * x;
        }
        let mean = s / n;
        (mean, (s2 / n - mean * mean).max(0.0).sqrt())
    }

    /// The first `n` images and the rest, in file order. Note that the bundled file is sorted
    /// by label, so this split of it separates digits; use [`Mnist::split_per_class`] there.
    pub fn split_at(&self, n: usize) -> (Mnist, Mnist) {
        let n = n.min(self.len());
        let first: Vec<usize> = (0..n).collect();
        let rest: Vec<usize> = (n..self.len()).collect();
        (self.subset(&first), self.subset(&rest))
    }

    /// A deterministic, stratified train/test split: of each digit, the first images in file
    /// order go to training and the last `round(count * test_fraction)` to testing. Both parts
    /// keep file order and every digit's share, whatever order the file is in (the bundled
    /// file, 500 of each digit, gives 4,000 training and 1,000 test images with 0.2). A
    /// fraction outside `[0, 1]` is an error.
    pub fn split_per_class(&self, test_fraction: f64) -> Result<(Mnist, Mnist)> {
        if !(0.0..=1.0).contains(&test_fraction) {
            return Err(data_err(
                &self.path,
                format!("test fraction must be in [0, 1], got {test_fraction}"),
            ));
        }
        let mut count = [0usize; MNIST_CLASSES];
        for &l in &self.labels {
            count[l as usize] += 1;
        }
        let train_count = count.map(|c| c - (c as f64 * test_fraction).round() as usize);
        let mut seen = [0usize; MNIST_CLASSES];
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for (i, &l) in self.labels.iter().enumerate() {
            let c = l as usize;
            if seen[c] < train_count[c] {
                train.push(i);
            } else {
                test.push(i);
            }
            seen[c] += 1;
        }
        Ok((self.subset(&train), self.subset(&test)))
    }

    /// The images at `indices` (in that order), with the same options.
    pub fn subset(&self, indices: &[usize]) -> Mnist {
        let mut images = Vec::with_capacity(indices.len() * MNIST_PIXELS);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            if let (Some(p), Some(l)) = (self.pixels(i), self.label(i)) {
                images.extend_from_slice(p);
                labels.push(l);
            }
        }
        Mnist {
            path: self.path.clone(),
            images,
            labels,
            padding: self.padding,
            mean_std: self.mean_std,
        }
    }

    /// Image `i` as the dataset yields it: `[1, S, S]` f32, scaled, normalised, padded.
    pub fn image(&self, i: usize) -> Result<Tensor> {
        let pixels = self
            .pixels(i)
            .ok_or_else(|| index_error(&self.path, i, self.len()))?;
        let (mean, std) = self.mean_std.unwrap_or((0.0, 1.0));
        let value = |p: u8| (p as f32 / 255.0 - mean) / std;
        let side = self.image_side();
        let mut out = vec![value(0); side * side];
        for (r, row) in pixels.chunks_exact(MNIST_SIDE).enumerate() {
            let start = (r + self.padding) * side + self.padding;
            for (o, &p) in out[start..start + MNIST_SIDE].iter_mut().zip(row) {
                *o = value(p);
            }
        }
        Tensor::try_from_vec(out, [1, side, side])
    }
}

impl Dataset for Mnist {
    /// `(image [1, S, S] f32, label)`; batches to `([N, 1, S, S], [N] i64)`.
    type Sample = (Tensor, i64);

    fn len(&self) -> usize {
        self.labels.len()
    }

    fn get(&self, index: usize) -> Result<(Tensor, i64)> {
        let image = self.image(index)?;
        let label = self
            .label(index)
            .ok_or_else(|| index_error(&self.path, index, self.len()))?;
        Ok((image, label as i64))
    }
}

/// Parses one data line into `images` (784 pixels) and returns the label; the error message
/// names the column and the problem.
fn parse_line(text: &str, images: &mut Vec<u8>) -> std::result::Result<u8, String> {
    let expected = MNIST_PIXELS + 1;
    let fields = text.split(',').count();
    if fields != expected {
        return Err(format!(
            "expected {expected} comma-separated values (784 pixels, then the label), found \
             {fields}"
        ));
    }
    let mut label = 0u8;
    for (col, field) in text.split(',').enumerate() {
        let is_label = col == MNIST_PIXELS;
        let (what, max) = if is_label {
            ("label", MNIST_CLASSES as i64 - 1)
        } else {
            ("pixel value", 255)
        };
        let v =
            parse_int(field.trim()).map_err(|why| format!("column {}: {what} {why}", col + 1))?;
        if !(0..=max).contains(&v) {
            return Err(format!(
                "column {}: {what} {v} is out of range 0-{max}",
                col + 1
            ));
        }
        if is_label {
            label = v as u8;
        } else {
            images.push(v as u8);
        }
    }
    Ok(label)
}

/// An integer, also when written as a float with a zero fraction (`12.0`, as some exporters
/// write); anything else says what it is.
fn parse_int(s: &str) -> std::result::Result<i64, String> {
    if s.is_empty() {
        return Err("is empty".to_string());
    }
    if let Ok(v) = s.parse::<i64>() {
        return Ok(v);
    }
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 => Ok(f as i64),
        Ok(f) if f.is_finite() => Err(format!("{s:?} is not an integer")),
        _ => Err(format!("{s:?} is not a number")),
    }
}
