//! NIfTI-1 and NIfTI-2 volumes: reading and writing `.nii` and `.nii.gz` files.
//!
//! [`read`] accepts NIfTI-1 (348-byte header) and NIfTI-2 (540-byte header) files in either
//! byte order, single files (`n+1`, `n+2`) and header/image pairs (`ni1`/`ni2`: `x.hdr` with
//! `x.img`, either of them possibly gzipped), the integer and float datatypes (u8, i8, i16,
//! u16, i32, u32, i64, u64, f32, f64), 1-D to 4-D data (trailing dimensions of size 1 beyond
//! the third are dropped), and applies `scl_slope`/`scl_inter`. Gzip is detected by content,
//! not by name. Voxels come back as `f32` in an [`ndarray::ArrayD`] of shape `[nx, ny, nz]` or
//! `[nx, ny, nz, nt]`, indexed `[i, j, k(, t)]`, in standard (row-major) layout.
//!
//! [`write`] stores a volume as a single file (gzipped when the name ends in `.gz`) in the
//! datatype asked for, with its header's version, byte order and geometry (qform, sform,
//! pixdim, units); integer datatypes get `scl_slope`/`scl_inter` only when the values are not
//! already integers in the type's range. Writes are atomic: temporary file, fsync, rename.
//!
//! A malformed file is an [`Error::Data`] naming the file and the problem, never a panic: a
//! file too short for its header or its voxels, a bad `sizeof_hdr` or magic, an unknown or
//! unsupported datatype, dimensions or an offset that are negative, non-finite or absurd. The
//! voxel byte count is computed (with overflow checks) and compared with the file's length, or
//! for gzip read incrementally, before any large allocation.
//!
//! ```no_run
//! use kiln::nifti::{self, DataType};
//! let flair = nifti::read("sub-01/FLAIR_brain.nii.gz")?;
//! let mask = flair.data.mapv(|v| (v > 0.5) as u8 as f32);
//! nifti::write("sub-01/mask.nii.gz", &flair.with_data(mask)?, DataType::U8)?;
//! # Ok::<(), kiln::Error>(())
//! ```

mod header;

use crate::error::{Error, Result};
use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The most voxels [`read`] accepts (2^31: 8 GiB as f32). Larger headers are rejected before
/// anything is allocated.
pub const MAX_VOXELS: u64 = 1 << 31;

/// Element types of the voxel data on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl DataType {
    pub const ALL: [DataType; 10] = [
        DataType::U8,
        DataType::I8,
        DataType::I16,
        DataType::U16,
        DataType::I32,
        DataType::U32,
        DataType::I64,
        DataType::U64,
        DataType::F32,
        DataType::F64,
    ];

    /// The NIfTI `datatype` code (`NIFTI_TYPE_*`).
    pub fn code(self) -> i32 {
        match self {
            DataType::U8 => 2,
            DataType::I16 => 4,
            DataType::I32 => 8,
            DataType::F32 => 16,
            DataType::F64 => 64,
            DataType::I8 => 256,
            DataType::U16 => 512,
            DataType::U32 => 768,
            DataType::I64 => 1024,
            DataType::U64 => 1280,
        }
    }

    pub fn from_code(code: i32) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.code() == code)
    }

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            DataType::U8 | DataType::I8 => 1,
            DataType::I16 | DataType::U16 => 2,
            DataType::I32 | DataType::U32 | DataType::F32 => 4,
            DataType::I64 | DataType::U64 | DataType::F64 => 8,
        }
    }

    /// The NumPy name (`uint8`, `int16`, `float32`, ...), as `kiln nifti info` prints it.
    pub fn name(self) -> &'static str {
        match self {
            DataType::U8 => "uint8",
            DataType::I8 => "int8",
            DataType::I16 => "int16",
            DataType::U16 => "uint16",
            DataType::I32 => "int32",
            DataType::U32 => "uint32",
            DataType::I64 => "int64",
            DataType::U64 => "uint64",
            DataType::F32 => "float32",
            DataType::F64 => "float64",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DataType::F32 | DataType::F64)
    }

    /// The range of an integer type (None for floats).
    fn int_range(self) -> Option<(f64, f64)> {
        Some(match self {
            DataType::U8 => (0.0, u8::MAX as f64),
            DataType::I8 => (i8::MIN as f64, i8::MAX as f64),
            DataType::I16 => (i16::MIN as f64, i16::MAX as f64),
            DataType::U16 => (0.0, u16::MAX as f64),
            DataType::I32 => (i32::MIN as f64, i32::MAX as f64),
            DataType::U32 => (0.0, u32::MAX as f64),
            DataType::I64 => (i64::MIN as f64, i64::MAX as f64),
            DataType::U64 => (0.0, u64::MAX as f64),
            DataType::F32 | DataType::F64 => return None,
        })
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DataType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<DataType, String> {
        let l = s.to_ascii_lowercase();
        DataType::ALL
            .into_iter()
            .find(|d| d.name() == l || format!("{d:?}").to_ascii_lowercase() == l)
            .ok_or_else(|| format!("unknown datatype {s:?} (uint8, int8, int16, uint16, int32, uint32, int64, uint64, float32, float64)"))
    }
}

