//! Data loading: the MNIST CSV reader (values, errors), the DataLoader (batching, seeded
//! shuffling, drop_last, the background thread) and the bundled MNIST file.

use kiln::data::{Collate, DataLoader, Dataset, Mnist, VecDataset, MNIST_PIXELS};
use kiln::{Error, Result, Tensor};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kiln-data-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn write_gz(&self, name: &str, text: &str) -> PathBuf {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(text.as_bytes()).unwrap();
        self.write(name, &enc.finish().unwrap())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CSV line whose pixel p is `(seed + p) % 256` and whose label is `label`.
fn csv_line(seed: usize, label: usize) -> String {
    let mut fields: Vec<String> = (0..MNIST_PIXELS)
        .map(|p| ((seed + p) % 256).to_string())
        .collect();
    fields.push(label.to_string());
    fields.join(",")
}

fn data_error(r: Result<Mnist>) -> (String, String) {
    match r {
        Err(Error::Data { path, msg }) => (path, msg),
        Err(e) => panic!("expected Error::Data, got {e}"),
        Ok(m) => panic!("expected an error, read {} images", m.len()),
    }
}

// ----- the CSV reader --------------------------------------------------------------------------

#[test]
fn reads_known_values_plain_and_gzipped() -> Result<()> {
    let dir = TempDir::new("values");
    let text = format!(
        "{}\n{}\n\n{}\r\n",
        csv_line(0, 3),
        csv_line(7, 0),
        csv_line(100, 9)
    );
    for path in [
        dir.write("small.csv", text.as_bytes()),
        dir.write_gz("small.csv.gz", &text),
    ] {
        let m = Mnist::read_csv(&path)?;
        assert_eq!(m.len(), 3, "the empty line is skipped");
        assert_eq!(m.labels(), &[3, 0, 9]);
        assert_eq!(m.pixels(1).unwrap()[0], 7);
        assert_eq!(m.pixels(1).unwrap()[783], ((7 + 783) % 256) as u8);
        assert!(m.pixels(3).is_none());

        // Scaled to [0, 1], no padding: [1, 28, 28].
        let (img, label) = m.get(2)?;
        assert_eq!(img.shape(), &[1, 28, 28]);
        assert_eq!(label, 9);
        let v = img.to_vec::<f32>();
        assert_eq!(v[0], 100.0 / 255.0);
        assert_eq!(v[155], 255.0 / 255.0); // (100 + 155) % 256
        assert_eq!(v[156], 0.0);
    }
    Ok(())
}

#[test]
fn padding_and_normalisation() -> Result<()> {
    let dir = TempDir::new("pad");
    let path = dir.write("one.csv", csv_line(1, 5).as_bytes());
    let m = Mnist::read_csv(&path)?.with_padding(2);
    assert_eq!(m.image_side(), 32);
    let v = m.image(0)?.to_vec::<f32>();
    assert_eq!(v.len(), 32 * 32);
    // Row 0, 1 and the two first columns of row 2 are padding; pixel (0,0) lands at (2,2).
    assert!(v[..2 * 32 + 2].iter().all(|&x| x == 0.0));
    assert_eq!(v[2 * 32 + 2], 1.0 / 255.0);
    assert_eq!(v[2 * 32 + 2 + 27], 28.0 / 255.0);
    assert_eq!(v[2 * 32 + 2 + 28], 0.0, "right padding");
    assert_eq!(v[(2 + 27) * 32 + 2 + 27], ((1 + 783) % 256) as f32 / 255.0);
    assert!(v[30 * 32..].iter().all(|&x| x == 0.0), "bottom padding");

    let (mean, std) = (0.5f32, 0.25f32);
    let n = m.clone().with_normalization(mean, std)?;
    let w = n.image(0)?.to_vec::<f32>();
    assert_eq!(
        w[0],
        (0.0 - mean) / std,
        "padding is the normalised background"
    );
    assert_eq!(w[2 * 32 + 2], (1.0 / 255.0 - mean) / std);
    assert!(matches!(
        m.clone().with_normalization(0.0, 0.0),
        Err(Error::Data { .. })
    ));

    let (pm, ps) = m.pixel_mean_std();
    let xs: Vec<f64> = m
        .pixels(0)
        .unwrap()
        .iter()
        .map(|&p| p as f64 / 255.0)
        .collect();
    let em = xs.iter().sum::<f64>() / 784.0;
    let es = (xs.iter().map(|x| (x - em) * (x - em)).sum::<f64>() / 784.0).sqrt();
    assert!((pm - em).abs() < 1e-12 && (ps - es).abs() < 1e-9);
    Ok(())
}

#[test]
fn malformed_files_are_errors_naming_file_line_and_problem() {
    let dir = TempDir::new("bad");

    let missing = dir.0.join("nope.csv.gz");
    let (path, msg) = data_error(Mnist::read_csv(&missing));
    assert_eq!(path, missing.display().to_string());
    assert!(msg.contains("cannot open"), "{msg}");

    let p = dir.write("plain.csv.gz", csv_line(0, 1).as_bytes());
    let (path, msg) = data_error(Mnist::read_csv(&p));
    assert!(path.ends_with("plain.csv.gz"));
    assert!(msg.contains("not a gzip file"), "{msg}");

    // A gzip stream cut in half.
    let full = dir.write_gz("full.csv.gz", &format!("{}\n", csv_line(0, 1)).repeat(50));
    let bytes = std::fs::read(&full).unwrap();
    let p = dir.write("cut.csv.gz", &bytes[..bytes.len() / 2]);
    let (_, msg) = data_error(Mnist::read_csv(&p));
    assert!(msg.contains("cannot read"), "{msg}");

    let short = {
        let mut l = csv_line(0, 1);
        l.truncate(l.rfind(',').unwrap()); // drop the label: 784 values
        l
    };
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{}\n{short}\n", csv_line(0, 1)),
            "line 2: expected 785 comma-separated values",
            "found 784",
        ),
        (
            format!("{}\n", csv_line(0, 1).replacen("0,", "abc,", 1)),
            "line 1: column 1: pixel value \"abc\" is not a number",
            "",
        ),
        (
            format!("{}\n", csv_line(0, 1).replacen("1,", "256,", 1)),
            "line 1: column 2: pixel value 256 is out of range 0-255",
            "",
        ),
        (
            format!("{}\n", csv_line(0, 1).replacen("2,", "-2,", 1)),
            "column 3: pixel value -2 is out of range",
            "",
        ),
        (
            format!("{}\n", csv_line(0, 1).replacen("3,", "3.5,", 1)),
            "column 4: pixel value \"3.5\" is not an integer",
            "",
        ),
        (
            format!(
                "{}\n{}\n{}\n",
                csv_line(0, 1),
                csv_line(0, 2),
                csv_line(0, 10)
            ),
            "line 3: column 785: label 10 is out of range 0-9",
            "",
        ),
        (
            format!("{}\n", csv_line(0, 1).replacen("4,", ",", 1)),
            "column 5: pixel value is empty",
            "",
        ),
        ("\n\n".to_string(), "no images", ""),
    ];
    for (i, (text, want, also)) in cases.iter().enumerate() {
        for gz in [false, true] {
            let name = format!("case{i}.csv{}", if gz { ".gz" } else { "" });
            let p = if gz {
                dir.write_gz(&name, text)
            } else {
                dir.write(&name, text.as_bytes())
            };
            let (path, msg) = data_error(Mnist::read_csv(&p));
            assert!(path.ends_with(&name), "{path}");
            assert!(msg.contains(want) && msg.contains(also), "case {i}: {msg}");
            // The Display form names the file first, as a user sees it.
            let shown = Mnist::read_csv(&p).unwrap_err().to_string();
            assert!(shown.starts_with(&p.display().to_string()), "{shown}");
        }
    }

    let p = dir.write("binary.csv", &[0xff, 0xfe, 0x00, b'\n']);
    let (_, msg) = data_error(Mnist::read_csv(&p));
    assert!(msg.contains("line 1: not text"), "{msg}");

    // A float with a zero fraction is an integer (some exporters write 12.0).
    let p = dir.write("floats.csv", csv_line(0, 4).replace(',', ".0,").as_bytes());
    assert_eq!(Mnist::read_csv(&p).unwrap().labels(), &[4]);
}

