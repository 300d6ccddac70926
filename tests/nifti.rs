//! NIfTI-1/2 reading and writing, against files built byte by byte here from the layouts of
//! `nifti1.h` and `nifti2.h` (not by kiln's own encoder): every datatype in both byte orders
//! and both versions, scaling, 4-D, the qform and sform affines, header/image pairs, malformed
//! files (errors naming the file, no panic, no large allocation) and `kiln nifti info`.

use kiln::nifti::{self, ByteOrder, DataType, Header, Version, Volume};
use ndarray::{ArrayD, IxDyn};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};

// ---- The largest single allocation made by this thread, to check that malformed headers do
// not make the reader allocate what they claim.

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(l.size())));
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(new)));
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn largest_allocation_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|m| m.set(0));
    let r = f();
    (r, LARGEST.with(|m| m.get()))
}

// ---- Scratch files.

fn scratch(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("nifti-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

// ---- A NIfTI header written field by field.

#[derive(Clone)]
struct Spec {
    v2: bool,
    big: bool,
    dim: [i64; 8],
    datatype: i16,
    bitpix: i16,
    pixdim: [f64; 8],
    vox_offset: f64,
    slope: f64,
    inter: f64,
    qform_code: i16,
    sform_code: i16,
    quatern: [f64; 3],
    qoffset: [f64; 3],
    srow: [[f64; 4]; 3],
    magic: Option<Vec<u8>>,
    sizeof_hdr: Option<i32>,
}

impl Spec {
    fn new(v2: bool, big: bool, shape: &[i64], dt: DataType) -> Spec {
        let mut dim = [1i64; 8];
        dim[0] = shape.len() as i64;
        dim[1..=shape.len()].copy_from_slice(shape);
        Spec {
            v2,
            big,
            dim,
            datatype: dt.code() as i16,
            bitpix: (dt.size() * 8) as i16,
            pixdim: [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
            vox_offset: if v2 { 544.0 } else { 352.0 },
            slope: 0.0,
            inter: 0.0,
            qform_code: 0,
            sform_code: 0,
            quatern: [0.0; 3],
            qoffset: [0.0; 3],
            srow: [[0.0; 4]; 3],
            magic: None,
            sizeof_hdr: None,
        }
    }

    /// The header bytes, up to `vox_offset` (extension flag and padding zero).
    fn bytes(&self) -> Vec<u8> {
        let size = if self.v2 { 540 } else { 348 };
        let len = (self.vox_offset.max(size as f64 + 4.0) as usize).min(1 << 20);
        let mut b = vec![0u8; len];
        let big = self.big;
        let mut put = |at: usize, le: &[u8]| {
            let mut v = le.to_vec();
            if big {
                v.reverse();
            }
            b[at..at + v.len()].copy_from_slice(&v);
        };
        let sizeof = self.sizeof_hdr.unwrap_or(size);
        put(0, &sizeof.to_le_bytes());
        if !self.v2 {
            for i in 0..8 {
                put(40 + 2 * i, &(self.dim[i] as i16).to_le_bytes());
            }
            put(70, &self.datatype.to_le_bytes());
            put(72, &self.bitpix.to_le_bytes());
            for i in 0..8 {
                put(76 + 4 * i, &(self.pixdim[i] as f32).to_le_bytes());
            }
            put(108, &(self.vox_offset as f32).to_le_bytes());
            put(112, &(self.slope as f32).to_le_bytes());
            put(116, &(self.inter as f32).to_le_bytes());
            put(252, &self.qform_code.to_le_bytes());
            put(254, &self.sform_code.to_le_bytes());
            for i in 0..3 {
                put(256 + 4 * i, &(self.quatern[i] as f32).to_le_bytes());
                put(268 + 4 * i, &(self.qoffset[i] as f32).to_le_bytes());
            }
            for r in 0..3 {
                for c in 0..4 {
                    put(
                        280 + 16 * r + 4 * c,
                        &(self.srow[r][c] as f32).to_le_bytes(),
                    );
                }
            }
            let magic = self.magic.clone().unwrap_or(b"n+1\0".to_vec());
            b[344..344 + magic.len()].copy_from_slice(&magic);
        } else {
            let magic = self.magic.clone().unwrap_or(b"n+2\0\r\n\x1a\n".to_vec());
            b[4..4 + magic.len()].copy_from_slice(&magic);
            let mut put = |at: usize, le: &[u8]| {
                let mut v = le.to_vec();
                if big {
                    v.reverse();
                }
                b[at..at + v.len()].copy_from_slice(&v);
            };
            put(12, &self.datatype.to_le_bytes());
            put(14, &self.bitpix.to_le_bytes());
            for i in 0..8 {
                put(16 + 8 * i, &self.dim[i].to_le_bytes());
            }
            for i in 0..8 {
                put(104 + 8 * i, &self.pixdim[i].to_le_bytes());
            }
            put(168, &(self.vox_offset as i64).to_le_bytes());
            put(176, &self.slope.to_le_bytes());
            put(184, &self.inter.to_le_bytes());
            put(344, &(self.qform_code as i32).to_le_bytes());
            put(348, &(self.sform_code as i32).to_le_bytes());
            for i in 0..3 {
                put(352 + 8 * i, &self.quatern[i].to_le_bytes());
                put(376 + 8 * i, &self.qoffset[i].to_le_bytes());
            }
            for r in 0..3 {
                for c in 0..4 {
                    put(400 + 32 * r + 8 * c, &self.srow[r][c].to_le_bytes());
                }
            }
        }
        b
    }

    fn file(&self, voxels: &[u8]) -> Vec<u8> {
        let mut b = self.bytes();
        b.extend_from_slice(voxels);
        b
    }
}

/// Test values per datatype (exactly representable in f32) and their raw bytes.
fn values(dt: DataType) -> Vec<f64> {
    let v: Vec<f64> = match dt {
        DataType::U8 => vec![0., 1., 2., 7., 100., 127., 128., 200., 254., 255., 3., 4.],
        DataType::I8 => vec![-128., -1., 0., 1., 2., 7., 100., 127., -100., 5., -5., 3.],
        DataType::I16 => vec![
            -32768., -1., 0., 1., 300., 32767., -300., 12345., 5., 6., 7., 8.,
        ],
        DataType::U16 => vec![
            0., 1., 65535., 300., 40000., 12345., 5., 6., 7., 8., 9., 10.,
        ],
        DataType::I32 => vec![
            -2147483648.,
            -1.,
            0.,
            1.,
            16777216.,
            -16777216.,
            65536.,
            5.,
            6.,
            7.,
            8.,
            2147483520.,
        ],
        DataType::U32 => vec![
            0.,
            1.,
            4294967040.,
            16777216.,
            65536.,
            5.,
            6.,
            7.,
            8.,
            9.,
            10.,
            11.,
        ],
        DataType::I64 => vec![
            -1099511627776.,
            -1.,
            0.,
            1.,
            1152921504606846976.,
            5.,
            6.,
            7.,
            8.,
            9.,
            10.,
            -3.,
        ],
        DataType::U64 => vec![
            0.,
            1.,
            1152921504606846976.,
            1099511627776.,
            5.,
            6.,
            7.,
            8.,
            9.,
            10.,
            11.,
            12.,
        ],
        DataType::F32 => vec![
            -1.5, 0.0, 0.25, 3.0e38, -1.0e-30, 1.0, 2.0, 1e6, -7.75, 8., 9., 10.,
        ],
        // Exactly representable in f32, the type of a volume's voxels.
        DataType::F64 => vec![
            -1.5,
            0.0,
            0.25,
            2f64.powi(100),
            -(2f64.powi(-100)),
            1.0,
            2.0,
            1e6,
            -7.75,
            8.,
            9.,
            10.,
        ],
    };
    assert_eq!(v.len(), 12);
    v
}

fn raw(dt: DataType, vals: &[f64], big: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for &v in vals {
        let mut le: Vec<u8> = match dt {
            DataType::U8 => (v as u8).to_le_bytes().to_vec(),
            DataType::I8 => (v as i8).to_le_bytes().to_vec(),
            DataType::I16 => (v as i16).to_le_bytes().to_vec(),
            DataType::U16 => (v as u16).to_le_bytes().to_vec(),
            DataType::I32 => (v as i32).to_le_bytes().to_vec(),
            DataType::U32 => (v as u32).to_le_bytes().to_vec(),
            DataType::I64 => (v as i64).to_le_bytes().to_vec(),
            DataType::U64 => (v as u64).to_le_bytes().to_vec(),
            DataType::F32 => (v as f32).to_le_bytes().to_vec(),
            DataType::F64 => v.to_le_bytes().to_vec(),
        };
        if big {
            le.reverse();
        }
        out.extend(le);
    }
    out
}

/// Value at [i, j, k] of a [3, 2, 2] volume whose voxels are `vals` in NIfTI order.
fn at(vals: &[f64], i: usize, j: usize, k: usize) -> f32 {
    vals[i + 3 * (j + 2 * k)] as f32
}

// ---- Round trips.

#[test]
fn every_datatype_both_byte_orders_both_versions() {
    let dir = scratch("roundtrip");
    for v2 in [false, true] {
        for big in [false, true] {
            for dt in DataType::ALL {
                let vals = values(dt);
                let spec = Spec::new(v2, big, &[3, 2, 2], dt);
                let voxels = raw(dt, &vals, big);
                let name = format!(
                    "{dt}-{}-{}",
                    if v2 { 2 } else { 1 },
                    if big { "be" } else { "le" }
                );
                let p = dir.join(format!("{name}.nii"));
                std::fs::write(&p, spec.file(&voxels)).unwrap();
                let vol = nifti::read(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(vol.shape(), &[3, 2, 2], "{name}");
                assert_eq!(vol.header.datatype(), dt, "{name}");
                assert_eq!(
                    vol.header.version,
                    if v2 { Version::Nifti2 } else { Version::Nifti1 }
                );
                assert_eq!(
                    vol.header.byte_order,
                    if big {
                        ByteOrder::Big
                    } else {
                        ByteOrder::Little
                    }
                );
                for i in 0..3 {
                    for j in 0..2 {
                        for k in 0..2 {
                            assert_eq!(
                                vol.data[[i, j, k]],
                                at(&vals, i, j, k),
                                "{name} [{i},{j},{k}]"
                            );
                        }
                    }
                }
                // The same file gzipped reads the same.
                let pz = dir.join(format!("{name}.nii.gz"));
                std::fs::write(&pz, gzip(&spec.file(&voxels))).unwrap();
                assert_eq!(nifti::read(&pz).unwrap().data, vol.data, "{name} gz");
                // Written back in its datatype (and its header's version and byte order), the
                // voxel bytes are the original ones, and it reads back identically.
                for ext in ["nii", "nii.gz"] {
                    let out = dir.join(format!("{name}-out.{ext}"));
                    nifti::write(&out, &vol, dt).unwrap();
                    let back = nifti::read(&out).unwrap();
                    assert_eq!(back.data, vol.data, "{name} {ext}");
                    assert_eq!(back.header.datatype(), dt);
                    assert_eq!(back.header.version, vol.header.version);
                    assert_eq!(back.header.byte_order, vol.header.byte_order);
                    if ext == "nii" {
                        let bytes = std::fs::read(&out).unwrap();
                        let off = if v2 { 544 } else { 352 };
                        assert_eq!(&bytes[off..], &voxels[..], "{name}: voxel bytes");
                        let size = if big {
                            bytes[3] as i32 | (bytes[2] as i32) << 8
                        } else {
                            bytes[0] as i32 | (bytes[1] as i32) << 8
                        };
                        assert_eq!(size, if v2 { 540 } else { 348 });
                    }
                }
            }
        }
    }
}

#[test]
fn scaling_is_applied_and_chosen_on_write() {
    let dir = scratch("scaling");
    // u8 with slope 0.5 and intercept -10.
    let vals = values(DataType::U8);
    let mut spec = Spec::new(false, false, &[3, 2, 2], DataType::U8);
    spec.slope = 0.5;
    spec.inter = -10.0;
    let p = dir.join("u8.nii");
    std::fs::write(&p, spec.file(&raw(DataType::U8, &vals, false))).unwrap();
    let vol = nifti::read(&p).unwrap();
    assert_eq!(vol.data[[2, 1, 1]], at(&vals, 2, 1, 1) * 0.5 - 10.0);
    assert_eq!(vol.data[[0, 0, 0]], -10.0);
    // Scaling applies to float data too (the spec: all but RGB), in NIfTI-2 with f64 fields.
    let vals = values(DataType::F32);
    let mut spec = Spec::new(true, true, &[3, 2, 2], DataType::F32);
    spec.slope = 2.0;
    spec.inter = 0.5;
    let p = dir.join("f32.nii");
    std::fs::write(&p, spec.file(&raw(DataType::F32, &vals, true))).unwrap();
    let vol = nifti::read(&p).unwrap();
    assert_eq!(vol.data[[2, 0, 0]], (0.25f64 * 2.0 + 0.5) as f32);
    // slope 0 means no scaling.
    let mut spec = Spec::new(false, false, &[3, 2, 2], DataType::I16);
    spec.slope = 0.0;
    spec.inter = 100.0;
    let vals = values(DataType::I16);
    let p = dir.join("noscale.nii");
    std::fs::write(&p, spec.file(&raw(DataType::I16, &vals, false))).unwrap();
    assert_eq!(nifti::read(&p).unwrap().data[[1, 0, 0]], -1.0);

    // Writing non-integer data as int16 chooses a slope and intercept: error at most slope/2.
    let data = ArrayD::from_shape_fn(IxDyn(&[5, 4, 3]), |d| {
        (d[0] as f32 * 0.37 - d[1] as f32 * 1.3 + d[2] as f32 * 11.1).sin() * 1234.5
    });
    let v = Volume::new(
        data.clone(),
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ],
    )
    .unwrap();
    for dt in [DataType::I16, DataType::U8, DataType::U16, DataType::I32] {
        let p = dir.join(format!("scaled-{dt}.nii.gz"));
        nifti::write(&p, &v, dt).unwrap();
        let back = nifti::read(&p).unwrap();
        let slope = back.header.scl_slope;
        assert!(slope != 1.0 && slope > 0.0, "{dt}: slope {slope}");
        let err = back
            .data
            .iter()
            .zip(data.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            err as f64 <= slope * 0.5 + 1e-3,
            "{dt}: error {err} with slope {slope}"
        );
    }
    // Integers that fit are stored as they are (slope 1) and a NaN cannot be an integer.
    let mask = v
        .with_data(data.mapv(|x| (x > 0.0) as u8 as f32 * 2.0))
        .unwrap();
    let p = dir.join("mask.nii.gz");
    nifti::write(&p, &mask, DataType::U8).unwrap();
    let back = nifti::read(&p).unwrap();
    assert_eq!(back.data, mask.data);
    assert_eq!((back.header.scl_slope, back.header.scl_inter), (1.0, 0.0));
    let nan = v
        .with_data(data.mapv(|x| if x > 0.0 { f32::NAN } else { x }))
        .unwrap();
    let e = nifti::write(dir.join("nan.nii"), &nan, DataType::I16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nan.nii") && e.contains("non-finite"), "{e}");
    assert!(!dir.join("nan.nii").exists());
}

#[test]
fn four_d_and_low_rank() {
    let dir = scratch("4d");
    let n = 2 * 3 * 4 * 5;
    let vals: Vec<f64> = (0..n).map(|x| x as f64).collect();
    for v2 in [false, true] {
        let spec = Spec::new(v2, false, &[2, 3, 4, 5], DataType::I16);
        let p = dir.join(format!("4d-{v2}.nii.gz"));
        std::fs::write(&p, gzip(&spec.file(&raw(DataType::I16, &vals, false)))).unwrap();
        let vol = nifti::read(&p).unwrap();
        assert_eq!(vol.shape(), &[2, 3, 4, 5]);
        for (idx, &x) in vol.data.indexed_iter() {
            let want = idx[0] + 2 * (idx[1] + 3 * (idx[2] + 4 * idx[3]));
            assert_eq!(x, want as f32);
        }
        assert!(vol.data.is_standard_layout());
        let out = dir.join(format!("4d-{v2}-out.nii"));
        nifti::write(&out, &vol, DataType::F32).unwrap();
        assert_eq!(nifti::read(&out).unwrap().data, vol.data);
        // with_data keeps the geometry and takes a 3-D or a 4-D array of the spatial shape.
        let one = vol.with_data(ArrayD::zeros(IxDyn(&[2, 3, 4]))).unwrap();
        assert_eq!(one.header.affine(), vol.header.affine());
        assert!(vol.with_data(ArrayD::zeros(IxDyn(&[2, 3, 4, 7]))).is_ok());
        assert!(vol.with_data(ArrayD::zeros(IxDyn(&[3, 3, 4]))).is_err());
        assert!(vol.with_data(ArrayD::zeros(IxDyn(&[2, 3]))).is_err());
    }
    // dim[0] = 4 with one frame is 3-D; 2-D images get a third axis of 1; dims 5-7 of 1 are fine.
    for (shape, want) in [
        (vec![2i64, 3, 4, 1], vec![2usize, 3, 4]),
        (vec![2, 3], vec![2, 3, 1]),
        (vec![6], vec![6, 1, 1]),
        (vec![2, 3, 1, 2, 1, 1], vec![2, 3, 1, 2]),
    ] {
        let spec = Spec::new(false, false, &shape, DataType::U8);
        let n: i64 = shape.iter().product();
        let p = dir.join("low.nii");
        std::fs::write(&p, spec.file(&vec![1u8; n as usize])).unwrap();
        assert_eq!(nifti::read(&p).unwrap().shape(), &want[..], "{shape:?}");
    }
}

fn close(a: [[f64; 4]; 4], b: [[f64; 4]; 4], tol: f64) -> bool {
    (0..4).all(|i| (0..4).all(|j| (a[i][j] - b[i][j]).abs() <= tol))
}

#[test]
fn affine_from_sform_qform_and_fallback() {
    let dir = scratch("affine");
    let vals = values(DataType::U8);
    let voxels = raw(DataType::U8, &vals, false);
    // sform wins when its code is set (even a shear).
    let mut s = Spec::new(false, false, &[3, 2, 2], DataType::U8);
    s.sform_code = 2;
    s.srow = [
        [1.5, 0.1, 0.0, -10.0],
        [0.0, 2.0, 0.3, 20.0],
        [0.2, 0.0, 2.5, 30.5],
    ];
    s.qform_code = 1;
    s.quatern = [0.0, 0.0, 1.0];
    s.pixdim = [1.0, 9.0, 9.0, 9.0, 0.0, 0.0, 0.0, 0.0];
    let p = dir.join("sform.nii");
    std::fs::write(&p, s.file(&voxels)).unwrap();
    let h = nifti::read(&p).unwrap().header;
    let want = [
        [1.5, 0.1, 0.0, -10.0],
        [0.0, 2.0, 0.3, 20.0],
        [0.2, 0.0, 2.5, 30.5],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert!(close(h.affine(), want, 1e-6), "{:?}", h.affine());
    assert_eq!(h.pixdim(), [9.0, 9.0, 9.0]);

    // qform only: 90 degrees about z (quaternion (cos 45, 0, 0, sin 45)), qfac -1, voxel sizes
    // 2, 3, 4, offsets. R = [[0,-1,0],[1,0,0],[0,0,1]]; columns scaled by 2, 3, -4.
    for v2 in [false, true] {
        let mut q = Spec::new(v2, v2, &[3, 2, 2], DataType::U8);
        q.qform_code = 1;
        let h45 = std::f64::consts::FRAC_1_SQRT_2;
        q.quatern = [0.0, 0.0, h45];
        q.qoffset = [5.0, -6.0, 7.0];
        q.pixdim = [-1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0];
        let p = dir.join(format!("qform-{v2}.nii"));
        std::fs::write(&p, q.file(&voxels)).unwrap();
        let vol = nifti::read(&p).unwrap();
        let want = [
            [0.0, -3.0, 0.0, 5.0],
            [2.0, 0.0, 0.0, -6.0],
            [0.0, 0.0, -4.0, 7.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert!(
            close(vol.header.affine(), want, 1e-5),
            "{:?}",
            vol.header.affine()
        );
        // Written and read back, the geometry is the same.
        let out = dir.join(format!("qform-{v2}-out.nii.gz"));
        nifti::write(&out, &vol, DataType::U8).unwrap();
        let back = nifti::read(&out).unwrap().header;
        assert!(close(back.affine(), want, 1e-5));
        assert_eq!((back.qform_code, back.sform_code), (1, 0));
    }

    // Neither: the spec's fallback, diag(pixdim).
    let mut n = Spec::new(false, false, &[3, 2, 2], DataType::U8);
    n.pixdim = [1.0, 0.5, 0.75, 3.0, 0.0, 0.0, 0.0, 0.0];
    let p = dir.join("none.nii");
    std::fs::write(&p, n.file(&voxels)).unwrap();
    let want = [
        [0.5, 0.0, 0.0, 0.0],
        [0.0, 0.75, 0.0, 0.0],
        [0.0, 0.0, 3.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert!(close(nifti::read(&p).unwrap().header.affine(), want, 0.0));

    // A new header's qform (from the quaternion kiln derives) equals its sform, for rotations
    // with scales and a reflection.
    let (a, b) = (0.3f64, -1.1f64);
    let rz = [
        [a.cos(), -a.sin(), 0.0],
        [a.sin(), a.cos(), 0.0],
        [0.0, 0.0, 1.0],
    ];
    let rx = [
        [1.0, 0.0, 0.0],
        [0.0, b.cos(), -b.sin()],
        [0.0, b.sin(), b.cos()],
    ];
    for (flip, scales) in [
        (1.0, [1.0, 2.0, 3.0]),
        (-1.0, [0.7, 0.7, 2.5]),
        (1.0, [2.0, 2.0, 2.0]),
    ] {
        let mut m = [[0.0; 4]; 4];
        for i in 0..3 {
            for j in 0..3 {
                let r: f64 = (0..3).map(|k| rz[i][k] * rx[k][j]).sum();
                m[i][j] = r * scales[j] * if j == 0 { flip } else { 1.0 };
            }
        }
        m[0][3] = -90.0;
        m[1][3] = 12.5;
        m[2][3] = 3.0;
        m[3][3] = 1.0;
        let h = Header::new(&[3, 2, 2], m);
        assert_eq!(h.qform_code, nifti::XFORM_SCANNER_ANAT);
        assert!(
            close(h.qform_affine(), m, 1e-9),
            "{:?} vs {m:?}",
            h.qform_affine()
        );
        assert!(close(h.affine(), m, 0.0));
        // Through a NIfTI-1 file (f32 fields).
        let v = Volume {
            header: h,
            data: ArrayD::zeros(IxDyn(&[3, 2, 2])),
        };
        let p = dir.join("new.nii");
        nifti::write(&p, &v, DataType::U8).unwrap();
        let back = nifti::read(&p).unwrap().header;
        assert!(close(back.qform_affine(), m, 1e-4));
        assert!(close(back.sform_affine(), m, 1e-4));
    }
}

#[test]
fn header_image_pairs() {
    let dir = scratch("pair");
    let vals = values(DataType::I16);
    for (v2, magic) in [
        (false, b"ni1\0".to_vec()),
        (true, b"ni2\0\r\n\x1a\n".to_vec()),
    ] {
        let mut s = Spec::new(v2, false, &[3, 2, 2], DataType::I16);
        s.magic = Some(magic);
        s.vox_offset = 0.0;
        let hdr = dir.join(format!("pair{v2}.hdr"));
        std::fs::write(&hdr, s.bytes()).unwrap();
        let e = nifti::read(&hdr).unwrap_err().to_string();
        assert!(e.contains(".img"), "{e}");
        std::fs::write(
            dir.join(format!("pair{v2}.img.gz")),
            gzip(&raw(DataType::I16, &vals, false)),
        )
        .unwrap();
        let vol = nifti::read(&hdr).unwrap();
        assert_eq!(vol.data[[1, 1, 1]], at(&vals, 1, 1, 1));
    }
}

#[test]
fn big_endian_and_nifti2_are_written_on_request() {
    let dir = scratch("write-formats");
    let data = ArrayD::from_shape_fn(IxDyn(&[4, 3, 2]), |d| {
        (d[0] * 100 + d[1] * 10 + d[2]) as f32
    });
    let mut v = Volume::new(
        data,
        Header::new(
            &[4, 3, 2],
            [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        )
        .affine(),
    )
    .unwrap();
    v.header.byte_order = ByteOrder::Big;
    v.header.version = Version::Nifti2;
    let p = dir.join("be2.nii");
    nifti::write(&p, &v, DataType::I32).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(&bytes[..4], &540i32.to_be_bytes());
    assert_eq!(&bytes[4..12], b"n+2\0\r\n\x1a\n");
    let back = nifti::read(&p).unwrap();
    assert_eq!(back.data, v.data);
    assert_eq!(back.header.byte_order, ByteOrder::Big);
    // A dimension beyond NIfTI-1's i16 makes the file NIfTI-2.
    let long = Volume::new(ArrayD::zeros(IxDyn(&[40000, 1, 1])), v.header.affine()).unwrap();
    let p = dir.join("long.nii.gz");
    nifti::write(&p, &long, DataType::U8).unwrap();
    let back = nifti::read(&p).unwrap();
    assert_eq!(back.header.version, Version::Nifti2);
    assert_eq!(back.shape(), &[40000, 1, 1]);
}

#[test]
fn writes_are_atomic_and_errors_name_the_file() {
    let dir = scratch("atomic");
    let v = Volume::new(
        ArrayD::ones(IxDyn(&[2, 2, 2])),
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ],
    )
    .unwrap();
    let p = dir.join("a.nii.gz");
    nifti::write(&p, &v, DataType::U8).unwrap();
    nifti::write(
        &p,
        &v.with_data(ArrayD::zeros(IxDyn(&[2, 2, 2]))).unwrap(),
        DataType::U8,
    )
    .unwrap();
    assert_eq!(nifti::read(&p).unwrap().data.sum(), 0.0);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["a.nii.gz".to_string()],
        "no temporary files left"
    );
    let missing = dir.join("no/such/dir/b.nii");
    let e = nifti::write(&missing, &v, DataType::U8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("b.nii"), "{e}");
    let e = nifti::read(dir.join("absent.nii")).unwrap_err().to_string();
    assert!(e.contains("absent.nii") && e.contains("cannot open"), "{e}");
}

// ---- Malformed files.

/// Reads `bytes` from a file (gzipped or not) and returns the error message; checks that it
/// names the file, that nothing panicked and that no allocation beyond 64 MiB happened.
fn bad(dir: &Path, name: &str, bytes: &[u8], gz: bool) -> String {
    let p = dir.join(if gz {
        format!("{name}.nii.gz")
    } else {
        format!("{name}.nii")
    });
    std::fs::write(&p, if gz { gzip(bytes) } else { bytes.to_vec() }).unwrap();
    let (r, largest) = largest_allocation_during(|| std::panic::catch_unwind(|| nifti::read(&p)));
    let r = r.unwrap_or_else(|_| panic!("{name}: read panicked"));
    let e = match r {
        Ok(v) => panic!("{name}: read a malformed file as {:?}", v.shape()),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains(p.file_name().unwrap().to_str().unwrap()),
        "{name}: {e}"
    );
    assert!(largest < 64 << 20, "{name}: allocated {largest} bytes");
    e
}

#[test]
fn malformed_files_are_errors_naming_the_file() {
    let dir = scratch("malformed");
    let vals = values(DataType::F32);
    let good = Spec::new(false, false, &[3, 2, 2], DataType::F32);
    let voxels = raw(DataType::F32, &vals, false);
    let file = good.file(&voxels);
    for gz in [false, true] {
        let m = |s: &str| s.to_string();
        let cases: Vec<(String, Vec<u8>, &str)> = vec![
            (m("empty"), vec![], "too short"),
            (m("tiny"), vec![0x5c, 1], "too short"),
            (m("half-header"), file[..200].to_vec(), "truncated header"),
            (m("no-voxels"), file[..352].to_vec(), "truncated"),
            (
                m("short-voxels"),
                file[..file.len() - 1].to_vec(),
                "truncated",
            ),
            (
                m("text"),
                b"this is not a nifti file at all, just some text that goes on".repeat(10),
                "not a NIfTI file",
            ),
        ];
        for (name, bytes, want) in cases {
            let e = bad(&dir, &format!("{name}-{gz}"), &bytes, gz);
            assert!(e.contains(want), "{name}: {e}");
        }
        let mut cases: Vec<(&str, Spec, &str)> = Vec::new();
        let mut s = good.clone();
        s.magic = Some(b"n+3\0".to_vec());
        cases.push(("bad-magic", s, "bad magic"));
        let mut s = good.clone();
        s.sizeof_hdr = Some(349);
        cases.push(("bad-sizeof", s, "sizeof_hdr"));
        let mut s = good.clone();
        s.datatype = 3;
        cases.push(("unknown-datatype", s, "unknown datatype code 3"));
        let mut s = good.clone();
        s.datatype = 32;
        cases.push(("complex", s, "not supported"));
        let mut s = good.clone();
        s.datatype = 128;
        cases.push(("rgb", s, "not supported"));
        let mut s = good.clone();
        s.dim = [3, 32767, 32767, 32767, 1, 1, 1, 1];
        cases.push(("absurd-dims", s, "absurd dimensions"));
        let mut s = good.clone();
        s.dim = [3, 1000, 1000, 500, 1, 1, 1, 1]; // 2 GB of f32 claimed, under the voxel cap
        cases.push(("big-dims", s, "truncated"));
        let mut s = good.clone();
        s.dim = [3, 3, -2, 2, 1, 1, 1, 1];
        cases.push(("negative-dim", s, "dim[2] = -2"));
        let mut s = good.clone();
        s.dim = [0, 3, 2, 2, 1, 1, 1, 1];
        cases.push(("dim0-zero", s, "dim[0] = 0"));
        let mut s = good.clone();
        s.dim = [9, 3, 2, 2, 1, 1, 1, 1];
        cases.push(("dim0-nine", s, "dim[0] = 9"));
        let mut s = good.clone();
        s.dim = [5, 3, 2, 1, 1, 2, 1, 1];
        cases.push(("five-d", s, "at most 4-D"));
        for off in [-352.0, 100.0, f64::NAN, 1e30, 352.5] {
            let mut s = good.clone();
            s.vox_offset = off;
            cases.push(("bad-offset", s, "vox_offset"));
        }
        let mut s = good.clone();
        s.vox_offset = 1e9;
        cases.push(("far-offset", s, "truncated"));
        let mut v2 = Spec::new(true, true, &[3, 2, 2], DataType::F32);
        v2.dim = [3, i64::MAX, i64::MAX, 2, 1, 1, 1, 1];
        cases.push(("v2-overflow", v2.clone(), "absurd dimensions"));
        v2.dim = [3, 1 << 40, 1, 1, 1, 1, 1, 1];
        cases.push(("v2-huge", v2.clone(), "absurd dimensions"));
        v2.dim = [3, 3, 2, 2, 1, 1, 1, 1];
        v2.vox_offset = -5.0;
        cases.push(("v2-negative-offset", v2.clone(), "vox_offset"));
        v2.vox_offset = 544.0;
        v2.magic = Some(b"n+2\0\r\n\x1a\x0b".to_vec());
        cases.push(("v2-magic", v2, "bad magic"));
        for (i, (name, spec, want)) in cases.into_iter().enumerate() {
            let mut bytes = spec.bytes();
            bytes.truncate(1 << 16);
            bytes.extend_from_slice(&voxels);
            let e = bad(&dir, &format!("{name}-{i}-{gz}"), &bytes, gz);
            assert!(e.contains(want), "{name}: {e}");
        }
    }
    // A corrupt gzip stream.
    let mut z = gzip(&file);
    let n = z.len();
    for b in &mut z[20..n - 10] {
        *b ^= 0x5a;
    }
    bad(&dir, "corrupt-gz", &z, false);
    // A gzip stream cut short.
    let z = gzip(&file);
    bad(&dir, "cut-gz", &z[..z.len() / 2], false);
}

// ---- The command line.

#[test]
fn nifti_info_prints_the_expected_json() {
    let dir = scratch("info");
    // 2x2x1 uint8, raw 0..4, slope 0.5, intercept 1: values 1, 1.5, 2, 2.5.
    let mut s = Spec::new(false, false, &[2, 2, 1], DataType::U8);
    s.slope = 0.5;
    s.inter = 1.0;
    s.pixdim = [1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0];
    s.sform_code = 1;
    s.srow = [
        [2.0, 0.0, 0.0, -1.0],
        [0.0, 3.0, 0.0, -2.0],
        [0.0, 0.0, 4.0, -3.0],
    ];
    let p = dir.join("tiny.nii.gz");
    std::fs::write(&p, gzip(&s.file(&[0, 1, 2, 3]))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["nifti", "info"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout,
        "{\"shape\":[2,2,1],\"datatype\":\"uint8\",\"pixdim\":[2.0,3.0,4.0],\
         \"affine\":[[2.0,0.0,0.0,-1.0],[0.0,3.0,0.0,-2.0],[0.0,0.0,4.0,-3.0],[0.0,0.0,0.0,1.0]],\
         \"min\":1.0,\"max\":2.5,\"mean\":1.75,\"sum\":7.0}\n"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["sum"], 7.0);
    // A malformed file: exit status 1 and an error naming it.
    let badp = dir.join("bad.nii");
    std::fs::write(&badp, b"garbage").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["nifti", "info"])
        .arg(&badp)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.nii") && err.contains("not a NIfTI file"),
        "{err}"
    );
}

/// The real MNI152 files (when ../shared is there) and the project's 2 mm copy read with the
/// geometry nilearn documents.
#[test]
fn real_template_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = root.join("data/mni152/mni_icbm152_t1_tal_nlin_sym_09a_2mm.nii.gz");
    let v = nifti::read(&shipped).unwrap();
    assert_eq!(v.shape(), &[83, 101, 88]);
    assert_eq!(v.header.pixdim(), [2.0, 2.0, 2.0]);
    assert_eq!(v.header.affine()[0], [2.0, 0.0, 0.0, -81.5]);
    let orig = root.join("../shared/data/mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz");
    if orig.exists() {
        let v = nifti::read(&orig).unwrap();
        assert_eq!(v.shape(), &[197, 233, 189]);
        assert_eq!(v.header.datatype(), DataType::U8);
        assert_eq!(
            v.header.affine(),
            [
                [1.0, 0.0, 0.0, -98.0],
                [0.0, 1.0, 0.0, -134.0],
                [0.0, 0.0, 1.0, -72.0],
                [0.0, 0.0, 0.0, 1.0]
            ]
        );
    }
}