/// NIfTI-1 (348-byte header, f32 geometry) or NIfTI-2 (540-byte header, f64 geometry, i64 dims).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Nifti1,
    Nifti2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteOrder {
    Little,
    Big,
}

/// A NIfTI header, version-independent (NIfTI-1's f32 fields widened to f64).
///
/// The dimensions are the data's: [`write`] takes them (and the datatype and scaling) from
/// what it writes; everything else here, the geometry above all, is written as it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// The format read, and the one [`write`] writes (NIfTI-2 when a dimension exceeds
    /// NIfTI-1's i16).
    pub version: Version,
    pub byte_order: ByteOrder,
    /// The datatype on disk of the file read (informational: [`write`] takes its own).
    pub datatype: DataType,
    /// `dim[1..=dim[0]]` as read; [`write`] uses the data's shape.
    pub dim: [i64; 8],
    /// `pixdim[0]` is qfac (±1); `pixdim[1..4]` the voxel sizes; `pixdim[4]` the time step.
    pub pixdim: [f64; 8],
    /// As read; the data of a [`Volume`] is already scaled.
    pub scl_slope: f64,
    pub scl_inter: f64,
    pub qform_code: i32,
    pub sform_code: i32,
    /// quatern_b, quatern_c, quatern_d.
    pub quatern: [f64; 3],
    /// qoffset_x, qoffset_y, qoffset_z.
    pub qoffset: [f64; 3],
    /// srow_x, srow_y, srow_z.
    pub srow: [[f64; 4]; 3],
    pub xyzt_units: i32,
    pub dim_info: u8,
    pub intent_code: i32,
    pub intent_p: [f64; 3],
    pub intent_name: String,
    pub cal_min: f64,
    pub cal_max: f64,
    pub slice_code: i32,
    pub slice_start: i64,
    pub slice_end: i64,
    pub slice_duration: f64,
    pub toffset: f64,
    pub descrip: String,
    pub aux_file: String,
}

/// NIFTI_XFORM_SCANNER_ANAT: the code [`Header::new`] gives its qform and sform.
pub const XFORM_SCANNER_ANAT: i32 = 1;
/// NIFTI_UNITS_MM.
pub const UNITS_MM: i32 = 2;