#[test]
fn splits_are_deterministic() -> Result<()> {
    let dir = TempDir::new("split");
    // Sorted by label like the bundled file: 5 of each digit 0..3.
    let text: String = (0..4)
        .flat_map(|d| (0..5).map(move |k| csv_line(d * 10 + k, d) + "\n"))
        .collect();
    let m = Mnist::read_csv(dir.write("sorted.csv", text.as_bytes()))?;
    let (train, test) = m.split_per_class(0.2)?;
    assert_eq!((train.len(), test.len()), (16, 4));
    assert_eq!(test.labels(), &[0, 1, 2, 3]);
    // The last image of each digit (seed d*10+4) is the test one, in file order.
    for d in 0..4 {
        assert_eq!(test.pixels(d).unwrap()[0] as usize, d * 10 + 4);
    }
    assert_eq!(train.labels().iter().filter(|&&l| l == 2).count(), 4);
    assert!(m.split_per_class(1.5).is_err());

    let (a, b) = m.split_at(15);
    assert_eq!((a.len(), b.len()), (15, 5));
    assert_eq!(b.labels(), &[3; 5]);
    Ok(())
}

// ----- the DataLoader -------------------------------------------------------------------------

/// A dataset of `n` samples `(tensor [2] = [i, -i], i)` that counts its reads and records the
/// thread that read them.
struct Counting {
    n: usize,
    reads: AtomicUsize,
    reader_thread: std::sync::Mutex<Option<std::thread::ThreadId>>,
}

impl Dataset for Counting {
    type Sample = (Tensor, i64);

    fn len(&self) -> usize {
        self.n
    }

    fn get(&self, i: usize) -> Result<(Tensor, i64)> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        *self.reader_thread.lock().unwrap() = Some(std::thread::current().id());
        Ok((Tensor::from_vec(vec![i as f32, -(i as f32)], [2]), i as i64))
    }
}

fn counting(n: usize) -> Arc<Counting> {
    Arc::new(Counting {
        n,
        reads: AtomicUsize::new(0),
        reader_thread: std::sync::Mutex::new(None),
    })
}

fn epoch_labels<D>(loader: &mut DataLoader<D>) -> Vec<Vec<i64>>
where
    D: Dataset<Sample = (Tensor, i64)> + 'static,
{
    loader
        .iter()
        .map(|b| {
            let (x, y) = b.unwrap();
            let labels = y.to_vec::<i64>();
            let xs = x.to_vec::<f32>();
            assert_eq!(x.shape(), &[labels.len(), 2]);
            for (k, &l) in labels.iter().enumerate() {
                assert_eq!((xs[2 * k], xs[2 * k + 1]), (l as f32, -(l as f32)));
            }
            labels
        })
        .collect()
}

#[test]
fn batches_in_order_with_a_short_last_batch() -> Result<()> {
    let ds = counting(10);
    let mut loader = DataLoader::from_arc(ds.clone(), 4)?;
    assert_eq!(loader.len(), 3);
    let batches = epoch_labels(&mut loader);
    assert_eq!(
        batches,
        vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
    );
    assert_eq!(ds.reads.load(Ordering::SeqCst), 10);
    let reader = ds.reader_thread.lock().unwrap().unwrap();
    assert_ne!(
        reader,
        std::thread::current().id(),
        "samples are read on the loader's thread"
    );

    let mut dropping = DataLoader::from_arc(ds, 4)?.drop_last(true);
    assert_eq!(dropping.len(), 2);
    assert_eq!(
        epoch_labels(&mut dropping),
        vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]
    );
    assert!(DataLoader::new(VecDataset(vec![1i64]), 0).is_err());
    Ok(())
}