impl Header {
    fn blank() -> Header {
        Header {
            version: Version::Nifti1,
            byte_order: ByteOrder::Little,
            datatype: DataType::F32,
            dim: [0, 1, 1, 1, 1, 1, 1, 1],
            pixdim: [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
            scl_slope: 1.0,
            scl_inter: 0.0,
            qform_code: 0,
            sform_code: 0,
            quatern: [0.0; 3],
            qoffset: [0.0; 3],
            srow: [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
            ],
            xyzt_units: 0,
            dim_info: 0,
            intent_code: 0,
            intent_p: [0.0; 3],
            intent_name: String::new(),
            cal_min: 0.0,
            cal_max: 0.0,
            slice_code: 0,
            slice_start: 0,
            slice_end: 0,
            slice_duration: 0.0,
            toffset: 0.0,
            descrip: String::new(),
            aux_file: String::new(),
        }
    }

    /// A NIfTI-1 little-endian header for data of `shape` (1 to 7 dims) placed in world space
    /// (mm) by `affine`: the sform is `affine`, and the qform too when `affine`'s 3x3 part is
    /// a rotation times positive scales (else qform_code is 0).
    pub fn new(shape: &[usize], affine: [[f64; 4]; 4]) -> Header {
        let mut h = Header::blank();
        h.dim[0] = shape.len() as i64;
        for (i, &n) in shape.iter().enumerate().take(7) {
            h.dim[i + 1] = n as i64;
        }
        h.xyzt_units = UNITS_MM;
        h.set_affine(affine, XFORM_SCANNER_ANAT);
        h
    }

    /// The datatype on disk of the file this header was read from.
    pub fn datatype(&self) -> DataType {
        self.datatype
    }

    /// The spatial voxel sizes `pixdim[1..4]`.
    pub fn pixdim(&self) -> [f64; 3] {
        [self.pixdim[1], self.pixdim[2], self.pixdim[3]]
    }

    /// The voxel-to-world (mm) matrix, rows: the sform when `sform_code > 0`, else the qform
    /// when `qform_code > 0`, else the spec's fallback `diag(pixdim[1..4])` (NIfTI method 1).
    pub fn affine(&self) -> [[f64; 4]; 4] {
        if self.sform_code > 0 {
            self.sform_affine()
        } else if self.qform_code > 0 {
            self.qform_affine()
        } else {
            let p = self.pixdim();
            [
                [p[0], 0.0, 0.0, 0.0],
                [0.0, p[1], 0.0, 0.0],
                [0.0, 0.0, p[2], 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ]
        }
    }

    /// The sform matrix (whatever `sform_code` says).
    pub fn sform_affine(&self) -> [[f64; 4]; 4] {
        [
            self.srow[0],
            self.srow[1],
            self.srow[2],
            [0.0, 0.0, 0.0, 1.0],
        ]
    }

    /// The qform matrix from the quaternion, offsets, pixdim and qfac (NIfTI method 2),
    /// whatever `qform_code` says.
    pub fn qform_affine(&self) -> [[f64; 4]; 4] {
        let [b, c, d] = self.quatern;
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        // A quaternion slightly longer than 1 (rounding in f32 files) is normalised.
        let n = (a * a + b * b + c * c + d * d).sqrt();
        let (a, b, c, d) = if n > 0.0 {
            (a / n, b / n, c / n, d / n)
        } else {
            (1.0, 0.0, 0.0, 0.0)
        };
        let r = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let qfac = if self.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let s = [self.pixdim[1], self.pixdim[2], self.pixdim[3] * qfac];
        let mut m = [[0.0; 4]; 4];
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] = r[i][j] * s[j];
            }
            m[i][3] = self.qoffset[i];
        }
        m[3][3] = 1.0;
        m
    }

    /// Sets the geometry to `affine`: the sform (with `code`), pixdim[1..4] (its column norms)
    /// and, when its 3x3 part is a rotation (or reflection) times scales, the qform (with
    /// `code`); otherwise qform_code becomes 0.
    pub fn set_affine(&mut self, affine: [[f64; 4]; 4], code: i32) {
        for (row, a) in self.srow.iter_mut().zip(affine.iter()) {
            *row = *a;
        }
        self.sform_code = code;
        let cols: Vec<[f64; 3]> = (0..3)
            .map(|j| [affine[0][j], affine[1][j], affine[2][j]])
            .collect();
        let norms: Vec<f64> = cols
            .iter()
            .map(|c| (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt())
            .collect();
        for (j, &n) in norms.iter().enumerate() {
            if n > 0.0 && n.is_finite() {
                self.pixdim[j + 1] = n;
            }
        }
        match quatern_of(&affine) {
            Some((q, qfac)) => {
                self.quatern = q;
                self.qoffset = [affine[0][3], affine[1][3], affine[2][3]];
                self.pixdim[0] = qfac;
                self.qform_code = code;
            }
            None => {
                self.quatern = [0.0; 3];
                self.qoffset = [affine[0][3], affine[1][3], affine[2][3]];
                self.pixdim[0] = 1.0;
                self.qform_code = 0;
            }
        }
    }
}