#[test]
fn shuffling_is_seeded_and_covers_every_sample_once_per_epoch() -> Result<()> {
    let n = 103;
    let make = |seed| -> Result<DataLoader<Counting>> {
        let ds = Counting {
            n,
            reads: AtomicUsize::new(0),
            reader_thread: std::sync::Mutex::new(None),
        };
        Ok(DataLoader::new(ds, 8)?.shuffle(seed).prefetch(3))
    };
    let (mut a, mut b, mut c) = (make(42)?, make(42)?, make(7)?);
    let mut epochs = Vec::new();
    for _ in 0..3 {
        let ea = epoch_labels(&mut a);
        assert_eq!(ea, epoch_labels(&mut b), "same seed, same batches");
        assert_ne!(ea, epoch_labels(&mut c), "another seed, another order");
        assert_eq!(ea.len(), 13);
        assert!(ea[..12].iter().all(|b| b.len() == 8) && ea[12].len() == 7);
        let mut all: Vec<i64> = ea.concat();
        assert_ne!(all, (0..n as i64).collect::<Vec<_>>(), "shuffled");
        all.sort();
        assert_eq!(
            all,
            (0..n as i64).collect::<Vec<_>>(),
            "each sample exactly once"
        );
        epochs.push(ea);
    }
    assert_ne!(epochs[0], epochs[1], "every epoch draws a new order");
    assert_eq!(a.dataset().reads.load(Ordering::SeqCst), 3 * n);

    // drop_last with shuffling: 12 full batches, 96 distinct samples.
    let mut d = make(42)?.drop_last(true);
    let ed = epoch_labels(&mut d);
    assert_eq!(ed.len(), 12);
    let mut all = ed.concat();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 96);
    Ok(())
}

#[test]
fn stopping_early_stops_the_thread() -> Result<()> {
    let ds = counting(1000);
    let mut loader = DataLoader::from_arc(ds.clone(), 10)?.prefetch(1);
    let first: Vec<_> = loader.iter().take(2).collect();
    assert_eq!(first.len(), 2);
    // The iterator is dropped: the thread stopped after at most a few batches ahead.
    let reads = ds.reads.load(Ordering::SeqCst);
    assert!(reads <= 50, "{reads} samples read for 2 batches");
    // A new epoch starts from scratch.
    assert_eq!(loader.iter().count(), 100);
    Ok(())
}

struct Faulty {
    panic_at: Option<usize>,
}

impl Dataset for Faulty {
    type Sample = Tensor;

    fn len(&self) -> usize {
        20
    }

    fn get(&self, i: usize) -> Result<Tensor> {
        if Some(i) == self.panic_at {
            panic!("sample {i} is cursed");
        }
        // Sample 13 has another shape: its batch cannot be stacked.
        Ok(Tensor::zeros(if i == 13 { vec![3] } else { vec![2] }))
    }
}

#[test]
fn errors_and_panics_on_the_thread_are_values() -> Result<()> {
    let mut loader = DataLoader::new(Faulty { panic_at: None }, 5)?;
    let results: Vec<_> = loader.iter().collect();
    assert_eq!(
        results.len(),
        3,
        "two batches, then the error ends the epoch"
    );
    assert!(results[0].is_ok() && results[1].is_ok());
    match &results[2] {
        Err(Error::Data { msg, .. }) => {
            assert!(
                msg.contains("sample 3 of the batch") && msg.contains("[3]"),
                "{msg}"
            )
        }
        other => panic!("expected a collate error, got {:?}", other.as_ref().err()),
    }

    let mut loader = DataLoader::new(Faulty { panic_at: Some(7) }, 5)?;
    let results: Vec<_> = loader.iter().collect();
    assert_eq!(results.len(), 2);
    match &results[1] {
        Err(Error::Data { msg, .. }) => assert!(msg.contains("sample 7 is cursed"), "{msg}"),
        other => panic!(
            "expected the panic as an error, got {:?}",
            other.as_ref().err()
        ),
    }
    Ok(())
}