/// The quaternion (b, c, d) and qfac of an affine whose 3x3 part is an orthogonal matrix
/// times positive column scales (`nifti_mat44_to_quatern` for that case), or None.
fn quatern_of(m: &[[f64; 4]; 4]) -> Option<([f64; 3], f64)> {
    let mut r = [[0.0f64; 3]; 3];
    for j in 0..3 {
        let n = (0..3).map(|i| m[i][j] * m[i][j]).sum::<f64>().sqrt();
        if !(n > 0.0 && n.is_finite()) {
            return None;
        }
        for i in 0..3 {
            r[i][j] = m[i][j] / n;
        }
    }
    for a in 0..3 {
        for b in 0..3 {
            let dot: f64 = (0..3).map(|i| r[i][a] * r[i][b]).sum();
            let want = if a == b { 1.0 } else { 0.0 };
            if (dot - want).abs() > 1e-4 {
                return None;
            }
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
        - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
        -1.0
    } else {
        1.0
    };
    let t = 1.0 + r[0][0] + r[1][1] + r[2][2];
    let (mut a, mut b, mut c, mut d);
    if t > 0.5 {
        a = 0.5 * t.sqrt();
        b = 0.25 * (r[2][1] - r[1][2]) / a;
        c = 0.25 * (r[0][2] - r[2][0]) / a;
        d = 0.25 * (r[1][0] - r[0][1]) / a;
    } else {
        let xd = 1.0 + r[0][0] - (r[1][1] + r[2][2]);
        let yd = 1.0 + r[1][1] - (r[0][0] + r[2][2]);
        let zd = 1.0 + r[2][2] - (r[0][0] + r[1][1]);
        if xd > 1.0 {
            b = 0.5 * xd.sqrt();
            c = 0.25 * (r[0][1] + r[1][0]) / b;
            d = 0.25 * (r[0][2] + r[2][0]) / b;
            a = 0.25 * (r[2][1] - r[1][2]) / b;
        } else if yd > 1.0 {
            c = 0.5 * yd.sqrt();
            b = 0.25 * (r[0][1] + r[1][0]) / c;
            d = 0.25 * (r[1][2] + r[2][1]) / c;
            a = 0.25 * (r[0][2] - r[2][0]) / c;
        } else {
            d = 0.5 * zd.sqrt();
            b = 0.25 * (r[0][2] + r[2][0]) / d;
            c = 0.25 * (r[1][2] + r[2][1]) / d;
            a = 0.25 * (r[1][0] - r[0][1]) / d;
        }
        if a < 0.0 {
            b = -b;
            c = -c;
            d = -d;
            a = -a;
        }
    }
    let _ = a;
    Some(([b, c, d], qfac))
}

/// A NIfTI image: its header and its voxels as f32, scaled by scl_slope/scl_inter.
#[derive(Clone, Debug)]
pub struct Volume {
    pub header: Header,
    /// Shape `[nx, ny, nz]` or `[nx, ny, nz, nt]`, indexed `[i, j, k(, t)]`.
    pub data: ArrayD<f32>,
}

impl Volume {
    /// A volume of `data` (3-D or 4-D) placed by `affine`, with a fresh NIfTI-1 header
    /// ([`Header::new`]).
    pub fn new(data: ArrayD<f32>, affine: [[f64; 4]; 4]) -> Result<Volume> {
        check_rank(data.shape())?;
        Ok(Volume {
            header: Header::new(data.shape(), affine),
            data,
        })
    }

    /// The same geometry with new voxels: `data` must have this volume's spatial shape (3-D,
    /// or 4-D with any number of frames).
    pub fn with_data(&self, data: ArrayD<f32>) -> Result<Volume> {
        check_rank(data.shape())?;
        if data.shape()[..3] != self.data.shape()[..3] {
            return Err(Error::shape(
                "nifti::Volume::with_data",
                format!(
                    "new data of shape {:?} does not match the volume's spatial shape {:?}",
                    data.shape(),
                    &self.data.shape()[..3]
                ),
            ));
        }
        let mut header = self.header.clone();
        header.dim = [1; 8];
        header.dim[0] = data.ndim() as i64;
        for (i, &n) in data.shape().iter().enumerate() {
            header.dim[i + 1] = n as i64;
        }
        header.scl_slope = 1.0;
        header.scl_inter = 0.0;
        header.cal_min = 0.0;
        header.cal_max = 0.0;
        Ok(Volume { header, data })
    }

    pub fn shape(&self) -> &[usize] {
        self.data.shape()
    }

    /// The voxel-to-world matrix ([`Header::affine`]).
    pub fn affine(&self) -> [[f64; 4]; 4] {
        self.header.affine()
    }
}

#[track_caller]
fn check_rank(shape: &[usize]) -> Result<()> {
    if shape.len() == 3 || shape.len() == 4 {
        Ok(())
    } else {
        Err(Error::shape(
            "nifti::Volume",
            format!("a volume is 3-D or 4-D, got shape {shape:?}"),
        ))
    }
}

fn data_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Data {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// Opens `path` as a byte stream, decompressing when it starts with the gzip magic. Returns
/// the stream and, for an uncompressed file, its length.
fn open(path: &Path) -> Result<(Box<dyn Read>, Option<u64>)> {
    let file = File::open(path).map_err(|e| data_err(path, format!("cannot open: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| data_err(path, format!("cannot stat: {e}")))?
        .len();
    let mut r = BufReader::with_capacity(1 << 16, file);
    let mut magic = [0u8; 2];
    let n =
        read_full(&mut r, &mut magic).map_err(|e| data_err(path, format!("cannot read: {e}")))?;
    let head = std::io::Cursor::new(magic[..n].to_vec()).chain(r);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok((Box::new(flate2::read::MultiGzDecoder::new(head)), None))
    } else {
        Ok((Box::new(head), Some(len)))
    }
}

/// Reads until `buf` is full or the stream ends; returns the count read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn io_msg(e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::InvalidInput || e.kind() == std::io::ErrorKind::InvalidData {
        format!("corrupt gzip stream: {e}")
    } else {
        format!("cannot read: {e}")
    }
}

/// Reads a `.nii` / `.nii.gz` file (or a `.hdr` of a header/image pair). See the module docs.
pub fn read(path: impl AsRef<Path>) -> Result<Volume> {
    let path = path.as_ref();
    let (mut r, len) = open(path)?;
    let mut hdr = vec![0u8; header::N2_SIZE];
    let n = read_full(&mut r, &mut hdr[..4]).map_err(|e| data_err(path, io_msg(e)))?;
    if n < 4 {
        return Err(data_err(
            path,
            format!("truncated: {n} bytes, too short for a NIfTI header"),
        ));
    }
    let first4 = [hdr[0], hdr[1], hdr[2], hdr[3]];
    let (version, order) = header::detect(first4).ok_or_else(|| {
        data_err(
            path,
            format!(
                "not a NIfTI file: sizeof_hdr is {} (expected 348 for NIfTI-1 or 540 for NIfTI-2, in either byte order)",
                i32::from_le_bytes(first4)
            ),
        )
    })?;
    let size = match version {
        Version::Nifti1 => header::N1_SIZE,
        Version::Nifti2 => header::N2_SIZE,
    };
    let got = 4 + read_full(&mut r, &mut hdr[4..size]).map_err(|e| data_err(path, io_msg(e)))?;
    if got < size {
        return Err(data_err(
            path,
            format!("truncated header: {got} of the {size} bytes of a {version:?} header"),
        ));
    }
    let raw = header::decode(&hdr[..size], version, order).map_err(|m| data_err(path, m))?;
    let mut h = raw.header;

    // Datatype.
    let dtype = DataType::from_code(raw.datatype_code).ok_or_else(|| {
        let what = match raw.datatype_code {
            1 => "binary (1 bit)",
            32 => "complex64",
            128 => "RGB24",
            1536 => "float128",
            1792 => "complex128",
            2048 => "complex256",
            2304 => "RGBA32",
            _ => "",
        };
        if what.is_empty() {
            data_err(path, format!("unknown datatype code {}", raw.datatype_code))
        } else {
            data_err(
                path,
                format!(
                    "datatype {} ({what}) is not supported (integer and float types only)",
                    raw.datatype_code
                ),
            )
        }
    })?;

    // Dimensions.
    let nd = raw.dim[0];
    if !(1..=7).contains(&nd) {
        return Err(data_err(
            path,
            format!("dim[0] = {nd}: the number of dimensions must be 1 to 7"),
        ));
    }
    let nd = nd as usize;
    let mut dims: Vec<u64> = Vec::with_capacity(nd);
    for i in 1..=nd {
        let d = raw.dim[i];
        if d < 1 {
            return Err(data_err(
                path,
                format!("dim[{i}] = {d}: dimensions must be at least 1"),
            ));
        }
        dims.push(d as u64);
    }
    let nvox = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_VOXELS)
        .ok_or_else(|| {
            data_err(
                path,
                format!(
                    "absurd dimensions {:?}: more than {MAX_VOXELS} voxels",
                    &raw.dim[1..=nd]
                ),
            )
        })?;
    let nbytes = nvox * dtype.size() as u64;
    // Shape: pad to 3-D; a 4th dimension is kept; dims 5-7 must be 1.
    while dims.len() < 3 {
        dims.push(1);
    }
    if dims.len() > 4 {
        if dims[4..].iter().any(|&d| d > 1) {
            return Err(data_err(
                path,
                format!(
                    "a {nd}-D volume (dims {:?}) is not supported: at most 4-D",
                    &raw.dim[1..=nd]
                ),
            ));
        }
        dims.truncate(4);
    }
    if dims.len() == 4 && dims[3] == 1 {
        dims.truncate(3);
    }
    let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();

    // Offset of the voxels.
    let off = raw.vox_offset;
    let min_off = if raw.single_file { size as f64 } else { 0.0 };
    if !off.is_finite() || off < min_off || off.fract() != 0.0 || off > 1e15 {
        return Err(data_err(
            path,
            format!(
                "bad vox_offset {off}: must be a whole number of bytes{}",
                if raw.single_file {
                    format!(" at least {size} (the header's size)")
                } else {
                    String::new()
                }
            ),
        ));
    }
    let off = off as u64;

    // The stream holding the voxels, positioned at the offset.
    let (mut data_r, data_len, data_path, pos): (Box<dyn Read>, Option<u64>, PathBuf, u64) =
        if raw.single_file {
            (r, len, path.to_path_buf(), size as u64)
        } else {
            let img = image_path(path).ok_or_else(|| {
                data_err(
                path,
                "a header of a .hdr/.img pair (magic ni1/ni2) but no matching .img or .img.gz file",
            )
            })?;
            let (r2, len2) = open(&img)?;
            (r2, len2, img, 0)
        };
    if let Some(flen) = data_len {
        let need = off.saturating_add(nbytes);
        if need > flen {
            return Err(data_err(
                &data_path,
                format!(
                    "truncated: dims {:?} of {} need {nbytes} bytes of voxels from offset {off}, but the file has {flen} bytes",
                    &raw.dim[1..=nd],
                    dtype.name()
                ),
            ));
        }
    }
    let skip = off - pos;
    let skipped = std::io::copy(&mut (&mut data_r).take(skip), &mut std::io::sink())
        .map_err(|e| data_err(&data_path, io_msg(e)))?;
    if skipped < skip {
        return Err(data_err(
            &data_path,
            format!("truncated: vox_offset is {off} but the file ends before it"),
        ));
    }
    // An uncompressed file was checked to hold the voxels; a gzip stream's length is unknown,
    // so the buffer grows with what is actually there and a lying header cannot make us
    // allocate its size.
    let cap = if data_len.is_some() {
        nbytes
    } else {
        nbytes.min(8 << 20)
    };
    let mut bytes = Vec::with_capacity(cap as usize);
    data_r
        .take(nbytes)
        .read_to_end(&mut bytes)
        .map_err(|e| data_err(&data_path, io_msg(e)))?;
    if (bytes.len() as u64) < nbytes {
        return Err(data_err(
            &data_path,
            format!(
                "truncated: dims {:?} of {} need {nbytes} bytes of voxels, found {}",
                &raw.dim[1..=nd],
                dtype.name(),
                bytes.len()
            ),
        ));
    }

    let (slope, inter) = effective_scaling(h.scl_slope, h.scl_inter);
    let values = decode(&bytes, dtype, order, slope, inter);
    drop(bytes);
    let data = ArrayD::from_shape_vec(IxDyn(&shape).f(), values)
        .map_err(|e| data_err(path, format!("internal: {e}")))?;
    let data = if data.is_standard_layout() {
        data
    } else {
        data.as_standard_layout().into_owned()
    };
    h.datatype = dtype;
    h.dim = raw.dim;
    Ok(Volume { header: h, data })
}

/// The `.img` (or `.img.gz`) beside a `.hdr` (or `.hdr.gz`).
fn image_path(path: &Path) -> Option<PathBuf> {
    let s = path.to_string_lossy();
    let stem = s.strip_suffix(".gz").unwrap_or(&s);
    let stem = stem
        .strip_suffix(".hdr")
        .or_else(|| stem.strip_suffix(".HDR"))?;
    [".img", ".img.gz", ".IMG"]
        .iter()
        .map(|ext| PathBuf::from(format!("{stem}{ext}")))
        .find(|p| p.exists())
}

/// scl_slope 0 or non-finite means "no scaling" (the spec and nibabel); a non-finite
/// intercept counts as 0.
fn effective_scaling(slope: f64, inter: f64) -> (f64, f64) {
    if slope == 0.0 || !slope.is_finite() {
        (1.0, 0.0)
    } else {
        (slope, if inter.is_finite() { inter } else { 0.0 })
    }
}

fn decode(bytes: &[u8], dtype: DataType, order: ByteOrder, slope: f64, inter: f64) -> Vec<f32> {
    macro_rules! conv {
        ($t:ty) => {{
            const N: usize = std::mem::size_of::<$t>();
            let big = order == ByteOrder::Big;
            let raw = bytes.chunks_exact(N).map(|c| {
                let a: [u8; N] = c.try_into().unwrap();
                if big {
                    <$t>::from_be_bytes(a)
                } else {
                    <$t>::from_le_bytes(a)
                }
            });
            if slope == 1.0 && inter == 0.0 {
                raw.map(|v| v as f32).collect()
            } else {
                raw.map(|v| (v as f64 * slope + inter) as f32).collect()
            }
        }};
    }
    match dtype {
        DataType::U8 => conv!(u8),
        DataType::I8 => conv!(i8),
        DataType::I16 => conv!(i16),
        DataType::U16 => conv!(u16),
        DataType::I32 => conv!(i32),
        DataType::U32 => conv!(u32),
        DataType::I64 => conv!(i64),
        DataType::U64 => conv!(u64),
        DataType::F32 => conv!(f32),
        DataType::F64 => conv!(f64),
    }
}

/// Slope and intercept to store `data` as `dtype`: (1, 0) for floats and for integers that fit;
/// otherwise the type's range spans the data's. Errors for non-finite values in integer types.
fn choose_scaling(
    data: &ArrayD<f32>,
    dtype: DataType,
    version: Version,
) -> std::result::Result<(f64, f64), String> {
    let Some((tmin, tmax)) = dtype.int_range() else {
        return Ok((1.0, 0.0));
    };
    let (mut lo, mut hi, mut all_int) = (f64::INFINITY, f64::NEG_INFINITY, true);
    for &v in data.iter() {
        if !v.is_finite() {
            return Err(format!(
                "cannot store the non-finite value {v} as {}",
                dtype.name()
            ));
        }
        let v = v as f64;
        lo = lo.min(v);
        hi = hi.max(v);
        all_int &= v.fract() == 0.0;
    }
    if data.is_empty() || (all_int && lo >= tmin && hi <= tmax) {
        return Ok((1.0, 0.0));
    }
    // Stored in the header's precision, so that writer and reader use the same numbers.
    let round = |x: f64| {
        if version == Version::Nifti1 {
            x as f32 as f64
        } else {
            x
        }
    };
    if hi == lo {
        return Ok((1.0, round(lo)));
    }
    let slope = round((hi - lo) / (tmax - tmin));
    let inter = round(lo - tmin * slope);
    Ok((slope, inter))
}

fn encode(
    data: &ArrayD<f32>,
    dtype: DataType,
    order: ByteOrder,
    slope: f64,
    inter: f64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * dtype.size());
    // NIfTI order: i fastest. The transposed view iterates the data that way.
    let it = data.t();
    macro_rules! put {
        ($t:ty, $conv:expr) => {{
            let conv = $conv;
            let big = order == ByteOrder::Big;
            for &v in it.iter() {
                let x: $t = conv(v);
                out.extend_from_slice(&if big {
                    x.to_be_bytes()
                } else {
                    x.to_le_bytes()
                });
            }
        }};
    }
    let (tmin, tmax) = dtype.int_range().unwrap_or((0.0, 0.0));
    let q = |v: f32| ((v as f64 - inter) / slope).round().clamp(tmin, tmax);
    match dtype {
        DataType::U8 => put!(u8, |v| q(v) as u8),
        DataType::I8 => put!(i8, |v| q(v) as i8),
        DataType::I16 => put!(i16, |v| q(v) as i16),
        DataType::U16 => put!(u16, |v| q(v) as u16),
        DataType::I32 => put!(i32, |v| q(v) as i32),
        DataType::U32 => put!(u32, |v| q(v) as u32),
        DataType::I64 => put!(i64, |v| q(v) as i64),
        DataType::U64 => put!(u64, |v| q(v) as u64),
        DataType::F32 => put!(f32, |v: f32| v),
        DataType::F64 => put!(f64, |v: f32| v as f64),
    }
    out
}