#[test]
fn collate_stacks_fields() -> Result<()> {
    let samples = vec![
        vec![Tensor::from_vec(vec![1i64, 2], [2]), Tensor::scalar(0.5f32)],
        vec![Tensor::from_vec(vec![3i64, 4], [2]), Tensor::scalar(1.5f32)],
    ];
    let b = Vec::<Tensor>::collate(samples)?;
    assert_eq!(b[0].shape(), &[2, 2]);
    assert_eq!(b[0].to_vec::<i64>(), vec![1, 2, 3, 4]);
    assert_eq!(b[1].shape(), &[2]);
    assert_eq!(b[1].to_vec::<f32>(), vec![0.5, 1.5]);

    let (x, y, z) = <(Tensor, f64, i64)>::collate(vec![
        (Tensor::ones([1, 2]), 1.0, 7),
        (Tensor::zeros([1, 2]), 2.0, 8),
    ])?;
    assert_eq!(x.shape(), &[2, 1, 2]);
    assert_eq!(x.to_vec::<f32>(), vec![1.0, 1.0, 0.0, 0.0]);
    assert_eq!(y.to_vec::<f64>(), vec![1.0, 2.0]);
    assert_eq!(z.dtype(), kiln::DType::I64);

    // Unrealised (traced) samples are computed before stacking.
    let t = Tensor::ones([2]).mul(3.0);
    assert_eq!(
        Tensor::collate(vec![t.clone(), t])?.to_vec::<f32>(),
        vec![3.0; 4]
    );
    assert!(Tensor::collate(vec![]).is_err());
    Ok(())
}

// ----- the bundled MNIST file ------------------------------------------------------------------

#[test]
fn bundled_mnist_loads_5000_labelled_images() -> Result<()> {
    let m = Mnist::bundled()?;
    assert_eq!(m.len(), 5000);
    assert!(m.labels().iter().all(|&l| l <= 9));
    for d in 0..10u8 {
        assert_eq!(m.labels().iter().filter(|&&l| l == d).count(), 500);
    }

    // The first line's last value, read independently of the reader.
    let path = Mnist::bundled_path();
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let first = text.lines().next().unwrap();
    let fields: Vec<&str> = first.split(',').collect();
    assert_eq!(m.label(0).unwrap().to_string(), *fields.last().unwrap());
    let pixels: Vec<u8> = fields[..784].iter().map(|f| f.parse().unwrap()).collect();
    assert_eq!(m.pixels(0).unwrap(), pixels.as_slice());

    // LeNet's input: [N, 1, 32, 32], the 4000/1000 per-class split, batches of 64.
    let (train, test) = m.with_padding(2).split_per_class(0.2)?;
    assert_eq!((train.len(), test.len()), (4000, 1000));
    for d in 0..10u8 {
        assert_eq!(test.labels().iter().filter(|&&l| l == d).count(), 100);
    }
    let mut loader = DataLoader::new(test, 64)?;
    let (x, y) = loader.iter().next().unwrap()?;
    assert_eq!(x.shape(), &[64, 1, 32, 32]);
    assert_eq!(y.shape(), &[64]);
    let xs = x.to_vec::<f32>();
    assert!(xs.iter().all(|v| (0.0..=1.0).contains(v)));
    Ok(())
}

#[test]
fn bundled_path_is_inside_the_repository() {
    let p = Mnist::bundled_path();
    assert!(p.starts_with(Path::new(env!("CARGO_MANIFEST_DIR"))));
    assert!(p.exists(), "{} is missing", p.display());
}