/// The complete bytes of `vol` as an uncompressed single-file NIfTI in `dtype`.
pub fn to_bytes(vol: &Volume, dtype: DataType) -> std::result::Result<Vec<u8>, String> {
    let shape = vol.data.shape();
    if shape.is_empty() || shape.len() > 7 {
        return Err(format!(
            "cannot write a {}-D array as NIfTI (1 to 7 dims)",
            shape.len()
        ));
    }
    if shape.contains(&0) {
        return Err(format!("cannot write an empty array of shape {shape:?}"));
    }
    let mut h = vol.header.clone();
    if h.version == Version::Nifti1 && shape.iter().any(|&n| n > i16::MAX as usize) {
        h.version = Version::Nifti2;
    }
    let (slope, inter) = choose_scaling(&vol.data, dtype, h.version)?;
    let mut bytes = header::encode(&h, shape, dtype, slope, inter);
    bytes.extend_from_slice(&encode(&vol.data, dtype, h.byte_order, slope, inter));
    Ok(bytes)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `vol` to `path` with voxels stored as `dtype`, gzipped when the name ends in `.gz`.
/// Atomic: the target is replaced only once the new file is complete and flushed.
pub fn write(path: impl AsRef<Path>, vol: &Volume, dtype: DataType) -> Result<()> {
    let path = path.as_ref();
    let bytes = to_bytes(vol, dtype).map_err(|m| data_err(path, m))?;
    let gz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| data_err(path, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    let (tmp, file) = loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(data_err(
                    path,
                    format!("cannot create a temporary file in {}: {e}", dir.display()),
                ))
            }
        }
    };
    let written = (|| -> std::io::Result<()> {
        let mut w = BufWriter::with_capacity(1 << 16, file);
        if gz {
            let mut enc = flate2::write::GzEncoder::new(&mut w, flate2::Compression::new(4));
            enc.write_all(&bytes)?;
            enc.finish()?;
        } else {
            w.write_all(&bytes)?;
        }
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })()
    .map_err(|e| format!("cannot write the temporary file {}: {e}", tmp.display()))
    .and_then(|_| {
        fs::rename(&tmp, path).map_err(|e| {
            format!(
                "cannot move the temporary file {} over the target: {e}",
                tmp.display()
            )
        })
    });
    if let Err(msg) = written {
        let _ = fs::remove_file(&tmp);
        return Err(data_err(path, msg));
    }
    #[cfg(unix)]
    {
        let _ = File::open(&dir).and_then(|d| d.sync_all());
    }
    Ok(())
}
